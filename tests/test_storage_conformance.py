"""One conformance suite for every storage backend.

Every test takes the ``backend`` fixture, parametrized over :data:`BACKENDS`. To
add a backend (Redis, say), add one factory to that dict: an async context
manager that yields a :class:`Backend` built on the given clock, and skips the
test if the backend is not available (e.g. no server reachable).

A room's expected contents always come from the pure core: the same pushes
applied to a :class:`RoomState`, or its :meth:`RoomState.from_changes` replay.
Durable backends are also checked after a reopen (a new storage object on the
same data), which is what a server restart does.
"""

from __future__ import annotations

import math
import random
import secrets
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import Any

import attrs
import pytest
import trio

from _redis import RedisServer
from drifttrio import RoomNotFound
from drifttrio.core import RoomState, Stream, StreamChange
from drifttrio.protocol import Action, Append, Compact, Relay, Replace, SeqValue
from drifttrio.protocol.messages import Value
from drifttrio.storage import MemoryStorage, RoomSnapshot, SqliteStorage, Storage
from drifttrio.storage.redis import RedisStorage


class FakeClock:
    """The storage's notion of "now", moved by hand."""

    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@attrs.define
class Backend:
    """A storage under test, with the clock it stamps activity with."""

    name: str
    storage: Storage
    clock: FakeClock
    #: Whether the data outlives the storage object (then :meth:`reopen` makes a new one).
    durable: bool
    _open: Callable[[], Storage]
    #: Where a networked backend's ``run`` task lives (it is started on reopen).
    nursery: trio.Nursery | None = None

    async def reopen(self) -> Storage:
        """What a restart does: close the storage, open a new one on the same data.
        A non-durable backend keeps its one storage object."""
        if self.durable:
            await self.storage.aclose()
            self.storage = self._open()
            run = getattr(self.storage, "run", None)
            if run is not None:
                assert self.nursery is not None
                await self.nursery.start(run)
        return self.storage


BackendFactory = Callable[[Path, FakeClock], AbstractAsyncContextManager[Backend]]


@asynccontextmanager
async def memory_backend(tmp_path: Path, clock: FakeClock) -> AsyncIterator[Backend]:
    storage = MemoryStorage(clock=clock)
    yield Backend("memory", storage, clock, False, lambda: storage)
    await storage.aclose()


@asynccontextmanager
async def sqlite_backend(tmp_path: Path, clock: FakeClock) -> AsyncIterator[Backend]:
    path = tmp_path / "conformance.db"  # a real file: reopening must find the data

    def open_() -> Storage:
        return SqliteStorage(path, clock=clock)

    backend = Backend("sqlite", open_(), clock, True, open_)
    try:
        yield backend
    finally:
        await backend.storage.aclose()


@asynccontextmanager
async def redis_backend(tmp_path: Path, clock: FakeClock) -> AsyncIterator[Backend]:
    """A real redis-server (session-wide); each test has its own key prefix. A reopen
    is a new storage object, with its own connections, on the same keys."""
    server = _REDIS.get("server")
    assert isinstance(server, RedisServer)
    url = f"{server.url}?prefix=t{secrets.token_hex(6)}"
    async with trio.open_nursery() as nursery:

        def open_() -> Storage:
            return RedisStorage(url, clock=clock)

        backend = Backend("redis", open_(), clock, True, open_, nursery)
        await nursery.start(backend.storage.run)  # type: ignore[attr-defined]
        try:
            yield backend
        finally:
            await backend.storage.aclose()


#: Every backend the suite runs against.
BACKENDS: dict[str, BackendFactory] = {
    "memory": memory_backend,
    "sqlite": sqlite_backend,
    "redis": redis_backend,
}

#: The session's redis-server, set by the ``backend`` fixture when a test needs it.
_REDIS: dict[str, object] = {}


@pytest.fixture(params=sorted(BACKENDS))
async def backend(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Backend]:
    if request.param == "redis":
        _REDIS["server"] = request.getfixturevalue("redis_server")
    factory = BACKENDS[request.param]
    async with factory(tmp_path, FakeClock()) as made:
        yield made


# -- helpers ------------------------------------------------------------------------------------


