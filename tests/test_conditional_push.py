"""Conditional pushes (``expect_seq``): a push applied only if its key's last retained
seq is the expected one, decided where the room's order is decided.

The rule itself is :class:`RoomState`'s (pure, tested synchronously here) and the Redis
push script's (the two are compared in ``tests/test_push_rules_differential.py``).
Through :meth:`Hub.push` it is checked on every store, memory, a real SQLite file
and a real ``redis-server`` (two nodes): a conflict raises :class:`PushConflict`,
changes nothing and uses no seq, and of pushes sent concurrently with the same
``expect_seq`` exactly one applies.
"""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path

import pytest
import trio

from _redis import RedisServer
from drifttrio import Config, ProtocolError, PushConflict
from drifttrio.core.refusals import PushRefusal, PushRefused
from drifttrio.core.room_state import RoomLimits, RoomState
from drifttrio.protocol import Append, Compact, Relay, Replace, SeqValue
from drifttrio.protocol.messages import Value
from drifttrio.runtime.commands import Outcome, PushCommand
from drifttrio.runtime.hub import Hub, open_hub
from drifttrio.storage.redis import RedisStorage
from drifttrio.web.app import _REPLY_STATUS

TIMEOUT = 20  # a guard against hangs, never a way to wait for something


def v(value: object) -> Value:
    return Value(value)


def conflict_of(state: RoomState, push: Callable[[], object]) -> PushRefused:
    """The refusal ``push`` raises, checking it changed nothing."""
    before = (state.seq, {k: list(s.entries) for k, s in state.streams.items()}, state.bytes)
    with pytest.raises(PushRefused) as refused:
        push()
    after = (state.seq, {k: list(s.entries) for k, s in state.streams.items()}, state.bytes)
    assert after == before
    return refused.value


# -- the rule, in the room state machine ---------------------------------------------------


def test_a_push_expecting_the_keys_last_seq_applies() -> None:
    state = RoomState()
    state.push("other", v("x"), Append())  # seq 1, another key
    assert state.push("k", v("a"), Append(), expect_seq=0).change is not None  # seq 2
    outcome = state.push("k", v("b"), Append(), expect_seq=2)
    assert outcome.broadcast == SeqValue(v("b"), 3)
    assert state.get("k") == [SeqValue(v("a"), 2), SeqValue(v("b"), 3)]
    assert state.last_seq("k") == 3


def test_a_push_expecting_another_seq_is_a_conflict_that_changes_nothing() -> None:
    state = RoomState()
    state.push("k", v("a"), Append())
    state.push("k", v("b"), Append())
    refused = conflict_of(state, lambda: state.push("k", v("c"), Replace(), expect_seq=1))
    assert refused.reason is PushRefusal.CONFLICT
    assert refused.message == "conflict: key 'k' changed (last seq 2, expected 1)"
    assert refused.status == 409
    # No seq was used: the next push gets the one the refused push would have.
    assert state.push("k", v("c"), Append()).broadcast == SeqValue(v("c"), 3)


def test_zero_expects_a_key_that_retains_nothing() -> None:
    state = RoomState()
    assert state.last_seq("k") == 0
    state.push("k", v("first"), Replace(), expect_seq=0)
    refused = conflict_of(state, lambda: state.push("k", v("second"), Replace(), expect_seq=0))
    assert refused.numbers == (1, 0)
    # A relayed key retains nothing: its last retained seq stays 0.
    state.push("cursor", v({"x": 1}), Relay())
    assert state.last_seq("cursor") == 0
    assert state.push("cursor", v({"x": 2}), Relay(), expect_seq=0).broadcast is not None


def test_after_a_compact_the_last_seq_is_the_compacts_or_a_later_values() -> None:
    state = RoomState()
    for value in ("a", "b", "c"):
        state.push("k", v(value), Append())  # seqs 1, 2, 3
    state.push("k", v("ab"), Compact(2), expect_seq=3)
    assert state.get("k") == [SeqValue(v("ab"), 2), SeqValue(v("c"), 3)]
    assert state.last_seq("k") == 3  # the value after the compaction is still last
    state.push("k", v("abc"), Compact(3), expect_seq=3)
    assert state.get("k") == [SeqValue(v("abc"), 3)]
    refused = conflict_of(state, lambda: state.push("k", v("d"), Append(), expect_seq=2))
    assert refused.numbers == (3, 2)
    state.push("k", v("d"), Append(), expect_seq=3)
    assert state.last_seq("k") == 4


