"""The pure room state machine: sequence counter, retained streams, actions.

No I/O and no trio: the room task feeds it, storage backends replay its
:class:`StreamChange` records, and tests drive it synchronously.
"""

from __future__ import annotations

import bisect
import sys
from collections.abc import Iterable, Iterator, Mapping
from typing import Final, Literal

import attrs

from ..protocol.messages import Action, Append, Compact, Relay, Replace, SeqValue, Value
from .budget import BudgetAccount
from .refusals import PushRefusal, PushRefused

__all__ = [
    "PushOutcome",
    "RoomLimits",
    "RoomState",
    "Stream",
    "StreamChange",
    "key_size",
    "value_size",
]


@attrs.frozen
class StreamChange:
    """One change to a retained stream, as storage backends record it.

    ``replace``: the stream becomes ``[entry]``. ``append``: ``entry`` goes at the
    end. ``compact``: entries with seq ≤ ``entry.seq`` go, ``entry`` goes in front.
    """

    kind: Literal["replace", "append", "compact"]
    key: str
    entry: SeqValue


# Made for every push, read once and dropped: not frozen (a frozen attrs class costs
# one ``object.__setattr__`` per field to build).
@attrs.define
class PushOutcome:
    """What a push did.

    ``broadcast`` is the value to relay to the room (``None``: nothing to send);
    ``change`` the stream change to commit (``None``: the stream is unchanged);
    ``stream_size`` the length to report to the sender (``None``: don't report).
    """

    broadcast: SeqValue | None
    change: StreamChange | None
    stream_size: int | None


@attrs.define
class Stream:
    """The retained values of one key, seq ascending."""

    entries: list[SeqValue] = attrs.Factory(list)
    #: The highest seq a compaction was applied at; compacts at or below it are no-ops.
    compacted: int = 0
    #: Charged size of each entry (:func:`value_size`; kept by rooms that count bytes,
    #: else zeros).
    sizes: list[int] = attrs.Factory(list)
    #: ``sum(sizes)``, kept up to date.
    total: int = 0

    def apply(self, change: StreamChange, size: int = 0) -> int:
        """Apply a change; return how many bytes the stream grew by (may be negative)."""
        entry = change.entry
        if len(self.sizes) != len(self.entries):
            self.sizes = [0] * len(self.entries)
            self.total = 0
        before = self.total
        if change.kind == "replace":
            self.entries = [entry]
            self.sizes = [size]
            self.total = size
        elif change.kind == "append":
            self.entries.append(entry)
            self.sizes.append(size)
            self.total += size
        else:
            keep = bisect.bisect_right(self.entries, entry.seq, key=_seq_of)
            self.total += size - sum(self.sizes[:keep])
            self.entries[:keep] = [entry]
            self.sizes[:keep] = [size]
            self.compacted = max(self.compacted, entry.seq)
        return self.total - before

    def bytes_after(self, change: StreamChange, size: int) -> int:
        """The stream's byte size if ``change`` (of ``size`` bytes) were applied."""
        if change.kind == "replace":
            return size
        if change.kind == "append":
            return self.total + size
        keep = bisect.bisect_right(self.entries, change.entry.seq, key=_seq_of)
        return self.total - sum(self.sizes[:keep]) + size

    def since(self, seq: int) -> list[SeqValue]:
        """Entries with a seq strictly greater than ``seq``."""
        start = bisect.bisect_right(self.entries, seq, key=_seq_of)
        return self.entries[start:]


def _seq_of(entry: SeqValue) -> int:
    return entry.seq


@attrs.frozen
class RoomLimits:
    """Caps on what a room retains; 0 means unlimited. A push that would exceed
    one is rejected (never silently truncating a stream).

    ``account`` is the room's share of the server-wide retained-bytes budget
    (``None``: no budget); a push that would grow the room past it is refused.
    """

    max_keys: int = 0
    max_stream_values: int = 0
    max_room_bytes: int = 0
    account: BudgetAccount | None = attrs.field(default=None, eq=False, repr=False)


