"""SQLite group commit: the batches of rooms that wait for the disk at the same
time are committed in one transaction, each room's part in a savepoint of its own.
A room that is gone fails alone; a transaction that fails commits nothing of any
room in it, and each of them is told; a cancelled wait commits nothing.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import trio
import trio.testing

from drifttrio import RoomNotFound, StorageError
from drifttrio.core.room_state import StreamChange
from drifttrio.protocol import SeqValue
from drifttrio.storage import SqliteStorage


def append(key: str, value: str, seq: int) -> list[StreamChange]:
    return [StreamChange("append", key, SeqValue(value, seq))]


async def commit_all(
    storage: SqliteStorage, batches: dict[str, list[StreamChange]]
) -> dict[str, BaseException | None]:
    """Commit one batch per room, all at once; what each commit raised."""
    outcome: dict[str, BaseException | None] = {}

    async def one(room: str) -> None:
        try:
            await storage.commit(room, 1, batches[room])
        except Exception as exc:
            outcome[room] = exc
        else:
            outcome[room] = None

    async with trio.open_nursery() as nursery:
        for room in batches:
            nursery.start_soon(one, room)
    return outcome


@pytest.mark.parametrize("threads", [True, False])
async def test_rooms_committing_together_share_one_transaction(
    tmp_path: Path, threads: bool
) -> None:
    path = tmp_path / "group.db"
    storage = SqliteStorage(path, threads=threads)
    rooms = [f"room{i}" for i in range(40)]
    for room in rooms:
        await storage.create_room(room)
    commits: list[str] = []
    storage._db.set_trace_callback(  # type: ignore[union-attr]
        lambda sql: commits.append(sql) if sql == "COMMIT" else None
    )
    outcome = await commit_all(storage, {room: append("k", room, 1) for room in rooms})
    storage._db.set_trace_callback(None)  # type: ignore[union-attr]
    await storage.aclose()
    assert outcome == dict.fromkeys(rooms)
    # Fewer transactions than rooms: the ones that waited went together.
    assert 1 <= len(commits) < len(rooms)
    reopened = SqliteStorage(path, threads=False)
    try:
        for room in rooms:
            snapshot = await reopened.load_room(room)
            assert snapshot is not None
            assert snapshot.seq == 1
            assert snapshot.streams["k"].entries == [SeqValue(room, 1)]
    finally:
        await reopened.aclose()


async def test_a_room_that_is_gone_fails_alone(tmp_path: Path) -> None:
    storage = SqliteStorage(tmp_path / "gone.db", threads=False)
    for room in ("a", "b", "c"):
        await storage.create_room(room)
    await storage.delete_room("b")
    outcome = await commit_all(storage, {room: append("k", room, 1) for room in "abc"})
    assert outcome["a"] is None
    assert outcome["c"] is None
    assert isinstance(outcome["b"], RoomNotFound)
    for room in "ac":
        snapshot = await storage.load_room(room)
        assert snapshot is not None
        assert snapshot.streams["k"].entries == [SeqValue(room, 1)]
    assert await storage.load_room("b") is None
    # Its savepoint left nothing behind: no stream row of a room that does not exist.
    assert storage.execute_for_tests("SELECT count(*) FROM streams WHERE room = 'b'") == [(0,)]
    await storage.aclose()


async def test_a_failed_transaction_commits_no_room_and_tells_each(tmp_path: Path) -> None:
    storage = SqliteStorage(tmp_path / "full.db", threads=False)
    for room in ("a", "b", "c"):
        await storage.create_room(room)
    storage.execute_for_tests("PRAGMA query_only=ON")  # every write fails
    outcome = await commit_all(storage, {room: append("k", room, 1) for room in "abc"})
    errors = list(outcome.values())
    assert all(isinstance(error, StorageError) for error in errors)
    assert len({id(error) for error in errors}) == 3  # one error object per room
    assert storage.write_failure is not None
    storage.execute_for_tests("PRAGMA query_only=OFF")
    for room in "abc":
        snapshot = await storage.load_room(room)
        assert snapshot is not None
        assert (snapshot.seq, snapshot.streams) == (0, {})
    # Writes work again: the next commits land.
    outcome = await commit_all(storage, {room: append("k", room, 1) for room in "abc"})
    assert outcome == dict.fromkeys("abc")
    assert storage.write_failure is None
    await storage.aclose()


async def test_a_commit_cancelled_while_waiting_is_never_made(tmp_path: Path) -> None:
    storage = SqliteStorage(tmp_path / "cancel.db", threads=False)
    for room in ("a", "b"):
        await storage.create_room(room)
    await storage._committing.acquire()  # another room's group is being committed
    waiting = trio.CancelScope()

    async def commit_b() -> None:
        with waiting:
            await storage.commit("b", 1, append("k", "b", 1))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(commit_b)
        await trio.testing.wait_all_tasks_blocked()
        waiting.cancel()  # e.g. the server stops
    assert waiting.cancelled_caught
    storage._committing.release()
    await storage.commit("a", 1, append("k", "a", 1))  # the next group: without b's batch
    snapshot = await storage.load_room("b")
    assert snapshot is not None
    assert (snapshot.seq, snapshot.streams) == (0, {})
    snapshot = await storage.load_room("a")
    assert snapshot is not None
    assert snapshot.streams["k"].entries == [SeqValue("a", 1)]
    await storage.aclose()
