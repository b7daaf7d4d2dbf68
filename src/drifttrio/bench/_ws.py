"""A lean WebSocket client for load generation, on a trio stream.

trio-websocket runs a reader task per connection and hands each message over a
channel; a load generator would spend its core on that. Here the task that
consumes messages reads the socket itself: :meth:`WsClient.receive` returns
everything one read brought in, and :meth:`WsClient.send` writes many frames
with one ``send_all``.

wsproto does the upgrade and frames (and masks) what the client sends. Frames
from the server are parsed here: they are unmasked and, from a DriftDB server,
small and whole, and wsproto's general parser took over half of the generator's
time (measured under cProfile on the fanout scenario, about 60,000 frames).
"""

from __future__ import annotations

import contextlib
import ssl
from collections import deque
from urllib.parse import urlsplit

import trio
from wsproto import ConnectionType, WSConnection
from wsproto.connection import ConnectionState
from wsproto.events import (
    AcceptConnection,
    CloseConnection,
    Pong,
    RejectConnection,
    Request,
    TextMessage,
)
from wsproto.utilities import LocalProtocolError, RemoteProtocolError

from ._errors import BenchError, ConnectionLost

__all__ = ["WsClient"]

_READ_SIZE = 256 * 1024
_MAX_HEAD = 64 * 1024
_ABNORMAL = 1006
_PROTOCOL_ERROR = 1002
_NO_STATUS = 1005

_NETWORK_ERRORS = (OSError, trio.BrokenResourceError, trio.ClosedResourceError)

_CONTINUATION, _TEXT, _BINARY, _CLOSE, _PING, _PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA


