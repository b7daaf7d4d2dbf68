"""A room shared by several nodes through a store that orders it (Redis).

The store, not this task, assigns seqs: a batch of pushes goes to the store in one
call (:meth:`RedisStorage.push_batch`), which applies them atomically and publishes
the resulting events. Every node follows the room's events and applies them, in
event order, to a local mirror (:class:`RoomState`), delivering each to its own
members. Reads (``get``) are answered from the mirror, so a member's ``init`` always
matches the pushes it has been sent.

This is the room's ordering step (:class:`SharedOrderer`); the room loop, its
batching, membership and delivery are :class:`~drifttrio.runtime.room.Room`'s.

A jump in the event numbers means this node missed events: they are read back from
the room's log in the store before anything newer is delivered. If the log no
longer holds them, or the event feed broke, the room ends and its members are
closed with :data:`~drifttrio.CloseCode.TRY_AGAIN_LATER`; they reconnect and the
room is loaded afresh. A member never sees a gap or a reorder.
"""

from __future__ import annotations

import logging
import time
from contextlib import suppress
from typing import cast

import trio

from .._errors import CloseCode, ProtocolError, RoomNotFound
from ..core.room_state import RoomState, key_size
from ..protocol.messages import Compact, Error, SeqValue, StreamSize
from ..storage.base import SharedStorage
from ..storage.redis import ActionName, DataLossError, Event, PushItem, encode_value, parse_records
from .commands import Command, FeedEvents, FeedLost, Ordered, Outcome, PushCommand, Reply
from .effects import Done, Effect, Release
from .redact import room_tag
from .room import Room, RoomEnded

__all__ = ["SharedOrderer"]

log = logging.getLogger("drifttrio.room")


