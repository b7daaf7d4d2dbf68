"""The hub: the registry of live rooms, and the in-process API.

A :class:`Hub` runs in a nursery (``await nursery.start(hub.run)``); rooms are
loaded from storage on first use and started as tasks in the hub's nursery, and
end themselves when idle. Applications can use a hub directly, with no network::

    async with open_hub() as hub:
        room = await hub.create_room()
        async with hub.subscribe(room) as events:
            await hub.push(room, "k", {"hello": 1})
            print(await anext(events))
"""

from __future__ import annotations

import logging
import math
import re
import secrets
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager, suppress
from typing import Final, Literal

import attrs
import trio

from .._errors import (
    CapacityError,
    CloseCode,
    ProtocolError,
    PushConflict,
    RoomNotFound,
    ShuttingDown,
    StorageError,
)
from ..core.budget import BudgetAccount, RetainedBudget
from ..core.room_state import RoomLimits, RoomState
from ..hooks import HookRefused, Hooks, RoomCreated, RoomDeleted, RoomExpired, configured_hooks
from ..hooks._runner import HookRunner
from ..protocol.codec import check_value
from ..protocol.messages import (
    Action,
    Append,
    Error,
    Init,
    SeqValue,
    ServerMessage,
    StreamSize,
    Value,
)
from ..storage import Storage, open_storage
from ..storage.base import ExclusiveStorage, ServedStorage, SharedStorage, WriteHealth
from .commands import Outcome
from .config import Config
from .member import QUEUE_FAIR_BYTES, Encoder, Member, Outbox, QueueBudget
from .metrics import Metrics
from .redact import room_tag
from .room import Command, GetCommand, Join, Leave, PushCommand, Reply, Room

__all__ = ["Hub", "Subscription", "open_hub", "valid_room_id"]

log = logging.getLogger("drifttrio.hub")

_ROOM_ID = re.compile(r"[A-Za-z0-9_-]{1,128}")

#: How often :meth:`Hub.write_problem` may test a store whose writes failed (each
#: test is one small write, behind the same one-at-a-time limiter as the commits).
WRITE_PROBE_INTERVAL: Final = 1.0


def new_room_id() -> str:
    """A fresh 128-bit random id that does not start with ``-``: one in 64 did, and
    ``drifttrio rooms export ID`` took it for an option."""
    while True:
        room_id = secrets.token_urlsafe(16)
        if not room_id.startswith("-"):
            return room_id


def valid_room_id(room_id: str) -> bool:
    """Whether ``room_id`` has the shape of a room id (anything else is unknown)."""
    return _ROOM_ID.fullmatch(room_id) is not None


class _KeptRooms:
    """What expiry must leave alone: rooms live here (or being touched), and, of
    several workers on one store, the rooms of the others (live there, unseen here)."""

    __slots__ = ("live", "owns")

    def __init__(self, live: set[str], owns: Callable[[str], bool] | None) -> None:
        self.live = live
        self.owns = owns

    def __contains__(self, room_id: object) -> bool:
        if room_id in self.live:
            return True
        return self.owns is not None and isinstance(room_id, str) and not self.owns(room_id)