_sizeof: Final = sys.getsizeof
#: The header of a non-ASCII str (``sys.getsizeof`` of "é" less its two 1-byte characters).
_WIDE_STR_HEAD: Final = _sizeof("\xe9") - 2
#: pymalloc hands out blocks in multiples of 16 bytes: what rounding adds at most.
_ROUND_STR: Final = 15
_ROUND_CONTAINER: Final = 8  # a container's size is already a multiple of 8
#: A float, or an int outside the shared small ints (up to 2**60: every JSON-safe int).
_NUMBER: Final = 32
#: Empty containers, the commonest small items (no call needed for them).
_EMPTY_DICT: Final = _sizeof({}) + _ROUND_CONTAINER
_EMPTY_LIST: Final = _sizeof([]) + _ROUND_CONTAINER
#: What a retained entry costs besides its value: its ``SeqValue``, seq and size
#: ints, and its slots in the stream's lists (about 140 bytes, measured).
ENTRY_COST: Final = 160
#: What a stream costs besides its entries and key string: the ``Stream``, its two
#: lists and its slot in the room's dict (about 210 bytes, measured).
STREAM_COST: Final = 256


def value_size(value: object) -> int:
    """The bytes a retained value costs in memory, with its entry in a stream: what
    it counts for against ``max_room_bytes`` and ``max_retained_bytes``.

    An upper bound of the Python objects' size, from ``sys.getsizeof`` of every node
    (rounded up as the allocator does): a million empty maps cost about 72 MB, not
    the 1 MB of their encoding, and a big string about its length. Shared objects
    (``None``, booleans, ints -5..256) cost only their slot. A non-ASCII string is
    charged for the UTF-8 copy an encoder caches in it as well.
    """
    return ENTRY_COST + _object_size(value)


def key_size(key: str) -> int:
    """What a new stream costs besides its entries (streams are never removed)."""
    return STREAM_COST + _object_size(key)


def _object_size(value: object) -> int:
    t = type(value)
    items: Iterable[object]
    if t is dict:
        mapping: dict[str, object] = value  # type: ignore[assignment]
        total = _sizeof(mapping) + _ROUND_CONTAINER
        for key in mapping:
            total += _sizeof(key) + _ROUND_STR if key.isascii() else _wide_str_size(key)
        items = mapping.values()
    elif t is list:
        items = value  # type: ignore[assignment]
        total = _sizeof(items) + _ROUND_CONTAINER
    else:
        return _scalar_size(value)
    for item in items:  # the scalars inline, for speed: most items are scalars
        ti = type(item)
        if ti is dict:
            total += _object_size(item) if item else _EMPTY_DICT
        elif ti is list:
            total += _object_size(item) if item else _EMPTY_LIST
        elif ti is str:
            s: str = item  # type: ignore[assignment]
            total += _sizeof(s) + _ROUND_STR if s.isascii() else _wide_str_size(s)
        elif ti is int:
            if not -5 <= item <= 256:  # type: ignore[operator]
                total += _NUMBER
        elif ti is float:
            total += _NUMBER
        elif ti is bytes:
            total += _scalar_size(item)
    return total


def _scalar_size(value: object) -> int:
    t = type(value)
    if t is str:
        text: str = value  # type: ignore[assignment]
        return _sizeof(text) + _ROUND_STR if text.isascii() else _wide_str_size(text)
    if t is int:
        return 0 if -5 <= value <= 256 else _NUMBER  # type: ignore[operator]
    if t is float:
        return _NUMBER
    if t is bytes:
        return _sizeof(value) + _ROUND_STR
    return 0  # None, True, False: shared


def _wide_str_size(text: str) -> int:
    """A non-ASCII str: its characters, 1, 2 or 4 bytes each (the widest decides),
    plus the UTF-8 copy (up to 2, 3 or 4 bytes a character) that encoding it caches
    in it for good. Not from ``sys.getsizeof``: that would count the copy once cached."""
    n = len(text)
    widest = ord(max(text))
    width, utf8 = (1, 2) if widest < 0x100 else (2, 3) if widest < 0x10000 else (4, 4)
    return _WIDE_STR_HEAD + (n + 1) * width + n * utf8 + 1 + _ROUND_STR


