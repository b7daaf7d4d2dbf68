"""Running the server: embedded in a trio program, or from the command line.

    async with open_server(Config(store="memory")) as server:
        print(server.url)          # http://127.0.0.1:PORT

or, with ``task_status``::

    server = await nursery.start(serve, config)
"""

from __future__ import annotations

import errno
import logging
import math
import os
import resource
import socket
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from functools import partial
from typing import Any, cast
from urllib.parse import urlsplit

import attrs
import hypercorn.trio
import trio
from hypercorn.config import Config as HypercornConfig

from ._errors import ConfigError, DriftError
from .hooks import Hooks, configured_hooks
from .runtime.config import Config
from .runtime.hub import Hub
from .storage import Storage
from .storage.base import shown_url
from .web.app import DriftApp
from .web.ops import OpsApp
from .web.tls import server_ssl_context
from .web.transport import serve_tcp
from .wiring import TRANSPORTS, TransportName, checked_transport, open_app
from .workers import Shard

__all__ = [
    "RESERVED_DESCRIPTORS",
    "TRANSPORTS",
    "ListenError",
    "RunningServer",
    "fit_descriptors",
    "hypercorn_config",
    "open_listener_groups",
    "open_listeners",
    "open_server",
    "raise_descriptor_limit",
    "serve",
]

log = logging.getLogger("drifttrio")

#: Descriptors kept out of the connection caps: the store (SQLite and its
#: journal, or Redis connections), the listeners, the event loop, stdio, logs,
#: the internal metrics listener's connections, and connections being told 503
#: (``BUSY_CONNECTIONS``) or closed.
RESERVED_DESCRIPTORS = 96


@attrs.frozen
class RunningServer:
    """A server that is listening. ``url`` is its HTTP base URL (``https://``
    when it serves TLS; ``ws_url`` then says ``wss://``).

    ``metrics_url`` is the base URL of the internal listener (``/metrics``,
    ``/healthz``, ``/readyz``), or ``None`` when ``metrics_port`` is -1.
    """

    url: str
    host: str
    port: int
    hub: Hub
    metrics_url: str | None = None

    @property
    def ws_url(self) -> str:
        return "ws" + self.url[len("http") :]


class _HypercornConfig(HypercornConfig):
    """hypercorn's settings, serving TLS with drifttrio's context (loaded once,
    the same for both transports) instead of building its own from the files."""

    def __init__(self, ssl_context: ssl.SSLContext | None) -> None:
        super().__init__()
        self._drifttrio_ssl_context = ssl_context

    def create_ssl_context(self) -> ssl.SSLContext | None:
        return self._drifttrio_ssl_context


def hypercorn_config(
    config: Config, host: str, port: int, ssl_context: ssl.SSLContext | None = None
) -> HypercornConfig:
    """The hypercorn settings drifttrio runs with; over TLS with ``ssl_context``
    (see :func:`~drifttrio.web.tls.server_ssl_context`)."""
    hc = _HypercornConfig(ssl_context)
    if ssl_context is not None:
        # hypercorn serves TLS (and says https://) when both are set; the files
        # are not read again: create_ssl_context returns the loaded context.
        hc.certfile, hc.keyfile = config.certfile, config.keyfile
        hc.ssl_handshake_timeout = config.handshake_timeout
    hc.bind = [f"[{host}]:{port}" if ":" in host else f"{host}:{port}"]
    hc.websocket_max_message_size = config.max_message_bytes
    hc.h11_max_incomplete_size = config.max_header_bytes
    # hypercorn has one idle timer per connection: it starts at accept, so it also
    # bounds the wait for the first request, which the own transport gives
    # handshake_timeout. With keepalive_timeout (5 s) alone, a connection accepted
    # while the server is busy (a reconnect storm, a long garbage collection) was
    # closed before its upgrade was read: 'socket hang up' or ECONNRESET for a
    # client that did nothing wrong. The longer of the two, for both.
    hc.keep_alive_timeout = max(config.keepalive_timeout, config.handshake_timeout)
    # Connections the kernel queues before hypercorn accepts them: hypercorn's 100
    # drops SYNs in a reconnect storm (clients retry after 1 s, 3 s, ...); trio's
    # listeners (the own transport) use the system's maximum, so does this.
    hc.backlog = socket.SOMAXCONN
    # Not set: websocket_ping_interval (hypercorn's ping task sleeps a whole
    # interval after its connection closed, so every drain would wait up to
    # write_timeout) and read_timeout (without pings it would close silent but
    # healthy members). See docs/operations.md, "Connection limits and timeouts".
    hc.graceful_timeout = config.write_timeout
    hc.accesslog = None
    hc.errorlog = logging.getLogger("hypercorn.error")
    return hc