def strict(value: object) -> object:
    """A form of ``value`` in which equal means identical: types are kept, so
    ``1 != 1.0 != True`` and ``-0.0 != 0.0``; dict key order is ignored."""
    if isinstance(value, dict):
        return ("dict", sorted((k, strict(v)) for k, v in value.items()))
    if isinstance(value, list | tuple):
        return (type(value).__name__, [strict(v) for v in value])
    if isinstance(value, float):
        return ("float", value.hex())
    return (type(value).__name__, value)


def streams_of(snapshot: RoomSnapshot | RoomState) -> dict[str, tuple[list[Any], int]]:
    """Each key's retained ``(value, seq)`` pairs (strictly typed) and compaction mark."""
    return {
        key: ([(strict(e.value), e.seq) for e in stream.entries], stream.compacted)
        for key, stream in snapshot.streams.items()
    }


def assert_same_room(snapshot: RoomSnapshot | None, state: RoomState) -> None:
    assert snapshot is not None
    assert snapshot.seq == state.seq
    assert streams_of(snapshot) == streams_of(state)
    for stream in snapshot.streams.values():
        seqs = [e.seq for e in stream.entries]
        assert seqs == sorted(seqs), "entries are returned seq ascending"
        assert len(set(seqs)) == len(seqs)


class Writer:
    """Pushes applied to a RoomState; their changes committed in batches."""

    def __init__(self, storage: Storage, room_id: str, state: RoomState | None = None) -> None:
        self.storage = storage
        self.room_id = room_id
        self.state = state or RoomState()
        self.changes: list[StreamChange] = []  # every change ever committed, in order
        self._batch: list[StreamChange] = []

    def push(self, key: str, value: object, action: Action) -> None:
        outcome = self.state.push(key, Value(value), action)
        if outcome.change is not None:
            self._batch.append(outcome.change)

    async def commit(self) -> None:
        await self.storage.commit(self.room_id, self.state.seq, self._batch)
        self.changes.extend(self._batch)
        self._batch = []


# -- create, exists, load -----------------------------------------------------------------------


async def test_empty_room(backend: Backend) -> None:
    storage = backend.storage
    assert not await storage.room_exists("r1")
    assert await storage.load_room("r1") is None
    await storage.create_room("r1")
    assert await storage.room_exists("r1")
    assert not await storage.room_exists("r2")
    snapshot = await storage.load_room("r1")
    assert snapshot == RoomSnapshot(0, {})
    storage = await backend.reopen()
    assert await storage.room_exists("r1")
    assert await storage.load_room("r1") == RoomSnapshot(0, {})
    assert await storage.load_room("r2") is None


async def test_create_is_idempotent_and_never_resets_a_room(backend: Backend) -> None:
    storage = backend.storage
    await storage.create_room("r")
    writer = Writer(storage, "r")
    writer.push("k", "v", Append())
    writer.push("k", "r", Relay())
    await writer.commit()
    await storage.create_room("r")
    assert_same_room(await storage.load_room("r"), writer.state)
    assert await storage.count_rooms() == 1


# -- commit and reload --------------------------------------------------------------------------


async def test_commit_replace_append_compact_and_reload(backend: Backend) -> None:
    storage = backend.storage
    await storage.create_room("r")
    await storage.create_room("bystander")
    writer = Writer(storage, "r")
    # Batch 1: appends on two keys, more than ten values (seq order is numeric, not text).
    for i in range(12):
        writer.push("log", {"i": i}, Append())
        writer.push("", f"empty key {i}", Append())
    await writer.commit()
    # Batch 2: replace, then appends after it in the same batch; a relay in between.
    writer.push("state", "a", Append())
    writer.push("state", "b", Append())
    writer.push("state", "c", Replace())
    writer.push("presence", "here", Relay())
    writer.push("state", "d", Append())
    await writer.commit()
    # Batch 3: compact in the middle of a stream, then append after it, same batch.
    writer.push("log", {"reset": 7}, Compact(seq=14))
    writer.push("log", {"i": 12}, Append())
    await writer.commit()
    # Batch 4: compact at the very last value; replace a compacted stream.
    writer.push("", "all of it", Compact(seq=writer.state.seq))
    writer.push("log2", 1, Append())
    writer.push("log2", 2, Replace())
    await writer.commit()

    expected = writer.state
    assert expected.get("log")[0] == SeqValue({"reset": 7}, 14)
    assert len(expected.get("")) == 1  # the scenario does what it says
    assert_same_room(await storage.load_room("r"), expected)
    replayed = RoomState.from_changes(expected.seq, writer.changes)
    assert_same_room(await storage.load_room("r"), replayed)
    assert await storage.load_room("bystander") == RoomSnapshot(0, {})

    storage = await backend.reopen()
    assert_same_room(await storage.load_room("r"), expected)
    assert await storage.load_room("bystander") == RoomSnapshot(0, {})


