"""The pure room state machine: sequence counter, retained streams, actions.

No I/O and no trio: the room task feeds it, storage backends replay its
:class:`StreamChange` records, and tests drive it synchronously.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Iterator, Mapping
from typing import Literal

import attrs

from .._errors import ProtocolError
from ..protocol.messages import Action, Append, Compact, Relay, Replace, SeqValue, Value

__all__ = ["PushOutcome", "RoomState", "Stream", "StreamChange"]


@attrs.frozen
class StreamChange:
    """One change to a retained stream, as storage backends record it.

    ``replace``: the stream becomes ``[entry]``. ``append``: ``entry`` goes at the
    end. ``compact``: entries with seq ≤ ``entry.seq`` go, ``entry`` goes in front.
    """

    kind: Literal["replace", "append", "compact"]
    key: str
    entry: SeqValue


@attrs.frozen
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

    def apply(self, change: StreamChange) -> None:
        entry = change.entry
        if change.kind == "replace":
            self.entries = [entry]
        elif change.kind == "append":
            self.entries.append(entry)
        else:
            keep = bisect.bisect_right(self.entries, entry.seq, key=_seq_of)
            self.entries[:keep] = [entry]
            self.compacted = max(self.compacted, entry.seq)

    def since(self, seq: int) -> list[SeqValue]:
        """Entries with a seq strictly greater than ``seq``."""
        start = bisect.bisect_right(self.entries, seq, key=_seq_of)
        return self.entries[start:]


def _seq_of(entry: SeqValue) -> int:
    return entry.seq


class RoomState:
    """A room's sequence counter and retained streams."""

    def __init__(
        self,
        seq: int = 0,
        streams: Mapping[str, Stream] | None = None,
        *,
        broadcast_compact: bool = True,
    ) -> None:
        self.seq = seq
        self.streams: dict[str, Stream] = dict(streams or {})
        self.broadcast_compact = broadcast_compact

    @classmethod
    def from_changes(
        cls, seq: int, changes: Iterable[StreamChange], *, broadcast_compact: bool = True
    ) -> RoomState:
        """Rebuild a room by replaying stream changes in order."""
        state = cls(seq, broadcast_compact=broadcast_compact)
        for change in changes:
            state.streams.setdefault(change.key, Stream()).apply(change)
        return state

    def push(self, key: str, value: Value, action: Action) -> PushOutcome:
        """Apply one push. Raises :class:`ProtocolError` for an invalid compact."""
        if isinstance(action, Compact):
            return self._compact(key, value, action.seq)
        self.seq += 1
        entry = SeqValue(value, self.seq)
        change: StreamChange | None
        if isinstance(action, Relay):
            change = None
        elif isinstance(action, Replace):
            change = StreamChange("replace", key, entry)
        else:
            assert isinstance(action, Append)
            change = StreamChange("append", key, entry)
        if change is not None:
            stream = self.streams.setdefault(key, Stream())
            stream.apply(change)
            size = len(stream.entries)
        else:
            stream_or_none = self.streams.get(key)
            size = len(stream_or_none.entries) if stream_or_none is not None else 0
        return PushOutcome(entry, change, size if size > 1 else None)

    def _compact(self, key: str, value: Value, seq: int) -> PushOutcome:
        if seq < 1:
            raise ProtocolError(f"compact seq must be at least 1, got {seq}")
        if seq > self.seq:
            raise ProtocolError(f"compact seq {seq} is beyond the room's current seq {self.seq}")
        stream = self.streams.get(key)
        if stream is not None and seq <= stream.compacted:
            return PushOutcome(None, None, None)
        if stream is None:
            stream = self.streams[key] = Stream()
        entry = SeqValue(value, seq)
        change = StreamChange("compact", key, entry)
        stream.apply(change)
        size = len(stream.entries)
        return PushOutcome(
            entry if self.broadcast_compact else None, change, size if size > 1 else None
        )

    def get(self, key: str, since: int = 0) -> list[SeqValue]:
        """Retained values of ``key`` with seq greater than ``since``, ascending."""
        stream = self.streams.get(key)
        return [] if stream is None else stream.since(since)

    def dump(self) -> Iterator[tuple[str, list[SeqValue]]]:
        """Every key with its retained values."""
        for key, stream in self.streams.items():
            yield key, list(stream.entries)
