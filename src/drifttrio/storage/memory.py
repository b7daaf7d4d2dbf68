"""The in-memory backend: for tests and ephemeral servers. Nothing survives a restart."""

from __future__ import annotations

import itertools
import time
from collections import deque
from collections.abc import Callable, Container, Sequence

import trio

from .._errors import RoomNotFound
from ..core.room_state import Stream, StreamChange
from .base import JournalEntry, RoomInfo, RoomSnapshot

__all__ = ["MemoryStorage"]


class _Room:
    __slots__ = ("last_active", "seq", "streams")

    def __init__(self, now: float) -> None:
        self.seq = 0
        self.streams: dict[str, Stream] = {}
        self.last_active = now


class MemoryStorage:
    """Rooms kept in a dict; keeps its own copy, separate from the live room state."""

    def __init__(self, *, clock: Callable[[], float] = time.time) -> None:
        self._rooms: dict[str, _Room] = {}
        self._clock = clock
        #: The committed-push journal (off until :meth:`enable_journal`), the last id
        #: it gave, and the event set when it grows (then replaced).
        self._journaling = False
        self._journal: deque[JournalEntry] = deque()
        self._journal_id = 0
        self._journal_grew = trio.Event()

    async def create_room(self, room_id: str) -> None:
        self._rooms.setdefault(room_id, _Room(self._clock()))

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
        room.last_active = self._clock()
        if self._journaling and changes:
            for change in changes:
                self._journal_id += 1
                self._journal.append(
                    JournalEntry(
                        self._journal_id,
                        room_id,
                        change.entry.seq,
                        change.kind,
                        change.key,
                        change.entry.value,
                    )
                )
            self._journal_grew.set()
            self._journal_grew = trio.Event()

    # -- the committed-push journal (kept when its room is deleted) -------------------

    def enable_journal(self) -> None:
        self._journaling = True

    async def read_journal(self, limit: int) -> list[JournalEntry]:
        await trio.lowlevel.checkpoint()  # a consumer draining a backlog yields
        return list(itertools.islice(self._journal, limit))

    async def trim_journal(self, entries: Sequence[JournalEntry]) -> None:
        ids = {entry.id for entry in entries}
        journal = self._journal
        while journal and journal[0].id in ids:  # what was read is the head: O(trimmed)
            ids.discard(journal.popleft().id)
        if ids:
            self._journal = deque(entry for entry in journal if entry.id not in ids)

    async def wait_journal(self) -> None:
        if not self._journal:
            await self._journal_grew.wait()

    async def touch(self, room_id: str) -> None:
        room = self._rooms.get(room_id)
        if room is not None:
            room.last_active = self._clock()

    async def expire(self, idle_seconds: float, keep: Container[str] = ()) -> list[str]:
        cutoff = self._clock() - idle_seconds
        expired = [
            room_id
            for room_id, room in self._rooms.items()
            if room.last_active < cutoff and room_id not in keep
        ]
        for room_id in expired:
            del self._rooms[room_id]
        return expired

    async def count_rooms(self) -> int:
        return len(self._rooms)

    async def list_rooms(self) -> list[RoomInfo]:
        return [
            RoomInfo(room_id, room.seq, room.last_active)
            for room_id, room in sorted(self._rooms.items())
        ]

    async def import_room(self, room_id: str, snapshot: RoomSnapshot) -> None:
        room = _Room(self._clock())
        room.seq = snapshot.seq
        room.streams = {
            key: Stream(list(stream.entries), stream.compacted)
            for key, stream in snapshot.streams.items()
        }
        self._rooms[room_id] = room

    async def delete_room(self, room_id: str) -> None:
        self._rooms.pop(room_id, None)

    async def aclose(self) -> None:
        pass
