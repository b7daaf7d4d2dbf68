"""HTTP/1.1 for drifttrio's own transport: h11 reads the requests of one
connection, runs the app for each (as ASGI), and hands a WebSocket upgrade over
as a :class:`~drifttrio.web.websocket.WebSocket` (handshake checked by
:mod:`~drifttrio.web.handshake`, not yet answered), which the app then admits
and runs as a :class:`~drifttrio.web.peer.Peer`.

Deadlines: the request head must arrive within ``handshake_timeout`` (slowloris)
and the whole request within ``request_timeout`` (a trickled body); an idle
keep-alive connection is closed after ``keepalive_timeout``; heads are capped at
``max_header_bytes``. By the RFCs: ``HEAD`` runs the app as ``GET`` and sends no
body; a request with both ``Content-Length`` and ``Transfer-Encoding`` gets 400
and the connection is closed (RFC 9112 6.1); a bad upgrade gets 400 (or 426 with
``Sec-WebSocket-Version: 13``). A client's mistake gets a 4xx and at most one
rate-limited log line, never a traceback.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping, MutableMapping
from types import MappingProxyType
from typing import Any, Final, Protocol
from urllib.parse import unquote

import h11
import trio

from .._errors import DriftError
from ..runtime.config import Config
from .handshake import BadUpgrade, Upgrade, read_upgrade, upgrade_of
from .peer import Peer
from .websocket import WebSocket
from .wire import Wire, WireClosed, client_errors

__all__ = ["BUSY_HEAD_SECONDS", "App", "Handoff", "serve_http"]


class App(Protocol):
    """What drifttrio's transport serves: HTTP requests as ASGI, WebSockets as peers."""

    async def __call__(
        self,
        scope: MutableMapping[str, Any],
        receive: Callable[[], Awaitable[Any]],
        send: Callable[[Any], Awaitable[None]],
        /,
    ) -> None:
        """Answer one HTTP request (an ASGI ``http`` scope)."""

    async def websocket(self, peer: Peer, /) -> None:
        """Admit (accept or reject) a WebSocket upgrade and run it until it ends."""


class Handoff(Protocol):
    """Where requests for another process's rooms go (``drifttrio serve --workers``:
    :class:`drifttrio.workers.Shard`)."""

    def owner(self, target: bytes, /) -> int | None:
        """The worker that must serve a request for ``target``, if not this one."""

    async def hand_off(self, worker: int, sock: trio.socket.SocketType, data: bytes, /) -> None:
        """Give the connection to ``worker`` with the bytes read so far (none of them
        answered); raise :class:`~drifttrio.DriftError` if it cannot take it now."""


#: Over an HTTP cap, a connection's request head must arrive within this long:
#: enough to answer ``/healthz`` or say 503, no more.
BUSY_HEAD_SECONDS: Final = 1.0
#: The ``extensions`` of every WebSocket scope: one, read-only, rather than two
#: dicts per connection (they live as long as the connection).
_WEBSOCKET_EXTENSIONS: Final[Mapping[str, Mapping[str, object]]] = MappingProxyType(
    {"websocket.http.response": MappingProxyType({})}
)
#: Paths answered even over the HTTP caps: the orchestrator must see the truth.
_HEALTH_PATHS: Final = frozenset({"/healthz", "/readyz"})


async def serve_http(
    app: App,
    config: Config,
    wire: Wire,
    base: dict[str, Any],
    scheme: str,
    *,
    busy: bool,
    handoff: Handoff | None = None,
    first: bytes = b"",
) -> WebSocket | None:
    """Serve requests until the connection ends (``None``) or is upgraded: then
    return its WebSocket (with its scope), handshake not yet answered.

    The common first request, a valid upgrade whose head arrives in one read, is
    read by :func:`~drifttrio.web.handshake.read_upgrade` without h11; h11 reads
    any other (:func:`_serve_h11`), from the same bytes.

    ``handoff``: a request naming a room another worker owns moves the connection
    there (``None`` is returned: it is no longer this process's); ``first``: the
    bytes another worker read before handing the connection here."""
    start = trio.current_time()
    data = first
    if not data:
        # (A CancelScope rather than move_on_at: no generator around it, on every connection.)
        with trio.CancelScope(deadline=start + _head_seconds(config, busy)):
            data = await wire.receive()
    if not data:
        return None  # gone, or silent past the head's deadline: closed without a word
    if not busy:
        head = read_upgrade(data, config.max_header_bytes)
        if head is not None:
            if handoff is not None:
                owner = handoff.owner(head.target)
                if owner is not None:
                    await _hand_off(handoff, owner, wire, data, base["client"])
                    return None
            return _websocket(
                config, wire, head.target, head.headers, head.upgrade, head.rest, base, scheme
            )
    return await _serve_h11(
        app, config, wire, base, scheme, data, start, busy=busy, handoff=handoff
    )


