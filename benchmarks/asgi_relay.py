"""A minimal DriftDB-style relay as a plain ASGI app, as a baseline for ASGI servers.

The same semantics as ``minimal_relay.js``: ``POST /new`` makes a room,
``ws://HOST/room/ID/connect`` joins it, every ``push`` is sent to each member
of the room (the sender included) as ``{"type": "push", "key", "value", "seq"}``
with the room's next seq; ``ping`` is answered with ``pong`` and ``get`` with
an empty ``init`` (nothing is retained). No validation, no limits, no
framework: the receiving connection awaits each member's ``send`` in turn,
the textbook ASGI broadcast.

    PYTHONPATH=benchmarks hypercorn -k trio --bind 127.0.0.1:0 asgi_relay:app

Nothing in it is trio-specific; it runs under any ASGI server.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Awaitable, Callable
from typing import Any

Send = Callable[[dict[str, Any]], Awaitable[None]]
Receive = Callable[[], Awaitable[dict[str, Any]]]


class Room:
    __slots__ = ("members", "seq")

    def __init__(self) -> None:
        self.seq = 0
        self.members: set[Send] = set()


rooms: dict[str, Room] = {}


def room_of(path: str) -> Room | None:
    parts = path.split("/")  # /room/ID/connect
    if len(parts) == 4 and parts[1] == "room" and parts[3] == "connect":
        return rooms.get(parts[2])
    return None


async def http_app(scope: dict[str, Any], receive: Receive, send: Send) -> None:
    more = True
    while more:  # drain the request body
        more = (await receive()).get("more_body", False)
    if scope["method"] == "POST" and scope["path"] == "/new":
        room_id = secrets.token_urlsafe(16)
        rooms[room_id] = Room()
        host = dict(scope["headers"]).get(b"host", b"127.0.0.1").decode()
        status = 200
        body = json.dumps(
            {
                "room": room_id,
                "socket_url": f"ws://{host}/room/{room_id}/connect",
                "http_url": f"http://{host}/room/{room_id}/send",
            }
        ).encode()
    else:
        status, body = 404, b""
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def websocket_app(scope: dict[str, Any], receive: Receive, send: Send) -> None:
    room = room_of(scope["path"])
    await receive()  # websocket.connect
    if room is None:
        await send({"type": "websocket.close"})  # refused before accept: 403
        return
    await send({"type": "websocket.accept"})
    room.members.add(send)
    try:
        while True:
            event = await receive()
            if event["type"] != "websocket.receive":
                return  # websocket.disconnect
            text = event.get("text")
            msg = json.loads(text if text is not None else event["bytes"])
            kind = msg.get("type")
            if kind == "push":
                room.seq += 1
                out = {
                    "type": "websocket.send",
                    "text": json.dumps(
                        {
                            "type": "push",
                            "key": msg.get("key"),
                            "value": msg.get("value"),
                            "seq": room.seq,
                        }
                    ),
                }
                for member in tuple(room.members):  # members may join while we await
                    try:
                        await member(out)
                    except Exception:  # that member is gone
                        room.members.discard(member)
            elif kind == "ping":
                reply = {"type": "pong", "nonce": msg.get("nonce")}
                await send({"type": "websocket.send", "text": json.dumps(reply)})
            elif kind == "get":
                reply = {"type": "init", "key": msg.get("key"), "data": []}
                await send({"type": "websocket.send", "text": json.dumps(reply)})
    finally:
        room.members.discard(send)


async def app(scope: dict[str, Any], receive: Receive, send: Send) -> None:
    if scope["type"] == "http":
        await http_app(scope, receive, send)
    elif scope["type"] == "websocket":
        await websocket_app(scope, receive, send)
    elif scope["type"] == "lifespan":
        while True:
            event = await receive()
            if event["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif event["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
