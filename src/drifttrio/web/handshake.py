"""The WebSocket opening handshake (RFC 6455 4.2) of drifttrio's own transport,
sans-IO: which requests are upgrades, whether an upgrade is valid, and the
bytes of the answer (the 101, or a refusal).

It makes the checks wsproto makes, in wsproto's order, with wsproto's answers
(400, or 426 with ``Sec-WebSocket-Version: 13`` for a version it does not
speak) and its reasons; ``tests/test_handshake.py`` holds it to wsproto, request
by request. It is here rather than in wsproto because wsproto's general
machinery (a second h11 connection that writes the request out and parses it
back, then events and a response object) was a tenth of a short connection's
server time, and because wsproto lets a non-ASCII ``Connection``,
``Sec-WebSocket-Protocol`` or ``Sec-WebSocket-Extensions`` header, or a
``Host`` that is not IDNA, escape as a ``UnicodeDecodeError``: here such a
header is read as bytes, never decoded on the way to a check.

No extension is ever negotiated (``Sec-WebSocket-Extensions`` is ignored, so
``permessage-deflate`` is refused by omission) and no subprotocol is chosen.

The common upgrade (a whole head in the connection's first read, nothing unusual
in it) is read here too, without h11 (:func:`read_upgrade`): it is what nearly
every connection sends, and h11's general machinery (a connection state
machine, a receive buffer, events) was the next largest cost of a short
connection after wsproto's. It accepts a strict subset of what h11 accepts and
reads it as h11 does (``tests/test_handshake.py`` holds it to h11, head by
head); anything else (another request, an incomplete or unusual head, an invalid
upgrade) is left to h11, so every refusal is h11's or :func:`upgrade_of`'s as before.
"""

from __future__ import annotations

import base64
import hashlib
import re
from collections.abc import Iterable, Sequence
from typing import Final

__all__ = [
    "BadUpgrade",
    "Upgrade",
    "UpgradeHead",
    "accept_response",
    "read_upgrade",
    "reject_response",
    "upgrade_of",
]

#: The only version spoken (RFC 6455 4.4).
WEBSOCKET_VERSION: Final = b"13"
_ACCEPT_GUID: Final = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
_ACCEPT_HEAD: Final = (
    b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
    b"Connection: Upgrade\r\nSec-WebSocket-Accept: "
)
#: Bytes that would end a header line (or the head) early: never written.
_LINE_BREAKERS: Final = (b"\r", b"\n", b"\x00")

# h11's grammar (h11/_abnf.py), for the heads read without it: a line matched here
# is read by h11 into the same name and value.
_TOKEN: Final = rb"[-!#$%&'*+.^_`|~0-9a-zA-Z]+"
_FIELD_VCHAR: Final = rb"[^\x00\s]"
_FIELD_VALUE: Final = rb"(?:" + _FIELD_VCHAR + rb"+(?:[ \t]+" + _FIELD_VCHAR + rb"+)*)?"
_HEADER_LINE: Final = re.compile(rb"(" + _TOKEN + rb"):[ \t]*(" + _FIELD_VALUE + rb")[ \t]*")
#: Only HTTP/1.1 GET: an upgrade by any other method is no upgrade, and HTTP/1.0
#: is left to h11.
_REQUEST_LINE: Final = re.compile(rb"GET ([\x21-\x7e]+) HTTP/1\.1")
#: Headers that give a request a body: such an upgrade is left to h11.
_BODY_HEADERS: Final = frozenset((b"content-length", b"transfer-encoding"))
#: Header names clients send with an upgrade, each one object: a connection's
#: scope keeps these rather than a copy of its own (five to fifteen per connection).
_KNOWN_NAMES: Final = {
    name: name
    for name in (
        b"host",
        b"upgrade",
        b"connection",
        b"sec-websocket-key",
        b"sec-websocket-version",
        b"sec-websocket-protocol",
        b"sec-websocket-extensions",
        b"origin",
        b"user-agent",
        b"pragma",
        b"cache-control",
        b"accept",
        b"accept-encoding",
        b"accept-language",
        b"authorization",
        b"cookie",
        b"sec-fetch-dest",
        b"sec-fetch-mode",
        b"sec-fetch-site",
        b"forwarded",
        b"x-forwarded-for",
        b"x-forwarded-proto",
        b"x-forwarded-host",
        b"x-real-ip",
    )
}


class BadUpgrade(Exception):
    """The client's upgrade request breaks RFC 6455 4.2.1: answer ``status``
    (with ``headers``), ``reason`` as the body."""

    def __init__(self, status: int, reason: str, headers: list[tuple[bytes, bytes]]) -> None:
        super().__init__(status, reason)
        self.status = status
        self.reason = reason
        self.headers = headers


class Upgrade:
    """A valid upgrade request: what its answer needs."""

    __slots__ = ("key", "subprotocols")

    def __init__(self, key: bytes, subprotocols: list[str]) -> None:
        #: ``Sec-WebSocket-Key`` (several are joined with ``", "``, as wsproto does).
        self.key = key
        #: ``Sec-WebSocket-Protocol``'s tokens, in order (none is ever chosen).
        self.subprotocols = subprotocols


