"""``drifttrio serve`` tunes the cyclic garbage collector for many connections
before it serves: what was imported is frozen, and full collections are rarer
(a 10,000-client storm spent a fifth of its CPU time in them). An embedded server
leaves the process's collector alone."""

from __future__ import annotations

import gc
from collections.abc import Iterator
from typing import Any

import pytest

from drifttrio import cli


@pytest.fixture
def collector() -> Iterator[None]:
    """Put the collector back as it was after the test."""
    threshold = gc.get_threshold()
    try:
        yield
    finally:
        gc.unfreeze()
        gc.set_threshold(*threshold)


@pytest.mark.usefixtures("collector")
def test_serve_freezes_what_was_imported_and_makes_full_collections_rarer(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    seen: dict[str, Any] = {}

    def run_instead(*args: object) -> None:  # in place of serving
        seen["threshold"] = gc.get_threshold()
        seen["frozen"] = gc.get_freeze_count()

    monkeypatch.setattr(cli.trio, "run", run_instead)
    monkeypatch.setattr(cli, "configure_logging", lambda *args: None)  # the test's own
    gc.unfreeze()
    young, middle, _ = gc.get_threshold()
    assert cli.main(["serve", "--store", "memory", "--port", "0"]) == 0
    assert seen["threshold"] == (young, middle, cli.FULL_COLLECTION_EVERY)
    assert cli.FULL_COLLECTION_EVERY > 10  # Python's default
    # Everything imported so far (drifttrio, trio, ...) is out of every collection.
    assert seen["frozen"] > 10_000


async def test_an_embedded_server_leaves_the_collector_alone() -> None:
    from drifttrio import Config, open_server

    threshold, frozen = gc.get_threshold(), gc.get_freeze_count()
    async with open_server(Config()):
        assert (gc.get_threshold(), gc.get_freeze_count()) == (threshold, frozen)
