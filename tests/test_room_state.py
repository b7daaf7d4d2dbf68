"""The pure room state machine, synchronously and against a tiny model."""

from __future__ import annotations

from contextlib import suppress
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from drifttrio import ProtocolError
from drifttrio.core import PushOutcome, RoomState, Stream, StreamChange
from drifttrio.core.budget import RetainedBudget
from drifttrio.core.room_state import RoomLimits, key_size, value_size
from drifttrio.protocol import Append, Compact, Relay, Replace, SeqValue
from drifttrio.protocol.messages import Value


def values(state: RoomState, key: str) -> list[tuple[object, int]]:
    return [(e.value, e.seq) for e in state.get(key)]


def test_new_room_is_empty() -> None:
    state = RoomState()
    assert state.seq == 0
    assert state.get("k") == []
    assert list(state.dump()) == []


def test_relay_consumes_a_seq_and_leaves_the_stream() -> None:
    state = RoomState()
    state.push("k", "a", Append())
    outcome = state.push("k", "r", Relay())
    assert outcome == PushOutcome(SeqValue("r", 2), None, None)
    assert state.seq == 2
    assert values(state, "k") == [("a", 1)]
    assert state.push("other", "x", Relay()).broadcast == SeqValue("x", 3)
    assert state.get("other") == []
    assert "other" not in dict(state.dump())


def test_replace_makes_the_stream_one_value() -> None:
    state = RoomState()
    for v in "abc":
        state.push("k", v, Append())
    outcome = state.push("k", "z", Replace())
    assert outcome.broadcast == SeqValue("z", 4)
    assert outcome.change == StreamChange("replace", "k", SeqValue("z", 4))
    assert outcome.stream_size is None
    assert values(state, "k") == [("z", 4)]


def test_append_adds_at_the_end() -> None:
    state = RoomState()
    assert state.push("k", 1, Append()) == PushOutcome(
        SeqValue(1, 1), StreamChange("append", "k", SeqValue(1, 1)), None
    )
    outcome = state.push("k", 2, Append())
    assert outcome.broadcast == SeqValue(2, 2)
    assert outcome.stream_size == 2
    assert values(state, "k") == [(1, 1), (2, 2)]


def test_seqs_are_shared_by_all_keys_of_a_room() -> None:
    state = RoomState()
    seqs = [
        state.push("a", 0, Append()).broadcast.seq,
        state.push("b", 0, Replace()).broadcast.seq,
        state.push("c", 0, Relay()).broadcast.seq,
        state.push("a", 0, Append()).broadcast.seq,
    ]
    assert seqs == [1, 2, 3, 4]


def test_seq_continues_from_a_loaded_room() -> None:
    state = RoomState(41)
    assert state.push("k", 1, Relay()).broadcast == SeqValue(1, 42)


def build(*actions: Any) -> RoomState:
    state = RoomState()
    for key, value, action in actions:
        state.push(key, value, action)
    return state


def test_compact_removes_up_to_s_and_puts_value_at_s_in_front() -> None:
    state = build(*[("k", v, Append()) for v in range(1, 6)])  # seqs 1..5
    outcome = state.push("k", "reset", Compact(3))
    assert outcome.change == StreamChange("compact", "k", SeqValue("reset", 3))
    assert outcome.broadcast == SeqValue("reset", 3)
    assert outcome.stream_size == 3
    assert values(state, "k") == [("reset", 3), (4, 4), (5, 5)]


def test_compact_consumes_no_seq() -> None:
    state = build(("k", 1, Append()), ("k", 2, Append()))
    state.push("k", "c", Compact(2))
    assert state.seq == 2
    assert state.push("k", 3, Append()).broadcast == SeqValue(3, 3)


def test_compact_at_a_seq_between_entries() -> None:
    state = build(("k", "a", Append()), ("x", 0, Relay()), ("k", "b", Append()))  # k: 1, 3
    state.push("k", "c", Compact(2))
    assert values(state, "k") == [("c", 2), ("b", 3)]