async def test_replay_filter_works_on_a_loaded_stream(backend: Backend) -> None:
    storage = backend.storage
    await storage.create_room("r")
    writer = Writer(storage, "r")
    for i in range(25):
        writer.push("k", i, Append() if i % 5 else Relay())
    await writer.commit()
    storage = await backend.reopen()
    snapshot = await storage.load_room("r")
    assert snapshot is not None
    loaded = RoomState(snapshot.seq, snapshot.streams)
    for since in (0, 1, 9, 10, 11, 24, 25, 100):
        assert loaded.get("k", since) == writer.state.get("k", since)
    assert [e.seq for e in loaded.get("k", 9)] == [
        10,
        12,
        13,
        14,
        15,
        17,
        18,
        19,
        20,
        22,
        23,
        24,
        25,
    ]


async def test_random_batches_match_the_pure_core(backend: Backend) -> None:
    """Many pushes of every action in random batch sizes; reload after each batch."""
    storage = backend.storage
    rng = random.Random(20261126)
    await storage.create_room("r")
    writer = Writer(storage, "r")
    keys = ["a", "b", "c", "ü"]
    for batch in range(30):
        for _ in range(rng.randint(0, 8)):
            key = rng.choice(keys)
            roll = rng.random()
            if roll < 0.45:
                writer.push(key, [batch, rng.random()], Append())
            elif roll < 0.6:
                writer.push(key, {"replace": batch}, Replace())
            elif roll < 0.75:
                writer.push(key, None, Relay())
            elif writer.state.seq:
                writer.push(key, {"reset": batch}, Compact(seq=rng.randint(1, writer.state.seq)))
        await writer.commit()
        assert_same_room(await storage.load_room("r"), writer.state)
    storage = await backend.reopen()
    assert_same_room(await storage.load_room("r"), writer.state)
    assert_same_room(
        await storage.load_room("r"), RoomState.from_changes(writer.state.seq, writer.changes)
    )


async def test_compaction_mark_persists(backend: Backend) -> None:
    storage = backend.storage
    await storage.create_room("r")
    writer = Writer(storage, "r")
    for i in range(6):
        writer.push("k", i, Append())
    writer.push("k", "reset@5", Compact(seq=5))
    await writer.commit()
    storage = await backend.reopen()
    snapshot = await storage.load_room("r")
    assert snapshot is not None
    assert snapshot.streams["k"].compacted == 5
    assert [(e.value, e.seq) for e in snapshot.streams["k"].entries] == [("reset@5", 5), (5, 6)]
    # A room loaded from it treats compacts at or below the mark as no-ops...
    loaded = RoomState(snapshot.seq, snapshot.streams)
    for seq in (3, 5):
        outcome = loaded.push("k", "late", Compact(seq=seq))
        assert outcome.change is None
        assert outcome.broadcast is None
    assert loaded.get("k") == snapshot.streams["k"].entries
    # ... and one above it still applies, and its mark persists in turn.
    writer = Writer(storage, "r", loaded)
    writer.push("k", "reset@6", Compact(seq=6))
    await writer.commit()
    storage = await backend.reopen()
    snapshot = await storage.load_room("r")
    assert snapshot is not None
    assert snapshot.streams["k"].compacted == 6
    assert snapshot.streams["k"].entries == [SeqValue("reset@6", 6)]


async def test_relay_only_commits_raise_the_high_water_seq(backend: Backend) -> None:
    storage = backend.storage
    await storage.create_room("r")
    await storage.commit("r", 3, [])
    assert (await storage.load_room("r")) == RoomSnapshot(3, {})
    storage = await backend.reopen()
    assert (await storage.load_room("r")) == RoomSnapshot(3, {})
    await storage.commit("r", 7, [])
    # A commit never lowers it (an older batch committed late cannot reuse seqs).
    await storage.commit("r", 5, [])
    storage = await backend.reopen()
    snapshot = await storage.load_room("r")
    assert snapshot == RoomSnapshot(7, {})
    state = RoomState(snapshot.seq, snapshot.streams)
    assert state.push("k", "next", Relay()).broadcast == SeqValue("next", 8)


