"""WebSocket frames (RFC 6455), sans-IO: the client's, read; the server's, built.

wsproto reads a frame through a handful of generators and method calls and
unmasks it in Python; with one small message per frame that was a third of the
server's time. :class:`FrameReader` parses every frame already received in one
loop, unmasks with the C routine of ``websockets`` (a pure-Python fallback
otherwise) and returns whole messages as :data:`Message` (the payload's bytes,
and whether it is binary: a text message is checked to be UTF-8, not decoded),
:class:`Ping` or :class:`Close`. Pongs are skipped, but counted (``pongs``), so
the caller can charge them to a rate limit. Compression is never negotiated,
so a reserved bit is an error.

The rules are wsproto's, and a violation raises :class:`FrameError` with the
close code to answer: 1002 for a broken frame (unmasked, reserved bit or opcode,
fragmented or oversized control frame, stray or missing continuation, a length
not in its shortest form, a bad close frame), 1007 for invalid UTF-8, 1009 as
soon as a header declares more than ``max_message_bytes`` for its message (each
non-final fragment counts ``fragment_cost`` bytes more, so a flood of empty
continuation frames ends too). What is buffered never exceeds one frame.

The server's frames are built once per broadcast: :class:`FrameEncoder` turns a
server message into one complete frame, the same bytes for every member that
speaks its codec (see :data:`FRAME_ENCODERS`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final, TypeAlias

from ..protocol.codec import CBOR, JSON, Codec
from ..protocol.messages import ServerMessage

__all__ = [
    "FRAME_ENCODERS",
    "Close",
    "FrameEncoder",
    "FrameError",
    "FrameReader",
    "Message",
    "Ping",
    "close_frame",
    "ping_frame",
    "pong_frame",
    "unmask",
    "websocket_frame",
]

#: A whole message from the client: its payload, and whether it came in binary
#: frames (text payloads are valid UTF-8).
Message: TypeAlias = tuple[bytes, bool]

_TEXT: Final = 0x1
_BINARY: Final = 0x2
_CLOSE: Final = 0x8
_PING: Final = 0x9
_PONG: Final = 0xA
#: Close codes a peer may not send (RFC 6455 7.4.1): no status, abnormal, TLS.
_LOCAL_ONLY: Final = frozenset((1005, 1006, 1015))
#: Codes 1000-2999 that RFC 6455 and its registry define.
_KNOWN_CODES: Final = frozenset((*range(1000, 1004), *range(1007, 1014)))


def _unmask_python(data: bytes, mask: bytes) -> bytes:
    size = len(data)
    key = int.from_bytes((mask * ((size >> 2) + 1))[:size], "little")
    return (int.from_bytes(data, "little") ^ key).to_bytes(size, "little")


#: ``unmask(payload, mask)``: the payload XORed with the 4-byte masking key.
unmask: Callable[[bytes, bytes], bytes]
try:
    from websockets.speedups import apply_mask as unmask
except ImportError:  # pragma: no cover - websockets ships it for the usual platforms
    unmask = _unmask_python


class FrameError(Exception):
    """The peer broke the protocol: close the connection with ``code``."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(code, reason)
        self.code = code
        self.reason = reason


class Ping:
    """A ping frame; the answer is a pong with the same payload."""

    __slots__ = ("payload",)

    def __init__(self, payload: bytes) -> None:
        self.payload = payload


class Close:
    """The peer's close frame. ``code`` is ``None`` when it carried none (1005)."""

    __slots__ = ("code", "reason")

    def __init__(self, code: int | None, reason: str) -> None:
        self.code = code
        self.reason = reason