def test_a_relay_expecting_a_seq_follows_the_retained_stream() -> None:
    state = RoomState()
    state.push("k", v("kept"), Replace())  # seq 1
    # A relay retains nothing, so two relays may expect the same retained seq.
    assert state.push("k", v("r1"), Relay(), expect_seq=1).broadcast == SeqValue(v("r1"), 2)
    assert state.push("k", v("r2"), Relay(), expect_seq=1).broadcast == SeqValue(v("r2"), 3)
    refused = conflict_of(state, lambda: state.push("k", v("r3"), Relay(), expect_seq=3))
    assert refused.numbers == (1, 3)
    assert state.seq == 3


def test_a_conflict_is_decided_before_any_other_rule() -> None:
    state = RoomState(limits=RoomLimits(max_keys=1))
    state.push("k", v("a"), Append())  # seq 1
    for push in (
        lambda: state.push("k", v("x"), Compact(0), expect_seq=0),  # compact seq below 1
        lambda: state.push("k", v("x"), Compact(9), expect_seq=0),  # beyond the room's seq
        lambda: state.push("new", v("x"), Append(), expect_seq=1),  # a key beyond the cap
    ):
        assert conflict_of(state, push).reason is PushRefusal.CONFLICT
    # When the seq matches, the other rules decide as usual.
    matched = conflict_of(state, lambda: state.push("new", v("x"), Append(), expect_seq=0))
    assert matched.reason is PushRefusal.KEYS


def test_a_mirror_leaves_a_conflict_it_sees_to_the_store() -> None:
    """A shared room's mirror may be behind the store, so a conflict it sees is not
    final: its budget check lets the push through, for the store to decide."""
    from drifttrio.core.budget import RetainedBudget

    mirror = RoomState(limits=RoomLimits(account=RetainedBudget(1).account()))
    with pytest.raises(PushRefused) as full:
        mirror.check_budget("k", v("big"), Append(), expect_seq=0)
    assert full.value.reason is PushRefusal.BUDGET
    assert mirror.check_budget("k", v("big"), Append(), expect_seq=5) > 0


def test_a_conflict_on_send_is_answered_409() -> None:
    """``/send`` answers a conflict (a hook's ``Accept(expect_seq=...)``) with 409, and
    every way a command can end but done has its status."""
    assert _REPLY_STATUS[Outcome.CONFLICT] == 409
    assert set(_REPLY_STATUS) == set(Outcome) - {Outcome.DONE}


# -- through the hub, on every store --------------------------------------------------------

STORES = ["memory", "sqlite", "redis"]


@asynccontextmanager
async def two_hubs(
    store: str, tmp_path: Path, redis: RedisServer | None
) -> AsyncIterator[tuple[Hub, Hub]]:
    """Two hubs pushing to one room: with Redis two nodes, else the same hub twice."""
    if store == "redis":
        assert redis is not None
        url = f"{redis.url}?prefix=t{secrets.token_hex(6)}"
        async with (
            open_hub(Config(), RedisStorage(url)) as a,
            open_hub(Config(), RedisStorage(url)) as b,
        ):
            yield a, b
        return
    config = Config(store="memory://" if store == "memory" else f"sqlite:///{tmp_path}/c.db")
    async with open_hub(config) as hub:
        yield hub, hub


@pytest.fixture(params=STORES)
def hubs(
    request: pytest.FixtureRequest, tmp_path: Path
) -> Callable[[], AbstractAsyncContextManager[tuple[Hub, Hub]]]:
    store: str = request.param
    redis: RedisServer | None = None
    if store == "redis":
        redis = request.getfixturevalue("redis_server")
    return lambda: two_hubs(store, tmp_path, redis)


async def test_hub_push_raises_push_conflict_and_changes_nothing(
    hubs: Callable[[], AbstractAsyncContextManager[tuple[Hub, Hub]]],
) -> None:
    with trio.fail_after(TIMEOUT):
        async with hubs() as (a, b):
            room = await a.create_room()
            assert await a.push(room, "k", "a", expect_seq=0) is None
            # The other node pushes against the state it was told of: a conflict.
            with pytest.raises(PushConflict) as conflict:
                await b.push(room, "k", "b", Replace(), expect_seq=0)
            assert isinstance(conflict.value, ProtocolError)
            assert conflict.value.status == 409
            assert conflict.value.message == "conflict: key 'k' changed (last seq 1, expected 0)"
            assert await b.push(room, "k", "b", expect_seq=1) == 2
            # The conflict used no seq, and an unconditional push still passes. (Read
            # where it was pushed: a Redis node's mirror has every push up to its own.)
            assert await a.push(room, "k", "c") == 3
            assert await a.get(room, "k") == [SeqValue("a", 1), SeqValue("b", 2), SeqValue("c", 3)]
            # Other refusals stay ProtocolError, not conflicts.
            with pytest.raises(ProtocolError) as other:
                await a.push(room, "k", "x", Compact(99), expect_seq=3)
            assert type(other.value) is ProtocolError


