"""The in-memory backend: for tests and ephemeral servers. Nothing survives a restart."""

from __future__ import annotations

from collections.abc import Sequence

from .._errors import RoomNotFound
from ..core.room_state import Stream, StreamChange
from .base import RoomSnapshot

__all__ = ["MemoryStorage"]


class _Room:
    __slots__ = ("seq", "streams")

    def __init__(self) -> None:
        self.seq = 0
        self.streams: dict[str, Stream] = {}


class MemoryStorage:
    """Rooms kept in a dict; keeps its own copy, separate from the live room state."""

    def __init__(self) -> None:
        self._rooms: dict[str, _Room] = {}

    async def create_room(self, room_id: str) -> None:
        self._rooms.setdefault(room_id, _Room())

    async def room_exists(self, room_id: str) -> bool:
        return room_id in self._rooms

    async def load_room(self, room_id: str) -> RoomSnapshot | None:
        room = self._rooms.get(room_id)
        if room is None:
            return None
        streams = {
            key: Stream(list(stream.entries), stream.compacted)
            for key, stream in room.streams.items()
        }
        return RoomSnapshot(room.seq, streams)

    async def commit(self, room_id: str, seq: int, changes: Sequence[StreamChange]) -> None:
        room = self._rooms.get(room_id)
        if room is None:
            raise RoomNotFound(room_id)
        for change in changes:
            room.streams.setdefault(change.key, Stream()).apply(change)
        room.seq = max(room.seq, seq)

    async def delete_room(self, room_id: str) -> None:
        self._rooms.pop(room_id, None)

    async def aclose(self) -> None:
        pass