class ListenError(DriftError):
    """The address to listen on is taken (another server?): the settings are right,
    the machine is busy. Settings it cannot listen on at all (no such address, a
    port below 1024 without the right) raise :class:`ConfigError`."""


async def open_listeners(
    host: str, port: int, *, flags: tuple[str, str] = ("--host", "--port")
) -> list[trio.SocketListener]:
    """Bind ``host:port`` and listen, or say in one sentence why not (naming the
    ``flags`` that choose the address): :class:`ListenError` if the address is in
    use, :class:`ConfigError` if this machine cannot listen there at all."""
    try:
        return await trio.open_tcp_listeners(port, host=host)
    except OSError as exc:
        raise _listen_error(host, port, exc, flags) from None


async def open_listener_groups(
    host: str, port: int, count: int, *, flags: tuple[str, str] = ("--host", "--port")
) -> list[list[trio.SocketListener]]:
    """``count`` sets of listening sockets on the same ``host:port`` (a free one if
    ``port`` is 0), one set per worker of ``drifttrio serve --workers``:
    ``SO_REUSEPORT``, so the kernel spreads new connections over the sets and wakes
    only the worker that gets one. Errors as :func:`open_listeners`."""
    groups: list[list[trio.SocketListener]] = []
    sockets: list[trio.socket.SocketType] = []
    try:
        infos = await trio.socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
        addresses = list(dict.fromkeys((family, address) for family, _, _, _, address in infos))
        ports: list[int] = []
        for _ in range(count):
            group: list[trio.SocketListener] = []
            for n, (family, address) in enumerate(addresses):
                sock = trio.socket.socket(family, socket.SOCK_STREAM)
                sockets.append(sock)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
                if family == socket.AF_INET6:
                    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                # The first set picks the port (port 0: one per address), the rest follow.
                await sock.bind((address[0], ports[n], *address[2:]) if ports else address)
                sock.listen(socket.SOMAXCONN)
                group.append(trio.SocketListener(sock))
            groups.append(group)
            ports = ports or [listener.socket.getsockname()[1] for listener in group]
    except OSError as exc:
        for sock in sockets:
            sock.close()
        raise _listen_error(host, port, exc, flags) from None
    return groups


def _listen_error(
    host: str, port: int, exc: OSError, flags: tuple[str, str]
) -> ListenError | ConfigError:
    host_flag, port_flag = flags
    where = f"cannot listen on {f'[{host}]' if ':' in host else host}:{port}"
    if isinstance(exc, socket.gaierror):
        return ConfigError(
            f"{where}: unknown host ({host_flag} takes an address or a name of this machine,"
            " such as 127.0.0.1 or 0.0.0.0)"
        )
    if exc.errno == errno.EADDRINUSE:
        return ListenError(
            f"{where}: address already in use (another drifttrio? stop it or pick another"
            f" {port_flag})"
        )
    if exc.errno in (errno.EACCES, errno.EPERM):
        return ConfigError(
            f"{where}: permission denied (ports below 1024 need root or CAP_NET_BIND_SERVICE;"
            f" pick a {port_flag} above 1023)"
        )
    if exc.errno == errno.EADDRNOTAVAIL:
        return ConfigError(
            f"{where}: not an address of this machine ({host_flag} takes one of its"
            " addresses, 127.0.0.1 or 0.0.0.0)"
        )
    return ListenError(f"{where}: {exc.strerror or exc}")


def shown_store(url: str) -> str:
    """``url`` as the startup line shows it: a SQLite path made absolute (started
    from another directory, ``sqlite:///drifttrio.db`` is another database) and a
    password masked (:func:`~drifttrio.storage.base.shown_url`)."""
    parts = urlsplit(url)
    if parts.scheme == "sqlite" and not parts.netloc:
        path = parts.path[1:] if parts.path.startswith("/") else parts.path
        if not path or path == ":memory:":
            return url
        return f"sqlite:///{os.path.abspath(path)}" + (f"?{parts.query}" if parts.query else "")
    return shown_url(url)