async def test_a_conflict_on_sqlite_leaves_the_file_as_it_was(tmp_path: Path) -> None:
    config = Config(store=f"sqlite:///{tmp_path}/kept.db")
    with trio.fail_after(TIMEOUT):
        async with open_hub(config) as hub:
            room = await hub.create_room()
            await hub.push(room, "k", "a", Replace(), expect_seq=0)
            with pytest.raises(PushConflict):
                await hub.push(room, "k", "lost", Replace(), expect_seq=0)
        async with open_hub(config) as reopened:
            assert await reopened.get(room, "k") == [SeqValue("a", 1)]
            assert await reopened.push(room, "k", "b", expect_seq=1) == 2


async def test_a_reply_refused_for_a_conflict_ends_as_conflict(
    hubs: Callable[[], AbstractAsyncContextManager[tuple[Hub, Hub]]],
) -> None:
    """What ``/send`` and ``Hub.push`` read: the reply's outcome, on every store (the
    Redis script's refusal comes back through the shared room)."""
    with trio.fail_after(TIMEOUT):
        async with hubs() as (a, b):
            room = await a.create_room()
            await a.push(room, "k", "a")
            reply = await b.request(
                room, lambda r: PushCommand("k", Value("b"), Append(), r, expect_seq=0)
            )
            assert reply.outcome is Outcome.CONFLICT
            reply = await b.request(
                room, lambda r: PushCommand("k", Value("b"), Compact(0), r, expect_seq=1)
            )
            assert reply.outcome is Outcome.REFUSED


async def test_of_concurrent_pushes_expecting_the_same_seq_exactly_one_applies(
    hubs: Callable[[], AbstractAsyncContextManager[tuple[Hub, Hub]]],
) -> None:
    with trio.fail_after(TIMEOUT):
        async with hubs() as (a, b):
            room = await a.create_room()
            await a.push(room, "k", "start", Replace())  # seq 1
            applied: list[str] = []
            conflicts: list[str] = []

            async def move(hub: Hub, name: str) -> None:
                try:
                    await hub.push(room, "k", name, Replace(), expect_seq=1)
                except PushConflict:
                    conflicts.append(name)
                else:
                    applied.append(name)

            async with trio.open_nursery() as nursery:
                for i in range(10):
                    nursery.start_soon(move, a if i % 2 else b, f"move {i}")
            assert len(applied) == 1, applied
            assert len(conflicts) == 9
            # The one applied took seq 2: a push expecting it passes.
            await a.push(room, "k", "next", Append(), expect_seq=2)
            assert await a.get(room, "k") == [SeqValue(applied[0], 2), SeqValue("next", 3)]


async def test_compare_and_set_counters_lose_no_increment(
    hubs: Callable[[], AbstractAsyncContextManager[tuple[Hub, Hub]]],
) -> None:
    """Read, add one, push expecting the seq read, retry on a conflict: with tasks on
    both hubs doing it at once, each count is pushed exactly once, none lost or
    repeated. (A Redis node reads its mirror, which may lag: then it conflicts.)"""
    tasks, each = 4, 5
    with trio.fail_after(TIMEOUT):
        async with hubs() as (a, b):
            room = await a.create_room()
            counted: list[int] = []
            retries: list[int] = []

            async def increment(hub: Hub) -> None:
                for _ in range(each):
                    while True:
                        read = await hub.get(room, "n")
                        seq, count = (read[-1].seq, read[-1].value) if read else (0, 0)
                        try:
                            await hub.push(room, "n", count + 1, Replace(), expect_seq=seq)
                        except PushConflict:
                            retries.append(seq)
                            continue
                        counted.append(count + 1)
                        break

            async with trio.open_nursery() as nursery:
                for i in range(tasks):
                    nursery.start_soon(increment, a if i % 2 else b)
            assert sorted(counted) == list(range(1, tasks * each + 1))
            assert retries, "the tasks never raced: nothing was tested"