async def test_a_big_batch_is_one_commit(backend: Backend) -> None:
    storage = backend.storage
    await storage.create_room("r")
    writer = Writer(storage, "r")
    for i in range(500):
        writer.push(f"k{i % 7}", i, Append())
    await writer.commit()
    storage = await backend.reopen()
    assert_same_room(await storage.load_room("r"), writer.state)


# -- values ------------------------------------------------------------------------------------


def _nested(depth: int) -> object:
    value: object = "deep"
    for _ in range(depth):
        value = [value]
    return value


ROUND_TRIP_VALUES: list[object] = [
    None,
    True,
    False,
    0,
    1,
    -1,
    2**53 - 1,
    -(2**53 - 1),
    2**32 + 5,
    1.0,
    -0.0,
    0.1,
    1e300,
    -2.5e-308,
    5e-324,
    math.pi,
    "",
    "plain",
    "unicode: é ü 漢字 🎉 \u0000 \U0010ffff",
    b"",
    b"\x00\x01\xff" * 100,
    [],
    {},
    [1, "two", 3.0, None, b"\x04", [5, [6, [7]]]],
    {"": 0, "ключ": {"nested": [{"deep": True}], "bytes": b"\xde\xad"}, "1": 1.5},
    {"v": {"x": 10, "y": 20}, "i": "client-1"},
    "x" * 100_000,
    _nested(40),
]


async def test_values_round_trip_exactly(backend: Backend) -> None:
    storage = backend.storage
    await storage.create_room("r")
    writer = Writer(storage, "r")
    for i, value in enumerate(ROUND_TRIP_VALUES):
        writer.push("append", value, Append())
        writer.push(f"replace-{i}", value, Replace())
    writer.push("unicode key ✓ 漢字", b"\x00", Append())
    await writer.commit()
    for reopen in (False, True):
        storage = await backend.reopen() if reopen else backend.storage
        snapshot = await storage.load_room("r")
        assert snapshot is not None
        loaded = [e.value for e in snapshot.streams["append"].entries]
        assert [strict(v) for v in loaded] == [strict(v) for v in ROUND_TRIP_VALUES]
        for i, value in enumerate(ROUND_TRIP_VALUES):
            entries = snapshot.streams[f"replace-{i}"].entries
            assert [strict(e.value) for e in entries] == [strict(value)]
        assert snapshot.streams["unicode key ✓ 漢字"].entries == [
            SeqValue(b"\x00", 2 * len(ROUND_TRIP_VALUES) + 1)
        ]


async def test_a_loaded_snapshot_is_a_copy(backend: Backend) -> None:
    storage = backend.storage
    await storage.create_room("r")
    writer = Writer(storage, "r")
    writer.push("k", {"a": [1]}, Append())
    writer.push("k", 2, Append())
    await writer.commit()
    snapshot = await storage.load_room("r")
    assert snapshot is not None
    snapshot.streams["k"].entries.clear()
    snapshot.streams["new"] = Stream([SeqValue(1, 1)])
    assert_same_room(await storage.load_room("r"), writer.state)


# -- unknown and deleted rooms -----------------------------------------------------------------


async def test_commit_to_an_unknown_room_changes_nothing(backend: Backend) -> None:
    storage = backend.storage
    await storage.create_room("other")
    change = StreamChange("append", "k", SeqValue("v", 1))
    with pytest.raises(RoomNotFound):
        await storage.commit("ghost", 1, [change])
    with pytest.raises(RoomNotFound):
        await storage.commit("ghost", 5, [])
    assert not await storage.room_exists("ghost")
    assert await storage.load_room("ghost") is None
    assert await storage.count_rooms() == 1
    assert await storage.load_room("other") == RoomSnapshot(0, {})
    # The storage still works after the refusal.
    await storage.commit("other", 1, [change])
    assert await storage.load_room("other") == RoomSnapshot(1, {"k": Stream([SeqValue("v", 1)])})


