"""Start the server with nursery.start(serve, ...) and stop it with a trigger.

Run it: python examples/serve_in_nursery.py
"""

from functools import partial
from typing import Any

import cbor2
import trio
from trio_websocket import WebSocketConnection, open_websocket_url

from drifttrio import Config, RunningServer, serve


async def receive_cbor(ws: WebSocketConnection) -> Any:
    frame = await ws.get_message()
    assert isinstance(frame, bytes), "a CBOR connection gets binary frames"
    return cbor2.loads(frame)


async def main() -> None:
    stop = trio.Event()
    config = Config(slow_client_policy="drop", broadcast_compact=False)
    async with trio.open_nursery() as nursery:
        # nursery.start returns once the socket is bound: the RunningServer.
        server: RunningServer = await nursery.start(
            partial(serve, config, host="127.0.0.1", port=0, shutdown_trigger=stop.wait)
        )
        print(f"serving on {server.host}:{server.port}")

        # The server's hub is the same one its HTTP and WebSocket routes use.
        room = await server.hub.create_room()
        await server.hub.push(room, "greeting", "hello from the hub")

        # ?cbor=true: the server answers this connection with CBOR binary frames.
        url = f"{server.ws_url}/room/{room}/connect?cbor=true"
        async with open_websocket_url(url) as ws:
            await ws.send_message(cbor2.dumps({"type": "get", "key": "greeting", "seq": 0}))
            print("init:", await receive_cbor(ws))
            await ws.send_message(cbor2.dumps({"type": "ping", "nonce": 42}))
            print("pong:", await receive_cbor(ws))

        stop.set()  # serve() closes every member with 1001 and returns
    print("server stopped")


if __name__ == "__main__":
    trio.run(main)
