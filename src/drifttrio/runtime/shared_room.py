"""A room shared by several nodes through a store that orders it (Redis).

The store, not this task, assigns seqs: a batch of pushes goes to the store in one
call (:meth:`RedisStorage.push_batch`), which applies them atomically and publishes
the resulting events. Every node follows the room's events and applies them, in
event order, to a local mirror (:class:`RoomState`), delivering each to its own
members. Reads (``get``) are answered from the mirror, so a member's ``init`` always
matches the pushes it has been sent.

A jump in the event numbers means this node missed events: they are read back from
the room's log in the store before anything newer is delivered. If the log no
longer holds them, or the event feed broke, the room ends and its members are
closed with :data:`~drifttrio.CloseCode.TRY_AGAIN_LATER`; they reconnect and the
room is loaded afresh. A member never sees a gap or a reorder.
"""

from __future__ import annotations

import logging
import math
import time
from contextlib import suppress
from typing import cast

import attrs
import trio

from .._errors import CloseCode, ProtocolError, RoomNotFound
from ..core.room_state import RoomState, key_size
from ..protocol.messages import Compact, Error, SeqValue, StreamSize
from ..storage.base import RoomSnapshot
from ..storage.redis import (
    ActionName,
    DataLossError,
    Event,
    PushItem,
    RedisStorage,
    encode_value,
    parse_records,
)
from .room import (
    Command,
    GetCommand,
    Join,
    Leave,
    PingCommand,
    PushCommand,
    Reply,
    Room,
    RoomEnded,
    _Done,
    _Effect,
    _Release,
)

__all__ = ["SharedRoom"]

log = logging.getLogger("drifttrio.room")


@attrs.frozen(eq=False)
class _FeedEvents:
    events: list[Event]


@attrs.frozen(eq=False)
class _FeedLost:
    pass