def test_compact_at_current_seq_leaves_one_value() -> None:
    state = build(("k", 1, Append()), ("k", 2, Append()))
    outcome = state.push("k", "all", Compact(2))
    assert outcome.stream_size is None
    assert values(state, "k") == [("all", 2)]


def test_compact_of_an_unknown_key_creates_the_stream() -> None:
    state = build(("other", 1, Relay()))
    state.push("k", "v", Compact(1))
    assert values(state, "k") == [("v", 1)]


@pytest.mark.parametrize("seq", [4, 100])
def test_compact_beyond_current_seq_is_rejected(seq: int) -> None:
    state = build(("k", 1, Append()), ("k", 2, Append()), ("k", 3, Append()))
    with pytest.raises(ProtocolError, match="beyond"):
        state.push("k", "future", Compact(seq))
    assert values(state, "k") == [(1, 1), (2, 2), (3, 3)]
    assert state.seq == 3


@pytest.mark.parametrize("seq", [0, -1])
def test_compact_below_one_is_rejected(seq: int) -> None:
    state = build(("k", 1, Append()))
    with pytest.raises(ProtocolError, match="at least 1"):
        state.push("k", "x", Compact(seq))
    assert values(state, "k") == [(1, 1)]


def test_compact_on_an_empty_room_is_rejected() -> None:
    with pytest.raises(ProtocolError):
        RoomState().push("k", "x", Compact(1))


@pytest.mark.parametrize("seq", [2, 3])
def test_compact_at_or_below_an_earlier_compaction_is_a_no_op(seq: int) -> None:
    state = build(*[("k", v, Append()) for v in range(1, 6)])
    state.push("k", "first", Compact(3))
    before = values(state, "k")
    assert state.push("k", "late", Compact(seq)) == PushOutcome(None, None, None)
    assert values(state, "k") == before
    assert state.seq == 5


def test_compact_above_an_earlier_compaction_applies() -> None:
    state = build(*[("k", v, Append()) for v in range(1, 6)])
    state.push("k", "first", Compact(3))
    state.push("k", "second", Compact(4))
    assert values(state, "k") == [("second", 4), (5, 5)]


def test_compaction_is_per_key() -> None:
    state = build(("a", 1, Append()), ("b", 1, Append()), ("a", 2, Append()))
    state.push("a", "ca", Compact(3))
    state.push("b", "cb", Compact(2))
    assert values(state, "b") == [("cb", 2)]


def test_broadcast_compact_switch_off() -> None:
    state = RoomState(broadcast_compact=False)
    for v in range(3):
        state.push("k", v, Append())
    outcome = state.push("k", "c", Compact(2))
    assert outcome.broadcast is None
    assert outcome.change == StreamChange("compact", "k", SeqValue("c", 2))
    assert outcome.stream_size == 2
    assert values(state, "k") == [("c", 2), (2, 3)]


def test_stream_size_is_reported_only_above_one() -> None:
    state = RoomState()
    sizes = [state.push("k", i, Append()).stream_size for i in range(4)]
    assert sizes == [None, 2, 3, 4]
    assert state.push("k", "r", Replace()).stream_size is None
    assert state.push("solo", 1, Replace()).stream_size is None


def test_relay_reports_the_size_of_a_stream_holding_more_than_one_value() -> None:
    state = build(("k", 1, Append()), ("k", 2, Append()))
    assert state.push("k", "r", Relay()).stream_size == 2
    assert state.push("empty", "r", Relay()).stream_size is None


def test_get_filters_by_seq_strictly_greater() -> None:
    state = build(
        ("k", "a", Append()), ("x", 0, Relay()), ("k", "b", Append()), ("k", "c", Append())
    )
    assert values(state, "k") == [("a", 1), ("b", 3), ("c", 4)]
    assert [s for _, s in [(e.value, e.seq) for e in state.get("k", 0)]] == [1, 3, 4]
    assert [e.seq for e in state.get("k", 1)] == [3, 4]
    assert [e.seq for e in state.get("k", 2)] == [3, 4]
    assert [e.seq for e in state.get("k", 3)] == [4]
    assert state.get("k", 4) == []
    assert state.get("k", 99) == []
    assert [e.seq for e in state.get("k", -5)] == [1, 3, 4]
    assert state.get("unknown", 0) == []


