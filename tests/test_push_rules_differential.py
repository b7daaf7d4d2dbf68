"""The push rules are written twice, and the two must agree: the room state machine
(:class:`RoomState`, Python) orders a room on one node, the Redis push script (Lua)
orders a room shared by several nodes.

The same random pushes, in random batches and under small random caps, go to a fresh
``RoomState`` and to a fresh room on a real ``redis-server`` through
:meth:`RedisStorage.push_batch` (built as the shared room builds them). Each push must
have the same outcome on both (accepted at the same seq with the same stream size, a
no-op, or refused for the same :class:`PushRefusal` with the same text), and at the end
the room Redis holds, the node's mirror of it and the ``RoomState`` must retain the
same streams, seq, compaction marks and bytes.
"""

from __future__ import annotations

import re
import secrets
from pathlib import Path
from typing import Any, Literal, TypeAlias

import attrs
import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from _redis import RedisServer
from drifttrio.core.refusals import PushRefusal, PushRefused
from drifttrio.core.room_state import RoomLimits, RoomState, key_size, value_size
from drifttrio.protocol import Action, Append, Compact, Relay, Replace, SeqValue
from drifttrio.protocol.messages import Value
from drifttrio.storage import _redis_scripts as scripts
from drifttrio.storage.redis import ActionName, PushItem, PushResult, RedisStorage, encode_value

#: A small alphabet, so the key cap is reached; "ü" is two bytes in Lua, one
#: character in Python.
KEYS = ["a", "b", "c", "ü"]

_TEXT = st.text(st.characters(exclude_categories=["Cs"]), max_size=12)
SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**53), 2**53),
    st.floats(allow_nan=False, allow_infinity=False),
    _TEXT,
    st.binary(max_size=12),
    # Large ones, so that max_room_bytes is reached within a few pushes.
    st.text(st.characters(exclude_categories=["Cs"]), min_size=100, max_size=1500),
    st.binary(min_size=100, max_size=1500),
)
VALUES = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(_TEXT, inner, max_size=5),
    max_leaves=12,
)


@attrs.frozen
class Push:
    action: ActionName
    key: str
    value: Any


PUSHES = st.builds(
    Push,
    # Appends and compacts the most: they reach the value cap and the no-ops.
    st.sampled_from(["relay", "replace", "append", "append", "compact", "compact"]),
    st.sampled_from(KEYS),
    VALUES,
)
#: Pushes in batches, as a shared room sends what its inbox holds in one script call.
BATCHES = st.lists(st.lists(PUSHES, min_size=1, max_size=6), min_size=3, max_size=10)
LIMITS = st.builds(
    RoomLimits,
    max_keys=st.integers(0, 3),
    max_stream_values=st.integers(0, 4),
    max_room_bytes=st.one_of(st.just(0), st.integers(400, 6000)),
)

Outcome: TypeAlias = (
    tuple[Literal["ok"], int, int | None]
    | tuple[Literal["noop"]]
    | tuple[Literal["refused"], PushRefusal, str]
)
ACTIONS: dict[str, Action] = {"relay": Relay(), "replace": Replace(), "append": Append()}


def apply_to_room_state(state: RoomState, push: Push, action: Action) -> Outcome:
    try:
        outcome = state.push(push.key, Value(push.value), action)
    except PushRefused as exc:
        return ("refused", exc.reason, exc.message)
    if outcome.change is not None:
        return ("ok", outcome.change.entry.seq, outcome.stream_size)
    if outcome.broadcast is not None:  # a relay
        return ("ok", outcome.broadcast.seq, outcome.stream_size)
    return ("noop",)


def redis_outcome(result: PushResult) -> Outcome:
    if result.status == "ok":
        # The room reports a stream's size only once it holds more than one value.
        return ("ok", result.seq, result.stream_size if result.stream_size > 1 else None)
    if result.status == "noop":
        return ("noop",)
    assert result.refusal is not None
    return ("refused", result.refusal.reason, result.error)


def push_item(push: Push, action: Action) -> PushItem:
    """The item the shared room (``SharedRoom._push``) sends for this push."""
    relay = isinstance(action, Relay)
    return PushItem(
        push.action,
        push.key,
        encode_value(Value(push.value)),
        action.seq if isinstance(action, Compact) else 0,
        RoomState().check_budget(push.key, Value(push.value), action),
        0 if relay else key_size(push.key),
    )


def retained(state: RoomState) -> dict[str, tuple[int, list[SeqValue]]]:
    """Each stream's compaction mark and values."""
    return {key: (stream.compacted, list(stream.entries)) for key, stream in state.streams.items()}


@attrs.frozen
class Batch:
    """Pushes for one script call, and what the room state made of them."""

    pushes: list[Push]
    items: list[PushItem]
    expected: list[Outcome]