class SharedRoom(Room):
    """A room whose order is kept by a shared store; see the module docstring."""

    storage: RedisStorage

    #: Last event applied to the mirror (and delivered).
    ev = 0
    #: Highest event the feed announced that the inbox had no room for.
    _feed_behind = 0
    _feed_lost = False
    #: When the room was last used from this node (a command, or members present).
    _used_at = -math.inf

    def reset(self, snapshot: RoomSnapshot) -> None:
        """Start the mirror from a snapshot loaded after following the feed."""
        self.state = RoomState(
            snapshot.seq,
            snapshot.streams,
            broadcast_compact=self.config.broadcast_compact,
            limits=self.state.limits,
        )
        self._committed_seq = snapshot.seq
        self.ev = snapshot.ev
        self._used_at = trio.current_time()

    def on_feed(self, records: bytes | None) -> None:
        """The feed's callback (runs in the feed task): queue the events for the room."""
        if self.closed:
            return
        events: list[Event] = []
        if records is None:
            self._feed_lost = True
            notice: _FeedEvents | _FeedLost = _FeedLost()
        else:
            # Our own pushes come back too: they are skipped without decoding.
            events = parse_records(records, after=self.ev)
            if not events:
                return
            notice = _FeedEvents(events)
        try:
            self.inbox.send_nowait(notice)  # type: ignore[arg-type]
        except trio.WouldBlock:
            # The room is busy (its inbox is full): it checks this after its batch.
            if events:
                self._feed_behind = max(self._feed_behind, events[-1].ev)
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            pass

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        try:
            await super().run(task_status=task_status)
        finally:
            with trio.move_on_after(1.0) as scope:
                scope.shield = True
                await self.storage.unfollow(self.room_id, self.on_feed)

    async def _next_command(self) -> Command | None:
        """As for any room, but events from the feed alone do not keep a room with no
        members here alive: after ``room_idle_seconds`` without local use it ends."""
        while True:
            command = await super()._next_command()
            now = trio.current_time()
            if not isinstance(command, (_FeedEvents, _FeedLost)) or self.members:
                self._used_at = now
            elif (
                now - self._used_at > self.config.room_idle_seconds
                and self._commands.statistics().current_buffer_used == 0
            ):
                return None
            return command

    async def _handle_batch(self, commands: list[Command]) -> None:
        pushes: list[PushCommand] = []
        for command in commands:
            if isinstance(command, PushCommand):
                pushes.append(command)
                continue
            if pushes:
                await self._push(pushes)
                pushes = []
            if isinstance(command, _FeedEvents):
                await self._advance(command.events)
            elif isinstance(command, (Join, Leave)):
                self._membership(command)
            elif isinstance(command, (GetCommand, PingCommand)):
                effects: list[_Effect] = []
                self._apply(command, [], effects)
                for effect in effects:
                    self._deliver(effect)
        if pushes:
            await self._push(pushes)
        if self._feed_lost:
            raise RoomEnded(CloseCode.TRY_AGAIN_LATER, "lost the Redis event feed")
        if self._feed_behind > self.ev:
            await self._catch_up(self._feed_behind)

    # -- pushes go to the store -----------------------------------------------------

    async def _push(self, pushes: list[PushCommand]) -> None:
        admitted = self._within_budget(pushes)
        if not admitted:
            return
        pushes = [command for command, _ in admitted]
        items = []
        for command, charge in admitted:
            if self._holds(command.origin):
                self._deliver(_Release(command.origin, None))
            kind = cast(ActionName, command.action.TAG)
            self._in[kind] = self._in.get(kind, 0) + 1
            compact_seq = command.action.seq if isinstance(command.action, Compact) else 0
            blob = encode_value(command.value)
            key_charge = 0 if kind == "relay" else key_size(command.key)
            items.append(PushItem(kind, command.key, blob, compact_seq, charge, key_charge))
        limits = self.state.limits
        started = time.perf_counter()
        try:
            results = await self.storage.push_batch(
                self.room_id,
                items,
                seen_ev=self.ev,
                max_keys=limits.max_keys,
                max_values=limits.max_stream_values,
                max_bytes=limits.max_room_bytes,
            )
        except DataLossError as exc:
            log.error("room %s: %s", self.room_id[:8], exc)
            self._refuse(pushes, "storage lost data: push not applied")
            raise RoomEnded(CloseCode.TRY_AGAIN_LATER, str(exc)) from None
        except RoomNotFound:
            self._refuse(pushes, "room no longer exists: push not applied", status=404)
            raise RoomEnded(CloseCode.GOING_AWAY, "room deleted from the store") from None
        except Exception as exc:
            log.warning("push failed in room %s: %r", self.room_id[:8], exc)
            self.metrics.storage_failures.inc()
            self._refuse(pushes, "storage unavailable: push not applied")
            return
        self.metrics.commit_seconds.observe(time.perf_counter() - started)
        events: list[Event] = []
        effects: list[_Effect] = []
        for command, result in zip(pushes, results, strict=True):
            if result.status == "ok":
                kind = cast(ActionName, command.action.TAG)
                events.append(Event(result.ev, result.seq, kind, command.key, command.value))
                if result.stream_size > 1:
                    effects.append((command.origin, StreamSize(command.key, result.stream_size)))
            elif result.status == "error":
                self.metrics.errors["refused"].inc()
                effects.append((command.origin, Error(result.error)))
            if isinstance(command.origin, Reply):
                effects.append(_Done(command.origin))
        await self._advance(events)
        for effect in effects:
            self._deliver(effect)

    def _within_budget(self, pushes: list[PushCommand]) -> list[tuple[PushCommand, int]]:
        """The pushes this node's memory budget has room for (judged on the mirror as
        it is before the batch), each with its charge; the others are answered with
        the refusal here."""
        admitted = []
        for command in pushes:
            try:
                charge = self.state.check_budget(command.key, command.value, command.action)
            except ProtocolError as exc:
                kind = command.action.TAG
                self._in[kind] = self._in.get(kind, 0) + 1
                self.metrics.errors["refused"].inc()
                if isinstance(command.origin, Reply):
                    command.origin.status = exc.status
                self._deliver((command.origin, Error(exc.message)))
                if isinstance(command.origin, Reply):
                    self._deliver(_Done(command.origin))
            else:
                admitted.append((command, charge))
        return admitted

    def _refuse(self, pushes: list[PushCommand], message: str, status: int = 503) -> None:
        for command in pushes:
            self.metrics.errors["storage"].inc()
            if isinstance(command.origin, Reply):
                command.origin.fail(message, status)
            else:
                self._deliver((command.origin, Error(message)))

    # -- events come back from the store ---------------------------------------------

    async def _advance(self, events: list[Event]) -> None:
        for event in sorted(events, key=lambda e: e.ev):
            if event.ev <= self.ev:
                continue  # already applied (our own push, or caught up from the log)
            if event.ev > self.ev + 1:
                await self._catch_up(event.ev - 1)
            self._apply_event(event)

    async def _catch_up(self, upto: int) -> None:
        """Apply the events up to ``upto`` that this node missed, from the room's log."""
        self.metrics.shared_resyncs.inc()
        try:
            missing = await self.storage.read_events(self.room_id, self.ev + 1, upto)
        except Exception as exc:
            raise RoomEnded(
                CloseCode.TRY_AGAIN_LATER, f"cannot read missed events: {exc!r}"
            ) from None
        for event in missing:
            if event.ev == self.ev + 1:
                self._apply_event(event)
        if self.ev < upto:
            raise RoomEnded(
                CloseCode.TRY_AGAIN_LATER,
                f"missed events {self.ev + 1}..{upto}, which the store's log no longer holds",
            )

    def _apply_event(self, event: Event) -> None:
        entry = SeqValue(event.value, event.seq)
        outcome = self.state.apply_event(event.action, event.key, entry)
        self.ev = event.ev
        self._committed_seq = self.state.seq
        broadcast = self._broadcast_of(event.key, outcome)
        if broadcast is not None:
            self._deliver(broadcast)


async def open_shared_room(room: SharedRoom) -> None:
    """Follow the room's feed, then load it: events published in between are queued
    in the room's inbox and skipped if the snapshot already has them."""
    storage = room.storage
    await storage.follow(room.room_id, room.on_feed)
    try:
        snapshot = await storage.load_room(room.room_id)
    except BaseException:
        with suppress(Exception):
            await storage.unfollow(room.room_id, room.on_feed)
        raise
    if snapshot is None:
        await storage.unfollow(room.room_id, room.on_feed)
        raise RoomNotFound(room.room_id)
    room.reset(snapshot)
