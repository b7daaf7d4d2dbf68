"""Storage for test servers: on the trio clock, with faults on demand."""

from __future__ import annotations

from collections import Counter
from collections.abc import Container, Sequence
from pathlib import Path
from typing import Literal, TypeAlias, get_args

import trio

from .._errors import ConfigError, StorageError
from ..core.room_state import StreamChange
from ..storage import MemoryStorage, RoomInfo, RoomSnapshot, SqliteStorage, Storage
from ..storage.base import JournaledStorage, JournalEntry

__all__ = ["FaultyStorage", "Operation", "StoreName", "make_storage"]

StoreName: TypeAlias = Literal["memory", "sqlite"]

#: The storage operations a fault can be injected into.
Operation: TypeAlias = Literal[
    "create_room",
    "room_exists",
    "load_room",
    "commit",
    "delete_room",
    "touch",
    "expire",
    "read_journal",
    "trim_journal",
    "wait_journal",
]
_OPERATIONS: frozenset[str] = frozenset(get_args(Operation))


def make_storage(store: StoreName | Storage, path: str | Path | None = None) -> Storage:
    """A backend whose timestamps follow the trio clock (so TTLs run on a MockClock).

    ``sqlite`` uses ``path`` (a file) or an in-memory database, and runs its
    queries on the event loop rather than in a worker thread: a MockClock's
    autojump does not wait for threads, and the clock would jump mid-query.
    """
    if not isinstance(store, str):
        return store
    if store == "memory":
        return MemoryStorage(clock=trio.current_time)
    if store == "sqlite":
        return SqliteStorage(
            ":memory:" if path is None else path, clock=trio.current_time, threads=False
        )
    raise ConfigError(f"test store must be 'memory', 'sqlite' or a Storage, got {store!r}")


class FaultyStorage:
    """Wraps a backend; makes chosen operations fail, or wait, on demand.

    ``calls`` counts every operation that was attempted. The journal operations
    (:class:`~drifttrio.storage.base.JournaledStorage`) are forwarded too, and fail
    with a :class:`~drifttrio.ConfigError` if the wrapped backend keeps no journal.
    """

    def __init__(self, inner: Storage) -> None:
        self.inner = inner
        self.calls: Counter[str] = Counter()
        #: Per operation, what its next calls do: pass (``None``) or raise.
        self._plans: dict[str, list[Exception | None]] = {}
        self._holds: dict[str, trio.Event] = {}

    def fail_next(
        self,
        operation: Operation = "commit",
        times: int = 1,
        *,
        skip: int = 0,
        error: Exception | None = None,
    ) -> None:
        """Make ``times`` calls of ``operation`` raise ``error``, after ``skip`` that pass.

        The default error is a :class:`~drifttrio.StorageError`, which is what a
        backend raises when nothing was committed.
        """
        _check(operation)
        failure = error if error is not None else StorageError(f"injected {operation} failure")
        self._plans.setdefault(operation, []).extend([None] * skip + [failure] * times)

    def hold(self, operation: Operation = "commit") -> trio.Event:
        """Make calls of ``operation`` wait until the returned event is set."""
        _check(operation)
        event = self._holds[operation] = trio.Event()
        return event

    async def _enter(self, operation: str) -> None:
        self.calls[operation] += 1
        hold = self._holds.get(operation)
        if hold is not None:
            await hold.wait()
        plan = self._plans.get(operation)
        if plan:
            failure = plan.pop(0)
            if failure is not None:
                raise failure

    # -- the Storage interface ------------------------------------------------------

    async def create_room(self, room_id: str) -> None:
        await self._enter("create_room")
        await self.inner.create_room(room_id)

    async def room_exists(self, room_id: str) -> bool:
        await self._enter("room_exists")
        return await self.inner.room_exists(room_id)

    async def load_room(self, room_id: str) -> RoomSnapshot | None:
        await self._enter("load_room")
        return await self.inner.load_room(room_id)

    async def commit(self, room_id: str, seq: int, changes: Sequence[StreamChange]) -> None:
        await self._enter("commit")
        await self.inner.commit(room_id, seq, changes)

    async def delete_room(self, room_id: str) -> None:
        await self._enter("delete_room")
        await self.inner.delete_room(room_id)

    async def touch(self, room_id: str) -> None:
        await self._enter("touch")
        await self.inner.touch(room_id)

    async def expire(self, idle_seconds: float, keep: Container[str] = ()) -> list[str]:
        await self._enter("expire")
        return await self.inner.expire(idle_seconds, keep)

    async def count_rooms(self) -> int:
        return await self.inner.count_rooms()

    async def list_rooms(self) -> list[RoomInfo]:
        return await self.inner.list_rooms()

    async def import_room(self, room_id: str, snapshot: RoomSnapshot) -> None:
        await self.inner.import_room(room_id, snapshot)

    async def aclose(self) -> None:
        await self.inner.aclose()

    # -- the JournaledStorage interface ------------------------------------------------

    def _journal(self) -> JournaledStorage:
        if not isinstance(self.inner, JournaledStorage):
            raise ConfigError(f"{type(self.inner).__name__} keeps no journal")
        return self.inner

    def enable_journal(self) -> None:
        self._journal().enable_journal()

    async def read_journal(self, limit: int) -> list[JournalEntry]:
        await self._enter("read_journal")
        return await self._journal().read_journal(limit)

    async def trim_journal(self, entries: Sequence[JournalEntry]) -> None:
        await self._enter("trim_journal")
        await self._journal().trim_journal(entries)

    async def wait_journal(self) -> None:
        await self._enter("wait_journal")
        await self._journal().wait_journal()


def _check(operation: str) -> None:
    if operation not in _OPERATIONS:
        raise ValueError(f"unknown storage operation {operation!r}")