class WsClient:
    """One client WebSocket. Open with :meth:`connect`; one task receives at a time."""

    def __init__(self, stream: trio.abc.Stream, ws: WSConnection) -> None:
        self._stream = stream
        self._ws = ws
        self._send_lock = trio.StrictFIFOLock()
        self._buffer = bytearray()
        self._fragments: list[bytes] = []
        self._fragment_opcode = 0
        self._ready: deque[str | bytes] = deque()
        self._closed: ConnectionLost | None = None

    @classmethod
    async def connect(cls, url: str) -> WsClient:
        """Open ``ws(s)://HOST[:PORT]/PATH?QUERY``; :class:`BenchError` if refused."""
        parts = urlsplit(url)
        if parts.scheme not in ("ws", "wss") or not parts.hostname:
            raise BenchError(f"not a WebSocket URL: {url!r}")
        tls = parts.scheme == "wss"
        port = parts.port or (443 if tls else 80)
        try:
            stream: trio.abc.Stream = await trio.open_tcp_stream(parts.hostname, port)
            if tls:
                stream = trio.SSLStream(
                    stream, ssl.create_default_context(), server_hostname=parts.hostname
                )
        except OSError as exc:
            raise BenchError(f"cannot connect to {parts.netloc}: {exc}") from None
        ws = WSConnection(ConnectionType.CLIENT)
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        client = cls(stream, ws)
        try:
            await client._write(ws.send(Request(host=parts.netloc, target=target)))
            await client._handshake(url)
        except BaseException:
            await client._abort()
            raise
        return client

    async def _handshake(self, url: str) -> None:
        # wsproto gets the response head only; the frames after it are parsed here.
        head = bytearray()
        while (end := head.find(b"\r\n\r\n")) < 0:
            if len(head) > _MAX_HEAD:
                raise BenchError(f"no HTTP response head in the first {_MAX_HEAD} bytes: {url}")
            data = await self._read()
            if not data:
                raise BenchError(f"the server closed the connection during the upgrade: {url}")
            head += data
        try:
            self._ws.receive_data(bytes(head[: end + 4]))
            events = list(self._ws.events())
        except RemoteProtocolError as exc:
            raise BenchError(f"bad WebSocket upgrade answer ({exc}): {url}") from None
        for event in events:
            if isinstance(event, AcceptConnection):
                self._buffer = head[end + 4 :]
                await self._parse()
                return
            if isinstance(event, RejectConnection):
                raise BenchError(f"WebSocket upgrade refused with HTTP {event.status_code}: {url}")
        raise BenchError(f"the server did not accept the WebSocket upgrade: {url}")

    async def _read(self) -> bytes:
        try:
            return bytes(await self._stream.receive_some(_READ_SIZE))
        except _NETWORK_ERRORS as exc:
            raise ConnectionLost(_ABNORMAL, str(exc) or type(exc).__name__) from None

    async def send(self, texts: list[str]) -> None:
        """Send each text as one frame, all in one write."""
        try:
            data = b"".join([self._ws.send(TextMessage(data=text)) for text in texts])
        except LocalProtocolError:
            raise self._closed or ConnectionLost(_ABNORMAL, "closed") from None
        await self._write(data)

    async def _write(self, data: bytes) -> None:
        async with self._send_lock:
            try:
                await self._stream.send_all(data)
            except _NETWORK_ERRORS as exc:
                raise ConnectionLost(_ABNORMAL, str(exc) or type(exc).__name__) from None

    async def receive(self) -> list[str | bytes]:
        """Every message received and not yet returned (at least one; reads if none).

        Text frames come as ``str``, binary ones as ``bytes``. :class:`ConnectionLost`
        once the connection is closed and nothing is left.
        """
        await self._fill()
        ready, self._ready = self._ready, deque()
        return list(ready)

    async def receive_one(self) -> str | bytes:
        """The next message; the rest of a read stays for the next call."""
        await self._fill()
        return self._ready.popleft()

    async def _fill(self) -> None:
        while not self._ready:
            if self._closed is not None:
                raise self._closed
            data = await self._read()
            if not data:
                self._closed = ConnectionLost(_ABNORMAL, "connection reset without a close frame")
                raise self._closed
            self._buffer += data
            await self._parse()

    async def _parse(self) -> None:
        """Move every whole frame of the buffer to ``_ready``; answer pings and a close."""
        buffer, ready = self._buffer, self._ready
        size, pos = len(buffer), 0
        replies: list[bytes] = []
        while size - pos >= 2 and self._closed is None:
            first, second = buffer[pos], buffer[pos + 1]
            if first & 0x70 or second & 0x80:
                self._fail("reserved bits set or masked frame from the server")
                break
            length, start = second & 0x7F, pos + 2
            if length == 126:
                if size - pos < 4:
                    break
                length, start = int.from_bytes(buffer[pos + 2 : pos + 4]), pos + 4
            elif length == 127:
                if size - pos < 10:
                    break
                length, start = int.from_bytes(buffer[pos + 2 : pos + 10]), pos + 10
            if size - start < length:
                break
            payload = bytes(buffer[start : start + length])
            pos = start + length
            opcode, fin = first & 0x0F, first & 0x80
            if opcode == _TEXT and fin and not self._fragments:
                try:
                    ready.append(payload.decode())
                except UnicodeDecodeError:
                    self._fail("invalid UTF-8 in a text frame", 1007)
            elif opcode in (_TEXT, _BINARY, _CONTINUATION):
                self._fragment(opcode, payload, bool(fin))
            elif opcode == _PING:
                replies.append(self._ws.send(Pong(payload=payload)))
            elif opcode == _CLOSE:
                code = int.from_bytes(payload[:2]) if len(payload) >= 2 else _NO_STATUS
                self._closed = ConnectionLost(code, payload[2:].decode(errors="replace"))
                if self._ws.state is ConnectionState.OPEN:
                    replies.append(self._ws.send(CloseConnection(code=1000)))
            elif opcode != _PONG:
                self._fail(f"unknown opcode {opcode:#x}")
        del buffer[:pos]
        if replies:
            with contextlib.suppress(ConnectionLost):
                await self._write(b"".join(replies))

    def _fragment(self, opcode: int, payload: bytes, fin: bool) -> None:
        if (opcode == _CONTINUATION) != bool(self._fragments):
            self._fail("continuation frame out of place")
            return
        if opcode != _CONTINUATION:
            self._fragment_opcode = opcode
        self._fragments.append(payload)
        if fin:
            message = b"".join(self._fragments)
            self._fragments.clear()
            if self._fragment_opcode == _BINARY:
                self._ready.append(message)
                return
            try:
                self._ready.append(message.decode())
            except UnicodeDecodeError:
                self._fail("invalid UTF-8 in a text message", 1007)

    def _fail(self, reason: str, code: int = _PROTOCOL_ERROR) -> None:
        self._closed = ConnectionLost(code, f"protocol error: {reason}")

    async def aclose(self, grace: float = 1.0) -> None:
        """Close politely (close frame, up to ``grace`` s for the answer), then the socket."""
        try:
            if self._ws.state is ConnectionState.OPEN and self._closed is None:
                with trio.move_on_after(grace):
                    await self._write(self._ws.send(CloseConnection(code=1000)))
                    while self._closed is None:
                        data = await self._read()
                        if not data:
                            break
                        self._buffer += data
                        await self._parse()
        except (ConnectionLost, LocalProtocolError):
            pass
        finally:
            await self._abort()

    async def _abort(self) -> None:
        with trio.CancelScope(shield=True), contextlib.suppress(*_NETWORK_ERRORS):
            await self._stream.aclose()
