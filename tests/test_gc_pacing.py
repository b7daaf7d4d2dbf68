"""drifttrio serve's collector: CPython's full collections off, ours paced (at most
every interval, further apart when one takes long), and the collector as it was
once the server stops. On trio's mock clock; ``gc.collect`` is recorded, not run."""

from __future__ import annotations

import gc
import itertools
from functools import partial

import pytest
import trio
import trio.testing

import drifttrio._gc
from drifttrio._gc import paced_full_collections


@pytest.fixture
def collections(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, float]]:
    calls: list[tuple[int, float]] = []

    def collect(generation: int = 2) -> int:
        calls.append((generation, trio.current_time()))
        return 0

    monkeypatch.setattr(gc, "collect", collect)
    return calls


async def run_for(seconds: float) -> tuple[int, int, int]:
    """Pace for ``seconds``; the thresholds while it ran."""
    async with trio.open_nursery() as nursery:
        nursery.start_soon(partial(paced_full_collections, interval=60.0, share=0.01))
        await trio.testing.wait_all_tasks_blocked()
        during = gc.get_threshold()
        await trio.sleep(seconds)
        nursery.cancel_scope.cancel()
    return during


async def test_full_collections_come_at_the_interval_and_the_collector_is_restored(
    autojump_clock: trio.testing.MockClock, collections: list[tuple[int, float]]
) -> None:
    before = gc.get_threshold()
    during = await run_for(200)
    # CPython's own full collections are off (generation 2 never reaches its
    # threshold); the young generations keep theirs.
    assert during[:2] == before[:2]
    assert during[2] >= 2**31 - 1
    assert collections == [(2, 60.0), (2, 120.0), (2, 180.0)]
    assert gc.get_threshold() == before
    assert gc.get_freeze_count() == 0


async def test_a_long_collection_pushes_the_next_one_further(
    autojump_clock: trio.testing.MockClock,
    collections: list[tuple[int, float]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Each collection takes 2 s: the next waits 2 / 0.01 = 200 s, not 60.
    readings = itertools.count(step=2.0)  # start, end: 2 s apart
    monkeypatch.setattr(drifttrio._gc.time, "perf_counter", lambda: next(readings))
    await run_for(500)
    assert [at for _, at in collections] == [60.0, 260.0, 460.0]
