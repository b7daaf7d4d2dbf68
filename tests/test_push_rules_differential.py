"""The push rules are written twice, and the two must agree: the room state machine
(:class:`RoomState`, Python) orders a room on one node, the Redis push script (Lua)
orders a room shared by several nodes.

The same random pushes, in random batches, under small random caps and a node budget
(:attr:`RoomLimits.account`; the shared room checks it on its mirror), some of them
conditional (``expect_seq``: the key's last retained seq, or another), go to a fresh
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
from drifttrio import Config, DriftError
from drifttrio.core.budget import RetainedBudget
from drifttrio.core.refusals import PushRefusal, PushRefused
from drifttrio.core.room_state import RoomLimits, RoomState, key_size, value_size
from drifttrio.protocol import Action, Append, Compact, Relay, Replace, SeqValue
from drifttrio.protocol.messages import Value
from drifttrio.runtime.hub import open_hub
from drifttrio.storage import MemoryStorage, Storage
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


@attrs.frozen
class Caps:
    """A room's caps, and the server budget (0: none) its node has for it."""

    max_keys: int = 0
    max_stream_values: int = 0
    max_room_bytes: int = 0
    budget: int = 0

    def limits(self) -> RoomLimits:
        """Limits for one room state, with an account in a budget of its own."""
        account = RetainedBudget(self.budget).account() if self.budget else None
        return RoomLimits(self.max_keys, self.max_stream_values, self.max_room_bytes, account)


CAPS = st.builds(
    Caps,
    max_keys=st.integers(0, 3),
    max_stream_values=st.integers(0, 4),
    max_room_bytes=st.one_of(st.just(0), st.integers(400, 6000)),
    budget=st.one_of(st.just(0), st.integers(400, 6000)),
)

Outcome: TypeAlias = (
    tuple[Literal["ok"], int, int | None]
    | tuple[Literal["noop"]]
    | tuple[Literal["refused"], PushRefusal, str]
)
ACTIONS: dict[str, Action] = {"relay": Relay(), "replace": Replace(), "append": Append()}


def apply_to_room_state(
    state: RoomState, push: Push, action: Action, expect: int | None = None
) -> Outcome:
    try:
        outcome = state.push(push.key, Value(push.value), action, expect)
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


def push_item(push: Push, action: Action, charge: int, expect: int | None = None) -> PushItem:
    """The item the shared room (``SharedRoom._push``) sends for this push."""
    relay = isinstance(action, Relay)
    return PushItem(
        push.action,
        push.key,
        encode_value(Value(push.value)),
        action.seq if isinstance(action, Compact) else 0,
        charge,
        0 if relay else key_size(push.key),
        expect,
    )


def retained(state: RoomState) -> dict[str, tuple[int, list[SeqValue]]]:
    """Each stream's compaction mark and values."""
    return {key: (stream.compacted, list(stream.entries)) for key, stream in state.streams.items()}


@attrs.frozen
class Batch:
    """Pushes for one script call, and what the room state made of them."""

    pushes: list[Push]
    actions: list[Action]
    expected: list[Outcome]
    #: Each push's ``expect_seq`` (``None``: unconditional).
    expects: list[int | None] = attrs.field(factory=list)

    def expect(self, i: int) -> int | None:
        return self.expects[i] if self.expects else None


def plan(
    state: RoomState,
    batches: list[list[Push]],
    data: st.DataObject | None = None,
    expects: list[list[int | None]] | None = None,
) -> list[Batch]:
    """Apply the pushes to ``state``; a compact's seq is drawn around the room's seq.

    A push's ``expect_seq`` is the one ``expects`` gives, else (with ``data``) drawn: none
    mostly, or the key's last retained seq as the room state has it before the batch
    (so a later push of the key in the same batch conflicts), or a seq around it."""
    planned = []
    for b, pushes in enumerate(batches):
        actions: list[Action] = []
        batch_expects: list[int | None] = [] if expects is None else expects[b]
        for push in pushes:
            if expects is None and data is not None:
                last = state.last_seq(push.key)
                expect_seqs = st.none() | st.none() | st.just(last) | st.integers(0, state.seq + 1)
                batch_expects.append(data.draw(expect_seqs, label=f"expect_seq {push.key!r}"))
            if push.action == "compact":
                assert data is not None
                stream = state.streams.get(push.key)
                mark = stream.compacted if stream is not None else 0
                # Around the room's seq, or at or below the stream's mark (a no-op).
                seqs = st.integers(-1, state.seq + 2) | st.integers(1, max(mark, 1))
                actions.append(Compact(data.draw(seqs, label=f"compact {push.key!r} at")))
            else:
                actions.append(ACTIONS[push.action])
        conditions = batch_expects or [None] * len(pushes)
        expected = [
            apply_to_room_state(state, p, a, e)
            for p, a, e in zip(pushes, actions, conditions, strict=True)
        ]
        planned.append(Batch(pushes, actions, expected, batch_expects))
    return planned


