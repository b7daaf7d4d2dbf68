"""A raw-socket WebSocket client for hostile tests: it sends whatever frames it is
told to (unmasked, fragmented control frames, huge declared lengths...), which no
well-behaved client library would."""

from __future__ import annotations

import base64
import json
import os
import struct
from typing import Any

import cbor2
import trio

TIMEOUT = 10  # a guard against hangs, never a way to wait for something

TEXT, BINARY, CLOSE, PING, PONG, CONTINUATION = 0x1, 0x2, 0x8, 0x9, 0xA, 0x0


def frame(
    opcode: int,
    payload: bytes = b"",
    *,
    fin: bool = True,
    mask: bool = True,
    declared: int | None = None,
    rsv1: bool = False,
) -> bytes:
    """One frame; ``declared`` overrides the length in the header (payload may be shorter)."""
    length = len(payload) if declared is None else declared
    head = bytes([(0x80 if fin else 0) | (0x40 if rsv1 else 0) | opcode])
    bit = 0x80 if mask else 0
    if length < 126:
        head += bytes([bit | length])
    elif length < 65536:
        head += bytes([bit | 126]) + struct.pack("!H", length)
    else:
        head += bytes([bit | 127]) + struct.pack("!Q", length)
    if not mask:
        return head + payload
    key = os.urandom(4)
    return head + key + bytes(b ^ key[i % 4] for i, b in enumerate(payload))


class RawWebSocket:
    """A client speaking raw bytes: ``handshake()``, then frames in and out."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.buffer = bytearray()
        self.response_head = b""

    @classmethod
    async def connect(cls, host: str, port: int) -> RawWebSocket:
        return cls(await trio.open_tcp_stream(host, port))

    async def _fill(self) -> bool:
        data = await self.stream.receive_some(65536)
        self.buffer += data
        return bool(data)

    async def handshake(
        self, path: str, headers: dict[str, str] | None = None, *, expect: int = 101
    ) -> dict[str, str]:
        """Upgrade on ``path``; return the response headers (lower-case names)."""
        key = base64.b64encode(os.urandom(16)).decode()
        lines = [
            f"GET {path} HTTP/1.1",
            "Host: 127.0.0.1",
            "Upgrade: websocket",
            "Connection: Upgrade",
            f"Sec-WebSocket-Key: {key}",
            "Sec-WebSocket-Version: 13",
            *(f"{k}: {v}" for k, v in (headers or {}).items()),
        ]
        await self.stream.send_all(("\r\n".join(lines) + "\r\n\r\n").encode())
        with trio.fail_after(TIMEOUT):
            while b"\r\n\r\n" not in self.buffer:
                if not await self._fill():
                    raise ConnectionError("closed during the handshake")
        head, _, rest = bytes(self.buffer).partition(b"\r\n\r\n")
        self.buffer = bytearray(rest)
        self.response_head = head
        status_line, *header_lines = head.decode("latin-1").split("\r\n")
        status = int(status_line.split()[1])
        assert status == expect, head
        return {
            name.strip().lower(): value.strip()
            for name, _, value in (line.partition(":") for line in header_lines)
        }

    async def send(self, data: bytes) -> None:
        await self.stream.send_all(data)

    async def send_json(self, message: object) -> None:
        await self.send(frame(TEXT, json.dumps(message).encode()))

    async def recv_frame(self) -> tuple[int, bytes]:
        """The next frame from the server: (opcode, payload). Server frames are unmasked."""
        with trio.fail_after(TIMEOUT):
            while True:
                if len(self.buffer) >= 2:
                    length = self.buffer[1] & 0x7F
                    offset = 2
                    if length == 126 and len(self.buffer) >= 4:
                        (length,) = struct.unpack("!H", self.buffer[2:4])
                        offset = 4
                    elif length == 127 and len(self.buffer) >= 10:
                        (length,) = struct.unpack("!Q", self.buffer[2:10])
                        offset = 10
                    complete = len(self.buffer) >= offset + length
                    if (length < 126 or offset > 2) and complete:
                        opcode = self.buffer[0] & 0x0F
                        payload = bytes(self.buffer[offset : offset + length])
                        del self.buffer[: offset + length]
                        return opcode, payload
                if not await self._fill():
                    raise ConnectionError("closed by the server")

    async def recv(self) -> Any:
        """The next data message, decoded; control frames other than close are skipped."""
        while True:
            opcode, payload = await self.recv_frame()
            if opcode == TEXT:
                return json.loads(payload)
            if opcode == BINARY:
                return cbor2.loads(payload)
            if opcode == CLOSE:
                raise AssertionError(f"closed: {close_code(payload)}")

    async def close_code(self) -> int | None:
        """Read until the server's close frame; its code (``None`` if the socket just ends)."""
        while True:
            try:
                opcode, payload = await self.recv_frame()
            except (ConnectionError, trio.BrokenResourceError):
                return None
            if opcode == CLOSE:
                return close_code(payload)

    async def aclose(self) -> None:
        await self.stream.aclose()


def close_code(payload: bytes) -> int | None:
    return struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else None
