"""The lock-free hot-path metrics export exactly what prometheus_client's would."""

from __future__ import annotations

import re

import pytest
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

from drifttrio.runtime.metrics import TallyCounter, TallyHistogram


def exposition(registry: CollectorRegistry) -> str:
    text = generate_latest(registry).decode()
    return re.sub(r"_created(\{[^}]*\})? \S+", r"_created\1 T", text)


def test_a_tally_counter_exports_as_a_counter() -> None:
    ours, theirs = CollectorRegistry(), CollectorRegistry()
    tally = TallyCounter("x_bytes", "Bytes", ["codec"], [("json",), ("cbor",)], ours)
    counter = Counter("x_bytes", "Bytes", ["codec"], registry=theirs)
    for codec, amount in [("json", 5), ("json", 2.5), ("cbor", 0)]:
        tally.children[codec,].inc(amount)
        counter.labels(codec).inc(amount)
    assert exposition(ours) == exposition(theirs)


@pytest.mark.parametrize(
    "values", [[], [0, 1, 2, 3, 7, 5000, 9999], [0.00005, 0.0001, 0.3, 10, 2.5]]
)
def test_a_tally_histogram_exports_as_a_histogram(values: list[float]) -> None:
    buckets = (0, 0.0001, 0.00025, 1, 2, 2.5, 5, 10, 5000)
    ours, theirs = CollectorRegistry(), CollectorRegistry()
    tally = TallyHistogram("x_fanout", "Fan-out", buckets, ours)
    histogram = Histogram("x_fanout", "Fan-out", buckets=buckets, registry=theirs)
    for value in values:
        tally.observe(value)
        histogram.observe(value)
    assert exposition(ours) == exposition(theirs)


def test_tally_names_are_reserved_in_the_registry() -> None:
    registry = CollectorRegistry()
    TallyHistogram("x_seconds", "Time", (1.0,), registry)
    with pytest.raises(ValueError, match="Duplicated"):
        Histogram("x_seconds", "Time", registry=registry)
