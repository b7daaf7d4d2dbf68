"""What the bench counts: seq order per receiver, and latency percentiles."""

from __future__ import annotations

import math

__all__ = ["LatencyHistogram", "SeqVerifier"]


class SeqVerifier:
    """Checks that one receiver sees its room's seqs strictly increasing, none missing.

    A room numbers every broadcast 1, 2, 3, ... and every member must see them all,
    in order. The first seq observed sets the baseline unless ``after`` gives it.
    A seq skipped over is remembered as missing; if it turns up later it counts as
    ``reordered`` (not lost), and a seq seen before counts as ``duplicated``.
    :meth:`expect` then adds what should have arrived before the first seq or after
    the last one; whatever is still missing is ``lost``.
    """

    #: Gaps wider than this are counted, not remembered one seq at a time.
    MAX_TRACKED_GAP = 100_000

    def __init__(self, after: int | None = None) -> None:
        #: Highest seq seen (or the baseline).
        self.last = after
        #: First seq seen.
        self.first: int | None = None
        self._checked_from = None if after is None else after + 1
        self.received = 0
        self.reordered = 0
        self.duplicated = 0
        self._missing: set[int] = set()
        self._untracked = 0

    def observe(self, seq: int) -> None:
        self.received += 1
        last = self.last
        if last is None or seq == last + 1:
            self.last = seq
            if self.first is None:
                self.first = seq
            return
        if self.first is None:
            self.first = seq
        if seq > last:
            self._remember(last + 1, seq)
            self.last = seq
        elif seq in self._missing:
            self._missing.discard(seq)
            self.reordered += 1
        else:
            self.duplicated += 1

    def expect(self, first: int, last: int) -> None:
        """Every seq from ``first`` to ``last`` should have arrived: the rest is lost."""
        checked_from = self._checked_from if self._checked_from is not None else self.first
        if checked_from is None or self.last is None:
            self._remember(first, last + 1)
        else:
            if first < checked_from:
                self._remember(first, checked_from)
            if self.last < last:
                self._remember(self.last + 1, last + 1)
        self._checked_from = min(first, checked_from) if checked_from is not None else first
        self.last = max(last, self.last if self.last is not None else last)

    def _remember(self, start: int, stop: int) -> None:
        if stop - start > self.MAX_TRACKED_GAP:
            self._untracked += stop - start
        else:
            self._missing.update(range(start, stop))

    @property
    def lost(self) -> int:
        return len(self._missing) + self._untracked


class LatencyHistogram:
    """Latencies in nanoseconds, in buckets 1% wide: percentiles within about 1%."""

    _SCALE = 1 / math.log(1.01)

    def __init__(self) -> None:
        self.count = 0
        self.total_ns = 0
        self.max_ns = 0
        self._buckets: dict[int, int] = {}

    def add(self, ns: int) -> None:
        ns = max(ns, 1)
        self.count += 1
        self.total_ns += ns
        if ns > self.max_ns:
            self.max_ns = ns
        index = int(math.log(ns) * self._SCALE)
        self._buckets[index] = self._buckets.get(index, 0) + 1

    def merge(self, other: LatencyHistogram) -> None:
        """Add ``other``'s samples: the buckets are the same in every histogram, so the
        counts add up and the percentiles of the merge are as exact as each one's."""
        self.count += other.count
        self.total_ns += other.total_ns
        self.max_ns = max(self.max_ns, other.max_ns)
        for index, n in other._buckets.items():
            self._buckets[index] = self._buckets.get(index, 0) + n

    def percentile(self, fraction: float) -> int | None:
        """The latency below which ``fraction`` (0-1) of the samples lie, or None if none."""
        if not self.count:
            return None
        rank = max(1, math.ceil(fraction * self.count))
        seen = 0
        for index in sorted(self._buckets):
            seen += self._buckets[index]
            if seen >= rank:
                # The middle of the bucket, never above the largest sample seen.
                return min(self.max_ns, round(math.exp((index + 0.5) / self._SCALE)))
        return self.max_ns

    @property
    def mean_ns(self) -> float | None:
        return self.total_ns / self.count if self.count else None
