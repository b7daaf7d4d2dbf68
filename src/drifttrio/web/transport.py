"""drifttrio's own HTTP/WebSocket transport: h11, wsproto for the handshake and
:mod:`drifttrio.web.frames` for the client's frames, on trio streams.

It speaks ASGI to :class:`~drifttrio.web.app.DriftApp`, so routes, limits and
sessions live in one place, and adds what a generic ASGI server cannot:

- **frames built once**: the app's connections hold complete, unmasked
  WebSocket frames (the same bytes for every member), and the app hands a
  connection's queued frames over in one ``drifttrio.websocket.send_frames``
  event, written with one ``send_all``;
- **deadlines**: the request head must arrive within ``handshake_timeout``
  (slowloris) and the whole request within ``request_timeout`` (a trickled
  body), an idle keep-alive connection is closed after ``keepalive_timeout``,
  headers are capped at ``max_header_bytes``, and every write has
  ``write_timeout``: a client that stops reading is cut off, never waited for;
- **caps**: connections still in the HTTP phase are capped in total and per
  client address (``max_http_connections*``; once upgraded, the app's
  WebSocket caps count them); beyond a cap a short 503, but ``/healthz`` and
  ``/readyz`` are still answered. Accept failures for lack of descriptors
  (EMFILE) pause accepting, with one log line per episode;
- **liveness**: silent WebSockets are pinged by one shared timer
  (:mod:`drifttrio.web.liveness`) and closed with 4001 if they stay silent;
  accepted sockets get TCP keepalive;
- **control frames** never stall the reader: pings are answered by a separate
  task (a flood gets one pong for the latest ping); pings and pongs are charged
  to a per-connection token bucket (the message rate limit's numbers) and to the
  client address's :class:`~drifttrio.web.limits.ClientBudgets`: over it they
  are dropped, and 100 refused in a row close the connection with 4029;
  compression is never negotiated; a message, fragmented or not, is closed with
  1009 as soon as it exceeds ``max_message_bytes`` (each non-final fragment
  counts at least ``FRAGMENT_COST`` bytes, so floods of empty continuation
  frames end too), and broken frames (unmasked, invalid UTF-8, fragmented
  control frames, bad opcodes) are closed with their RFC 6455 code;
- **HTTP by the RFCs**: ``HEAD`` runs the app as ``GET`` and sends no body; a
  request with both ``Content-Length`` and ``Transfer-Encoding`` gets 400 and
  the connection is closed (RFC 9112 6.1); a bad upgrade gets 400 (or 426 with
  ``Sec-WebSocket-Version: 13``). Whatever a client sends, it gets a 4xx or a
  close code, and at most one rate-limited log line, never a traceback.

:func:`serve_stream` serves one already-connected stream (a socket, TLS, or a
``trio.testing`` memory stream), :func:`serve_tcp` listens, over TLS when
given an SSL context (the handshake inside the head's deadline).
"""

from __future__ import annotations

import errno
import logging
import os
import socket
import ssl
from collections.abc import Awaitable, Callable, MutableMapping
from functools import partial
from typing import Any, Final
from urllib.parse import unquote

import h11
import trio
import wsproto.utilities
from wsproto import ConnectionType, WSConnection
from wsproto.events import AcceptConnection, RejectConnection, RejectData, Request
from wsproto.utilities import LocalProtocolError

from .._errors import CloseCode
from .._logging import ThrottledLog
from ..runtime.config import Config
from .frames import Close, FrameError, FrameReader, Ping, close_frame, ping_frame, pong_frame
from .limits import ClientBudgets, TokenBucket
from .liveness import Liveness
from .proxy import TrustedProxies

__all__ = [
    "FRAGMENT_COST",
    "FRAMES_EXTENSION",
    "HttpConnections",
    "accept_connections",
    "serve_stream",
    "serve_tcp",
]

log = logging.getLogger("drifttrio.transport")
#: Client-caused refusals (400, 408, 426, 431, 503): one line each, rate-limited.
client_errors = ThrottledLog(log)

#: ASGI scope extension: the server accepts ``drifttrio.websocket.send_frames``
#: events carrying pre-built frames, and the app should build frames itself.
FRAMES_EXTENSION = "drifttrio.frames"

_RECEIVE_SIZE = 65536

#: Bytes each non-final fragment of a message counts towards ``max_message_bytes``
#: at least: a flood of empty continuation frames is closed with 1009 too.
FRAGMENT_COST = 64

#: Before closing a connection, read and discard the peer's data for at most this
#: long (and this much), so our last words are not lost to a TCP reset.
_LINGER_SECONDS = 1.0
_LINGER_BYTES = 4 * 1024 * 1024