class UpgradeHead:
    """A valid upgrade request read by :func:`read_upgrade`: what h11 would have
    made of it, and the bytes that followed its head."""

    __slots__ = ("headers", "rest", "target", "upgrade")

    def __init__(
        self, target: bytes, headers: list[tuple[bytes, bytes]], upgrade: Upgrade, rest: bytes
    ) -> None:
        #: The request target (path and query), as sent.
        self.target = target
        #: The headers in order, names lower-cased, values without surrounding blanks.
        self.headers = headers
        self.upgrade = upgrade
        #: What the client sent after the head (its first frames, if it did not wait).
        self.rest = rest


def read_upgrade(data: bytes, max_head_bytes: int) -> UpgradeHead | None:
    """The valid WebSocket upgrade whose whole head starts ``data``, read as h11
    reads it; ``None`` for anything else (then h11 reads ``data``).

    Only a plain head qualifies: ``GET target HTTP/1.1``, every line ending in
    CRLF and matching h11's header grammar (no folded lines, no bare LF), one
    ``Host``, no ``Content-Length`` or ``Transfer-Encoding``, at most
    ``max_head_bytes``, and an upgrade :func:`upgrade_of` accepts.
    """
    end = data.find(b"\r\n\r\n")
    if end < 0 or end + 4 > max_head_bytes:
        return None
    lines = data[:end].split(b"\r\n")
    if end + 4 + len(lines) > max_head_bytes:
        return None  # near the cap: h11's path measures a head a little differently
    request = _REQUEST_LINE.fullmatch(lines[0])
    if request is None:
        return None
    headers = []
    hosts = 0
    for line in lines[1:]:
        field = _HEADER_LINE.fullmatch(line)
        if field is None:
            return None
        name = field[1].lower()
        name = _KNOWN_NAMES.get(name, name)
        if name == b"host":
            hosts += 1
        elif name in _BODY_HEADERS:
            return None
        headers.append((name, field[2]))
    if hosts != 1:
        return None  # h11's refusal (none in HTTP/1.1, or several), said by h11
    try:
        upgrade = upgrade_of(b"GET", headers)
    except BadUpgrade:
        return None  # refused by the slow path, with h11 writing the answer
    if upgrade is None:
        return None
    return UpgradeHead(request[1], headers, upgrade, data[end + 4 :])


def upgrade_of(method: bytes, headers: Iterable[tuple[bytes, bytes]]) -> Upgrade | None:
    """The upgrade a request asks for, or ``None`` if it is no WebSocket upgrade
    (then it is an ordinary HTTP request); :class:`BadUpgrade` if it is an invalid one.

    ``headers`` as h11 parsed them: names lower-cased, values validated. Where a
    header comes more than once, the last one counts (``Sec-WebSocket-Key``: all
    of them, joined), as in wsproto.
    """
    upgrade = connection = version = None
    keys: list[bytes] = []
    protocols: list[bytes] = []
    host = False
    for name, value in headers:
        if name == b"upgrade":
            upgrade = value
        elif name == b"connection":
            connection = value
        elif name == b"sec-websocket-key":
            keys.append(value)
        elif name == b"sec-websocket-version":
            version = value
        elif name == b"host":
            host = True
        elif name == b"sec-websocket-protocol":
            protocols.append(value)
    if (
        method != b"GET"
        or upgrade is None
        or upgrade.lower() != b"websocket"
        or connection is None
        or b"upgrade" not in connection.lower()
    ):
        return None
    if not host:
        # Only an HTTP/1.0 request gets here without a Host (h11 refuses a 1.1 one).
        raise BadUpgrade(400, "invalid upgrade request: Missing mandatory Host: header", [])
    if not any(token.strip().lower() == b"upgrade" for token in connection.split(b",")):
        raise BadUpgrade(400, "Missing header, 'Connection: Upgrade'", [])
    if version != WEBSOCKET_VERSION:
        raise BadUpgrade(
            426 if version else 400,
            "Missing header, 'Sec-WebSocket-Version'",
            [(b"Sec-WebSocket-Version", WEBSOCKET_VERSION)],
        )
    if not keys:
        raise BadUpgrade(400, "Missing header, 'Sec-WebSocket-Key'", [])
    subprotocols = [
        token.strip().decode("latin-1") for value in protocols for token in value.split(b",")
    ]
    return Upgrade(keys[0] if len(keys) == 1 else b", ".join(keys), subprotocols)


def accept_response(key: bytes) -> bytes:
    """The 101 that completes the handshake of the request with ``key``."""
    token = base64.b64encode(hashlib.sha1(key + _ACCEPT_GUID).digest())
    return _ACCEPT_HEAD + token + b"\r\n\r\n"


def reject_response(status: int, headers: Sequence[tuple[bytes, bytes]], body: bytes) -> bytes:
    """An HTTP/1.1 response refusing the upgrade: ``status`` (no reason phrase,
    as h11 writes it), ``headers``, a ``Content-Length`` and ``Connection:
    close`` (the connection ends after it), then ``body``. :class:`ValueError`
    for a header that would break the head (CR, LF or NUL in it)."""
    if not 200 <= status <= 999:
        raise ValueError(f"not an HTTP status: {status}")
    lines = [b"HTTP/1.1 %d \r\n" % status]
    for name, value in headers:
        if any(c in name or c in value for c in _LINE_BREAKERS) or b":" in name or not name:
            raise ValueError(f"invalid header: {name!r}")
        lines.append(name + b": " + value + b"\r\n")
    lines.append(b"content-length: %d\r\nconnection: close\r\n\r\n" % len(body))
    return b"".join(lines) + body
