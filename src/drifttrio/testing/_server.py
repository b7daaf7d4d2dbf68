"""A real drifttrio server in-process, reached over in-memory connections.

The same hub, room tasks, storage code and ASGI app as ``drifttrio serve``, and
hypercorn's own connection handler (``hypercorn.trio.tcp_server.TCPServer``, as
hypercorn's tests run it) on each connection; only the socket is replaced by an
in-memory stream. Nothing listens and nothing waits on the wall clock, so the
server runs under ``trio.testing.MockClock``.
"""

from __future__ import annotations

import json
import math
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast
from urllib.parse import urlencode, urlsplit

import attrs
import trio
import trio.testing
from hypercorn.trio.tcp_server import TCPServer
from hypercorn.trio.worker_context import WorkerContext
from hypercorn.utils import wrap_app
from trio_websocket import HandshakeError, WebSocketConnection, wrap_client_stream

from .._errors import RoomNotFound
from ..hooks import Hooks
from ..protocol.messages import SeqValue
from ..runtime.config import Config
from ..runtime.hub import Hub
from ..server import hypercorn_config
from ..storage import Storage
from ..web.app import DriftApp
from ..web.transport import serve_stream
from ..wiring import TransportName, checked_transport, open_app
from ._client import DriftClient, settle
from ._http import HttpResponse, exchange
from ._storage import FaultyStorage, StoreName, make_storage
from ._streams import Endpoint, connection_pair

if TYPE_CHECKING:
    from ._httpx import DriftTransport

__all__ = ["DriftTestServer", "MemberInfo", "RoomView", "TransportName", "open_test_server"]

#: Bytes buffered per direction of a WebSocket connection (roughly a socket's buffers).
DEFAULT_BUFFER_BYTES = 64 * 1024


@attrs.frozen
class MemberInfo:
    """One member of a live room, as the room sees it."""

    #: ``json`` or ``cbor`` for a WebSocket member, ``None`` for an in-process one.
    codec: str | None
    debug: bool
    explicit: bool
    #: Whether the member is closing or closed (e.g. kicked as a slow client).
    closed: bool
    #: The close code the room chose for it (4008: slow client), if any.
    close_code: int | None
    #: Frames waiting in its outbox.
    queued: int
    #: Frames dropped by the ``drop`` slow-client policy.
    dropped: int


@attrs.frozen
class RoomView:
    """A snapshot of a room: the live room's state if it is loaded, else the stored one."""

    room_id: str
    seq: int
    streams: dict[str, list[SeqValue]]
    #: Whether the room's task is running (it ends when the room is idle).
    live: bool
    members: tuple[MemberInfo, ...] = ()

    def values(self, key: str) -> list[Any]:
        """The retained values of ``key``, oldest first."""
        return [entry.value for entry in self.streams.get(key, ())]

    @property
    def open_members(self) -> int:
        """Members that are not closed."""
        return sum(not m.closed for m in self.members)


@attrs.define(eq=False)
class _ServedStream:
    client: Endpoint
    done: trio.Event