#: Over an HTTP cap, a connection's request head must arrive within this long
#: (and at most this many such connections are answered at once; beyond, they
#: are closed unanswered): enough to answer ``/healthz`` or say 503, no more.
BUSY_HEAD_SECONDS: Final = 1.0
BUSY_CONNECTIONS: Final = 32
#: Paths answered even over the HTTP caps: the orchestrator must see the truth.
_HEALTH_PATHS: Final = frozenset({"/healthz", "/readyz"})
#: Control frames refused in a row before the connection is closed with 4029.
_MAX_REFUSED_IN_A_ROW: Final = 100
#: TCP keepalive on accepted sockets: probe after 60 s of silence, every 15 s,
#: give up after 4 probes (a vanished peer is found within 2 minutes, even with
#: server pings off).
_TCP_KEEPALIVE: Final = (("TCP_KEEPIDLE", 60), ("TCP_KEEPINTVL", 15), ("TCP_KEEPCNT", 4))
#: accept() errors meaning "no descriptors or memory right now": wait, retry.
_CAPACITY_ERRNOS: Final = frozenset((errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS))
_ACCEPT_RETRY_SECONDS: Final = 0.1

App = Callable[
    [MutableMapping[str, Any], Callable[[], Awaitable[Any]], Callable[[Any], Awaitable[None]]],
    Awaitable[None],
]


class _Closed(Exception):
    """The peer is gone or was cut off."""


def _write_now(sock: trio.socket.SocketType, data: bytes | memoryview) -> memoryview:
    """Write what the socket takes without waiting; return what is left."""
    view = memoryview(data)
    while view:
        try:
            # fileno() is -1 once another task closed the stream: EBADF below.
            sent = os.write(sock.fileno(), view)
        except BlockingIOError:
            break
        except OSError as exc:
            raise trio.BrokenResourceError(f"socket connection broken: {exc}") from None
        view = view[sent:]
    return view


class _Wire:
    """One stream with a send lock and a write deadline."""

    __slots__ = ("_socket", "closed", "cut_short", "lock", "stream", "write_timeout")

    def __init__(self, stream: trio.abc.Stream, write_timeout: float) -> None:
        self.stream = stream
        self.write_timeout = write_timeout
        self.lock = trio.StrictFIFOLock()
        self.closed = False
        #: We end the conversation while the peer may still be sending: linger.
        self.cut_short = False
        #: A plain TCP socket on POSIX: read and written directly (see :meth:`receive`).
        self._socket = (
            stream.socket if isinstance(stream, trio.SocketStream) and os.name == "posix" else None
        )

    async def send(self, data: bytes) -> None:
        if self.closed:
            raise _Closed
        lock = self.lock
        try:
            lock.acquire_nowait()  # the usual case: nobody else is writing
        except trio.WouldBlock:
            await lock.acquire()
        try:
            rest: bytes | memoryview = data
            if self._socket is not None:
                # The usual case: the socket takes it all at once, with no waiting,
                # so there is nothing to cancel and no deadline to set.
                rest = _write_now(self._socket, data)
                if not rest:
                    await trio.lowlevel.cancel_shielded_checkpoint()
                    return
            # A write interrupted half-way would corrupt the framing, so writes are
            # never cancelled from outside: each one ends by itself, within
            # write_timeout, or the connection is cut off.
            deadline = trio.current_time() + self.write_timeout
            with trio.CancelScope(shield=True, deadline=deadline) as scope:
                if self._socket is not None:
                    await self._write_socket(self._socket, rest)
                else:
                    await self.stream.send_all(rest)
            if scope.cancelled_caught:
                log.debug("write deadline passed: cutting the connection off")
                await self.abort()
                raise _Closed
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            self.closed = True
            raise _Closed from None
        finally:
            lock.release()

    async def _write_socket(self, sock: trio.socket.SocketType, data: bytes | memoryview) -> None:
        """``SocketStream.send_all`` for a TCP socket, with fewer calls (the lock
        above already keeps writes from interleaving). A checkpoint."""
        while data:
            await trio.lowlevel.wait_writable(sock)
            data = _write_now(sock, data)
        await trio.lowlevel.cancel_shielded_checkpoint()

    async def receive(self) -> bytes:
        """Bytes from the peer; ``b""`` once it is gone (or the stream was closed).

        A TCP socket is read as ``SocketStream.receive_some`` would, minus five
        frames: an idle connection waits in ``wait_readable`` directly, which keeps
        about 2 KiB less alive per connection, and a busy one reads with fewer
        calls. It checkpoints as trio's own socket calls do.
        """
        if self.closed:
            return b""
        sock = self._socket
        if sock is None:
            try:
                return bytes(await self.stream.receive_some(_RECEIVE_SIZE))
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                self.closed = True
                return b""
        await trio.lowlevel.checkpoint_if_cancelled()
        while True:
            try:
                # fileno() is -1 once another task closed the stream: EBADF below.
                data = os.read(sock.fileno(), _RECEIVE_SIZE)
            except BlockingIOError:
                data = None  # wait outside the except block: no exception kept alive
            except OSError:
                self.closed = True
                return b""
            if data is not None:
                await trio.lowlevel.cancel_shielded_checkpoint()
                return data  # b"": the peer finished sending
            try:
                await trio.lowlevel.wait_readable(sock)
            except trio.ClosedResourceError:
                self.closed = True
                return b""

    async def abort(self) -> None:
        self.closed = True
        await trio.aclose_forcefully(self.stream)

    async def linger(self) -> None:
        """Before closing: stop sending, then read and discard what the peer still
        sends (bounded), so what we sent last is not lost to a TCP reset caused by
        unread data (a 413 before the body, a close frame after a protocol error)."""
        if self.closed or not self.cut_short:
            return
        with trio.move_on_after(min(_LINGER_SECONDS, self.write_timeout)):
            if isinstance(self.stream, trio.abc.HalfCloseableStream):
                try:
                    async with self.lock:
                        await self.stream.send_eof()
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    return
            discarded = 0
            while discarded < _LINGER_BYTES:
                data = await self.receive()
                if not data:
                    break
                discarded += len(data)


