"""Mount drifttrio under /drift inside your own ASGI app, sharing one hub.

Your code pushes into rooms in-process while browsers are connected over
WebSocket. Run it: python examples/mount_asgi.py
"""

import json
import urllib.request
from functools import partial
from typing import Any

import hypercorn.trio
import trio
from hypercorn.config import Config as HypercornConfig
from trio_websocket import open_websocket_url

from drifttrio import Config, DriftApp, open_hub

PREFIX = "/drift"


def make_app(drift: DriftApp) -> Any:
    """An ASGI app that hands /drift/... to drifttrio and answers the rest itself."""

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        path = scope.get("path", "")
        if scope["type"] == "lifespan":
            await drift(scope, receive, send)  # DriftApp(config) starts its own hub here
        elif path == PREFIX or path.startswith(PREFIX + "/"):
            # ASGI keeps the prefix in `path` and names it in `root_path`.
            root = scope.get("root_path", "") + PREFIX
            await drift({**scope, "root_path": root}, receive, send)
        elif scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1008})
        else:
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b"my own app\n"})

    return app


def http_post(url: str) -> dict[str, str]:
    no_proxy = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with no_proxy.open(urllib.request.Request(url, method="POST")) as response:
        return json.load(response)  # type: ignore[no-any-return]


async def main() -> None:
    async with open_hub(Config()) as hub:
        app = make_app(DriftApp(hub=hub))  # or DriftApp(config): it then owns a hub
        hypercorn_config = HypercornConfig()
        hypercorn_config.bind = ["127.0.0.1:0"]
        stop = trio.Event()
        async with trio.open_nursery() as nursery:
            binds = await nursery.start(
                partial(hypercorn.trio.serve, app, hypercorn_config, shutdown_trigger=stop.wait)
            )
            room = await trio.to_thread.run_sync(http_post, f"{binds[0]}{PREFIX}/new")
            print("socket_url has the prefix:", PREFIX in room["socket_url"])

            async with open_websocket_url(room["socket_url"]) as ws:
                # Subscribe like the npm client: once the init is back, this
                # socket is a member of the room and gets every later push.
                await ws.send_message(json.dumps({"type": "get", "key": "news", "seq": 0}))
                print("browser subscribed:", await ws.get_message())
                # The application pushes through the hub; the browser gets it.
                await hub.push(room["room"], "news", "pushed by the application")
                print("browser received:", await ws.get_message())
            stop.set()
    print("server stopped")


if __name__ == "__main__":
    trio.run(main)