class DriftTestServer:
    """A running in-process server. Made by :func:`open_test_server`."""

    def __init__(
        self,
        app: DriftApp,
        hub: Hub,
        storage: FaultyStorage,
        *,
        host: str,
        transport: TransportName,
        server_nursery: trio.Nursery,
        client_nursery: trio.Nursery,
    ) -> None:
        self.hub = hub
        self.config = hub.config
        #: The storage the hub uses; inject faults with ``storage.fail_next(...)``.
        self.storage = storage
        #: The ``Host`` clients send (and so the host in ``socket_url``/``http_url``).
        self.host = host
        self.transport = transport
        #: ``trio.current_time()`` when the server started.
        self.started_at = trio.current_time()
        self.app = app
        self._hypercorn = hypercorn_config(self.config, "127.0.0.1", 0)
        self._asgi = wrap_app(cast(Any, self.app), self._hypercorn.wsgi_max_body_size, "asgi")
        self._context = WorkerContext(None)
        self._server_nursery = server_nursery
        self._client_nursery = client_nursery
        self._connections: list[_ServedStream] = []

    # -- connections ---------------------------------------------------------------

    def _open_connection(
        self, buffer_bytes: float, client_address: tuple[str, int] | None
    ) -> tuple[Endpoint, trio.Event]:
        client, server = connection_pair(buffer_bytes, client_address=client_address)
        done = trio.Event()
        self._connections = [c for c in self._connections if not c.done.is_set()]
        self._connections.append(_ServedStream(client, done))
        self._server_nursery.start_soon(self._serve, server, done)
        return client, done

    async def _serve(self, stream: Endpoint, done: trio.Event) -> None:
        try:
            if self.transport == "hypercorn":
                await TCPServer(self._asgi, self._hypercorn, self._context, {}, cast(Any, stream))
            else:
                await serve_stream(
                    self.app,
                    self.config,
                    stream,
                    client=stream.socket.getpeername(),
                    server=stream.socket.getsockname(),
                )
        finally:
            done.set()

    async def open_stream(self, host: str = "", port: int = 0, tls: bool = False, /) -> Endpoint:
        """A new raw in-memory connection to the server (the arguments are ignored).

        Its signature is a :data:`drifttrio.client.StreamOpener`:
        ``connect(url, open_stream=server.open_stream)``.
        """
        client, _ = self._open_connection(DEFAULT_BUFFER_BYTES, None)
        await trio.lowlevel.checkpoint()
        return client

    @property
    def open_connections(self) -> int:
        """Connections the server has not finished with yet (HTTP and WebSocket)."""
        return sum(not c.done.is_set() for c in self._connections)

    async def connect(
        self,
        room: str,
        *,
        cbor: bool = False,
        binary: bool | None = None,
        debug: bool = False,
        explicit: bool = False,
        query: str = "",
        buffer_bytes: float = DEFAULT_BUFFER_BYTES,
        headers: Iterable[tuple[str, str]] = (),
        client_address: tuple[str, int] | None = None,
    ) -> DriftClient:
        """Open a WebSocket to a room (a room id, or a ``socket_url`` from ``/new``).

        ``cbor`` asks the server for CBOR frames; ``binary`` sends CBOR frames
        (defaults to ``cbor``). ``debug``/``explicit`` add ``?debug=true`` and
        ``?subscribe=explicit``; ``query`` is appended verbatim. ``buffer_bytes``
        bounds each direction of the connection (see :meth:`DriftClient.stall`).
        ``client_address`` is the peer address the server sees (default:
        127.0.0.1 with a port of its own), for per-address limits.

        Raises :class:`trio_websocket.ConnectionRejected` if the server refuses
        the upgrade (404 for an unknown room).
        """
        if "://" in room:
            parts = urlsplit(room)
            resource = parts.path + (f"?{parts.query}" if parts.query else "")
            room = parts.path.rstrip("/").split("/")[-2]
        else:
            resource = f"/room/{room}/connect"
        params = {"cbor": cbor, "debug": debug}
        flags = urlencode({k: "true" for k, on in params.items() if on})
        if explicit:
            flags = "&".join(filter(None, [flags, "subscribe=explicit"]))
        for extra in (flags, query.lstrip("?&")):
            if extra:
                resource += ("&" if "?" in resource else "?") + extra
        client, done = self._open_connection(buffer_bytes, client_address)
        websocket, nursery = await self._client_nursery.start(
            self._run_client, client, resource, [(k.encode(), v.encode()) for k, v in headers]
        )
        return DriftClient(
            websocket,
            client,
            room,
            binary=cbor if binary is None else binary,
            server_done=done,
            nursery=nursery,
        )

    async def _run_client(
        self,
        stream: Endpoint,
        resource: str,
        headers: list[tuple[bytes, bytes]],
        *,
        task_status: trio.TaskStatus[tuple[WebSocketConnection, trio.Nursery]],
    ) -> None:
        # Each client gets a nursery of its own for trio-websocket's reader task,
        # which raises ConnectionRejected there when the upgrade is refused.
        try:
            async with trio.open_nursery() as nursery:
                websocket = await wrap_client_stream(
                    nursery,
                    cast(Any, stream),
                    self.host,
                    resource,
                    extra_headers=headers,
                    max_message_size=max(self.config.max_message_bytes * 2, 1 << 20),
                )
                task_status.started((websocket, nursery))
        except BaseExceptionGroup as group:
            if len(group.exceptions) == 1 and isinstance(group.exceptions[0], HandshakeError):
                raise group.exceptions[0] from None
            raise

    # -- HTTP ----------------------------------------------------------------------

    async def request(
        self,
        method: str,
        path: str,
        *,
        json_body: Any = None,
        body: bytes = b"",
        headers: Iterable[tuple[str, str]] = (),
        client_address: tuple[str, int] | None = None,
    ) -> HttpResponse:
        """One HTTP request over a new in-memory connection (``json_body``: sent as JSON)."""
        extra = list(headers)
        if json_body is not None:
            body = json.dumps(json_body).encode()
            extra.append(("content-type", "application/json"))
        client, _ = self._open_connection(math.inf, client_address)
        try:
            return await exchange(client, self.host, method, path, extra, body)
        finally:
            await client.aclose()

    async def new_room(self) -> str:
        """``POST /new``; the new room's id."""
        response = await self.request("POST", "/new")
        if response.status != 200:
            raise AssertionError(f"POST /new answered {response.status}: {response.body!r}")
        room: str = response.json()["room"]
        return room

    async def send(self, room: str, message: Any) -> HttpResponse:
        """``POST /room/ID/send`` with one client message (a dict, sent as JSON)."""
        return await self.request("POST", f"/room/{room}/send", json_body=message)

    def httpx_transport(self) -> DriftTransport:
        """An ``httpx.AsyncBaseTransport`` into this server (needs ``httpx``)::

        httpx.AsyncClient(transport=server.httpx_transport(), base_url="http://drift.test")
        """
        from ._httpx import DriftTransport

        return DriftTransport(self)

    # -- inspection ------------------------------------------------------------------

    async def room_state(self, room: str) -> RoomView:
        """The room's seq, retained streams and members.

        Read from the live room if it is loaded (call :func:`settle` first to see
        the effect of everything sent so far), else from storage. Raises
        :class:`~drifttrio.RoomNotFound` if the room does not exist.
        """
        live = self.hub.rooms.get(room)
        if live is not None and not live.closed:
            members = tuple(
                MemberInfo(
                    codec=None if conn.encoder is None else conn.encoder.name,
                    debug=conn.debug,
                    explicit=conn.explicit,
                    closed=conn.closed,
                    close_code=conn.close_code,
                    queued=len(conn.outbox),
                    dropped=conn.dropped,
                )
                for conn in live.members
            )
            return RoomView(room, live.state.seq, dict(live.state.dump()), True, members)
        snapshot = await self.storage.inner.load_room(room)
        if snapshot is None:
            raise RoomNotFound(room)
        streams = {key: list(stream.entries) for key, stream in snapshot.streams.items()}
        return RoomView(room, snapshot.seq, streams, False)

    # -- stopping --------------------------------------------------------------------

    async def shutdown(self) -> None:
        """Shut down as ``drifttrio serve`` does: every member is closed with 1001.

        Waits up to ``write_timeout`` for the connections to finish.
        """
        self.hub.close_all()
        with trio.move_on_after(self.config.write_timeout):
            for connection in list(self._connections):
                await connection.done.wait()

    def _drop_all(self) -> None:
        for connection in self._connections:
            connection.client.reset()