async def serve_stream(
    app: App,
    config: Config,
    stream: trio.abc.Stream,
    *,
    client: tuple[str, int] | None = None,
    server: tuple[str, int] | None = None,
    scheme: str = "http",
    root_path: str = "",
    nursery: trio.Nursery | None = None,
    budgets: ClientBudgets | None = None,
    liveness: Liveness | None = None,
    busy: bool = False,
    release_http_slot: Callable[[], None] | None = None,
) -> None:
    """Serve HTTP/1.1 requests and WebSocket upgrades on one connection.

    A WebSocket's pong task (started at its first ping, ended with the connection)
    runs in ``nursery``, by default one of this call's own. :func:`serve_tcp`
    passes its handler nursery: an idle connection then costs no nursery.

    ``budgets`` is charged for the client's control frames; ``liveness`` (the
    transport's one ping timer, see :func:`serve_tcp`) pings the WebSocket when
    it is silent; without it, nothing does. ``busy``: the
    connection is over an HTTP cap, so only ``/healthz`` and ``/readyz`` are
    served, anything else gets 503.
    ``release_http_slot`` is called once, when the connection leaves the HTTP
    phase (upgraded, or ended).
    """
    wire = _Wire(stream, config.write_timeout)
    try:
        # Only the scope is kept of the base, and nothing of the HTTP state (h11,
        # the request) once upgraded: an idle WebSocket keeps its scope and session.
        base = {
            "asgi": {"version": "3.0", "spec_version": "2.3"},
            "http_version": "1.1",
            "client": client,
            "server": server,
            "root_path": root_path,
        }
        try:
            session = await _serve_http(app, config, wire, base, scheme, busy=busy)
        finally:
            if release_http_slot is not None:
                release_http_slot()
                release_http_slot = None
        del base
        if session is not None:
            session.budgets = budgets
            if nursery is None:
                async with trio.open_nursery() as own:
                    session.nursery = own
                    session.liveness = liveness
                    try:
                        await app(session.scope, session.receive, session.send)
                    finally:
                        session.end()
                    own.cancel_scope.cancel()
            else:
                session.nursery = nursery
                session.liveness = liveness
                try:
                    await app(session.scope, session.receive, session.send)
                finally:
                    session.end()
    except _Closed:
        pass
    finally:
        with trio.CancelScope(shield=True):
            await wire.linger()
            await wire.abort()