class RoomState:
    """A room's sequence counter and retained streams."""

    def __init__(
        self,
        seq: int = 0,
        streams: Mapping[str, Stream] | None = None,
        *,
        broadcast_compact: bool = True,
        limits: RoomLimits = RoomLimits(),
    ) -> None:
        self.seq = seq
        self.streams: dict[str, Stream] = dict(streams or {})
        self.broadcast_compact = broadcast_compact
        self.limits = limits
        #: Whether retained bytes are counted: a byte cap or a budget needs them.
        self.counting = bool(limits.max_room_bytes or limits.account is not None)
        #: Retained bytes (:func:`value_size`; only counted when :attr:`counting`).
        self.bytes = 0
        if self.counting:
            for key, stream in self.streams.items():
                stream.sizes = [value_size(e.value) for e in stream.entries]
                stream.total = sum(stream.sizes)
                self.bytes += key_size(key) + stream.total
        if limits.account is not None:
            limits.account.set(self.bytes)

    @classmethod
    def from_changes(
        cls, seq: int, changes: Iterable[StreamChange], *, broadcast_compact: bool = True
    ) -> RoomState:
        """Rebuild a room by replaying stream changes in order."""
        state = cls(seq, broadcast_compact=broadcast_compact)
        for change in changes:
            state.streams.setdefault(change.key, Stream()).apply(change)
        return state

    def _admit(self, change: StreamChange) -> int:
        """Check the room's caps, then the server budget, for ``change``; return the
        size to account for it."""
        size = value_size(change.entry.value) if self.counting else 0
        growth = self._growth_within_caps(change, size)
        account = self.limits.account
        if growth > 0 and account is not None and not account.admits(growth):
            raise PushRefused(PushRefusal.BUDGET, change.key, account.budget.limit)
        return size

    def _growth_within_caps(self, change: StreamChange, size: int) -> int:
        """Raise :class:`PushRefused` if ``change`` (its entry charged ``size``) would
        take the room past one of its caps; return the bytes the room would grow by
        (0 unless :attr:`counting`)."""
        limits = self.limits
        stream = self.streams.get(change.key)
        if stream is None and limits.max_keys and len(self.streams) >= limits.max_keys:
            raise PushRefused(PushRefusal.KEYS, change.key, limits.max_keys)
        if (
            change.kind == "append"
            and limits.max_stream_values
            and stream is not None
            and len(stream.entries) >= limits.max_stream_values
        ):
            raise PushRefused(PushRefusal.VALUES, change.key, limits.max_stream_values)
        if not self.counting:
            return 0
        if stream is None:
            growth = key_size(change.key) + size
        else:
            growth = stream.bytes_after(change, size) - stream.total
        if limits.max_room_bytes and self.bytes + growth > limits.max_room_bytes:
            raise PushRefused(PushRefusal.BYTES, change.key, limits.max_room_bytes)
        return growth

    def _apply(self, change: StreamChange, size: int) -> Stream:
        stream = self.streams.get(change.key)
        if stream is None:
            stream = self.streams[change.key] = Stream()
            if self.counting:
                self._count(key_size(change.key))
        self._count(stream.apply(change, size))
        return stream

    def _count(self, delta: int) -> None:
        if delta:
            self.bytes += delta
            account = self.limits.account
            if account is not None:
                account.add(delta)

    def check_budget(
        self, key: str, value: Value, action: Action, expect_seq: int | None = None
    ) -> int:
        """Raise :class:`PushRefused` if the server budget has no room for this push;
        return the value's charge (:func:`value_size`; 0 for a relay).

        For a room whose pushes a shared store applies: the store checks the room's
        rules, this node its own memory. A push that this mirror sees refused by a rule
        (a conflict with ``expect_seq``, a cap, a compact seq out of range), or changing
        nothing (a compact at or below the stream's mark), passes here, so the store
        answers it as :meth:`push` would.
        (Should this mirror be behind and the store accept it after all, the mirror
        takes it, as it takes every push accepted through other nodes.)
        """
        if isinstance(action, Relay):
            return 0
        size = value_size(value)
        account = self.limits.account
        if account is None:
            return size
        try:
            if expect_seq is not None:
                self.check_expected(key, expect_seq)
            change = self._change(key, value, action)
            if change is None:
                return size
            growth = self._growth_within_caps(change, size)
        except PushRefused:
            return size
        if not account.admits(growth):
            raise PushRefused(PushRefusal.BUDGET, key, account.budget.limit)
        return size

    def _change(self, key: str, value: Value, action: Action) -> StreamChange | None:
        """The change ``action`` would make to the stream of ``key`` (``None``: a relay,
        or a compact at or below the stream's mark). Raises :class:`PushRefused` for a
        compact seq out of range."""
        if isinstance(action, Relay):
            return None
        if isinstance(action, Compact):
            seq = action.seq
            if seq < 1:
                raise PushRefused(PushRefusal.COMPACT_LOW, key, seq)
            if seq > self.seq:
                raise PushRefused(PushRefusal.COMPACT_HIGH, key, seq, self.seq)
            stream = self.streams.get(key)
            if stream is not None and seq <= stream.compacted:
                return None
            return StreamChange("compact", key, SeqValue(value, seq))
        if isinstance(action, Replace):
            return StreamChange("replace", key, SeqValue(value, self.seq + 1))
        assert isinstance(action, Append)
        return StreamChange("append", key, SeqValue(value, self.seq + 1))

    def push(
        self, key: str, value: Value, action: Action, expect_seq: int | None = None
    ) -> PushOutcome:
        """Apply one push. Raises :class:`PushRefused` (a :class:`ProtocolError`) for an
        invalid compact or a push beyond a cap; then nothing changed and no seq was
        consumed.

        ``expect_seq``: apply it only if :meth:`last_seq` of ``key`` is this one, else
        refuse it as a :attr:`~PushRefusal.CONFLICT`, before any other rule is checked
        (``None``: unconditional). Relays and compacts too: the rule reads what the
        key retains, whatever the push would do to it."""
        if expect_seq is not None:
            self.check_expected(key, expect_seq)
        change = self._change(key, value, action)
        if change is None:
            if isinstance(action, Compact):
                return PushOutcome(None, None, None)  # at or below the stream's mark
            self.seq += 1  # a relay
            relayed = self.streams.get(key)
            size = len(relayed.entries) if relayed is not None else 0
            return PushOutcome(SeqValue(value, self.seq), None, size if size > 1 else None)
        stream = self._apply(change, self._admit(change))
        size = len(stream.entries)
        broadcast: SeqValue | None = change.entry
        if change.kind != "compact":
            self.seq += 1
        elif not self.broadcast_compact:
            broadcast = None
        return PushOutcome(broadcast, change, size if size > 1 else None)

    def apply_event(
        self, action: Literal["relay", "replace", "append", "compact"], key: str, entry: SeqValue
    ) -> PushOutcome:
        """Mirror a push that a shared store already accepted (it checked the caps
        and assigned ``entry.seq``); never raises."""
        if action == "relay":
            self.seq = max(self.seq, entry.seq)
            return PushOutcome(entry, None, None)
        change = StreamChange(action, key, entry)
        self._apply(change, value_size(entry.value) if self.counting else 0)
        if action == "compact":
            return PushOutcome(entry if self.broadcast_compact else None, change, None)
        self.seq = max(self.seq, entry.seq)
        return PushOutcome(entry, change, None)

    def last_seq(self, key: str) -> int:
        """The seq of the last value ``key`` retains (0: it retains none)."""
        stream = self.streams.get(key)
        return stream.entries[-1].seq if stream is not None and stream.entries else 0

    def check_expected(self, key: str, expect_seq: int) -> None:
        """Raise :class:`PushRefused` (:attr:`~PushRefusal.CONFLICT`) unless ``key``'s
        last retained seq is ``expect_seq``."""
        last = self.last_seq(key)
        if last != expect_seq:
            raise PushRefused(PushRefusal.CONFLICT, key, last, expect_seq)

    def get(self, key: str, since: int = 0) -> list[SeqValue]:
        """Retained values of ``key`` with seq greater than ``since``, ascending."""
        stream = self.streams.get(key)
        return [] if stream is None else stream.since(since)

    def dump(self) -> Iterator[tuple[str, list[SeqValue]]]:
        """Every key with its retained values."""
        for key, stream in self.streams.items():
            yield key, list(stream.entries)
