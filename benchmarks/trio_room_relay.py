"""The leanest relay with drifttrio's shape, on bare Trio: a yardstick for what that
shape costs.

The same semantics as ``websockets_relay.py`` (``POST /new``, ``/room/ID/connect``,
every ``push`` broadcast to the room with its next seq, ``ping`` answered with
``pong``, ``get`` with an empty ``init``; no validation, no limits), and the same
architecture as drifttrio's: one reader task per connection parses its frames and
hands each push to its room's task over a memory channel; the room task numbers it
and writes the frame to every member's socket without waiting (a member whose
socket is full misses it: there is no outbox). So a push costs two task wake-ups
(the reader's, the room's) and nothing else: what is left between this row and
drifttrio's is drifttrio's own code (limits, validation, commit, gates, metrics,
outboxes, the layers), not Trio and not the two tasks.

    python benchmarks/trio_room_relay.py [PORT]

Not a server to use: a frame split across reads is waited for, but nothing is
checked, and a slow member silently loses frames.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import os
import secrets
import socket
import sys

import orjson
import trio

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


class Room:
    __slots__ = ("inbox", "members", "seq")

    def __init__(self, inbox: trio.MemorySendChannel[tuple[int, dict[str, object]]]) -> None:
        self.seq = 0
        self.members: set[int] = set()  # file descriptors
        self.inbox = inbox


rooms: dict[str, Room] = {}


def frame(payload: bytes, opcode: int = 0x1) -> bytes:
    n = len(payload)
    if n < 126:
        return bytes((0x80 | opcode, n)) + payload
    if n < 65536:
        return bytes((0x80 | opcode, 126)) + n.to_bytes(2, "big") + payload
    return bytes((0x80 | opcode, 127)) + n.to_bytes(8, "big") + payload


def unmask(mask: bytes, data: bytes) -> bytes:
    n = len(data)
    key = int.from_bytes((mask * (n // 4 + 1))[:n], "little")
    return (int.from_bytes(data, "little") ^ key).to_bytes(n, "little")


def write(fd: int, data: bytes) -> None:
    with contextlib.suppress(OSError):  # full or gone: missed
        os.write(fd, data)


async def read(sock: trio.socket.SocketType) -> bytes:
    while True:
        try:
            return os.read(sock.fileno(), 65536)
        except BlockingIOError:
            await trio.lowlevel.wait_readable(sock)
        except OSError:
            return b""


Pushes = trio.MemoryReceiveChannel[tuple[int, dict[str, object]]]


async def room_task(room: Room, inbox: Pushes) -> None:
    async for _fd, msg in inbox:
        room.seq += 1
        out = frame(
            orjson.dumps(
                {"type": "push", "key": msg.get("key"), "value": msg.get("value"), "seq": room.seq}
            )
        )
        for member in room.members:
            write(member, out)


def respond(fd: int, status: str, body: bytes = b"", content_type: str = "text/plain") -> None:
    head = (
        f"HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nConnection: close\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    write(fd, head.encode() + body)


async def handle(sock: trio.socket.SocketType, nursery: trio.Nursery) -> None:
    fd = sock.fileno()
    buf = b""
    while b"\r\n\r\n" not in buf:
        data = await read(sock)
        if not data:
            return
        buf += data
    head, _, buf = buf.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    method, path, _ = lines[0].split(b" ", 2)
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        headers[name.strip().lower()] = value.strip()
    if method == b"POST" and path == b"/new":
        room_id = secrets.token_urlsafe(16)
        send, receive = trio.open_memory_channel[tuple[int, dict[str, object]]](1024)
        rooms[room_id] = Room(send)
        nursery.start_soon(room_task, rooms[room_id], receive)
        host = headers.get(b"host", b"127.0.0.1").decode()
        body = orjson.dumps(
            {
                "room": room_id,
                "socket_url": f"ws://{host}/room/{room_id}/connect",
                "http_url": f"http://{host}/room/{room_id}/send",
            }
        )
        respond(fd, "200 OK", body, "application/json")
        return
    parts = path.split(b"?", 1)[0].split(b"/")
    room = rooms.get(parts[2].decode()) if len(parts) == 4 and parts[1] == b"room" else None
    key = headers.get(b"sec-websocket-key")
    if room is None or key is None:
        respond(fd, "404 Not Found")
        return
    accept = base64.b64encode(hashlib.sha1(key + GUID).digest())
    write(
        fd,
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Accept: " + accept + b"\r\n\r\n",
    )
    room.members.add(fd)
    try:
        while True:
            while len(buf) >= 2:
                opcode, length, start = buf[0] & 0x0F, buf[1] & 0x7F, 2
                if length == 126:
                    length, start = int.from_bytes(buf[2:4], "big"), 4
                elif length == 127:
                    length, start = int.from_bytes(buf[2:10], "big"), 10
                end = start + 4 + length
                if len(buf) < end:
                    break
                payload = unmask(buf[start : start + 4], buf[start + 4 : end])
                buf = buf[end:]
                if opcode == 0x8:  # close: answer it, then end
                    write(fd, frame(payload[:2], 0x8))
                    return
                if opcode == 0x9:
                    write(fd, frame(payload, 0xA))
                    continue
                if opcode != 0x1:
                    continue
                msg = orjson.loads(payload)
                kind = msg.get("type")
                if kind == "push":
                    room.inbox.send_nowait((fd, msg))
                elif kind == "get":
                    init = {"type": "init", "key": msg.get("key"), "data": []}
                    write(fd, frame(orjson.dumps(init)))
                elif kind == "ping":
                    write(fd, frame(orjson.dumps({"type": "pong", "nonce": msg.get("nonce")})))
            data = await read(sock)
            if not data:
                return
            buf += data
    finally:
        room.members.discard(fd)


async def main() -> None:
    port = int(sys.argv[1]) if len(sys.argv) > 1 else 0
    listener = trio.socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    await listener.bind(("127.0.0.1", port))
    listener.listen(4096)
    print(f"listening on http://127.0.0.1:{listener.getsockname()[1]}", file=sys.stderr, flush=True)
    async with trio.open_nursery() as nursery:
        while True:
            sock, _ = await listener.accept()
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

            async def serve(sock: trio.socket.SocketType = sock) -> None:
                # No validation: a malformed request just ends.
                malformed = (ValueError, KeyError, IndexError, orjson.JSONDecodeError)
                with sock, contextlib.suppress(*malformed):
                    await handle(sock, nursery)

            nursery.start_soon(serve)


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        trio.run(main)