@asynccontextmanager
async def open_test_server(
    config: Config | None = None,
    *,
    store: StoreName | Storage = "memory",
    tmp_path: str | Path | None = None,
    transport: TransportName = "drifttrio",
    host: str = "drift.test",
    hooks: Hooks | None = None,
) -> AsyncIterator[DriftTestServer]:
    """Run a drifttrio server in-process for the duration of the block.

    ``store``: ``memory``, ``sqlite`` (a file in ``tmp_path`` if given, else an
    in-memory database) or a :class:`~drifttrio.storage.Storage` of your own.
    The built-in stores stamp activity with ``trio.current_time``, so room TTLs
    follow a MockClock. ``config.store`` is ignored. ``transport`` picks the
    connection handler, as ``drifttrio serve --transport`` does. ``hooks``: the
    application's room logic (:class:`drifttrio.hooks.Hooks`).

    On exit, connections still open are dropped and every task is cancelled;
    a MockClock autojumps meanwhile (shutdown has deadlines), then is restored.
    """
    transport = checked_transport(transport)
    config = config or Config()
    path = Path(tmp_path) / "drifttrio.db" if tmp_path is not None else None
    storage = FaultyStorage(make_storage(store, path))
    # Shutting down waits on deadlines (sessions get a moment to say goodbye, in
    # shielded scopes), so a MockClock autojumps while the server stops: under
    # `mock_clock` too, leaving the block never waits for a jump that never comes.
    clock = trio.lowlevel.current_clock()
    threshold = clock.autojump_threshold if isinstance(clock, trio.testing.MockClock) else None
    try:
        async with (
            open_app(config, storage, hooks) as (hub, app),
            trio.open_nursery() as server_nursery,
        ):
            try:
                async with trio.open_nursery() as client_nursery:
                    server = DriftTestServer(
                        app,
                        hub,
                        storage,
                        host=host,
                        transport=transport,
                        server_nursery=server_nursery,
                        client_nursery=client_nursery,
                    )
                    try:
                        yield server
                    finally:
                        if isinstance(clock, trio.testing.MockClock):
                            clock.autojump_threshold = 0
                        server._drop_all()
                        with trio.CancelScope(shield=True):
                            await settle()
                        client_nursery.cancel_scope.cancel()
            finally:
                server_nursery.cancel_scope.cancel()
    finally:
        if isinstance(clock, trio.testing.MockClock) and threshold is not None:
            clock.autojump_threshold = threshold
