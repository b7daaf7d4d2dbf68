"""The ordering step of a room: the seam between the room loop and its storage.

A :class:`~drifttrio.runtime.room.Room` hands its orderer each run of commands
between membership changes; the orderer gives the pushes their seqs, makes them
durable, and delivers the resulting effects through the room, in order. Two
implementations: :class:`LocalOrderer` (this node orders the room on its
:class:`RoomState` and commits each batch to storage) and
:class:`~drifttrio.runtime.shared_room.SharedOrderer` (a shared store orders it
and publishes the events every node applies).
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Protocol

from ..core.room_state import RoomState, StreamChange
from ..protocol.messages import Error
from ..storage.base import Storage
from .commands import FeedEvents, FeedLost, Ordered, PushCommand, Reply
from .effects import Effect
from .redact import room_tag

if TYPE_CHECKING:
    from .room import Room

__all__ = ["LocalOrderer", "Orderer", "UnexpectedFeed"]

log = logging.getLogger("drifttrio.room")


class UnexpectedFeed(RuntimeError):
    """A shared store's feed notice reached a room this node orders (a bug)."""


class Orderer(Protocol):
    """How a room's commands get their order, and become durable."""

    async def order(self, room: Room, commands: list[Ordered]) -> None:
        """Apply ``commands`` (no joins or leaves) and deliver their effects in order,
        only once what they changed is durable."""

    async def finish_batch(self, room: Room) -> None:
        """After each batch: repair or end the room if it fell out of order."""

    async def aclose(self, room: Room) -> None:
        """The room ended: release what the orderer holds in storage."""


class LocalOrderer:
    """This node orders the room: a batch is applied to the pure :class:`RoomState`,
    committed to storage in one call, and only then are its effects delivered, so
    no member ever sees a seq that storage could take back."""

    def __init__(self, storage: Storage, committed_seq: int) -> None:
        self.storage = storage
        self._committed_seq = committed_seq

    async def order(self, room: Room, commands: list[Ordered]) -> None:
        effects: list[Effect] = []
        changes: list[StreamChange] = []
        for command in commands:
            if isinstance(command, (FeedEvents, FeedLost)):
                raise UnexpectedFeed(
                    f"room {room_tag(room.room_id)}: a feed notice for a local room"
                )
            room.apply(command, changes, effects)
        state = room.state
        if changes or state.seq != self._committed_seq:
            started = time.perf_counter()
            try:
                await self.storage.commit(room.room_id, state.seq, changes)
            except Exception as exc:
                log.warning("commit failed in room %s: %r", room_tag(room.room_id), exc)
                room.metrics.storage_failures.inc()
                effects = await self._rollback(room, commands)
            else:
                room.metrics.commit_seconds.observe(time.perf_counter() - started)
                self._committed_seq = state.seq
        deliver = room.deliver
        for effect in effects:
            deliver(effect)

    async def _rollback(self, room: Room, commands: list[Ordered]) -> list[Effect]:
        """Reload the committed state; reject the batch's pushes, redo its reads."""
        snapshot = await self.storage.load_room(room.room_id)
        if snapshot is None:
            raise RuntimeError(f"room {room_tag(room.room_id)} vanished from storage")
        room.state = RoomState(
            snapshot.seq,
            snapshot.streams,
            broadcast_compact=room.state.broadcast_compact,
            limits=room.state.limits,
        )
        self._committed_seq = snapshot.seq
        effects: list[Effect] = []
        for command in commands:
            if isinstance(command, PushCommand):
                room.metrics.errors["storage"].inc()
                if isinstance(command.origin, Reply):
                    command.origin.fail("storage unavailable: push not applied")
                else:
                    effects.append((command.origin, Error("storage unavailable: push not applied")))
            elif not isinstance(command, (FeedEvents, FeedLost)):
                room.apply(command, [], effects)
        return effects

    async def finish_batch(self, room: Room) -> None:
        """Nothing to repair: this node is the ordering point."""

    async def aclose(self, room: Room) -> None:
        """Nothing held."""
