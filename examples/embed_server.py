"""Embed a drifttrio server in a trio program and talk to it over the network.

Run it: python examples/embed_server.py
"""

import json
import urllib.request

import trio
from trio_websocket import open_websocket_url

from drifttrio import Config, open_server


def http_post(url: str) -> dict[str, str]:
    """POST with the standard library (blocking: run it in a thread)."""
    no_proxy = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with no_proxy.open(urllib.request.Request(url, method="POST")) as response:
        return json.load(response)  # type: ignore[no-any-return]


async def main() -> None:
    # Port 0: the OS picks a free port; server.url tells which.
    async with open_server(Config(), host="127.0.0.1", port=0) as server:
        print("listening on", server.url)

        # Create a room over HTTP, exactly as the npm client's Api.newRoom() does.
        room = await trio.to_thread.run_sync(http_post, f"{server.url}/new")
        print("room created:", room["room"])

        async with open_websocket_url(room["socket_url"]) as ws:
            push = {"type": "push", "key": "chat", "value": "hi", "action": {"type": "append"}}
            await ws.send_message(json.dumps(push))
            # Every connection in the room, the sender included, gets the broadcast.
            print("received:", await ws.get_message())
    print("server stopped")


if __name__ == "__main__":
    trio.run(main)
