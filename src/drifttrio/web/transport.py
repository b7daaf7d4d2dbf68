"""drifttrio's own HTTP/WebSocket transport: h11, :mod:`drifttrio.web.handshake`
for the WebSocket handshake and :mod:`drifttrio.web.frames` for the client's
frames, on trio streams.

It hands :class:`~drifttrio.web.app.DriftApp` HTTP requests as ASGI and
WebSockets as :class:`~drifttrio.web.peer.Peer` s, so routes, limits and
sessions live in one place, and adds what a generic ASGI server cannot: frames
built once per broadcast (a member's queued frames go out in one write),
deadlines on every read and write, caps on connections in the HTTP phase
(beyond them a short 503, but ``/healthz`` and ``/readyz`` are still answered),
one shared ping timer (:mod:`drifttrio.web.liveness`), and control frames that
never stall the reader. Whatever a client sends, it gets a 4xx or a close
code, and at most one rate-limited log line, never a traceback.

One module per concern, each usable without a socket:

- :mod:`~drifttrio.web.wire`: the byte stream, its write lock and deadline,
  and the linger before closing;
- :mod:`~drifttrio.web.http11`: requests, their deadlines and refusals;
- :mod:`~drifttrio.web.handshake`: the upgrade check and the handshake's answers
  (sans-IO, held to wsproto by its tests);
- :mod:`~drifttrio.web.websocket`: one WebSocket as a peer, its progress in one
  :class:`~drifttrio.web.websocket.WebSocketState`;
- :mod:`~drifttrio.web.listener`: the HTTP-phase caps, TCP keepalive, accept.

:func:`serve_stream` serves one already-connected stream (a socket, TLS, or a
``trio.testing`` memory stream), :func:`serve_tcp` listens, over TLS when
given an SSL context (the handshake inside the head's deadline).
"""

from __future__ import annotations

import ssl
from collections.abc import Callable
from functools import partial
from types import MappingProxyType
from typing import TYPE_CHECKING, Final

import trio

from ..runtime.config import Config
from .http11 import App, Handoff, serve_http
from .limits import ClientBudgets
from .listener import (
    BUSY_CONNECTIONS,
    KEEPALIVE_INHERITED,
    HttpConnections,
    accept_connections,
    keepalive,
)
from .liveness import Liveness
from .proxy import TrustedProxies
from .websocket import FRAGMENT_COST
from .wire import Wire, WireClosed, log

if TYPE_CHECKING:
    from ..workers import Shard

#: The ``asgi`` entry of every scope this transport makes: one, read-only, rather
#: than a dict per connection (it lives as long as the connection's scope).
_ASGI: Final = MappingProxyType({"version": "3.0", "spec_version": "2.3"})

__all__ = [
    "FRAGMENT_COST",
    "HttpConnections",
    "accept_connections",
    "serve_stream",
    "serve_tcp",
]


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
    handoff: Handoff | None = None,
    first: bytes = b"",
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
    phase (upgraded, or ended). ``handoff`` and ``first``: see
    :func:`~drifttrio.web.http11.serve_http`.
    """
    wire = Wire(stream, config.write_timeout)
    try:
        # Only the scope is kept of the base, and nothing of the HTTP state (h11,
        # the request) once upgraded: an idle WebSocket keeps its scope only.
        base = {
            "asgi": _ASGI,
            "http_version": "1.1",
            "client": client,
            "server": server,
            "root_path": root_path,
        }
        try:
            websocket = await serve_http(
                app, config, wire, base, scheme, busy=busy, handoff=handoff, first=first
            )
        finally:
            if release_http_slot is not None:
                release_http_slot()
                release_http_slot = None
        del base
        if websocket is not None:
            websocket.budgets = budgets
            websocket.liveness = liveness
            if nursery is None:
                async with trio.open_nursery() as own:
                    websocket.nursery = own
                    try:
                        await app.websocket(websocket)
                    finally:
                        websocket.end()
                    own.cancel_scope.cancel()
            else:
                websocket.nursery = nursery
                try:
                    await app.websocket(websocket)
                finally:
                    websocket.end()
    except WireClosed:
        pass
    finally:
        if wire.cut_short and not wire.closed:
            with trio.CancelScope(shield=True):
                await wire.linger()
        if type(stream) is trio.SocketStream:
            # Nothing is buffered in a plain socket: close it at once, without the
            # cancel scope and checkpoint of aclose_forcefully.
            wire.closed = True
            stream.socket.close()
        else:
            with trio.CancelScope(shield=True):
                await wire.abort()


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
    shard: Shard | None = None,
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
    TLS stream (:class:`~drifttrio.web.wire.Wire` uses the socket directly only for a plain one).

    ``shard`` (a worker of ``drifttrio serve --workers``): requests for another
    worker's rooms hand their connection over, and connections handed here are
    served like accepted ones, from the bytes read so far.
    """
    scheme = "http" if ssl_context is None else "https"
    if listeners is None:
        listeners = await trio.open_tcp_listeners(port, host=host)
    if KEEPALIVE_INHERITED:
        for listener in listeners:
            keepalive(listener.socket)
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

    async def serve(
        stream: trio.SocketStream, peer: tuple[str, int], busy: bool, first: bytes = b""
    ) -> None:
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
                handoff=shard,
                first=first,
            )
        except Exception:  # a bug: one connection's failure never takes the listener down
            log.exception("connection handler failed")

    def handle(stream: trio.SocketStream, first: bytes = b"") -> None:
        sock = stream.socket
        try:
            address = sock.getpeername()
        except OSError:
            sock.close()
            return
        # (A Unix socket's peer has no address: the internal listeners of workers.)
        peer = (str(address[0]), int(address[1])) if isinstance(address, tuple) else ("local", 0)
        busy = not slots.admit(peer[0])
        if busy:
            if slots.busy >= BUSY_CONNECTIONS:
                sock.close()  # far over the caps: not even a 503
                return
            slots.busy += 1
        if not KEEPALIVE_INHERITED:
            keepalive(sock)
        connections.start_soon(serve, stream, peer, busy, first)

    try:
        async with trio.open_nursery() as nursery:
            connections = handler_nursery or nursery
            if liveness is not None:
                await nursery.start(liveness.run)
            if shard is not None:
                await nursery.start(shard.take_connections, handle)
            task_status.started(server)
            async with trio.open_nursery() as accepting:
                for listener in listeners:
                    accepting.start_soon(accept_connections, listener, handle)
    finally:
        for listener in listeners:
            listener.socket.close()
