"""A minimal DriftDB-style relay on ``trio-websocket``, as a Trio baseline.

The same semantics as ``minimal_relay.js``: ``POST /new`` makes a room,
``ws://HOST/room/ID/connect`` joins it, every ``push`` is sent to each member
of the room (the sender included) as ``{"type": "push", "key", "value", "seq"}``
with the room's next seq; ``ping`` is answered with ``pong`` and ``get`` with
an empty ``init``. No validation, no limits. The receiving connection awaits
each member's ``send_message`` in turn (the library's idiom).

    python benchmarks/trio_websocket_relay.py

trio-websocket only speaks the WebSocket handshake (wsproto refuses any
method but GET), so ``POST /new`` is answered by a tiny HTTP listener on a
second port; the ``socket_url`` it hands out points at the WebSocket port.
The address printed is the HTTP one.
"""

from __future__ import annotations

import contextlib
import json
import secrets
import sys
from functools import partial

import trio
from trio_websocket import ConnectionClosed, WebSocketConnection, WebSocketRequest, serve_websocket


class Room:
    __slots__ = ("members", "seq")

    def __init__(self) -> None:
        self.seq = 0
        self.members: set[WebSocketConnection] = set()


rooms: dict[str, Room] = {}


def room_of(path: str) -> Room | None:
    parts = path.split("?", 1)[0].split("/")  # /room/ID/connect
    if len(parts) == 4 and parts[1] == "room" and parts[3] == "connect":
        return rooms.get(parts[2])
    return None


async def websocket_handler(request: WebSocketRequest) -> None:
    room = room_of(request.path)
    if room is None:
        await request.reject(404)
        return
    ws = await request.accept()
    room.members.add(ws)
    try:
        while True:
            msg = json.loads(await ws.get_message())
            kind = msg.get("type")
            if kind == "push":
                room.seq += 1
                out = json.dumps(
                    {
                        "type": "push",
                        "key": msg.get("key"),
                        "value": msg.get("value"),
                        "seq": room.seq,
                    }
                )
                for member in tuple(room.members):  # members may join while we await
                    try:
                        await member.send_message(out)
                    except ConnectionClosed:
                        room.members.discard(member)
            elif kind == "ping":
                await ws.send_message(json.dumps({"type": "pong", "nonce": msg.get("nonce")}))
            elif kind == "get":
                await ws.send_message(
                    json.dumps({"type": "init", "key": msg.get("key"), "data": []})
                )
    except ConnectionClosed:
        pass
    finally:
        room.members.discard(ws)


async def http_handler(stream: trio.SocketStream, ws_port: int) -> None:
    """Just enough HTTP/1.1 for ``POST /new`` (one request per connection)."""
    async with stream:
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = await stream.receive_some(4096)
            if not chunk:
                return
            head += chunk
        request_line = head.split(b"\r\n", 1)[0].split(b" ")
        if request_line[:2] == [b"POST", b"/new"]:
            room_id = secrets.token_urlsafe(16)
            rooms[room_id] = Room()
            body = json.dumps(
                {
                    "room": room_id,
                    "socket_url": f"ws://127.0.0.1:{ws_port}/room/{room_id}/connect",
                    "http_url": None,
                }
            ).encode()
            status = b"200 OK"
        else:
            status, body = b"404 Not Found", b""
        await stream.send_all(
            b"HTTP/1.1 " + status + b"\r\ncontent-type: application/json\r\n"
            b"content-length: " + str(len(body)).encode() + b"\r\nconnection: close\r\n\r\n" + body
        )


async def main() -> None:
    async with trio.open_nursery() as nursery:
        server = await nursery.start(serve_websocket, websocket_handler, "127.0.0.1", 0, None)
        listeners = await nursery.start(
            partial(trio.serve_tcp, partial(http_handler, ws_port=server.port), 0, host="127.0.0.1")
        )
        port = listeners[0].socket.getsockname()[1]
        print(f"listening on http://127.0.0.1:{port}", file=sys.stderr, flush=True)


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        trio.run(main)
