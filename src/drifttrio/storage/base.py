"""The storage seam between room tasks and a backend.

A room task loads its room once, then commits each batch (the stream changes plus
the new high-water seq) *before* anyone sees the batch's seqs. A backend either
commits the whole batch or raises :class:`~drifttrio.StorageError` and commits
nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import attrs

from ..core.room_state import Stream, StreamChange

__all__ = ["RoomInfo", "RoomSnapshot", "Storage"]


@attrs.frozen
class RoomSnapshot:
    """A room as stored: its high-water seq and retained streams."""

    seq: int
    streams: dict[str, Stream]
    #: Events published for the room so far (shared backends; 0 elsewhere).
    ev: int = 0


@attrs.frozen
class RoomInfo:
    """One stored room, as listed by :meth:`Storage.list_rooms`."""

    room_id: str
    seq: int
    #: Unix time of the last push, join or eviction.
    last_active: float


class Storage(Protocol):
    """What a room task needs from a backend."""

    async def create_room(self, room_id: str) -> None:
        """Create an empty room (seq 0, no streams)."""

    async def room_exists(self, room_id: str) -> bool:
        """Whether the room exists."""

    async def load_room(self, room_id: str) -> RoomSnapshot | None:
        """The stored room, or ``None`` if it does not exist."""

    async def commit(self, room_id: str, seq: int, changes: Sequence[StreamChange]) -> None:
        """Atomically apply ``changes`` in order and raise the high-water seq to ``seq``."""

    async def delete_room(self, room_id: str) -> None:
        """Delete the room and its data (a no-op if it does not exist)."""

    async def touch(self, room_id: str) -> None:
        """Record activity on the room without a write (joins, evictions)."""

    async def expire(self, idle_seconds: float, keep: Sequence[str] = ()) -> list[str]:
        """Delete rooms idle longer than ``idle_seconds``, except ``keep``; return their ids."""

    async def count_rooms(self) -> int:
        """How many rooms are stored."""

    async def list_rooms(self) -> list[RoomInfo]:
        """Every stored room, by id (for the ``drifttrio rooms`` admin commands)."""

    async def import_room(self, room_id: str, snapshot: RoomSnapshot) -> None:
        """Atomically replace the room (creating it if needed) with ``snapshot``."""

    async def aclose(self) -> None:
        """Release resources."""
