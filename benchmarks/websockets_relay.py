"""A minimal DriftDB-style relay on the ``websockets`` library (asyncio), as a baseline.

The same semantics as ``minimal_relay.js``: ``POST /new`` makes a room,
``ws://HOST/room/ID/connect`` joins it, every ``push`` is broadcast to the
room (the sender included) as ``{"type": "push", "key", "value", "seq"}``
with the room's next seq; ``ping`` is answered with ``pong`` and ``get`` with
an empty ``init`` (nothing is retained). No validation, no limits.

    python benchmarks/websockets_relay.py [PORT]

It is written the way the websockets documentation suggests: the new asyncio
API (``websockets.asyncio.server.serve``), ``async for`` over the connection,
``websockets.broadcast`` for fan-out (no per-member await), stdlib ``json``.
``process_request`` answers ``POST /new`` itself (it runs before the
handshake's GET check), so one port serves both, like the other servers.
"""

from __future__ import annotations

import asyncio
import contextlib
import http
import json
import secrets
import sys

from websockets.asyncio.server import ServerConnection, broadcast, serve
from websockets.http11 import Request, Response


class Room:
    __slots__ = ("members", "seq")

    def __init__(self) -> None:
        self.seq = 0
        self.members: set[ServerConnection] = set()


rooms: dict[str, Room] = {}


def room_of(path: str) -> Room | None:
    # /room/ID/connect[?query]
    parts = path.split("?", 1)[0].split("/")
    if len(parts) == 4 and parts[1] == "room" and parts[3] == "connect":
        return rooms.get(parts[2])
    return None


def process_request(connection: ServerConnection, request: Request) -> Response | None:
    if request.method == "POST" and request.path == "/new":
        room_id = secrets.token_urlsafe(16)
        rooms[room_id] = Room()
        host = request.headers.get("Host", "127.0.0.1")
        body = json.dumps(
            {
                "room": room_id,
                "socket_url": f"ws://{host}/room/{room_id}/connect",
                "http_url": f"http://{host}/room/{room_id}/send",
            }
        )
        response = connection.respond(http.HTTPStatus.OK, body)
        response.headers["Content-Type"] = "application/json"
        return response
    if room_of(request.path) is None:
        return connection.respond(http.HTTPStatus.NOT_FOUND, "")
    return None  # go on with the WebSocket handshake


async def handler(ws: ServerConnection) -> None:
    room = room_of(ws.request.path)  # type: ignore[union-attr]
    if room is None:
        return
    room.members.add(ws)
    try:
        async for data in ws:
            msg = json.loads(data)
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
                broadcast(room.members, out)
            elif kind == "ping":
                await ws.send(json.dumps({"type": "pong", "nonce": msg.get("nonce")}))
            elif kind == "get":
                await ws.send(json.dumps({"type": "init", "key": msg.get("key"), "data": []}))
    finally:
        room.members.discard(ws)


async def main() -> None:
    port = int(sys.argv[1]) if len(sys.argv) > 1 else 0
    async with serve(
        handler, "127.0.0.1", port, process_request=process_request, compression=None
    ) as server:
        host, bound = next(iter(server.sockets)).getsockname()[:2]
        print(f"listening on http://{host}:{bound}", file=sys.stderr, flush=True)
        await server.serve_forever()


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(main())