async def _serve_http(
    app: App, config: Config, wire: _Wire, base: dict[str, Any], scheme: str, *, busy: bool
) -> _AsgiWebSocket | None:
    """Serve requests until the connection ends (``None``) or is upgraded: then
    return the WebSocket's session (with its scope), handshake not yet answered."""
    conn = h11.Connection(h11.SERVER, max_incomplete_event_size=config.max_header_bytes)
    client = base["client"]
    head_seconds = min(config.handshake_timeout, config.request_timeout)
    if busy:
        head_seconds = min(head_seconds, BUSY_HEAD_SECONDS)
    first = True
    try:
        while True:
            if not first and not conn.trailing_data[0]:
                # Idle between two requests: the next one must start soon.
                with trio.move_on_after(config.keepalive_timeout) as idle:
                    conn.receive_data(await wire.receive())
                if idle.cancelled_caught:
                    return None
            first = False
            start = trio.current_time()
            with trio.move_on_at(start + head_seconds) as head_deadline:
                event = await _next_event(conn, wire)
            if head_deadline.cancelled_caught:
                if conn.their_state is h11.SEND_BODY or _has_partial_request(conn):
                    await _refuse(conn, wire, client, 408, "request head took too long")
                return None
            if not isinstance(event, h11.Request):
                return None  # ConnectionClosed, or a stray event
            refusal = _refusal(event, config)
            if refusal is not None:
                await _refuse(conn, wire, client, *refusal)
                return None
            if busy and _target(event)[0] not in _HEALTH_PATHS:
                await _refuse(
                    conn,
                    wire,
                    client,
                    503,
                    "too many connections; try again later",
                    [(b"retry-after", b"1")],
                )
                return None
            if _is_websocket_upgrade(event) and not busy:
                scope_base = {**base, "scheme": "ws" if scheme == "http" else "wss"}
                try:
                    return _upgrade(config, conn, wire, event, scope_base)
                except _BadUpgrade as exc:
                    await _refuse(conn, wire, client, exc.status, exc.reason, exc.headers)
                    return None
            deadline = start + config.request_timeout
            request_base = {**base, "scheme": scheme}
            await _http(app, config, conn, wire, event, request_base, deadline, close=busy)
            if conn.their_state is h11.SEND_BODY and conn.our_state is h11.DONE:
                await _discard_body(conn, wire, config, deadline)
            if conn.our_state is not h11.DONE or conn.their_state is not h11.DONE:
                return None
            conn.start_next_cycle()
    except h11.RemoteProtocolError as exc:
        if conn.our_state in (h11.IDLE, h11.SEND_RESPONSE):
            await _refuse(conn, wire, client, exc.error_status_hint, str(exc))
        return None


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
    wire: _Wire,
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


def _head_size(request: h11.Request) -> int:
    """The request head's size on the wire (near enough: line and header separators)."""
    size = len(request.method) + len(request.target) + 12
    return size + sum(len(name) + len(value) + 4 for name, value in request.headers)


async def _discard_body(conn: h11.Connection, wire: _Wire, config: Config, deadline: float) -> None:
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


async def _next_event(conn: h11.Connection, wire: _Wire) -> Any:
    while True:
        event = conn.next_event()
        if event is not h11.NEED_DATA:
            return event
        conn.receive_data(await wire.receive())