class FrameReader:
    """Feed it bytes from a client; take whole messages and control frames out."""

    __slots__ = (
        "_buffered",
        "_chunks",
        "_closed",
        "_data",
        "_need",
        "_opcode",
        "_parts",
        "_pos",
        "_size",
        "fragment_cost",
        "max_message_bytes",
        "pongs",
    )

    def __init__(self, max_message_bytes: int, fragment_cost: int = 64) -> None:
        self.max_message_bytes = max_message_bytes
        self.fragment_cost = fragment_cost
        self._data = b""  # received, not yet parsed from _pos on
        self._pos = 0
        self._chunks: list[bytes] = []  # received after _data, joined once _need is there
        self._buffered = 0
        self._need = 0  # bytes from _pos the frame being parsed needs
        self._opcode = 0  # of the fragmented message in progress (0: none)
        self._parts: list[bytes] = []
        self._size = 0  # what the message in progress counts towards the limit
        self._closed = False
        #: Pong frames skipped so far; the caller may reset it once charged.
        self.pongs = 0

    def feed(self, data: bytes) -> None:
        """Add bytes received from the peer (ignored after its close frame)."""
        if self._closed or not data:
            return
        if self._pos >= len(self._data):
            self._data, self._pos = data, 0
            return
        self._chunks.append(data)
        self._buffered += len(data)
        if len(self._data) - self._pos + self._buffered >= self._need:
            self._data = self._data[self._pos :] + b"".join(self._chunks)
            self._pos = 0
            self._chunks.clear()
            self._buffered = 0

    def next_event(self) -> Message | Ping | Close | None:
        """The next message or control frame, or ``None`` until more bytes arrive.

        Raises :class:`FrameError` on a protocol violation.
        """
        while True:
            data, pos = self._data, self._pos
            available = len(data) - pos
            if self._chunks or self._closed:
                return None
            if available < 2:
                if not available:
                    self._data, self._pos = b"", 0  # keep no received chunk alive
                self._need = 2
                return None
            b0 = data[pos]
            b1 = data[pos + 1]
            opcode = b0 & 0x0F
            fin = b0 & 0x80
            length = b1 & 0x7F
            if b0 & 0x70:
                raise FrameError(1002, "reserved bit set (no extension was negotiated)")
            if opcode >= _CLOSE:
                if opcode > _PONG:
                    raise FrameError(1002, f"invalid opcode {opcode:#x}")
                if not fin:
                    raise FrameError(1002, "fragmented control frame")
                if length > 125:
                    raise FrameError(1002, "control frame with payload length > 125")
            elif opcode > _BINARY:
                raise FrameError(1002, f"invalid opcode {opcode:#x}")
            if not b1 & 0x80:
                raise FrameError(1002, "unmasked client frame")
            head = 6
            if length == 126:
                if available < 4:
                    self._need = 4
                    return None
                head = 8
                length = (data[pos + 2] << 8) | data[pos + 3]
                if length < 126:
                    raise FrameError(1002, "payload length not in its shortest form")
            elif length == 127:
                if available < 10:
                    self._need = 10
                    return None
                head = 14
                length = int.from_bytes(data[pos + 2 : pos + 10], "big")
                if length < 65536:
                    raise FrameError(1002, "payload length not in its shortest form")
                if length >> 63:
                    raise FrameError(1002, "payload length with its most significant bit set")
            if opcode < _CLOSE:
                if opcode:
                    if self._opcode:
                        raise FrameError(1002, "a new message before the last one ended")
                elif not self._opcode:
                    raise FrameError(1002, "continuation frame without a message to continue")
                # Checked on the header: a huge declared frame ends before it arrives.
                if self._size + length + (0 if fin else self.fragment_cost) > (
                    self.max_message_bytes
                ):
                    raise FrameError(1009, "message too big")
            end = pos + head + length
            if available < head + length:
                self._need = head + length
                return None
            payload = unmask(data[pos + head : end], data[pos + head - 4 : pos + head])
            self._pos = end
            if opcode == _TEXT and fin:
                return _text(payload)
            if opcode == _BINARY and fin:
                return payload, True
            if opcode < _CLOSE:
                if opcode:
                    self._opcode = opcode
                self._size += length + (0 if fin else self.fragment_cost)
                if payload:
                    self._parts.append(payload)
                if not fin:
                    continue
                message = b"".join(self._parts)
                binary = self._opcode == _BINARY
                self._parts.clear()
                self._opcode = self._size = 0
                return (message, True) if binary else _text(message)
            if opcode == _PING:
                return Ping(payload)
            if opcode == _CLOSE:
                self._closed = True
                self._data, self._pos = b"", 0
                return _close_event(payload)
            self.pongs += 1  # a pong: nothing to answer, only to count