async def _hand_off(
    handoff: Handoff, worker: int, wire: Wire, data: bytes, client: tuple[str, int] | None
) -> None:
    """Move the connection to ``worker`` (the caller then closes this process's
    descriptor only); if it cannot take it now, 503 and close."""
    sock = wire.socket
    if sock is not None:
        try:
            await handoff.hand_off(worker, sock, data)
            return
        except DriftError as exc:
            # The why is the operator's (a restart, a drain), not the client's.
            client_errors.log(
                logging.WARNING,
                "handoff",
                f"could not hand a connection to worker {worker}: {exc}",
                worker=worker,
            )
        reason = "this room's worker is restarting; try again"
    else:
        reason = "this room's worker cannot be reached over this connection"
    conn = h11.Connection(h11.SERVER)
    conn.receive_data(data)
    conn.next_event()
    await _refuse(conn, wire, client, 503, reason, [(b"retry-after", b"1")])


async def _serve_h11(
    app: App,
    config: Config,
    wire: Wire,
    base: dict[str, Any],
    scheme: str,
    data: bytes,
    start: float,
    *,
    busy: bool,
    handoff: Handoff | None = None,
) -> WebSocket | None:
    """:func:`serve_http` by h11, from the connection's first bytes (``data``, the
    first request's, whose deadlines count from ``start``)."""
    conn = h11.Connection(h11.SERVER, max_incomplete_event_size=config.max_header_bytes)
    conn.receive_data(data)
    client = base["client"]
    head_seconds = _head_seconds(config, busy)
    try:
        while True:
            with trio.move_on_at(start + head_seconds) as head_timer:
                event = await _next_event(conn, wire)
            if head_timer.cancelled_caught:
                if conn.their_state is h11.SEND_BODY or _has_partial_request(conn):
                    await _refuse(conn, wire, client, 408, "request head took too long")
                return None
            if not isinstance(event, h11.Request):
                return None  # ConnectionClosed, or a stray event
            refusal = _refusal(event, config)
            if refusal is not None:
                await _refuse(conn, wire, client, *refusal)
                return None
            if busy and _target(event.target)[0] not in _HEALTH_PATHS:
                await _refuse(
                    conn,
                    wire,
                    client,
                    503,
                    "too many connections; try again later",
                    [(b"retry-after", b"1")],
                )
                return None
            if handoff is not None and not busy:
                owner = handoff.owner(event.target)
                if owner is not None:
                    # The request again as sent (h11 keeps its parts), and whatever
                    # came behind it: its body, the next requests.
                    await _hand_off(
                        handoff, owner, wire, _head_bytes(event) + conn.trailing_data[0], client
                    )
                    return None
            if not busy:
                try:
                    upgrade = upgrade_of(event.method, event.headers)
                except BadUpgrade as exc:
                    await _refuse(conn, wire, client, exc.status, exc.reason, exc.headers)
                    return None
                if upgrade is not None:
                    # Frames a client sent right behind its request are read once
                    # it is accepted.
                    rest = bytes(conn.trailing_data[0])
                    headers = list(event.headers)  # h11 lower-cases the names
                    return _websocket(
                        config, wire, event.target, headers, upgrade, rest, base, scheme
                    )
            deadline = start + config.request_timeout
            request_base = {**base, "scheme": scheme}
            await _http(app, config, conn, wire, event, request_base, deadline, close=busy)
            if conn.their_state is h11.SEND_BODY and conn.our_state is h11.DONE:
                await _discard_body(conn, wire, config, deadline)
            if conn.our_state is not h11.DONE or conn.their_state is not h11.DONE:
                return None
            conn.start_next_cycle()
            if not conn.trailing_data[0]:
                # Idle between two requests: the next one must start soon.
                with trio.move_on_after(config.keepalive_timeout) as idle:
                    conn.receive_data(await wire.receive())
                if idle.cancelled_caught:
                    return None
            start = trio.current_time()
    except h11.RemoteProtocolError as exc:
        if conn.our_state in (h11.IDLE, h11.SEND_RESPONSE):
            await _refuse(conn, wire, client, exc.error_status_hint, str(exc))
        return None


