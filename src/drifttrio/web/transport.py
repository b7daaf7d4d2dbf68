"""drifttrio's own HTTP/WebSocket transport: h11, wsproto for the handshake and
:mod:`drifttrio.web.frames` for the client's frames, on trio streams.

It speaks ASGI to :class:`~drifttrio.web.app.DriftApp`, so routes, limits and
sessions live in one place, and adds what a generic ASGI server cannot:

- **frames built once**: the app's connections hold complete, unmasked
  WebSocket frames (the same bytes for every member), and the app hands a
  connection's queued frames over in one ``drifttrio.websocket.send_frames``
  event, written with one ``send_all``;
- **deadlines**: the request head must arrive within ``handshake_timeout``
  (slowloris), headers are capped at ``max_header_bytes``, and every write has
  ``write_timeout``: a client that stops reading is cut off, never waited for;
- **control frames** never stall the reader: pings are answered by a separate
  task (a flood gets one pong for the latest ping), pongs are ignored;
  compression is never negotiated; a message, fragmented or not, is closed with
  1009 as soon as it exceeds ``max_message_bytes`` (each non-final fragment
  counts at least ``FRAGMENT_COST`` bytes, so floods of empty continuation
  frames end too), and broken frames (unmasked, invalid UTF-8, fragmented
  control frames, bad opcodes) are closed with their RFC 6455 code.

:func:`serve_stream` serves one already-connected stream (a socket, TLS, or a
``trio.testing`` memory stream), :func:`serve_tcp` listens.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any
from urllib.parse import unquote

import h11
import trio
from wsproto import ConnectionType, WSConnection
from wsproto.events import AcceptConnection, RejectConnection, RejectData, Request
from wsproto.utilities import LocalProtocolError

from ..protocol.codec import websocket_frame
from ..runtime.config import Config
from .frames import Close, FrameError, FrameReader, Ping, close_frame, pong_frame

__all__ = ["FRAGMENT_COST", "FRAMES_EXTENSION", "serve_stream", "serve_tcp"]

log = logging.getLogger("drifttrio.transport")

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
) -> None:
    """Serve HTTP/1.1 requests and WebSocket upgrades on one connection.

    A WebSocket's pong task (started at its first ping, ended with the connection)
    runs in ``nursery``, by default one of this call's own. :func:`serve_tcp`
    passes its handler nursery: an idle connection then costs no nursery.
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
        session = await _serve_http(app, config, wire, base, scheme)
        del base
        if session is not None:
            if nursery is None:
                async with trio.open_nursery() as own:
                    session.nursery = own
                    await app(session.scope, session.receive, session.send)
                    own.cancel_scope.cancel()
            else:
                session.nursery = nursery
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
    app: App, config: Config, wire: _Wire, base: dict[str, Any], scheme: str
) -> _WebSocketSession | None:
    """Serve requests until the connection ends (``None``) or is upgraded: then
    return the WebSocket's session (with its scope), handshake not yet answered."""
    conn = h11.Connection(h11.SERVER, max_incomplete_event_size=config.max_header_bytes)
    try:
        while True:
            with trio.move_on_after(config.handshake_timeout) as head_deadline:
                event = await _next_event(conn, wire)
            if head_deadline.cancelled_caught:
                if conn.their_state is h11.SEND_BODY or _has_partial_request(conn):
                    await _plain_response(conn, wire, 408, b"request head took too long")
                return None
            if not isinstance(event, h11.Request):
                return None  # ConnectionClosed, or a stray event
            if _head_size(event) > config.max_header_bytes:
                # h11 bounds only a head that arrives in pieces; this bounds them all.
                await _plain_response(conn, wire, 431, b"request head too large")
                return None
            if _is_websocket_upgrade(event):
                return _upgrade(
                    config,
                    conn,
                    wire,
                    event,
                    {**base, "scheme": "ws" if scheme == "http" else "wss"},
                )
            await _http(app, config, conn, wire, event, {**base, "scheme": scheme})
            if conn.their_state is h11.SEND_BODY and conn.our_state is h11.DONE:
                await _discard_body(conn, wire, config)
            if conn.our_state is not h11.DONE or conn.their_state is not h11.DONE:
                return None
            conn.start_next_cycle()
    except h11.RemoteProtocolError as exc:
        status = exc.error_status_hint
        if conn.our_state in (h11.IDLE, h11.SEND_RESPONSE):
            with trio.move_on_after(config.write_timeout):
                await _plain_response(conn, wire, status, str(exc).encode())
        return None