async def push_through_redis(
    storage: RedisStorage, room_id: str, mirror: RoomState, batch: Batch
) -> list[Outcome]:
    """What the shared room does with a batch: the node's budget is judged on its mirror
    (before the batch), the rest goes to the script, and the events to the mirror."""
    outcomes: dict[int, Outcome] = {}
    sent, items = [], []
    for i, (push, action) in enumerate(zip(batch.pushes, batch.actions, strict=True)):
        expect = batch.expect(i)
        try:
            charge = mirror.check_budget(push.key, Value(push.value), action, expect)
        except PushRefused as exc:
            outcomes[i] = ("refused", exc.reason, exc.message)
        else:
            sent.append(i)
            items.append(push_item(push, action, charge, expect))
    limits = mirror.limits
    results = await storage.push_batch(
        room_id,
        items,
        seen_ev=0,
        max_keys=limits.max_keys,
        max_values=limits.max_stream_values,
        max_bytes=limits.max_room_bytes,
    )
    for i, result in zip(sent, results, strict=True):
        outcomes[i] = redis_outcome(result)
        if result.status == "ok":
            push = batch.pushes[i]
            mirror.apply_event(push.action, push.key, SeqValue(Value(push.value), result.seq))
    return [outcomes[i] for i in range(len(batch.pushes))]


async def compare_with_redis(
    storage: RedisStorage, caps: Caps, batches: list[Batch], state: RoomState
) -> None:
    room_id = secrets.token_hex(8)
    await storage.create_room(room_id)
    mirror = RoomState(limits=caps.limits())  # the pushing node's copy of the room
    for batch in batches:
        outcomes = await push_through_redis(storage, room_id, mirror, batch)
        assert outcomes == batch.expected, batch.pushes

    snapshot = await storage.load_room(room_id)
    assert snapshot is not None
    stored = RoomState(snapshot.seq, snapshot.streams)
    assert (stored.seq, retained(stored)) == (state.seq, retained(state))
    assert (mirror.seq, retained(mirror), mirror.bytes) == (state.seq, retained(state), state.bytes)
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
    @given(caps=CAPS, batches=BATCHES, data=st.data())
    def check(caps: Caps, batches: list[list[Push]], data: st.DataObject) -> None:
        if caps.budget:
            # A shared room judges its node's budget before each batch, on purpose
            # (it cannot know what the script will accept): compare push by push.
            batches = [[push] for batch in batches for push in batch]
        state = RoomState(limits=caps.limits())
        planned = plan(state, batches, data)
        trio.from_thread.run(compare_with_redis, storage, caps, planned, state)

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
    caps = Caps(max_room_bytes=key_size("k") + value_size(value))
    pushes = [Push("replace", "k", value), Push("append", "k", ""), Push("replace", "k", "y" * 50)]
    state = RoomState(limits=caps.limits())
    planned = plan(state, [pushes])
    assert [outcome[0] for outcome in planned[0].expected] == ["ok", "refused", "ok"]
    storage = RedisStorage(f"{redis_server.url}?prefix=t{secrets.token_hex(6)}")
    async with trio.open_nursery() as nursery:
        await nursery.start(storage.run)
        try:
            await compare_with_redis(storage, caps, planned, state)
        finally:
            await storage.aclose()