def _head_seconds(config: Config, busy: bool) -> float:
    """How long a request head may take to arrive (in full)."""
    seconds = min(config.handshake_timeout, config.request_timeout)
    return min(seconds, BUSY_HEAD_SECONDS) if busy else seconds


def _refusal(request: h11.Request, config: Config) -> tuple[int, str] | None:
    """Why a request head is refused before anything else looks at it, if it is."""
    if _head_size(request) > config.max_header_bytes:
        # h11 bounds only a head that arrives in pieces; this bounds them all.
        return 431, "request head too large"
    names = {name for name, _ in request.headers}
    if b"content-length" in names and b"transfer-encoding" in names:
        # RFC 9112 6.1: the body's end is ambiguous (request smuggling); whatever
        # follows cannot be trusted to be a request, so the connection is closed.
        return 400, "both Content-Length and Transfer-Encoding"
    return None


async def _refuse(
    conn: h11.Connection,
    wire: Wire,
    client: tuple[str, int] | None,
    status: int,
    reason: str,
    headers: list[tuple[bytes, bytes]] | None = None,
) -> None:
    """Answer a client's mistake (or a cap) with ``status`` and close: one log
    line at most, rate-limited, never a traceback."""
    client_errors.log(
        logging.INFO,
        f"http {status}",
        f"refused a request: {status} {reason}",
        status=status,
        client=client[0] if client else "unknown",
    )
    await _plain_response(conn, wire, status, reason.encode(), headers or [])


def _head_bytes(request: h11.Request) -> bytes:
    """A request head as bytes again (names lower-cased, as h11 keeps them)."""
    lines = [b"%s %s HTTP/%s" % (request.method, request.target, request.http_version)]
    lines += [name + b": " + value for name, value in request.headers]
    return b"\r\n".join(lines) + b"\r\n\r\n"


def _head_size(request: h11.Request) -> int:
    """The request head's size on the wire (near enough: line and header separators)."""
    size = len(request.method) + len(request.target) + 12
    return size + sum(len(name) + len(value) + 4 for name, value in request.headers)


async def _discard_body(conn: h11.Connection, wire: Wire, config: Config, deadline: float) -> None:
    """Read what is left of a request body the app did not read (a GET's empty
    one, say), so the connection can serve the next request: at most
    ``max_message_bytes`` within the request's deadline, else it is closed."""
    left = config.max_message_bytes
    with trio.move_on_at(deadline):
        while conn.their_state is h11.SEND_BODY and left >= 0:
            event = await _next_event(conn, wire)
            if isinstance(event, h11.Data):
                left -= len(event.data)
            elif not isinstance(event, h11.EndOfMessage):
                return


def _request_complete(conn: h11.Connection) -> bool:
    """Whether the request has been received whole, consuming what is already
    buffered of a body the app did not read (a GET's empty one, say)."""
    while conn.their_state is h11.SEND_BODY:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            return False
    return True


def _has_partial_request(conn: h11.Connection) -> bool:
    return bool(conn.trailing_data[0]) or conn.their_state is not h11.IDLE


async def _next_event(conn: h11.Connection, wire: Wire) -> Any:
    while True:
        event = conn.next_event()
        if event is not h11.NEED_DATA:
            return event
        conn.receive_data(await wire.receive())


async def _plain_response(
    conn: h11.Connection,
    wire: Wire,
    status: int,
    body: bytes,
    headers: list[tuple[bytes, bytes]] | None = None,
) -> None:
    wire.cut_short = True
    try:
        data = conn.send(
            h11.Response(
                status_code=status,
                headers=[
                    (b"content-type", b"text/plain"),
                    (b"content-length", str(len(body)).encode()),
                    (b"connection", b"close"),
                    *(headers or ()),
                ],
            )
        )
        data = (data or b"") + (conn.send(h11.Data(data=body)) or b"")
        data += conn.send(h11.EndOfMessage()) or b""
        await wire.send(data)
    except (h11.LocalProtocolError, WireClosed):
        pass


def _target(target: bytes) -> tuple[str, bytes, bytes]:
    """A request target's path (percent-decoded), raw path and query."""
    raw_path, _, query = target.partition(b"?")
    return unquote(raw_path.decode("latin-1")), raw_path, query