class SharedOrderer:
    """A room's ordering step when a shared store orders it; see the module docstring.

    :meth:`open` binds it to its room: it follows the room's feed, then loads it."""

    def __init__(self, storage: SharedStorage) -> None:
        self.storage = storage
        self._room: Room | None = None
        #: Last event applied to the mirror (and delivered).
        self.ev = 0
        #: Highest event the feed announced that the inbox had no room for.
        self._feed_behind = 0
        self._feed_lost = False

    async def open(self, room: Room) -> None:
        """Follow the room's feed, then load it: events published in between are
        queued in the room's inbox and skipped if the snapshot already has them."""
        self._room = room
        storage = self.storage
        await storage.follow(room.room_id, self.on_feed)
        try:
            snapshot = await storage.load_room(room.room_id)
        except BaseException:
            with suppress(Exception):
                await storage.unfollow(room.room_id, self.on_feed)
            raise
        if snapshot is None:
            await storage.unfollow(room.room_id, self.on_feed)
            raise RoomNotFound(room.room_id)
        room.state = RoomState(
            snapshot.seq,
            snapshot.streams,
            broadcast_compact=room.config.broadcast_compact,
            limits=room.state.limits,
        )
        self.ev = snapshot.ev

    def on_feed(self, records: bytes | None) -> None:
        """The feed's callback (runs in the feed task): queue the events for the room."""
        room = self._room
        if room is None or room.closed:
            return
        events: list[Event] = []
        if records is None:
            self._feed_lost = True
            notice: Command = FeedLost()
        else:
            # Our own pushes come back too: they are skipped without decoding.
            events = parse_records(records, after=self.ev)
            if not events:
                return
            notice = FeedEvents(events)
        try:
            room.inbox.send_nowait(notice)
        except trio.WouldBlock:
            # The room is busy (its inbox is full): it checks this after its batch.
            if events:
                self._feed_behind = max(self._feed_behind, events[-1].ev)
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            pass

    async def aclose(self, room: Room) -> None:
        """Stop following the room's feed."""
        await self.storage.unfollow(room.room_id, self.on_feed)

    async def order(self, room: Room, commands: list[Ordered]) -> None:
        """Pushes go to the store in runs; reads are answered from the mirror once
        the pushes before them are applied; feed events advance the mirror."""
        pushes: list[PushCommand] = []
        for command in commands:
            if isinstance(command, PushCommand):
                pushes.append(command)
                continue
            if pushes:
                await self._push(room, pushes)
                pushes = []
            if isinstance(command, FeedEvents):
                await self._advance(room, command.events)
            elif not isinstance(command, FeedLost):
                effects: list[Effect] = []
                room.apply(command, [], effects)
                for effect in effects:
                    room.deliver(effect)
        if pushes:
            await self._push(room, pushes)

    async def finish_batch(self, room: Room) -> None:
        """End the room if the feed broke; read back what the full inbox missed."""
        if self._feed_lost:
            raise RoomEnded(CloseCode.TRY_AGAIN_LATER, "lost the Redis event feed")
        if self._feed_behind > self.ev:
            await self._catch_up(room, self._feed_behind)

    # -- pushes go to the store -----------------------------------------------------

    async def _push(self, room: Room, pushes: list[PushCommand]) -> None:
        admitted = self._within_budget(room, pushes)
        if not admitted:
            return
        pushes = [command for command, _ in admitted]
        items = []
        for command, charge in admitted:
            if room.holds(command.origin):
                room.deliver(Release(command.origin, None))
            kind = cast(ActionName, command.action.TAG)
            room.count_in(kind)
            compact_seq = command.action.seq if isinstance(command.action, Compact) else 0
            blob = encode_value(command.value)
            key_charge = 0 if kind == "relay" else key_size(command.key)
            items.append(
                PushItem(
                    kind, command.key, blob, compact_seq, charge, key_charge, command.expect_seq
                )
            )
        limits = room.state.limits
        metrics = room.metrics
        started = time.perf_counter()
        try:
            results = await self.storage.push_batch(
                room.room_id,
                items,
                seen_ev=self.ev,
                max_keys=limits.max_keys,
                max_values=limits.max_stream_values,
                max_bytes=limits.max_room_bytes,
            )
        except DataLossError as exc:
            log.error("room %s: %s", room_tag(room.room_id), exc)
            self._refuse(room, pushes, "storage lost data: push not applied")
            raise RoomEnded(CloseCode.TRY_AGAIN_LATER, str(exc)) from None
        except RoomNotFound:
            message = "room no longer exists: push not applied"
            self._refuse(room, pushes, message, Outcome.ROOM_GONE)
            raise RoomEnded(CloseCode.GOING_AWAY, "room deleted from the store") from None
        except Exception as exc:
            log.warning("push failed in room %s: %r", room_tag(room.room_id), exc)
            metrics.storage_failures.inc()
            self._refuse(room, pushes, "storage unavailable: push not applied")
            return
        metrics.commit_seconds.observe(time.perf_counter() - started)
        events: list[Event] = []
        effects: list[Effect] = []
        for command, result in zip(pushes, results, strict=True):
            if result.status == "ok":
                kind = cast(ActionName, command.action.TAG)
                events.append(Event(result.ev, result.seq, kind, command.key, command.value))
                if result.stream_size > 1:
                    effects.append((command.origin, StreamSize(command.key, result.stream_size)))
            elif result.status == "error":
                metrics.errors["refused"].inc()
                if isinstance(command.origin, Reply) and result.refusal is not None:
                    command.origin.refused(result.refusal)
                effects.append((command.origin, Error(result.error)))
            if isinstance(command.origin, Reply):
                effects.append(Done(command.origin))
        await self._advance(room, events)
        for effect in effects:
            room.deliver(effect)

    def _within_budget(
        self, room: Room, pushes: list[PushCommand]
    ) -> list[tuple[PushCommand, int]]:
        """The pushes this node's memory budget has room for (judged on the mirror as
        it is before the batch), each with its charge; the others are answered with
        the refusal here."""
        admitted = []
        for command in pushes:
            try:
                charge = room.state.check_budget(
                    command.key, command.value, command.action, command.expect_seq
                )
            except ProtocolError as exc:
                room.count_in(command.action.TAG)
                room.metrics.errors["refused"].inc()
                if isinstance(command.origin, Reply):
                    command.origin.refused(exc)
                room.deliver((command.origin, Error(exc.message)))
                if isinstance(command.origin, Reply):
                    room.deliver(Done(command.origin))
            else:
                admitted.append((command, charge))
        return admitted

    def _refuse(
        self,
        room: Room,
        pushes: list[PushCommand],
        message: str,
        outcome: Outcome = Outcome.TRY_LATER,
    ) -> None:
        for command in pushes:
            room.metrics.errors["storage"].inc()
            if isinstance(command.origin, Reply):
                command.origin.fail(message, outcome)
            else:
                room.deliver((command.origin, Error(message)))

    # -- events come back from the store ---------------------------------------------

    async def _advance(self, room: Room, events: list[Event]) -> None:
        for event in sorted(events, key=lambda e: e.ev):
            if event.ev <= self.ev:
                continue  # already applied (our own push, or caught up from the log)
            if event.ev > self.ev + 1:
                await self._catch_up(room, event.ev - 1)
            self._apply_event(room, event)

    async def _catch_up(self, room: Room, upto: int) -> None:
        """Apply the events up to ``upto`` that this node missed, from the room's log."""
        room.metrics.shared_resyncs.inc()
        try:
            missing = await self.storage.read_events(room.room_id, self.ev + 1, upto)
        except Exception as exc:
            raise RoomEnded(
                CloseCode.TRY_AGAIN_LATER, f"cannot read missed events: {exc!r}"
            ) from None
        for event in missing:
            if event.ev == self.ev + 1:
                self._apply_event(room, event)
        if self.ev < upto:
            raise RoomEnded(
                CloseCode.TRY_AGAIN_LATER,
                f"missed events {self.ev + 1}..{upto}, which the store's log no longer holds",
            )

    def _apply_event(self, room: Room, event: Event) -> None:
        entry = SeqValue(event.value, event.seq)
        outcome = room.state.apply_event(event.action, event.key, entry)
        self.ev = event.ev
        broadcast = room.broadcast_of(event.key, outcome)
        if broadcast is not None:
            room.deliver(broadcast)