def test_dump_lists_every_stream() -> None:
    state = build(("a", 1, Append()), ("b", 2, Replace()), ("c", 3, Relay()))
    assert dict(state.dump()) == {"a": [SeqValue(1, 1)], "b": [SeqValue(2, 2)]}


def test_from_changes_rebuilds_the_room() -> None:
    state = RoomState()
    changes = []
    for key, value, action in [
        ("k", 1, Append()),
        ("k", 2, Append()),
        ("j", 3, Replace()),
        ("k", 4, Append()),
        ("k", "c", Compact(2)),
        ("j", 5, Replace()),
    ]:
        change = state.push(key, value, action).change
        assert change is not None
        changes.append(change)
    rebuilt = RoomState.from_changes(state.seq, changes)
    assert dict(rebuilt.dump()) == dict(state.dump())
    assert rebuilt.streams["k"].compacted == 2
    assert rebuilt.push("k", "late", Compact(2)) == PushOutcome(None, None, None)


def test_state_from_loaded_streams_keeps_compaction_mark() -> None:
    stream = Stream([SeqValue("c", 5), SeqValue("x", 7)], compacted=5)
    state = RoomState(7, {"k": stream})
    assert state.push("k", "old", Compact(4)) == PushOutcome(None, None, None)
    assert state.push("k", "new", Compact(6)).broadcast == SeqValue("new", 6)


# -- model-based test ----------------------------------------------------------------------


class Model:
    """The protocol's rules, written as plainly as possible."""

    def __init__(self) -> None:
        self.seq = 0
        self.streams: dict[str, list[tuple[object, int]]] = {}
        self.compacted: dict[str, int] = {}

    def push(self, key: str, value: object, action: Any) -> tuple[Any, Any] | str:
        """Return (broadcast (value, seq) or None, reported size or None), or 'error'."""
        if isinstance(action, Compact):
            s = action.seq
            if s < 1 or s > self.seq:
                return "error"
            if s <= self.compacted.get(key, 0):
                return (None, None)
            old = self.streams.get(key, [])
            self.streams[key] = [(value, s)] + [e for e in old if e[1] > s]
            self.compacted[key] = s
            size = len(self.streams[key])
            return ((value, s), size if size > 1 else None)
        self.seq += 1
        if isinstance(action, Replace):
            self.streams[key] = [(value, self.seq)]
        elif isinstance(action, Append):
            self.streams.setdefault(key, []).append((value, self.seq))
        size = len(self.streams.get(key, []))
        return ((value, self.seq), size if size > 1 else None)


MODEL_KEYS = st.sampled_from(["a", "b", "", "long key"])


class RoomStateMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.model = Model()
        self.state = RoomState()
        self.changes: list[StreamChange] = []
        self.counter = 0

    @initialize(broadcast_compact=st.booleans())
    def setup(self, broadcast_compact: bool) -> None:
        self.state.broadcast_compact = broadcast_compact

    def _value(self) -> int:
        self.counter += 1
        return self.counter

    def _push(self, key: str, action: Any) -> None:
        value = self._value()
        expected = self.model.push(key, value, action)
        if expected == "error":
            with pytest.raises(ProtocolError):
                self.state.push(key, value, action)
            return
        outcome = self.state.push(key, value, action)
        broadcast, size = expected
        if isinstance(action, Compact) and not self.state.broadcast_compact:
            assert outcome.broadcast is None
        else:
            got = (
                None
                if outcome.broadcast is None
                else (outcome.broadcast.value, outcome.broadcast.seq)
            )
            assert got == broadcast
        assert outcome.stream_size == size
        if outcome.change is not None:
            assert not isinstance(action, Relay)
            self.changes.append(outcome.change)
        else:
            assert isinstance(action, Relay) or broadcast is None

    @rule(key=MODEL_KEYS)
    def relay(self, key: str) -> None:
        self._push(key, Relay())

    @rule(key=MODEL_KEYS)
    def replace(self, key: str) -> None:
        self._push(key, Replace())

    @rule(key=MODEL_KEYS)
    def append(self, key: str) -> None:
        self._push(key, Append())

    @rule(key=MODEL_KEYS, back=st.integers(min_value=-2, max_value=8))
    def compact(self, key: str, back: int) -> None:
        # Mostly valid seqs near the head; sometimes from the future or below 1.
        self._push(key, Compact(self.model.seq - back))

    @rule(key=MODEL_KEYS, since=st.integers(min_value=-1, max_value=40))
    def get(self, key: str, since: int) -> None:
        expected = [e for e in self.model.streams.get(key, []) if e[1] > since]
        assert [(e.value, e.seq) for e in self.state.get(key, since)] == expected

    @invariant()
    def same_streams(self) -> None:
        assert self.state.seq == self.model.seq
        got = {k: [(e.value, e.seq) for e in v] for k, v in self.state.dump()}
        assert got == {k: v for k, v in self.model.streams.items()}
        for entries in got.values():
            seqs = [s for _, s in entries]
            assert seqs == sorted(set(seqs)), "retained seqs must be unique and ascending"

    @invariant()
    def changes_replay_to_the_same_room(self) -> None:
        rebuilt = RoomState.from_changes(self.state.seq, self.changes)
        assert dict(rebuilt.dump()) == dict(self.state.dump())
        for key, stream in self.state.streams.items():
            assert rebuilt.streams[key].compacted == stream.compacted


