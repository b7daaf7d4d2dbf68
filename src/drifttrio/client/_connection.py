"""A WebSocket connection to a room that reconnects and resumes where it was.

Every subscription remembers the last seq it delivered. On reconnect each key is
asked for again with ``get`` from the lowest of those seqs, and each subscription
drops what it already has, so retained messages arrive exactly once and in
order. While a ``get`` is outstanding, pushes for its key are held back and
merged with the ``init`` by seq (a push can overtake the ``init`` it is part of).
Relays sent while the socket was down are gone: each reconnect reports a
:class:`~drifttrio.client.Gap` per key instead of staying silent.
"""

from __future__ import annotations

import itertools
import ssl
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager, suppress
from types import TracebackType
from typing import Any, TypeAlias, cast
from urllib.parse import urlsplit

import attrs
import trio
from trio_websocket import ConnectionClosed as WsClosed
from trio_websocket import HandshakeError, WebSocketConnection, wrap_client_stream

from .._errors import RoomNotFound
from ._backoff import Backoff
from ._errors import ConnectFailed, ConnectionClosed, QueueFull, UnsentPushes
from ._events import (
    Connected,
    ConnectionEvent,
    Disconnected,
    EventCursor,
    EventLog,
    Gap,
    GaveUp,
    Reconnecting,
    ServerError,
    Update,
)
from ._wire import ActionName, Message, decode, encode, push_message

__all__ = ["Connection", "StreamOpener", "Subscription", "connect"]

#: ``(host, port, tls) -> stream``: how the client reaches the server. The default
#: opens TCP (and TLS for ``wss://``); tests pass an in-memory one.
StreamOpener: TypeAlias = Callable[[str, int, bool], Awaitable[trio.abc.Stream]]

_NETWORK_ERRORS = (
    OSError,
    trio.BrokenResourceError,
    trio.ClosedResourceError,
    trio.TooSlowError,
    HandshakeError,
    WsClosed,
)


async def open_tcp(host: str, port: int, tls: bool) -> trio.abc.Stream:
    """The default :data:`StreamOpener`: TCP, with TLS for ``wss://``."""
    stream = await trio.open_tcp_stream(host, port)
    if not tls:
        return stream
    ssl_stream = trio.SSLStream(stream, ssl.create_default_context(), server_hostname=host)
    await ssl_stream.do_handshake()
    return ssl_stream


class _Overflow(Exception):
    """A subscription held back more pushes than allowed while waiting for its init."""


@attrs.define(eq=False)
class _Pending:
    """One ``get`` on the wire, answered by the next ``init`` of its key."""

    subs: list[Subscription] = attrs.field(factory=list)
    result: list[list[tuple[int, Any]]] = attrs.field(factory=list)
    done: trio.Event | None = None
    #: The chunks so far of an answer sent as several inits (``"more": true``).
    chunks: list[tuple[int, Any]] = attrs.field(factory=list)