def _head_size(request: h11.Request) -> int:
    """The request head's size on the wire (near enough: line and header separators)."""
    size = len(request.method) + len(request.target) + 12
    return size + sum(len(name) + len(value) + 4 for name, value in request.headers)


async def _discard_body(conn: h11.Connection, wire: _Wire, config: Config) -> None:
    """Read what is left of a request body the app did not read (a GET's empty
    one, say), so the connection can serve the next request: at most
    ``max_message_bytes`` within ``handshake_timeout``, else it is closed."""
    left = config.max_message_bytes
    with trio.move_on_after(config.handshake_timeout):
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


async def _plain_response(conn: h11.Connection, wire: _Wire, status: int, body: bytes) -> None:
    wire.cut_short = True
    try:
        data = conn.send(
            h11.Response(
                status_code=status,
                headers=[
                    ("content-type", "text/plain"),
                    ("content-length", str(len(body))),
                    ("connection", "close"),
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
) -> None:
    path, raw_path, query = _target(request)
    scope = {
        **base,
        "type": "http",
        "method": request.method.decode("ascii"),
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
        with trio.fail_after(config.handshake_timeout):
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
            if not _request_complete(conn):
                # The rest of the body (a 413's, say) will not be read: say so, and
                # close after the response instead of leaving the client to reuse
                # a connection the server is about to drop.
                headers.append((b"connection", b"close"))
                wire.cut_short = True
            await wire.send(
                conn.send(h11.Response(status_code=message["status"], headers=headers)) or b""
            )
        elif kind == "http.response.body":
            data = conn.send(h11.Data(data=message.get("body", b""))) or b""
            if not message.get("more_body", False):
                data += conn.send(h11.EndOfMessage()) or b""
            await wire.send(data)

    try:
        await app(scope, receive, send)
    except (trio.TooSlowError, h11.RemoteProtocolError):
        raise _Closed from None
    if not response_started:
        await _plain_response(conn, wire, 500, b"internal error")


# -- WebSocket ----------------------------------------------------------------------


def _upgrade(
    config: Config,
    conn: h11.Connection,
    wire: _Wire,
    request: h11.Request,
    base: dict[str, Any],
) -> _WebSocketSession:
    """The session of a WebSocket upgrade, with its scope (wsproto checks the request)."""
    ws = WSConnection(ConnectionType.SERVER)
    ws.initiate_upgrade_connection(list(request.headers), request.target)
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
    return _WebSocketSession(scope, ws, wire, config, leftover)


class _WebSocketSession:
    """ASGI ``receive`` / ``send`` for one WebSocket: wsproto answers the handshake,
    then :class:`~drifttrio.web.frames.FrameReader` reads the client's frames."""

    __slots__ = (
        "_ping",
        "_ping_arrived",
        "_rejection",
        "accepted",
        "closing",
        "connected",
        "gone",
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
                data = await self.wire.receive()
                if not data:
                    break
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
                self._answer(event.payload)
            elif isinstance(event, Close):
                if not self.closing:
                    self.closing = True
                    await self._send_bytes(close_frame(event.code, event.reason))
                return self._disconnect(1005 if event.code is None else event.code)
        return self._disconnect(1006)

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
        elif kind == "websocket.send":
            if not self.accepted or self.closing:
                self.gone = True  # not open: a misuse, as wsproto would refuse it
                return
            text = message.get("text")
            if text is not None:
                frame = websocket_frame(text.encode(), binary=False)
            else:
                frame = websocket_frame(message["bytes"], binary=True)
            await self._send_bytes(frame)
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


async def serve_tcp(
    app: App,
    config: Config,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    handler_nursery: trio.Nursery | None = None,
    task_status: trio.TaskStatus[tuple[str, int]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Listen on ``host:port`` and serve every connection; reports the bound address.

    Connections run in ``handler_nursery`` (default: one of this task's), so a
    caller can stop listening and still let open connections finish.
    """
    listeners = await trio.open_tcp_listeners(port, host=host)
    sockname = listeners[0].socket.getsockname()

    async def handle(stream: trio.SocketStream) -> None:
        try:
            try:
                peer = stream.socket.getpeername()
            except OSError:
                return
            await serve_stream(
                app,
                config,
                stream,
                client=(peer[0], peer[1]),
                server=(sockname[0], sockname[1]),
                nursery=connections,
            )
        except Exception:  # one connection's failure never takes the listener down
            log.exception("connection handler failed")

    async with trio.open_nursery() as nursery:
        connections = handler_nursery or nursery
        task_status.started((sockname[0], sockname[1]))
        await trio.serve_listeners(handle, listeners, handler_nursery=connections)