RoomStateMachine.TestCase.settings = settings(
    max_examples=150, stateful_step_count=30, deadline=None
)
TestRoomStateModel = RoomStateMachine.TestCase


# -- retained bytes, counted as pushes come, and the budget --------------------------

CHARGED_VALUES = st.one_of(
    st.integers(-10, 10**6),
    st.text(max_size=20),
    st.binary(max_size=20),
    st.lists(st.one_of(st.just({}), st.floats(allow_nan=False), st.just([])), max_size=8),
)


@settings(max_examples=150, deadline=None)
@given(
    ops=st.lists(
        st.tuples(
            st.sampled_from(["relay", "replace", "append", "compact"]),
            st.sampled_from(["a", "b", "é"]),
            CHARGED_VALUES,
            st.integers(0, 4),
        ),
        max_size=30,
    )
)
def test_retained_bytes_counted_push_by_push_equal_a_recount(
    ops: list[tuple[str, str, object, int]],
) -> None:
    budget = RetainedBudget()
    state = RoomState(limits=RoomLimits(account=budget.account()))
    for name, key, value, back in ops:
        action = {"relay": Relay(), "replace": Replace(), "append": Append()}.get(name)
        with suppress(ProtocolError):  # a compact from the future, or below 1
            state.push(key, Value(value), action or Compact(state.seq - back))
        copies = {k: Stream(list(s.entries), s.compacted) for k, s in state.streams.items()}
        recount = RoomState(state.seq, copies, limits=RoomLimits(max_room_bytes=1)).bytes
        assert state.bytes == recount == budget.used
        assert recount == sum(
            key_size(k) + sum(value_size(e.value) for e in s.entries)
            for k, s in state.streams.items()
        )
    # A room reloaded from storage (a rollback) takes over its account; unloading
    # gives everything back.
    account = state.limits.account
    assert account is not None
    reloaded = RoomState(state.seq, state.streams, limits=state.limits)
    assert budget.used == reloaded.bytes == state.bytes
    account.close()
    assert budget.used == 0


def test_the_budget_refuses_growth_only() -> None:
    budget = RetainedBudget(limit=value_size("x" * 100) + key_size("k"))
    state = RoomState(limits=RoomLimits(account=budget.account()))
    state.push("k", Value("x" * 100), Replace())
    with pytest.raises(ProtocolError, match="server memory budget reached") as refused:
        state.push("k", Value("y"), Append())
    assert refused.value.status == 503
    assert state.seq == 1, "a refused push consumed a seq"
    state.push("k", Value("r" * 1000), Relay())
    state.push("k", Value("z" * 100), Replace())
    state.push("k", Value("z"), Compact(3))  # in place of the replace at seq 3
    assert budget.used == state.bytes <= budget.limit