async def test_delete_room_removes_its_data(backend: Backend) -> None:
    storage = backend.storage
    for room in ("gone", "kept"):
        await storage.create_room(room)
        writer = Writer(storage, room)
        writer.push("k", room, Append())
        writer.push("k", "c", Compact(seq=1))
        await writer.commit()
    await storage.delete_room("gone")
    await storage.delete_room("never existed")  # a no-op
    assert not await storage.room_exists("gone")
    assert await storage.load_room("gone") is None
    with pytest.raises(RoomNotFound):
        await storage.commit("gone", 9, [StreamChange("append", "k", SeqValue("late", 9))])
    assert await storage.count_rooms() == 1
    storage = await backend.reopen()
    assert await storage.load_room("gone") is None
    # The same id created again is a new, empty room: no stream, entry or mark survived.
    await storage.create_room("gone")
    assert await storage.load_room("gone") == RoomSnapshot(0, {})
    kept = await storage.load_room("kept")
    assert kept is not None
    assert kept.seq == 1
    assert kept.streams["k"].entries == [SeqValue("c", 1)]
    assert kept.streams["k"].compacted == 1


# -- expiry -----------------------------------------------------------------------------------


async def test_expire_deletes_rooms_idle_longer_than_the_ttl(backend: Backend) -> None:
    storage, clock = backend.storage, backend.clock
    for room in ("idle", "touched", "written", "relayed", "live"):
        await storage.create_room(room)
    writer = Writer(storage, "idle")
    writer.push("k", "data", Append())
    await writer.commit()  # at t0: the last activity of "idle"
    clock.advance(100)
    await storage.touch("touched")
    await storage.commit("relayed", 4, [])  # a relay-only batch is activity too
    written = Writer(storage, "written")
    written.push("k", 1, Append())
    await written.commit()
    await storage.touch("nonexistent")  # a no-op, and creates nothing
    clock.advance(100)  # t0 + 200: "idle" was idle 200 s, the others 100 s

    assert await storage.expire(150, keep=["live"]) == ["idle"]
    assert not await storage.room_exists("idle")
    assert await storage.load_room("idle") is None
    assert await storage.count_rooms() == 4

    # Idle for exactly the TTL is not "longer than" it.
    assert await storage.expire(100, keep=["live"]) == []
    clock.advance(1)
    assert sorted(await storage.expire(100, keep=["live"])) == ["relayed", "touched", "written"]
    assert await storage.room_exists("live"), "keep protects a live room however idle"
    assert not await storage.room_exists("nonexistent")
    storage = await backend.reopen()
    assert await storage.count_rooms() == 1
    assert await storage.room_exists("live")
    assert await storage.expire(1, keep=[]) == ["live"]
    assert await storage.count_rooms() == 0
    # An expired id can be created again, empty.
    await storage.create_room("idle")
    assert await storage.load_room("idle") == RoomSnapshot(0, {})


async def test_touch_and_commit_push_expiry_back(backend: Backend) -> None:
    storage, clock = backend.storage, backend.clock
    await storage.create_room("r")
    for _ in range(5):
        clock.advance(90)
        await storage.touch("r")
        assert await storage.expire(100) == []
    clock.advance(90)
    await storage.commit("r", 1, [StreamChange("append", "k", SeqValue("v", 1))])
    clock.advance(90)
    assert await storage.expire(100) == []
    clock.advance(11)
    assert await storage.expire(100) == ["r"]


async def test_count_rooms(backend: Backend) -> None:
    storage = backend.storage
    assert await storage.count_rooms() == 0
    for i in range(5):
        await storage.create_room(f"r{i}")
    await storage.create_room("r0")
    assert await storage.count_rooms() == 5
    await storage.delete_room("r3")
    assert await storage.count_rooms() == 4
    storage = await backend.reopen()
    assert await storage.count_rooms() == 4


def test_every_backend_is_in_the_suite() -> None:
    """Adding a backend to the package without adding it here fails this test."""
    import drifttrio.storage as package

    backends = {name for name in package.__all__ if name.endswith("Storage") and name != "Storage"}
    backends.add("RedisStorage")  # in drifttrio.storage.redis (an optional extra)
    assert backends == {"MemoryStorage", "SqliteStorage", "RedisStorage"}, (
        "a new storage backend: add its factory to BACKENDS and update this set"
    )
    assert set(BACKENDS) == {"memory", "sqlite", "redis"}