def _text(payload: bytes) -> Message:
    """A text message, once its payload is checked to be UTF-8 (ASCII at C speed
    without decoding it)."""
    if not payload.isascii():
        try:
            payload.decode()
        except UnicodeDecodeError as exc:
            raise FrameError(1007, f"invalid UTF-8 in a text message: {exc.reason}") from None
    return payload, False


def _close_event(payload: bytes) -> Close:
    if not payload:
        return Close(None, "")
    if len(payload) == 1:
        raise FrameError(1002, "close frame with a 1-byte payload")
    code = int.from_bytes(payload[:2], "big")
    if not 1000 <= code <= 4999 or code in _LOCAL_ONLY:
        raise FrameError(1002, f"close frame with invalid code {code}")
    if code < 3000 and code not in _KNOWN_CODES:
        raise FrameError(1002, f"close frame with reserved code {code}")
    try:
        reason = payload[2:].decode()
    except UnicodeDecodeError as exc:
        raise FrameError(1007, f"invalid UTF-8 in a close reason: {exc.reason}") from None
    return Close(code, reason)


def _control_frame(opcode: int, payload: bytes) -> bytes:
    return bytes((0x80 | opcode, len(payload))) + payload


def ping_frame(payload: bytes = b"") -> bytes:
    """An unmasked ping frame (``payload`` at most 125 bytes)."""
    return _control_frame(_PING, payload)


def pong_frame(payload: bytes) -> bytes:
    """An unmasked pong frame (``payload`` is at most 125 bytes, as its ping's)."""
    return _control_frame(_PONG, payload)


def close_frame(code: int | None, reason: str = "") -> bytes:
    """An unmasked close frame, as wsproto builds it: ``None`` sends no code, a code
    a peer may not send becomes 1000, and the reason is cut to fit a control frame
    (never inside a UTF-8 sequence)."""
    if code is None:
        return _control_frame(_CLOSE, b"")
    if code in _LOCAL_ONLY:
        code = 1000
    data = reason.encode()[:123].decode(errors="ignore").encode()
    return _control_frame(_CLOSE, code.to_bytes(2, "big") + data)


def websocket_frame(payload: bytes, *, binary: bool) -> bytes:
    """A final, unmasked server frame (RFC 6455 section 5.2) carrying ``payload``."""
    head = 0x82 if binary else 0x81
    size = len(payload)
    if size < 126:
        return bytes((head, size)) + payload
    if size < 65536:
        return bytes((head, 126)) + size.to_bytes(2, "big") + payload
    return bytes((head, 127)) + size.to_bytes(8, "big") + payload


class FrameEncoder:
    """Server messages as complete WebSocket frames of one codec (text for JSON,
    binary for CBOR): a room encodes each broadcast once per encoder, and drifttrio's
    transport writes a member's queued frames in one write.

    A :class:`~drifttrio.runtime.Encoder`; compared by identity, so use the ones
    in :data:`FRAME_ENCODERS`.
    """

    __slots__ = ("codec", "name")

    def __init__(self, codec: Codec) -> None:
        self.codec = codec
        #: The codec's name (a metrics label).
        self.name: Final = codec.name

    def encode(self, message: ServerMessage) -> bytes:
        codec = self.codec
        return websocket_frame(codec.encode_bytes(message), binary=codec.binary)


#: The frame encoder of each codec.
FRAME_ENCODERS: Final = {JSON: FrameEncoder(JSON), CBOR: FrameEncoder(CBOR)}