class Hub:
    """Live rooms of one server, each a task in the hub's nursery."""

    def __init__(
        self,
        config: Config | None = None,
        storage: Storage | None = None,
        metrics: Metrics | None = None,
        hooks: Hooks | None = None,
    ) -> None:
        self.config = config or Config()
        if hooks is None:
            hooks = configured_hooks(self.config)
        #: The application's room logic (``None``: none, and nothing is paid for it).
        self.hooks = (
            None
            if hooks is None
            else HookRunner(hooks, self.config.decode_limits, self.config.max_message_bytes)
        )
        #: This hub's Prometheus metrics (its own registry).
        self.metrics = metrics or Metrics()
        self.storage = storage if storage is not None else open_storage(self.config.store)
        if self.hooks is not None:
            self.hooks.check_store(self.storage)  # hooks this store cannot honour: now
        self.rooms: dict[str, Room] = {}
        self._loading: dict[str, trio.Event] = {}
        self._nursery: trio.Nursery | None = None
        self._touching: set[str] = set()
        #: Bytes retained by the live rooms, against ``max_retained_bytes``.
        self.budget = RetainedBudget(self.config.max_retained_bytes, self._reclaim)
        #: What all the outboxes of this hub's connections may hold together.
        self.queues = (
            QueueBudget(self.config.max_queued_bytes, QUEUE_FAIR_BYTES)
            if self.config.max_queued_bytes
            else None
        )
        if self.queues is not None:
            queues = self.queues
            self.metrics.queued_bytes.set_function(lambda: queues.used)
        self.metrics.retained_bytes.set_function(lambda: self.budget.used)
        #: When each live room was last sent a command from outside it (a join, an
        #: HTTP request, an in-process call): the oldest idle room is unloaded first.
        self._last_used: dict[str, float] = {}
        #: Set by :meth:`close_all`: the server is shutting down.
        self.closing = False
        self._rooms_closed = trio.Event()
        self._next_write_probe = float("-inf")
        #: Which rooms are this hub's (``drifttrio serve --workers``: the rooms of its
        #: worker, see :class:`drifttrio.workers.Shard`); ``None``: every room. It
        #: creates only its own, and expires only its own.
        self.owns: Callable[[str], bool] | None = None

    async def run(self, *, task_status: trio.TaskStatus[Hub] = trio.TASK_STATUS_IGNORED) -> None:
        """Host the room tasks until cancelled."""
        try:
            if isinstance(self.storage, ExclusiveStorage):
                # Before any room is served: two servers on one SQLite file would each
                # number the same room from its stored seq, and both commit.
                self.storage.take_store_lock("serve")
            async with trio.open_nursery() as nursery:
                if isinstance(self.storage, ServedStorage):
                    # A networked store (Redis) connects and carries its event feed here.
                    await nursery.start(self.storage.run)
                if self.hooks is not None:
                    await nursery.start(self._run_hooks, self.hooks)
                self._nursery = nursery
                if self.config.room_ttl_seconds > 0:
                    nursery.start_soon(self._expire_idle_rooms)
                task_status.started(self)
                await trio.sleep_forever()
        finally:
            self._nursery = None
            with trio.CancelScope(shield=True):
                await self.storage.aclose()

    async def _run_hooks(
        self, hooks: HookRunner, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """The hooks' lifespan and event tasks, for as long as the hub runs."""
        hooks.hooks.hub = self
        async with hooks.running(self.storage):
            task_status.started()
            await trio.sleep_forever()

    async def _expire_idle_rooms(self) -> None:
        """Delete rooms idle longer than the TTL (live rooms are never idle)."""
        ttl = self.config.room_ttl_seconds
        while True:
            await trio.sleep(min(ttl / 4, 300.0))
            try:
                if isinstance(self.storage, SharedStorage):
                    # Other nodes expire rooms too, and cannot see this node's members.
                    for room_id in list(self.rooms):
                        await self.storage.touch(room_id)
                expired = await self.storage.expire(
                    ttl, keep=_KeptRooms({*self.rooms, *self._touching}, self.owns)
                )
            except Exception as exc:
                log.warning("room expiry failed: %r", exc)
                continue
            if expired:
                log.info("expired %d idle room(s)", len(expired))
                if self.hooks is not None:
                    for room_id in expired:
                        self.hooks.emit(RoomExpired(room_id))

    def close_all(self, code: int = CloseCode.GOING_AWAY, reason: str = "server shutdown") -> None:
        """Start draining: ask every member of every live room to close, and close the
        rooms' inboxes, so each room applies (and commits) what is queued, then ends.

        From now on no room is loaded; :meth:`wait_rooms_closed` waits for the last.
        """
        self.closing = True
        self.metrics.draining.set(1)
        for room in list(self.rooms.values()):
            room.close_members(code, reason)
            room.inbox.close()
        if not self.rooms:
            self._rooms_closed.set()

    async def wait_rooms_closed(self) -> None:
        """After :meth:`close_all`: wait until every room has committed and ended."""
        await self._rooms_closed.wait()

    # -- storage health -------------------------------------------------------------

    async def write_problem(self) -> str | None:
        """Why the store cannot commit now, or ``None`` (readiness asks).

        A store that tracks its writes (:class:`~drifttrio.storage.base.WriteHealth`)
        reports the failure of its latest one, whoever made it (a room's commit, a
        create, an expiry). While it has one, a write probe runs at most every
        :data:`WRITE_PROBE_INTERVAL`, so the store counts as healed once it can
        write again, not only after the next push (which no load balancer would
        send to a server it thinks is not ready).
        """
        storage = self.storage
        if not isinstance(storage, WriteHealth) or storage.write_failure is None:
            return None
        now = trio.current_time()
        if now >= self._next_write_probe:
            self._next_write_probe = now + WRITE_PROBE_INTERVAL
            with suppress(StorageError):
                await storage.probe_write()
        return storage.write_failure

    # -- rooms ---------------------------------------------------------------------

    async def create_room(self) -> str:
        """Create a room with a fresh 128-bit random id."""
        limit = self.config.max_rooms
        if limit and await self.storage.count_rooms() >= limit:
            raise CapacityError(f"the server's limit of {limit} rooms is reached")
        room_id = new_room_id()
        while self.owns is not None and not self.owns(room_id):
            room_id = new_room_id()  # (of N workers' ids, 1 in N is this one's)
        await self.storage.create_room(room_id)
        if self.hooks is not None:
            self.hooks.emit(RoomCreated(room_id))
        return room_id

    async def delete_room(self, room_id: str) -> None:
        """Delete a room and its data: its members are closed with 4004 (room
        deleted), what its inbox holds is refused. :class:`RoomNotFound` if it does
        not exist."""
        if not await self.room_exists(room_id):
            raise RoomNotFound(room_id)
        room = self.rooms.get(room_id)
        if room is not None:
            room.close_members(CloseCode.ROOM_DELETED, "room deleted")
            self._release(room)
            room.inbox.close()
            await room.ended.wait()
        await self.storage.delete_room(room_id)
        if self.hooks is not None:
            self.hooks.emit(RoomDeleted(room_id))

    async def room_exists(self, room_id: str) -> bool:
        if not valid_room_id(room_id):
            return False
        return room_id in self.rooms or await self.storage.room_exists(room_id)

    async def room(self, room_id: str) -> Room:
        """The live room, loading it from storage if needed. Raises :class:`RoomNotFound`."""
        if not valid_room_id(room_id):
            raise RoomNotFound(room_id)
        while True:
            room = self.rooms.get(room_id)
            if room is not None and not room.closed:
                return room
            if self.closing:
                raise ShuttingDown("the server is shutting down")
            loading = self._loading.get(room_id)
            if loading is not None:
                await loading.wait()
                continue
            if self._nursery is None:
                raise RuntimeError("the hub is not running: start Hub.run in a nursery first")
            loading = self._loading[room_id] = trio.Event()
            try:
                room = await self._load(room_id)
                await self._nursery.start(room.run)
                self.rooms[room_id] = room
                self._settle(room)
                if self.closing:  # loaded while the drain started: drain it too
                    room.inbox.close()
                return room
            finally:
                del self._loading[room_id]
                loading.set()

    async def _load(self, room_id: str) -> Room:
        timers = self._nursery  # (where the rooms' join-gate timers run)
        assert timers is not None  # (room() checked that the hub runs)
        if isinstance(self.storage, SharedStorage):
            # Redis orders the room: follow its events, then load it (shared_room.py).
            from .shared_room import SharedOrderer

            orderer = SharedOrderer(self.storage)
            shared = Room(
                room_id,
                RoomState(limits=self._room_limits()),
                self.storage,
                self.config,
                self._forget,
                self.metrics,
                orderer,
                self.hooks,
                timers=timers,
            )
            await orderer.open(shared)
            return shared
        snapshot = await self.storage.load_room(room_id)
        if snapshot is None:
            raise RoomNotFound(room_id)
        state = RoomState(
            snapshot.seq,
            snapshot.streams,
            broadcast_compact=self.config.broadcast_compact,
            limits=self._room_limits(),
        )
        return Room(
            room_id,
            state,
            self.storage,
            self.config,
            self._forget,
            self.metrics,
            hooks=self.hooks,
            timers=timers,
        )

    def _forget(self, room: Room) -> None:
        self._release(room)
        if self.rooms.get(room.room_id) is room:
            del self.rooms[room.room_id]
            self._last_used.pop(room.room_id, None)
        if self.closing and not self.rooms:
            self._rooms_closed.set()
        if self._nursery is not None:
            # The TTL counts from the last activity, and members count as activity.
            # Until the touch lands, the expiry loop must treat the room as live.
            self._touching.add(room.room_id)
            self._nursery.start_soon(self._touch, room.room_id)

    async def _touch(self, room_id: str) -> None:
        try:
            await self.storage.touch(room_id)
        except Exception as exc:
            log.warning("touch failed for room %s: %r", room_tag(room_id), exc)
        finally:
            self._touching.discard(room_id)

    async def submit(self, room_id: str, command: Command) -> Room:
        """Send a command to a room's inbox (waiting if it is full)."""
        while True:
            room = await self.room(room_id)
            self._last_used[room_id] = trio.current_time()
            try:
                await room.inbox.send(command)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                if self.closing:
                    raise ShuttingDown("the server is shutting down") from None
                continue  # evicted in between: load it again
            return room

    # -- the retained-bytes budget -----------------------------------------------------

    def _room_limits(self) -> RoomLimits:
        """A new room's caps, with its own account of the server's budget."""
        return attrs.evolve(self.config.room_limits, account=self.budget.account())

    @staticmethod
    def _release(room: Room) -> None:
        """Give the room's retained bytes back to the budget (it is unloaded)."""
        account = room.state.limits.account
        if account is not None:
            account.close()

    def _settle(self, room: Room) -> None:
        """A room was loaded with its data: make room for it by unloading idle ones."""
        account = room.state.limits.account
        if account is not None:
            self.budget.settle(account)

    def _reclaim(self, needed: int, asking: BudgetAccount) -> None:
        """The budget is short of ``needed`` bytes: unload idle rooms (no members,
        nothing queued, parked waiting for a command), the longest unused first, until
        that much is given back. Their data stays in storage; they load on next use."""
        idle = [
            room
            for room in self.rooms.values()
            if self._unloadable(room) and room.state.limits.account is not asking
        ]
        idle.sort(key=lambda room: self._last_used.get(room.room_id, -math.inf))
        for room in idle:
            if needed <= 0:
                break
            account = room.state.limits.account
            assert account is not None
            needed -= account.bytes
            self._unload(room)

    @staticmethod
    def _unloadable(room: Room) -> bool:
        account = room.state.limits.account
        if room.members or room.closed or account is None or account.bytes <= 0:
            return False
        # Parked on an empty inbox: everything it applied is committed, so a copy
        # loaded from storage right away cannot reuse a seq.
        stats = room.inbox.statistics()
        return stats.current_buffer_used == 0 and stats.tasks_waiting_receive > 0

    def _unload(self, room: Room) -> None:
        """End an idle room now: the next command for it loads it afresh."""
        del self.rooms[room.room_id]
        self._last_used.pop(room.room_id, None)
        self._release(room)
        room.inbox.close()  # the room task sees the end of its inbox and ends
        self.metrics.rooms_evicted.inc()
        log.info("unloaded idle room %s to stay within max_retained_bytes", room_tag(room.room_id))

    async def request(
        self,
        room_id: str,
        make: Callable[[Reply], Command],
        source: Literal["http", "in_process"] = "in_process",
    ) -> Reply:
        """Submit ``make(reply)`` from outside the room and wait for its direct reply."""
        reply = Reply(source)
        await self.submit(room_id, make(reply))
        await reply.done.wait()
        return reply

    def new_member(
        self,
        *,
        encoder: Encoder | None = None,
        debug: bool = False,
        explicit: bool = False,
        transport: str = "in_process",
        asks_after_join: bool = False,
        write_now: Callable[[bytes], bool | None] | None = None,
        identity: object = None,
    ) -> Member:
        """A room member with an outbox sized by the config; ``write_now``: its
        transport's non-blocking write, if it has one (see :meth:`Member.flush`)."""
        return Member(
            encoder=encoder,
            outbox=Outbox(self.config.outbox_messages, self.config.outbox_bytes, self.queues),
            policy=self.config.slow_client_policy,
            debug=debug,
            explicit=explicit,
            metrics=self.metrics,
            transport=transport,
            asks_after_join=asks_after_join,
            write_now=write_now,
            identity=identity,
        )

    # -- in-process API ------------------------------------------------------------

    async def push(
        self,
        room_id: str,
        key: str,
        value: object,
        action: Action = Append(),  # noqa: B008 - frozen, immutable
        *,
        expect_seq: int | None = None,
    ) -> int | None:
        """Push a value; return the stream size if it holds more than one value.

        ``expect_seq``: a conditional push, applied only if the key's last retained
        seq is still this one where the room is ordered (0: the key retains nothing);
        otherwise :class:`PushConflict` is raised and nothing changed.

        Raises :class:`ProtocolError` if the room refuses it (e.g. a compact seq
        from the future) and :class:`RoomNotFound` for an unknown room.
        """
        check_value(value, self.config.decode_limits)
        checked = Value(value)
        reply = await self.request(
            room_id, lambda r: PushCommand(key, checked, action, r, expect_seq=expect_seq)
        )
        message = reply.message
        if isinstance(message, Error):
            if reply.outcome is Outcome.TRY_LATER:
                raise StorageError(message.message)
            if reply.outcome is Outcome.CONFLICT:
                raise PushConflict(message.message)
            if isinstance(reply.refusal, HookRefused):
                raise reply.refusal  # the application's Refuse, status and all
            raise ProtocolError(message.message)
        return message.size if isinstance(message, StreamSize) else None

    async def get(self, room_id: str, key: str, since: int = 0) -> list[SeqValue]:
        """The retained values of ``key`` with seq greater than ``since``."""
        reply = await self.request(room_id, lambda r: GetCommand(key, since, r))
        if isinstance(reply.message, Error):
            raise StorageError(reply.message.message)
        assert isinstance(reply.message, Init)
        return list(reply.message.data)

    @asynccontextmanager
    async def subscribe(
        self,
        room_id: str,
        keys: Iterable[str] | None = None,
        *,
        since: int | None = None,
        debug: bool = False,
    ) -> AsyncIterator[Subscription]:
        """Join a room in-process; iterate the messages it sends.

        With ``keys`` the subscription only receives those keys (and an ``init``
        of each when ``since`` is given); otherwise it receives every broadcast.
        """
        conn = self.new_member(debug=debug, explicit=keys is not None)
        room = await self.submit(room_id, Join(conn))
        gauge = self.metrics.connections[conn.labels]
        self.metrics.connections_opened[conn.labels].inc()
        gauge.inc()
        try:
            for key in keys or ():
                await room.inbox.send(GetCommand(key, since, conn))
            yield Subscription(conn)
        finally:
            gauge.dec()
            conn.closed = True
            conn.outbox.discard()
            with trio.move_on_after(self.config.write_timeout) as scope:
                scope.shield = True
                with suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                    await room.inbox.send(Leave(conn))


class Subscription:
    """An async iterator over the messages a room sends to an in-process member."""

    def __init__(self, conn: Member) -> None:
        self.connection = conn
        self._buffer: list[ServerMessage] = []

    def __aiter__(self) -> Subscription:
        return self

    async def __anext__(self) -> ServerMessage:
        while not self._buffer:
            try:
                frames = await self.connection.outbox.receive_batch()
            except trio.EndOfChannel:
                raise StopAsyncIteration from None
            self._buffer.extend(f for f in frames if not isinstance(f, (str, bytes)))
        return self._buffer.pop(0)


@asynccontextmanager
async def open_hub(
    config: Config | None = None, storage: Storage | None = None, *, hooks: Hooks | None = None
) -> AsyncIterator[Hub]:
    """Run a hub for the duration of the block (in-process use, no network);
    ``hooks``: the application's room logic (else the one ``config.hooks`` names)."""
    hub = Hub(config, storage, hooks=hooks)
    async with trio.open_nursery() as nursery:
        await nursery.start(hub.run)
        try:
            yield hub
        finally:
            nursery.cancel_scope.cancel()