async def serve(
    config: Config | None = None,
    *,
    host: str | None = None,
    port: int | None = None,
    transport: str = "drifttrio",
    shutdown_trigger: Callable[[], Awaitable[None]] | None = None,
    hooks: Hooks | None = None,
    task_status: trio.TaskStatus[RunningServer] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve until ``shutdown_trigger`` returns (or until cancelled).

    ``hooks``: the application's room logic (:class:`drifttrio.hooks.Hooks`; else
    the one ``config.hooks`` names, if any).

    ``host`` and ``port``, when given, win over ``config.host`` and ``config.port``
    (127.0.0.1:8080 by default).
    ``transport`` is ``"drifttrio"`` (its own h11/wsproto transport: frames built
    once, writes coalesced, read/write deadlines) or ``"hypercorn"`` (the same app
    under hypercorn's trio worker). On shutdown (the drain) the listener stops, every
    member is closed with 1001, rooms commit what they had queued and end, and
    everything is over within ``shutdown_timeout``.
    ``task_status`` reports a :class:`RunningServer` once the socket is bound.

    The listeners are bound before the store is opened: a port in use fails with
    :class:`ListenError` and leaves nothing behind (no database file created).
    """
    checked = checked_transport(transport)
    config = config or Config()
    if host is not None or port is not None:  # checked like any setting
        config = attrs.evolve(
            config,
            host=config.host if host is None else host,
            port=config.port if port is None else port,
        )
    config = fit_descriptors(config, raise_descriptor_limit())
    if hooks is None:
        # Bad hook settings fail here, before anything is bound.
        hooks = configured_hooks(config)
    # A certificate or key that cannot be used fails here, before anything is bound
    # or opened.
    tls = server_ssl_context(config.certfile, config.keyfile) if config.certfile else None
    public = await open_listeners(config.host, config.port)
    ops: list[trio.SocketListener] = []
    try:
        if config.metrics_port >= 0:
            ops = await open_listeners(
                config.metrics_host, config.metrics_port, flags=("--metrics-host", "--metrics-port")
            )
        await _serve_on(config, public, ops, tls, checked, shutdown_trigger, hooks, task_status)
    finally:
        for listener in (*public, *ops):
            listener.socket.close()  # closed already unless something failed early


async def _serve_on(
    config: Config,
    public: list[trio.SocketListener],
    ops: list[trio.SocketListener],
    tls: ssl.SSLContext | None,
    transport: TransportName,
    shutdown_trigger: Callable[[], Awaitable[None]] | None,
    hooks: Hooks | None,
    task_status: trio.TaskStatus[RunningServer],
    *,
    shard: Shard | None = None,
    storage: Storage | None = None,
) -> None:
    """:func:`serve` once its listeners are bound; ``shard``: as one worker of
    ``drifttrio serve --workers`` (:mod:`drifttrio.workers`), on ``storage``."""
    metrics_url: str | None = None
    deadline = math.inf

    async def shutdown() -> None:
        nonlocal deadline
        if shutdown_trigger is None:
            await trio.sleep_forever()
        else:
            await shutdown_trigger()
        deadline = trio.current_time() + config.shutdown_timeout
        log.info("shutting down: closing %d live room(s)", len(hub.rooms))
        hub.close_all()

    def started(url: str, bound_host: str, bound_port: int) -> None:
        server = RunningServer(url, bound_host, bound_port, hub, metrics_url)
        if shard is not None:
            # The supervisor says where the server listens, once for all workers.
            log.debug("worker %d of %d serving (pid %d)", shard.index, shard.count, os.getpid())
            task_status.started(server)
            return
        log.info(
            "drifttrio listening on %s (store: %s) [transport: %s]",
            url,
            shown_store(config.store),
            transport,
        )
        if metrics_url is not None:
            log.info("metrics, health and readiness on %s", metrics_url)
        task_status.started(server)

    # Opens the store: a bad --store fails here, plainly.
    async with open_app(config, storage, hooks) as (hub, app), trio.open_nursery() as nursery:
        if shard is not None:
            hub.owns = shard.owns
            shard.metrics = hub.metrics
        if ops:
            ops_host, ops_port = await nursery.start(
                partial(serve_tcp, OpsApp(hub), config, listeners=ops)
            )
            metrics_url = f"http://{f'[{ops_host}]' if ':' in ops_host else ops_host}:{ops_port}"
        try:
            if transport == "hypercorn":
                await _serve_hypercorn(app, config, public, tls, shutdown, started)
            else:
                await _serve_own(app, config, public, tls, shutdown, started, shard)
            # The listener stopped and members were told: let every room commit what
            # it had queued and end, within what is left of the deadline.
            with trio.move_on_at(deadline) as waiting:
                await hub.wait_rooms_closed()
            if waiting.cancelled_caught:
                log.warning("shutdown deadline passed with %d room(s) live", len(hub.rooms))
        finally:
            nursery.cancel_scope.cancel()  # the listener has finished: stop the rest


def raise_descriptor_limit() -> tuple[int, int] | None:
    """Raise the soft ``RLIMIT_NOFILE`` to the hard limit (systemd's soft default
    of 1024 would allow a thousand connections at most). Returns the limit
    before and after, or ``None`` if the platform has none."""
    try:
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    except (AttributeError, OSError, ValueError):
        return None
    if hard == resource.RLIM_INFINITY:
        hard = max(soft, 1 << 20) if soft != resource.RLIM_INFINITY else soft
    if soft == resource.RLIM_INFINITY or soft >= hard:
        return soft, soft
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    except (OSError, ValueError):
        return soft, soft
    return soft, hard


def fit_descriptors(config: Config, limit: tuple[int, int] | None) -> Config:
    """``config`` with connection caps that fit the descriptor limit (``limit`` is
    the soft limit before and after :func:`raise_descriptor_limit`), so a full
    server answers 503 instead of failing ``accept()`` for everyone.

    WebSockets (``max_connections``) and connections in the HTTP phase
    (``max_http_connections``; under hypercorn, the headroom left for them) share
    what is left after ``RESERVED_DESCRIPTORS``; when both do not fit, HTTP gets
    a quarter. An unlimited cap (0) becomes the limit. One log line says so when
    the limit was raised or a cap changed.
    """
    if limit is None or limit[1] == resource.RLIM_INFINITY:
        return config
    before, nofile = limit
    available = max(nofile - RESERVED_DESCRIPTORS, 2)
    ws = config.max_connections or available
    http = config.max_http_connections or available
    if ws + http > available:
        http = min(http, max(available // 4, 1))
        ws = min(ws, available - http)
    fitted = attrs.evolve(
        config,
        max_connections=ws,
        max_connections_per_ip=min(config.max_connections_per_ip or ws, ws),
        max_connections_per_room=min(config.max_connections_per_room or ws, ws),
        max_http_connections=http,
        max_http_connections_per_ip=min(config.max_http_connections_per_ip or http, http),
    )
    if fitted != config or before != nofile:
        log.info(
            "open-file limit %d%s: max_connections %d (configured %d), "
            "max_http_connections %d (configured %d), %d descriptors reserved",
            nofile,
            f" (raised from {before})" if before != nofile else "",
            ws,
            config.max_connections,
            http,
            config.max_http_connections,
            RESERVED_DESCRIPTORS,
        )
    return fitted


async def _serve_own(
    app: DriftApp,
    config: Config,
    listeners: list[trio.SocketListener],
    tls: ssl.SSLContext | None,
    shutdown: Callable[[], Awaitable[None]],
    started: Callable[[str, str, int], None],
    shard: Shard | None,
) -> None:
    async with trio.open_nursery() as connections:
        async with trio.open_nursery() as listening:
            bound_host, bound_port = await listening.start(
                partial(
                    serve_tcp,
                    app,
                    config,
                    handler_nursery=connections,
                    budgets=app.budgets,
                    listeners=listeners,
                    ssl_context=tls,
                    shard=shard,
                )
            )
            shown = f"[{bound_host}]" if ":" in bound_host else bound_host
            scheme = "http" if tls is None else "https"
            started(f"{scheme}://{shown}:{bound_port}", bound_host, bound_port)
            await shutdown()
            listening.cancel_scope.cancel()  # stop accepting
        # Members were told (1001); give their sessions a moment, then cut the rest.
        connections.cancel_scope.deadline = trio.current_time() + min(
            config.write_timeout, config.shutdown_timeout / 2
        )


async def _serve_hypercorn(
    app: DriftApp,
    config: Config,
    listeners: list[trio.SocketListener],
    tls: ssl.SSLContext | None,
    shutdown: Callable[[], Awaitable[None]],
    started: Callable[[str, str, int], None],
) -> None:
    async def trigger() -> None:
        await shutdown()
        # Members get write_timeout to see their close frame; then everything stops.
        scope.deadline = trio.current_time() + config.write_timeout

    hc = hypercorn_config(config, config.host, config.port, tls)
    # The sockets are bound already: hypercorn takes them over by descriptor (and
    # closes them); ours let go of them.
    hc.bind = [f"fd://{listener.socket.detach()}" for listener in listeners]
    with trio.CancelScope() as scope:
        async with trio.open_nursery() as web:
            binds: list[str] = await web.start(
                partial(hypercorn.trio.serve, cast(Any, app), hc, shutdown_trigger=trigger)
            )
            bound = urlsplit(binds[0])
            started(binds[0], bound.hostname or config.host, bound.port or config.port)


@asynccontextmanager
async def open_server(
    config: Config | None = None,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    transport: str = "drifttrio",
    hooks: Hooks | None = None,
) -> AsyncIterator[RunningServer]:
    """Run a server for the duration of the block; port 0 picks a free port.
    ``hooks``: the application's room logic (see :func:`serve`)."""
    stop = trio.Event()
    async with trio.open_nursery() as nursery:
        server: RunningServer = await nursery.start(
            partial(
                serve,
                config,
                host=host,
                port=port,
                transport=transport,
                shutdown_trigger=stop.wait,
                hooks=hooks,
            )
        )
        try:
            yield server
        finally:
            stop.set()