async def test_conditional_pushes_in_one_script_call_agree(redis_server: RedisServer) -> None:
    """Pushes of one key expecting the same seq in one script call: the first applies,
    the next conflicts. A conflict is decided before any other rule (a compact seq
    below 1, here), a matching one leaves the others to decide (the key cap), and an
    ``expect_seq`` beyond a Lua number's precision is quoted exactly."""
    pushes = [
        Push("append", "k", "a"),
        Push("append", "k", "b"),
        Push("append", "k", "c"),
        Push("compact", "k", "d"),
        Push("relay", "k", "e"),
        Push("replace", "k", "f"),
        Push("replace", "new", "g"),
    ]
    actions: list[Action] = [Append(), Append(), Append(), Compact(0), Relay(), Replace()]
    actions.append(Replace())
    expects: list[int | None] = [0, 0, 1, 1, 2, 2**70, 0]
    caps = Caps(max_keys=1)
    state = RoomState(limits=caps.limits())
    expected = [
        apply_to_room_state(state, p, a, e)
        for p, a, e in zip(pushes, actions, expects, strict=True)
    ]
    conflict = PushRefusal.CONFLICT
    assert expected == [
        ("ok", 1, None),
        ("refused", conflict, "conflict: key 'k' changed (last seq 1, expected 0)"),
        ("ok", 2, 2),
        ("refused", conflict, "conflict: key 'k' changed (last seq 2, expected 1)"),
        ("ok", 3, 2),
        ("refused", conflict, f"conflict: key 'k' changed (last seq 2, expected {2**70})"),
        ("refused", PushRefusal.KEYS, "room has reached its limit of 1 keys"),
    ]
    storage = RedisStorage(f"{redis_server.url}?prefix=t{secrets.token_hex(6)}")
    async with trio.open_nursery() as nursery:
        await nursery.start(storage.run)
        try:
            await compare_with_redis(
                storage, caps, [Batch(pushes, actions, expected, expects)], state
            )
        finally:
            await storage.aclose()


async def full_budget_outcomes(storage: Storage) -> tuple[int, list[str]]:
    """Fill a node's budget with one room, then push what grows nothing or breaks a
    rule: the room's seq then, and what ``hub.push`` answers each time."""
    config = Config(max_retained_bytes=4000, max_keys_per_room=2, room_idle_seconds=3600)
    async with open_hub(config, storage) as hub:
        room = await hub.create_room()

        async def push(key: str, value: object, action: Action) -> str:
            try:
                return f"ok {await hub.push(room, key, value, action)}"
            except DriftError as exc:
                return f"{type(exc).__name__}: {exc}"

        async with hub.subscribe(room):  # a member keeps the room from being unloaded
            for value in ("a", "b"):
                await push("k", value, Append())
            assert await push("k", "c", Compact(2)) == "ok None"  # the mark is 2
            seq = 2
            for _ in range(40):
                filled = await push("fill", "x" * 300, Append())
                if not filled.startswith("ok"):
                    break
                seq += 1
            assert filled.startswith("StorageError: server memory budget reached"), filled
            big = "y" * 1000
            return seq, [
                await push("k", big, Compact(1)),
                await push("k", big, Compact(0)),
                await push("k", big, Compact(99)),
                await push("new", big, Replace()),
                await push("k", big, Relay()),
                await push("k", big, Append()),
            ]


async def test_a_full_budget_refuses_the_same_pushes_on_redis_as_in_memory(
    redis_server: RedisServer,
) -> None:
    """A node's full budget refuses only pushes that would grow its rooms; the others
    get the room's own answer, whichever store orders the room. (The shared room used
    to refuse them all for the budget, a no-op compact included.)"""
    budget = (
        "StorageError: server memory budget reached: live rooms retain the server's limit"
        " of 4000 bytes; pushes that do not grow a room still pass, try again later"
    )
    seq, in_memory = await full_budget_outcomes(MemoryStorage())
    assert in_memory == [
        "ok None",  # a compact at or below the stream's mark: a no-op
        "ProtocolError: compact seq must be at least 1, got 0",
        f"ProtocolError: compact seq 99 is beyond the room's current seq {seq}",
        "ProtocolError: room has reached its limit of 2 keys",
        "ok None",  # a relay retains nothing
        budget,
    ]
    url = f"{redis_server.url}?prefix=t{secrets.token_hex(6)}"
    assert await full_budget_outcomes(RedisStorage(url)) == (seq, in_memory)


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
    PushRefusal.CONFLICT: (7, 5),
}
#: The HTTP status of each refusal ``/send`` answers with (400 for the others).
STATUS = {PushRefusal.BUDGET: 503, PushRefusal.CONFLICT: 409}


def test_the_refusal_texts_are_the_documented_ones() -> None:
    docs = Path(__file__).parent.parent / "docs" / "protocol.md"
    text = " ".join(docs.read_text().split())
    for reason, numbers in DOCUMENTED.items():
        refused = PushRefused(reason, "k", *numbers)
        assert refused.message in text, reason
        assert refused.status == STATUS.get(reason, 400)
    low = PushRefused(PushRefusal.COMPACT_LOW, "k", 0)
    assert (low.message, low.status) == ("compact seq must be at least 1, got 0", 400)