def plan(
    state: RoomState, batches: list[list[Push]], data: st.DataObject | None = None
) -> list[Batch]:
    """Apply the pushes to ``state``; a compact's seq is drawn around the room's seq."""
    planned = []
    for pushes in batches:
        items, expected = [], []
        for push in pushes:
            if push.action == "compact":
                assert data is not None
                at = data.draw(st.integers(-1, state.seq + 2), label=f"compact {push.key!r} at")
                action: Action = Compact(at)
            else:
                action = ACTIONS[push.action]
            items.append(push_item(push, action))
            expected.append(apply_to_room_state(state, push, action))
        planned.append(Batch(pushes, items, expected))
    return planned


async def compare_with_redis(
    storage: RedisStorage, limits: RoomLimits, batches: list[Batch], state: RoomState
) -> None:
    room_id = secrets.token_hex(8)
    await storage.create_room(room_id)
    mirror = RoomState()  # what a node following the room's events holds
    for batch in batches:
        results = await storage.push_batch(
            room_id,
            batch.items,
            seen_ev=0,
            max_keys=limits.max_keys,
            max_values=limits.max_stream_values,
            max_bytes=limits.max_room_bytes,
        )
        assert [redis_outcome(result) for result in results] == batch.expected, batch.pushes
        for push, result in zip(batch.pushes, results, strict=True):
            if result.status == "ok":
                entry = SeqValue(Value(push.value), result.seq)
                mirror.apply_event(push.action, push.key, entry)

    snapshot = await storage.load_room(room_id)
    assert snapshot is not None
    stored = RoomState(snapshot.seq, snapshot.streams)
    assert (stored.seq, retained(stored)) == (state.seq, retained(state))
    assert (mirror.seq, retained(mirror)) == (state.seq, retained(state))
    # Redis keeps the room's bytes (the entries' charges) whatever the caps: they match
    # what the room state counts.
    counted = RoomState(state.seq, state.streams, limits=RoomLimits(max_room_bytes=1 << 62))
    assert int(await storage.client.hget(storage._meta(room_id), "bytes")) == counted.bytes
    await storage.delete_room(room_id)


async def test_room_state_and_the_redis_script_agree_on_every_push(
    redis_server: RedisServer,
) -> None:
    storage = RedisStorage(f"{redis_server.url}?prefix=t{secrets.token_hex(6)}")

    # One Redis connection for every example: hypothesis runs in a worker thread, the
    # room state there too, and each example's pushes go to Redis from this trio run.
    @settings(
        max_examples=150,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(limits=LIMITS, batches=BATCHES, data=st.data())
    def check(limits: RoomLimits, batches: list[list[Push]], data: st.DataObject) -> None:
        state = RoomState(limits=limits)
        planned = plan(state, batches, data)
        trio.from_thread.run(compare_with_redis, storage, limits, planned, state)

    async with trio.open_nursery() as nursery:
        await nursery.start(storage.run)
        try:
            await trio.to_thread.run_sync(check)
        finally:
            await storage.aclose()


async def test_a_push_that_reaches_the_byte_cap_exactly_passes_on_both(
    redis_server: RedisServer,
) -> None:
    """The boundary random values almost never hit: a room at exactly ``max_room_bytes``
    is within it, one byte more is not."""
    value = "x" * 50
    limits = RoomLimits(max_room_bytes=key_size("k") + value_size(value))
    pushes = [Push("replace", "k", value), Push("append", "k", ""), Push("replace", "k", "y" * 50)]
    state = RoomState(limits=limits)
    planned = plan(state, [pushes])
    assert [outcome[0] for outcome in planned[0].expected] == ["ok", "refused", "ok"]
    storage = RedisStorage(f"{redis_server.url}?prefix=t{secrets.token_hex(6)}")
    async with trio.open_nursery() as nursery:
        await nursery.start(storage.run)
        try:
            await compare_with_redis(storage, limits, planned, state)
        finally:
            await storage.aclose()


def test_the_redis_script_returns_exactly_the_refusal_names() -> None:
    """The script names its refusals by the enum's values: one for every refusal but
    the server budget (each node checks its own budget before calling the script)."""
    named = set(re.findall(r"\{'err', '(\w+)'", scripts.PUSH))
    assert named == {reason.value for reason in PushRefusal} - {PushRefusal.BUDGET.value}


#: The refusals docs/protocol.md quotes, with the numbers it quotes them with.
DOCUMENTED = {
    PushRefusal.KEYS: (10000,),
    PushRefusal.VALUES: (10000,),
    PushRefusal.BYTES: (67108864,),
    PushRefusal.COMPACT_HIGH: (99, 2),
    PushRefusal.BUDGET: (536870912,),
}


def test_the_refusal_texts_are_the_documented_ones() -> None:
    docs = Path(__file__).parent.parent / "docs" / "protocol.md"
    text = " ".join(docs.read_text().split())
    for reason, numbers in DOCUMENTED.items():
        refused = PushRefused(reason, "k", *numbers)
        assert refused.message in text, reason
        assert refused.status == (503 if reason is PushRefusal.BUDGET else 400)
    low = PushRefused(PushRefusal.COMPACT_LOW, "k", 0)
    assert (low.message, low.status) == ("compact seq must be at least 1, got 0", 400)