async def _http(
    app: App,
    config: Config,
    conn: h11.Connection,
    wire: Wire,
    request: h11.Request,
    base: dict[str, Any],
    deadline: float,
    *,
    close: bool = False,
) -> None:
    """Run the app for one request. Its body must arrive by ``deadline`` (408
    otherwise). ``HEAD`` runs the app as ``GET`` and drops the body: the same
    headers, as RFC 9110 9.3.2 asks. ``close``: end the connection after it."""
    path, raw_path, query = _target(request.target)
    head = request.method == b"HEAD"
    scope = {
        **base,
        "type": "http",
        "method": "GET" if head else request.method.decode("ascii"),
        "path": path,
        "raw_path": raw_path,
        "query_string": query,
        "headers": list(request.headers),  # h11 lower-cases the names
    }
    exchange = _Exchange(conn, wire, deadline, head=head, close=close)
    try:
        await app(scope, exchange.receive, exchange.send)
    except trio.TooSlowError:
        if not exchange.response_started:
            await _refuse(conn, wire, base["client"], 408, "request took too long")
        raise WireClosed from None
    except h11.RemoteProtocolError as exc:  # a broken body (bad chunk framing)
        if not exchange.response_started:
            await _refuse(conn, wire, base["client"], exc.error_status_hint, str(exc))
        raise WireClosed from None
    if not exchange.response_started:
        await _plain_response(conn, wire, 500, b"internal error")


class _Exchange:
    """ASGI ``receive`` / ``send`` for one plain HTTP request and its response."""

    __slots__ = ("body_done", "close", "conn", "deadline", "head", "response_started", "wire")

    def __init__(
        self, conn: h11.Connection, wire: Wire, deadline: float, *, head: bool, close: bool
    ) -> None:
        self.conn = conn
        self.wire = wire
        self.deadline = deadline
        #: A HEAD request: the response's body is dropped.
        self.head = head
        #: End the connection after the response.
        self.close = close
        self.body_done = False
        self.response_started = False

    async def receive(self) -> dict[str, Any]:
        if self.body_done:
            await trio.sleep_forever()
        with trio.fail_at(self.deadline):
            event = await _next_event(self.conn, self.wire)
        if isinstance(event, h11.Data):
            return {"type": "http.request", "body": bytes(event.data), "more_body": True}
        self.body_done = True
        if isinstance(event, h11.EndOfMessage):
            return {"type": "http.request", "body": b"", "more_body": False}
        return {"type": "http.disconnect"}

    async def send(self, message: MutableMapping[str, Any]) -> None:
        conn = self.conn
        kind = message["type"]
        if kind == "http.response.start":
            self.response_started = True
            headers = list(message.get("headers") or [])
            if self.close or not _request_complete(conn):
                # The rest of the body (a 413's, say) will not be read: say so, and
                # close after the response instead of leaving the client to reuse
                # a connection the server is about to drop.
                headers.append((b"connection", b"close"))
                self.wire.cut_short = True
            await self.wire.send(
                conn.send(h11.Response(status_code=message["status"], headers=headers)) or b""
            )
        elif kind == "http.response.body":
            data = b""
            if not self.head:
                data = conn.send(h11.Data(data=message.get("body", b""))) or b""
            if not message.get("more_body", False):
                data += conn.send(h11.EndOfMessage()) or b""
            if data:
                await self.wire.send(data)


def _websocket(
    config: Config,
    wire: Wire,
    target: bytes,
    headers: list[tuple[bytes, bytes]],
    upgrade: Upgrade,
    rest: bytes,
    base: dict[str, Any],
    scheme: str,
) -> WebSocket:
    """The WebSocket of a valid upgrade (``headers`` with lower-cased names;
    ``rest``, the bytes after its head: frames a client sent right behind its
    request, read once it is accepted), with its scope, handshake not yet answered."""
    path, raw_path, query = _target(target)
    scope = {
        **base,
        "scheme": "ws" if scheme == "http" else "wss",
        "type": "websocket",
        "path": path,
        "raw_path": raw_path,
        "query_string": query,
        "headers": headers,
        "subprotocols": upgrade.subprotocols,
        "extensions": _WEBSOCKET_EXTENSIONS,
    }
    return WebSocket(scope, upgrade.key, wire, config, rest)