class Subscription:
    """An async iterator of :class:`Update` ``(seq, value)`` for one key.

    Made by :meth:`Connection.subscribe`. ``last_seq`` is the seq of the last
    update handed over; ``gaps`` lists every reconnect that may have lost relays.
    Iteration ends when the subscription or the connection is closed, and raises
    :class:`ConnectionClosed` if the connection gave up.
    """

    def __init__(self, conn: Connection, key: str, since: int, buffer: int) -> None:
        self.key = key
        self.last_seq = since
        self.gaps: list[Gap] = []
        self._conn = conn
        self._send, self._receive = trio.open_memory_channel[Update](buffer)
        self.pending = True  # a get for this subscription awaits its init
        self.requested = False  # that get was sent on the current socket
        self.held: list[tuple[int, Any]] = []  # pushes that came while pending
        self.closed = False

    async def deliver(self, seq: int, value: Any) -> None:
        """Hand over one update unless it is old; waits while the consumer is behind."""
        if seq <= self.last_seq or self.closed:
            return
        try:
            await self._send.send(Update(seq, value))
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            self.closed = True
            return
        self.last_seq = seq

    def __aiter__(self) -> Subscription:
        return self

    async def __anext__(self) -> Update:
        try:
            return await self._receive.receive()
        except (trio.EndOfChannel, trio.ClosedResourceError):
            if self._conn.failure is not None:
                raise ConnectionClosed(str(self._conn.failure)) from self._conn.failure
            raise StopAsyncIteration from None

    def receive_nowait(self) -> Update:
        """The next update if one is waiting, else raise :class:`trio.WouldBlock`."""
        return self._receive.receive_nowait()

    def close(self) -> None:
        """Stop receiving (the server is not told: the protocol has no unsubscribe)."""
        self.closed = True
        self._send.close()
        self._conn._forget(self)

    async def __aenter__(self) -> Subscription:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class Connection:
    """A live connection to one room. Open it with :func:`connect`."""

    def __init__(
        self,
        socket_url: str,
        *,
        cbor: bool,
        backoff: Backoff,
        max_queued: int,
        subscription_buffer: int,
        max_held: int,
        connect_timeout: float,
        open_stream: StreamOpener,
        event_log_size: int,
        nursery: trio.Nursery,
    ) -> None:
        self.socket_url = socket_url
        self.cbor = cbor
        self.backoff = backoff
        self.max_queued = max_queued
        #: Round-trip time of the last :meth:`ping`, in seconds.
        self.latency: float | None = None
        #: Last ``stream_size`` the server sent for each key (after this client's pushes).
        self.stream_sizes: dict[str, int] = {}
        #: Highest seq seen from the room on any key.
        self.room_seq = 0
        #: Successful reconnects so far.
        self.reconnects = 0
        #: Why the connection gave up, once it has.
        self.failure: BaseException | None = None
        self._subscription_buffer = subscription_buffer
        self._max_held = max_held
        self._connect_timeout = connect_timeout
        self._open_stream = open_stream
        self._nursery = nursery
        self._events = EventLog(event_log_size)
        self._ws: WebSocketConnection | None = None
        self._connected = trio.Event()
        self._lost = trio.Event()
        self._send_lock = trio.Lock()
        self._queue: deque[Message] = deque()
        self._subs: dict[str, list[Subscription]] = {}
        self._pending: dict[str, deque[_Pending]] = {}
        self._gets: list[tuple[str, int, _Pending]] = []  # one-shot gets awaiting init
        self._pings: dict[int, trio.Event] = {}
        self._nonces = itertools.count(1)
        self._size_listeners: dict[str, list[Callable[[int], None]]] = {}
        self._closing = False
        self._run_scope = trio.CancelScope()

    # -- state -------------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        return self._ws is not None

    @property
    def queued(self) -> int:
        """Pushes waiting for the connection."""
        return len(self._queue)

    def events(self, *, history: bool = False) -> EventCursor:
        """Follow what happens to the connection (``history``: starting with what already did)."""
        return self._events.follow(history=history)

    @property
    def event_history(self) -> list[ConnectionEvent]:
        """The most recent events (bounded)."""
        return self._events.history

    def _emit(self, event: ConnectionEvent) -> None:
        self._events.add(event)

    # -- sending -------------------------------------------------------------------------

    async def _send(self, ws: WebSocketConnection, message: Message) -> None:
        await ws.send_message(encode(message, cbor=self.cbor))

    async def push(
        self, key: str, value: Any, action: ActionName = "append", *, seq: int | None = None
    ) -> None:
        """Send a push (``seq``: the compaction point of a ``compact``).

        While disconnected it is queued and sent, in order, after the reconnect;
        raises :class:`QueueFull` if ``max_queued`` pushes already wait.
        """
        message = push_message(key, value, action, seq)
        self._check_open()
        async with self._send_lock:
            if self._ws is not None and not self._queue:
                try:
                    await self._send(self._ws, message)
                    return
                except WsClosed:
                    pass  # not sent: queue it for the next socket
            if len(self._queue) >= self.max_queued:
                raise QueueFull(
                    f"{len(self._queue)} pushes already wait for the connection "
                    f"(max_queued={self.max_queued})"
                )
            self._queue.append(message)

    async def send_raw(self, message: Message) -> None:
        """Send one message as given, if connected (for protocol tests)."""
        ws = await self._wait_connected()
        async with self._send_lock:
            await self._send(ws, message)

    def _check_open(self) -> None:
        if self.failure is not None:
            raise ConnectionClosed(f"the connection gave up: {self.failure}") from self.failure
        if self._closing:
            raise ConnectionClosed("the connection is closed")

    async def _wait_connected(self) -> WebSocketConnection:
        while True:
            self._check_open()
            if self._ws is not None:
                return self._ws
            await self._connected.wait()

    # -- subscriptions and gets -----------------------------------------------------------

    def subscribe(self, key: str, *, since: int = 0, buffer: int | None = None) -> Subscription:
        """Updates of ``key`` with a seq above ``since``: retained ones first, then live.

        ``buffer`` updates wait for the consumer; beyond that the connection stops
        reading (and, if the server drops it as a slow client, resumes later).
        """
        self._check_open()
        sub = Subscription(self, key, since, buffer or self._subscription_buffer)
        self._subs.setdefault(key, []).append(sub)
        self._nursery.start_soon(self._request, sub)
        return sub

    def _forget(self, sub: Subscription) -> None:
        subs = self._subs.get(sub.key)
        if subs is not None and sub in subs:
            subs.remove(sub)
            if not subs:
                del self._subs[sub.key]

    async def _request(self, sub: Subscription) -> None:
        async with self._send_lock:
            ws = self._ws
            if ws is None or sub.requested or sub.closed:
                return  # the next socket asks for it
            sub.requested = True
            self._pending.setdefault(sub.key, deque()).append(_Pending([sub]))
            with suppress(WsClosed):
                await self._send(ws, {"type": "get", "key": sub.key, "seq": sub.last_seq})

    async def get(self, key: str, since: int = 0) -> list[tuple[int, Any]]:
        """The retained values of ``key`` with a seq above ``since``, as ``(seq, value)``.

        Waits for a connection; asked again after a reconnect if need be.
        """
        entry = _Pending(done=trio.Event())
        self._gets.append((key, since, entry))
        try:
            async with self._send_lock:
                if self._ws is not None:
                    self._pending.setdefault(key, deque()).append(entry)
                    with suppress(WsClosed):
                        await self._send(self._ws, {"type": "get", "key": key, "seq": since})
            while not entry.result:
                self._check_open()
                assert entry.done is not None
                await entry.done.wait()
                if self.failure is not None:
                    self._check_open()
            return entry.result[0]
        finally:
            self._gets = [g for g in self._gets if g[2] is not entry]

    def on_stream_size(self, key: str, listener: Callable[[int], None]) -> None:
        """Call ``listener(size)`` for every ``stream_size`` of ``key``."""
        self._size_listeners.setdefault(key, []).append(listener)

    # -- ping --------------------------------------------------------------------------

    async def ping(self) -> float:
        """Round trip to the server in seconds (also kept in ``latency``)."""
        while True:
            ws = await self._wait_connected()
            nonce = next(self._nonces)
            pong = self._pings[nonce] = trio.Event()
            lost = self._lost
            start = trio.current_time()
            try:
                async with self._send_lock:
                    await self._send(ws, {"type": "ping", "nonce": nonce})
                async with trio.open_nursery() as nursery:

                    async def _cancel_when(event: trio.Event) -> None:
                        await event.wait()
                        nursery.cancel_scope.cancel()

                    nursery.start_soon(_cancel_when, pong)
                    nursery.start_soon(_cancel_when, lost)
            except WsClosed:
                pass
            finally:
                self._pings.pop(nonce, None)
            if pong.is_set():
                self.latency = trio.current_time() - start
                return self.latency

    # -- the connection task ---------------------------------------------------------------

    async def _run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        with self._run_scope:
            await self._serve_once(first=True, task_status=task_status)
            while not self._closing:
                down_since = trio.current_time()
                if not await self._reconnect(down_since):
                    return

    async def _reconnect(self, down_since: float) -> bool:
        """Retry with backoff until a socket has come and gone; False if given up."""
        for attempt, delay in enumerate(self.backoff.delays(), start=1):
            self._emit(Reconnecting(trio.current_time(), attempt, delay))
            await trio.sleep(delay)
            try:
                await self._serve_once(first=False, down_since=down_since)
                return True
            except ConnectFailed as exc:
                if exc.status == 404:
                    self._give_up(RoomNotFound(f"the room is gone: {self.socket_url}"))
                    return False
        self._give_up(ConnectionClosed(f"gave up after {self.backoff.max_attempts} attempts"))
        return False

    def _give_up(self, failure: BaseException) -> None:
        self.failure = failure
        self._emit(GaveUp(trio.current_time(), str(failure)))
        self._finish()

    def _finish(self) -> None:
        for subs in self._subs.values():
            for sub in subs:
                sub._send.close()
        self._connected.set()  # wake waiters so they see the failure
        self._lost.set()
        for entry in self._pending_gets():
            assert entry.done is not None
            entry.done.set()
        self._events.close()

    def _pending_gets(self) -> Iterator[_Pending]:
        return (entry for _, _, entry in self._gets)

    def _resource(self) -> tuple[str, int, bool, str, str]:
        url = urlsplit(self.socket_url)
        tls = url.scheme in ("wss", "https")
        host = url.hostname or "localhost"
        port = url.port or (443 if tls else 80)
        resource = (url.path or "/") + (f"?{url.query}" if url.query else "")
        if self.cbor:
            resource += ("&" if "?" in resource else "?") + "cbor=true"
        return host, port, tls, url.netloc, resource

    async def _serve_once(
        self,
        *,
        first: bool,
        down_since: float = 0.0,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Open a socket, resume, read until it is lost. ConnectFailed if it never opened."""
        host, port, tls, netloc, resource = self._resource()
        opened = False
        stream: trio.abc.Stream | None = None
        try:
            with trio.fail_after(self._connect_timeout):
                stream = await self._open_stream(host, port, tls)
            async with trio.open_nursery() as nursery:
                with trio.fail_after(self._connect_timeout):
                    ws = await wrap_client_stream(
                        nursery, cast(Any, stream), netloc, resource, max_message_size=1 << 24
                    )
                opened = True
                try:
                    gaps = await self._resume(ws, first=first, down_since=down_since)
                    self._emit(Connected(trio.current_time(), not first, gaps))
                    task_status.started()
                    reason, code = await self._read(ws)
                finally:
                    self._lose()
                    with trio.CancelScope(shield=True), trio.move_on_after(1):
                        await ws.aclose()
                    nursery.cancel_scope.cancel()
                self._emit(Disconnected(trio.current_time(), reason, code))
        except BaseExceptionGroup as group:
            leaf = _only_leaf(group)
            if leaf is None:
                raise
            self._failed(leaf, opened)
        except _NETWORK_ERRORS as exc:
            self._failed(exc, opened)
        finally:
            if stream is not None:
                with trio.CancelScope(shield=True):
                    await stream.aclose()

    def _failed(self, exc: BaseException, opened: bool) -> None:
        if not opened:
            status = exc.status_code if hasattr(exc, "status_code") else None
            raise ConnectFailed(f"cannot connect to {self.socket_url}: {exc!r}", status=status)
        self._emit(Disconnected(trio.current_time(), repr(exc), None))

    async def _resume(
        self, ws: WebSocketConnection, *, first: bool, down_since: float
    ) -> tuple[Gap, ...]:
        """Ask again for every subscribed key and pending get; flush queued pushes."""
        now = trio.current_time()
        gaps: list[Gap] = []
        async with self._send_lock:
            self._pending.clear()
            for key, subs in list(self._subs.items()):
                live = [sub for sub in subs if not sub.closed]
                if not live:
                    continue
                for sub in live:
                    sub.pending = sub.requested = True
                    sub.held.clear()
                    if not first:
                        gap = Gap(key, sub.last_seq, down_since, now)
                        sub.gaps.append(gap)
                        gaps.append(gap)
                self._pending.setdefault(key, deque()).append(_Pending(live))
                since = min(sub.last_seq for sub in live)
                await self._send(ws, {"type": "get", "key": key, "seq": since})
            for key, since, entry in self._gets:
                entry.chunks.clear()  # a long init cut short by the lost socket
                self._pending.setdefault(key, deque()).append(entry)
                await self._send(ws, {"type": "get", "key": key, "seq": since})
            while self._queue:
                await self._send(ws, self._queue[0])
                self._queue.popleft()
            self._ws = ws
            self._connected.set()
            if not first:
                self.reconnects += 1
        return tuple(gaps)

    def _lose(self) -> None:
        self._ws = None
        self._connected = trio.Event()
        self._lost.set()
        self._lost = trio.Event()
        for subs in self._subs.values():
            for sub in subs:
                sub.requested = False

    async def _read(self, ws: WebSocketConnection) -> tuple[str, int | None]:
        while True:
            try:
                frame = await ws.get_message()
            except WsClosed as exc:
                reason = exc.reason
                if reason is None:
                    return "closed", None
                return f"closed by the server: {reason.code} {reason.reason or ''}", reason.code
            try:
                message = decode(frame)
            except ValueError as exc:
                self._emit(ServerError(trio.current_time(), str(exc)))
                continue
            try:
                await self._dispatch(message)
            except _Overflow as exc:
                return str(exc), None
            except (KeyError, TypeError, ValueError) as exc:
                self._emit(ServerError(trio.current_time(), f"malformed {message!r}: {exc!r}"))

    async def _dispatch(self, message: Message) -> None:
        kind = message["type"]
        if kind == "push":
            key, seq, value = message["key"], int(message["seq"]), message.get("value")
            self.room_seq = max(self.room_seq, seq)
            for sub in list(self._subs.get(key, ())):
                if sub.pending:
                    if len(sub.held) >= self._max_held:
                        raise _Overflow(f"more than {self._max_held} pushes held for {key!r}")
                    sub.held.append((seq, value))
                else:
                    await sub.deliver(seq, value)
        elif kind == "init":
            key = message["key"]
            data = [(int(entry["seq"]), entry["value"]) for entry in message["data"]]
            if data:
                self.room_seq = max(self.room_seq, data[-1][0])
            queue = self._pending.get(key)
            if not queue:
                return  # not ours to answer (e.g. a debug connection's)
            if message.get("more"):  # a long stream: more inits answer the same get
                queue[0].chunks += data
                return
            entry = queue.popleft()
            if entry.chunks:
                data = entry.chunks + data
            if entry.done is not None:
                entry.result.append(data)
                entry.done.set()
            for sub in entry.subs:
                if not sub.pending:
                    continue
                merged = dict(data)
                merged.update(sub.held)
                sub.held.clear()
                sub.pending = False
                for seq in sorted(merged):
                    await sub.deliver(seq, merged[seq])
        elif kind == "stream_size":
            key, size = message["key"], int(message["size"])
            self.stream_sizes[key] = size
            for listener in list(self._size_listeners.get(key, ())):
                listener(size)
        elif kind == "pong":
            pong = self._pings.get(message.get("nonce"))  # type: ignore[arg-type]
            if pong is not None:
                pong.set()
        elif kind == "error":
            self._emit(ServerError(trio.current_time(), str(message.get("message"))))

    # -- closing ---------------------------------------------------------------------------

    def _close(self) -> list[Message]:
        self._closing = True
        self._run_scope.cancel()
        self._finish()
        unsent = list(self._queue)
        self._queue.clear()
        return unsent


def _only_leaf(
    group: BaseExceptionGroup[BaseException],
    kinds: tuple[type[BaseException], ...] = _NETWORK_ERRORS,
) -> BaseException | None:
    """The one exception of ``kinds`` in a group (ignoring cancellations), if that is all."""
    leaves: list[BaseException] = []

    def walk(exc: BaseException) -> None:
        if isinstance(exc, BaseExceptionGroup):
            for inner in exc.exceptions:
                walk(inner)
        elif not isinstance(exc, trio.Cancelled):
            leaves.append(exc)

    walk(group)
    if len(leaves) == 1 and isinstance(leaves[0], kinds):
        return leaves[0]
    return None


@asynccontextmanager
async def connect(
    socket_url: str,
    *,
    cbor: bool = False,
    backoff: Backoff | None = None,
    max_queued: int = 1000,
    subscription_buffer: int = 1024,
    max_held: int = 10_000,
    connect_timeout: float = 10.0,
    open_stream: StreamOpener = open_tcp,
    event_log_size: int = 1000,
) -> AsyncIterator[Connection]:
    """Connect to a room's ``socket_url``; reconnect automatically until the block ends.

    The first connection must succeed (else :class:`ConnectFailed`, or
    :class:`~drifttrio.RoomNotFound` for an unknown room); later losses are retried
    with ``backoff``. ``cbor`` uses CBOR frames both ways. Leaving the block with
    pushes still queued raises :class:`UnsentPushes`.
    """
    try:
        async with trio.open_nursery() as nursery:
            conn = Connection(
                socket_url,
                cbor=cbor,
                backoff=backoff or Backoff(),
                max_queued=max_queued,
                subscription_buffer=subscription_buffer,
                max_held=max_held,
                connect_timeout=connect_timeout,
                open_stream=open_stream,
                event_log_size=event_log_size,
                nursery=nursery,
            )
            try:
                await nursery.start(conn._run)
            except ConnectFailed as exc:
                if exc.status == 404:
                    raise RoomNotFound(socket_url) from exc
                raise
            try:
                yield conn
            finally:
                unsent = conn._close()
                nursery.cancel_scope.cancel()
    except BaseExceptionGroup as group:
        # What the block (or the first connection) raised, not wrapped in a group.
        leaf = _only_leaf(group, (Exception,))
        if leaf is None:
            raise
        raise leaf from None
    if unsent:
        raise UnsentPushes(unsent)