async def _plain_response(
    conn: h11.Connection,
    wire: _Wire,
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
    except (h11.LocalProtocolError, _Closed):
        pass


def _is_websocket_upgrade(event: h11.Request) -> bool:
    if event.method != b"GET":
        return False
    upgrade = connection = b""
    for name, value in event.headers:
        if name == b"upgrade":
            upgrade = value.lower()
        elif name == b"connection":
            connection = value.lower()
    return upgrade == b"websocket" and b"upgrade" in connection


def _target(event: h11.Request) -> tuple[str, bytes, bytes]:
    raw_path, _, query = event.target.partition(b"?")
    return unquote(raw_path.decode("latin-1")), raw_path, query


# -- plain HTTP ---------------------------------------------------------------------


async def _http(
    app: App,
    config: Config,
    conn: h11.Connection,
    wire: _Wire,
    request: h11.Request,
    base: dict[str, Any],
    deadline: float,
    *,
    close: bool = False,
) -> None:
    """Run the app for one request. Its body must arrive by ``deadline`` (408
    otherwise). ``HEAD`` runs the app as ``GET`` and drops the body: the same
    headers, as RFC 9110 9.3.2 asks. ``close``: end the connection after it."""
    path, raw_path, query = _target(request)
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
    body_done = False
    response_started = False

    async def receive() -> dict[str, Any]:
        nonlocal body_done
        if body_done:
            await trio.sleep_forever()
        with trio.fail_at(deadline):
            event = await _next_event(conn, wire)
        if isinstance(event, h11.Data):
            return {"type": "http.request", "body": bytes(event.data), "more_body": True}
        body_done = True
        if isinstance(event, h11.EndOfMessage):
            return {"type": "http.request", "body": b"", "more_body": False}
        return {"type": "http.disconnect"}

    async def send(message: MutableMapping[str, Any]) -> None:
        nonlocal response_started
        kind = message["type"]
        if kind == "http.response.start":
            response_started = True
            headers = list(message.get("headers") or [])
            if close or not _request_complete(conn):
                # The rest of the body (a 413's, say) will not be read: say so, and
                # close after the response instead of leaving the client to reuse
                # a connection the server is about to drop.
                headers.append((b"connection", b"close"))
                wire.cut_short = True
            await wire.send(
                conn.send(h11.Response(status_code=message["status"], headers=headers)) or b""
            )
        elif kind == "http.response.body":
            data = b""
            if not head:
                data = conn.send(h11.Data(data=message.get("body", b""))) or b""
            if not message.get("more_body", False):
                data += conn.send(h11.EndOfMessage()) or b""
            if data:
                await wire.send(data)

    try:
        await app(scope, receive, send)
    except trio.TooSlowError:
        if not response_started:
            await _refuse(conn, wire, base["client"], 408, "request took too long")
        raise _Closed from None
    except h11.RemoteProtocolError as exc:  # a broken body (bad chunk framing)
        if not response_started:
            await _refuse(conn, wire, base["client"], exc.error_status_hint, str(exc))
        raise _Closed from None
    if not response_started:
        await _plain_response(conn, wire, 500, b"internal error")


# -- WebSocket ----------------------------------------------------------------------


class _BadUpgrade(Exception):
    """The client's upgrade request breaks RFC 6455 4.2.1: answer ``status``."""

    def __init__(self, status: int, reason: str, headers: list[tuple[bytes, bytes]]) -> None:
        super().__init__(status, reason)
        self.status = status
        self.reason = reason
        self.headers = headers


def _upgrade(
    config: Config,
    conn: h11.Connection,
    wire: _Wire,
    request: h11.Request,
    base: dict[str, Any],
) -> _AsgiWebSocket:
    """The session of a WebSocket upgrade, with its scope (wsproto checks the
    request: :class:`_BadUpgrade` if it is not a valid one)."""
    ws = WSConnection(ConnectionType.SERVER)
    try:
        ws.initiate_upgrade_connection(list(request.headers), request.target)
    except wsproto.utilities.RemoteProtocolError as exc:
        # wsproto's hint: 400, or 426 with Sec-WebSocket-Version: 13 for a version
        # it does not speak.
        hint = exc.event_hint
        if isinstance(hint, RejectConnection):
            raise _BadUpgrade(hint.status_code, str(exc), list(hint.headers)) from None
        raise _BadUpgrade(400, str(exc), []) from None
    except (h11.LocalProtocolError, LocalProtocolError) as exc:  # an HTTP/1.0 upgrade, no Host
        raise _BadUpgrade(400, f"invalid upgrade request: {exc}", []) from None
    upgrade = next(iter(ws.events()))
    assert isinstance(upgrade, Request)
    path, raw_path, query = _target(request)
    scope = {
        **base,
        "type": "websocket",
        "path": path,
        "raw_path": raw_path,
        "query_string": query,
        "headers": list(request.headers),  # h11 lower-cases the names
        "subprotocols": list(upgrade.subprotocols),
        "extensions": {"websocket.http.response": {}, FRAMES_EXTENSION: {}},
    }
    # Frames a client sent right behind its request are read once it is accepted.
    leftover = bytes(conn.trailing_data[0])
    return _AsgiWebSocket(scope, ws, wire, config, leftover)


class _AsgiWebSocket:
    """ASGI ``receive`` / ``send`` for one WebSocket: wsproto answers the handshake,
    then :class:`~drifttrio.web.frames.FrameReader` reads the client's frames. (The
    member's session on top, reader and writer, is :class:`~drifttrio.web.session.Session`.)"""

    __slots__ = (
        "_config",
        "_control",
        "_ping",
        "_ping_arrived",
        "_refused",
        "_rejection",
        "accepted",
        "budgets",
        "closing",
        "connected",
        "expired",
        "gone",
        "heard",
        "liveness",
        "nursery",
        "reader",
        "scope",
        "wire",
        "ws",
    )

    def __init__(
        self,
        scope: dict[str, Any],
        ws: WSConnection,
        wire: _Wire,
        config: Config,
        leftover: bytes,
    ) -> None:
        self.scope = scope
        #: The handshake, until it is answered (accepted or rejected).
        self.ws: WSConnection | None = ws
        self.wire = wire
        self.reader = FrameReader(config.max_message_bytes, FRAGMENT_COST)
        self.reader.feed(leftover)
        self.connected = False
        self.accepted = False
        #: We sent a close frame: no more messages or pongs go out.
        self.closing = False
        self.gone = False
        #: Where the pong task runs, started at the first ping (set by serve_stream).
        self.nursery: trio.Nursery | None = None
        self._rejection: dict[str, Any] | None = None
        self._ping: bytes | None = None  # the latest unanswered ping's payload
        self._ping_arrived: trio.Event | None = None
        self._config = config
        #: What the client's address may spend (set by serve_stream).
        self.budgets: ClientBudgets | None = None
        #: The transport's ping timer (set by serve_stream), joined once accepted.
        self.liveness: Liveness | None = None
        #: Bytes arrived since the ping timer last looked (see Liveness).
        self.heard = True
        #: Closed by the ping timer: the peer did not answer a ping.
        self.expired = False
        #: Control frames' token bucket (made at the first one) and refusals in a row.
        self._control: TokenBucket | None = None
        self._refused = 0

    async def receive(self) -> dict[str, Any]:
        if not self.connected:
            self.connected = True
            return {"type": "websocket.connect"}
        reader = self.reader
        while not self.gone:
            try:
                event = reader.next_event()
            except FrameError as exc:
                # Not the peer's close: a frame broke the protocol (unmasked, invalid
                # UTF-8, fragmented control frame, too big...). Tell the peer why.
                await self._fail(exc.code, exc.reason)
                return self._disconnect(exc.code)
            if event is None:
                if reader.pongs:
                    pongs, reader.pongs = reader.pongs, 0
                    self._charge_control(pongs)
                    if self._refused >= _MAX_REFUSED_IN_A_ROW:
                        return await self._rate_limited()
                data = await self.wire.receive()
                if not data:
                    break
                self.heard = True
                reader.feed(data)
                continue
            kind = type(event)
            if kind is str:
                return {"type": "websocket.receive", "text": event}
            if kind is bytes:
                return {"type": "websocket.receive", "bytes": event}
            if isinstance(event, Ping):
                # Answered by another task: the reader never waits on the socket, and
                # a flood of pings gets one pong, for the latest (RFC 6455 5.5.3).
                # Over the rate limit it gets none.
                if self._charge_control(1):
                    self._answer(event.payload)
                elif self._refused >= _MAX_REFUSED_IN_A_ROW:
                    return await self._rate_limited()
            elif isinstance(event, Close):
                if not self.closing:
                    self.closing = True
                    await self._send_bytes(close_frame(event.code, event.reason))
                return self._disconnect(1005 if event.code is None else event.code)
        return self._disconnect(CloseCode.PING_TIMEOUT if self.expired else 1006)

    def _charge_control(self, count: int) -> bool:
        """Charge ``count`` control frames to the connection's bucket (the message
        rate limit's numbers) and to the client address's budget; whether the last
        one was allowed. Stops at ``_MAX_REFUSED_IN_A_ROW`` refusals in a row."""
        bucket = self._control
        if bucket is None:
            config = self._config
            bucket = self._control = TokenBucket(
                config.rate_limit_per_second, config.rate_limit_burst
            )
        budgets = self.budgets
        ip = _client_ip(self.scope)
        allowed = True
        for _ in range(count):
            allowed = bucket.take() and (budgets is None or budgets.charge(ip) == 0.0)
            if allowed:
                self._refused = 0
            else:
                self._refused += 1
                if self._refused >= _MAX_REFUSED_IN_A_ROW:
                    break
        return allowed

    async def _rate_limited(self) -> dict[str, Any]:
        """Close a control-frame flood with 4029, as the app closes a message flood."""
        client_errors.log(
            logging.INFO,
            "control flood",
            "closed a connection flooding control frames: 4029",
            client=_client_ip(self.scope),
        )
        await self._fail(CloseCode.RATE_LIMITED, "control frames over the rate limit")
        return self._disconnect(CloseCode.RATE_LIMITED)

    async def ping(self) -> None:
        """A server ping (the ping timer's), unless the connection is closing."""
        if self.accepted and not self.closing and not self.gone:
            await self._send_bytes(ping_frame())

    async def expire(self) -> None:
        """The peer did not answer a ping: close it with 4001 and cut it off, so
        its reader ends and the app counts it out."""
        if self.gone:
            return
        self.expired = True
        await self._close(CloseCode.PING_TIMEOUT, "no answer to ping")
        await self.wire.abort()

    def _answer(self, payload: bytes) -> None:
        self._ping = payload
        if self._ping_arrived is None:
            # Most connections never ping: their pong task starts at the first ping.
            assert self.nursery is not None
            self._ping_arrived = trio.Event()
            self.nursery.start_soon(self._answer_pings, self._ping_arrived)
        self._ping_arrived.set()

    async def _answer_pings(self, arrived: trio.Event) -> None:
        """Send a pong for the latest ping, whenever one has arrived, until the
        connection ends (:meth:`end`)."""
        try:
            while not self.gone:
                await arrived.wait()
                arrived = self._ping_arrived = trio.Event()
                payload, self._ping = self._ping, None
                if payload is None or self.closing or self.gone:
                    continue
                await self._send_bytes(pong_frame(payload))
        except Exception:  # it may run in the listener's nursery: never take it down
            log.exception("pong task failed")

    def end(self) -> None:
        """The connection is over: the pong task, if any, ends too."""
        self.gone = True
        if self._ping_arrived is not None:
            self._ping_arrived.set()
        if self.liveness is not None:
            self.liveness.discard(self)

    async def _fail(self, code: int, reason: str) -> None:
        """Close on the peer's protocol error (serve_stream lingers before closing)."""
        await self._close(code, reason)
        self.wire.cut_short = True
        self.gone = True

    def _disconnect(self, code: int) -> dict[str, Any]:
        self.gone = True
        return {"type": "websocket.disconnect", "code": code}

    async def _send_bytes(self, data: bytes) -> None:
        try:
            await self.wire.send(data)
        except _Closed:
            self.gone = True

    async def _close(self, code: int, reason: str) -> None:
        if self.accepted and not self.closing:
            self.closing = True
            await self._send_bytes(close_frame(code, reason))

    async def send(self, message: MutableMapping[str, Any]) -> None:
        kind = message["type"]
        if self.wire.closed:
            return
        if kind == "drifttrio.websocket.send_frames":
            if not self.closing:  # after our close frame, nothing else (RFC 6455 5.5.1)
                await self._send_bytes(message["data"])
        elif kind == "websocket.close":
            if not self.accepted:
                await self._reject(403, [], b"")
            else:
                await self._close(int(message.get("code", 1000)), message.get("reason") or "")
        elif kind == "websocket.accept":
            ws, self.ws = self.ws, None
            if ws is None:
                self.gone = True
                return
            self.accepted = True
            if self.liveness is not None:
                self.liveness.add(self)
            await self._send_bytes(ws.send(AcceptConnection()))
        elif kind == "websocket.http.response.start":
            self._rejection = {
                "status": message["status"],
                "headers": message.get("headers", []),
            }
        elif kind == "websocket.http.response.body" and self._rejection is not None:
            await self._reject(
                self._rejection["status"], self._rejection["headers"], message.get("body", b"")
            )

    async def _reject(self, status: int, headers: list[tuple[bytes, bytes]], body: bytes) -> None:
        ws, self.ws = self.ws, None
        self.gone = True
        if ws is None:
            return
        headers = [*headers, (b"content-length", str(len(body)).encode())]
        try:
            data = ws.send(RejectConnection(status_code=status, headers=headers, has_body=True))
            data += ws.send(RejectData(data=body, body_finished=True))
        except LocalProtocolError:
            return
        await self._send_bytes(data)


def _client_ip(scope: MutableMapping[str, Any]) -> str:
    client = scope.get("client")
    return str(client[0]) if client else "unknown"


# -- listening ----------------------------------------------------------------------


class HttpConnections:
    """Connections in the HTTP phase (accepted, not upgraded): in total and per
    client address, plus those being told 503 for being over a cap.

    Counted at accept, before any header is read, so by the peer's address: a
    trusted proxy (``trusted``) carries every user's connections and is held to
    the total cap only.
    """

    def __init__(self, total: int, per_ip: int, trusted: TrustedProxies | None = None) -> None:
        self.limits = (total, per_ip)
        self.trusted = trusted or TrustedProxies()
        self.total = 0
        self.by_ip: dict[str, int] = {}
        #: Over a cap, being answered (at most BUSY_CONNECTIONS).
        self.busy = 0

    def admit(self, ip: str) -> bool:
        """Count a connection in, if it fits the caps."""
        total, per_ip = self.limits
        held = self.by_ip.get(ip, 0)
        if total and self.total >= total:
            return False
        if per_ip and held >= per_ip and not self.trusted.trusts(ip):
            return False
        self.total += 1
        self.by_ip[ip] = held + 1
        return True

    def release(self, ip: str) -> None:
        self.total -= 1
        left = self.by_ip[ip] - 1
        if left:
            self.by_ip[ip] = left
        else:
            del self.by_ip[ip]

    def release_busy(self) -> None:
        self.busy -= 1


def _keepalive(sock: trio.socket.SocketType) -> None:
    """TCP keepalive, so the kernel finds a peer that vanished without a FIN."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        for name, value in _TCP_KEEPALIVE:
            option = getattr(socket, name, None)  # Linux has all three, others vary
            if option is not None:
                sock.setsockopt(socket.IPPROTO_TCP, option, value)
    except OSError:
        pass  # the peer is already gone: the connection's reader will see it


async def accept_connections(
    listener: trio.SocketListener, handle: Callable[[trio.SocketStream], None]
) -> None:
    """Accept connections and hand each to ``handle`` (which starts its task),
    until cancelled. Out of descriptors (EMFILE, ENFILE) or memory, accepting
    pauses and retries: one log line when it starts, one when it ends, however
    long it lasts, so a descriptor squeeze never floods the log."""
    failures = 0
    while True:
        try:
            stream = await listener.accept()
        except OSError as exc:
            if exc.errno not in _CAPACITY_ERRNOS:
                raise
            if not failures:
                log.warning(
                    "accept failed with %s (%s): pausing new connections until descriptors free up",
                    errno.errorcode.get(exc.errno or 0, exc.errno),
                    os.strerror(exc.errno or 0),
                )
            failures += 1
            await trio.sleep(_ACCEPT_RETRY_SECONDS)
            continue
        if failures:
            log.warning("accepting connections again after %d failed attempt(s)", failures)
            failures = 0
        handle(stream)


async def serve_tcp(
    app: App,
    config: Config,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    handler_nursery: trio.Nursery | None = None,
    budgets: ClientBudgets | None = None,
    listeners: list[trio.SocketListener] | None = None,
    ssl_context: ssl.SSLContext | None = None,
    task_status: trio.TaskStatus[tuple[str, int]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Listen on ``host:port`` (or on ``listeners``, already bound: they are then
    this call's to close) and serve every connection; reports the bound address.

    Connections run in ``handler_nursery`` (default: one of this task's), so a
    caller can stop listening and still let open connections finish. Connections
    in the HTTP phase are capped (``max_http_connections*``); WebSockets share one
    ping timer; ``budgets`` is charged for control frames.

    With ``ssl_context`` every connection is TLS (scopes say ``https`` / ``wss``).
    The handshake runs at the first read, so the request head's deadline
    (``handshake_timeout``) bounds handshake and head together, and a failed one
    (plain HTTP, garbage, silence) ends like any connection that sends no request:
    closed, without a word in the log. The peer address and TCP keepalive come
    from the socket before it is wrapped; reads and writes then go through the
    TLS stream (:class:`_Wire` uses the socket directly only for a plain one).
    """
    scheme = "http" if ssl_context is None else "https"
    if listeners is None:
        listeners = await trio.open_tcp_listeners(port, host=host)
    sockname = listeners[0].socket.getsockname()
    server = (sockname[0], sockname[1])
    slots = HttpConnections(
        config.max_http_connections,
        config.max_http_connections_per_ip,
        TrustedProxies(config.trusted_networks),
    )
    liveness = (
        Liveness(config.ping_interval, config.ping_timeout) if config.ping_interval > 0 else None
    )

    async def serve(stream: trio.SocketStream, peer: tuple[str, int], busy: bool) -> None:
        try:
            await serve_stream(
                app,
                config,
                stream
                if ssl_context is None
                else trio.SSLStream(stream, ssl_context, server_side=True, https_compatible=True),
                client=peer,
                server=server,
                scheme=scheme,
                nursery=connections,
                budgets=budgets,
                liveness=liveness,
                busy=busy,
                release_http_slot=slots.release_busy if busy else partial(slots.release, peer[0]),
            )
        except Exception:  # a bug: one connection's failure never takes the listener down
            log.exception("connection handler failed")

    def handle(stream: trio.SocketStream) -> None:
        sock = stream.socket
        try:
            address = sock.getpeername()
        except OSError:
            sock.close()
            return
        peer = (str(address[0]), int(address[1]))
        busy = not slots.admit(peer[0])
        if busy:
            if slots.busy >= BUSY_CONNECTIONS:
                sock.close()  # far over the caps: not even a 503
                return
            slots.busy += 1
        _keepalive(sock)
        connections.start_soon(serve, stream, peer, busy)

    try:
        async with trio.open_nursery() as nursery:
            connections = handler_nursery or nursery
            if liveness is not None:
                await nursery.start(liveness.run)
            task_status.started(server)
            async with trio.open_nursery() as accepting:
                for listener in listeners:
                    accepting.start_soon(accept_connections, listener, handle)
    finally:
        for listener in listeners:
            listener.socket.close()
