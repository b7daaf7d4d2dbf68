"""``drifttrio serve`` paces the process's full garbage collections while it
serves (see tests/test_gc_pacing.py for the pacing itself) and gives the
collector back as it was; an embedded server leaves the collector alone."""

from __future__ import annotations

import gc
from typing import Any

import pytest

from drifttrio import Config, cli, open_server


async def test_serve_turns_cpythons_full_collections_off_while_it_serves(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    seen: dict[str, Any] = {}

    async def serve_instead(*args: object, **kwargs: object) -> None:
        seen["threshold"] = gc.get_threshold()
        seen["frozen"] = gc.get_freeze_count()

    monkeypatch.setattr(cli, "serve", serve_instead)
    before, frozen = gc.get_threshold(), gc.get_freeze_count()
    await cli._serve_until_signal(Config(), "drifttrio")
    assert seen["threshold"][:2] == before[:2]
    assert seen["threshold"][2] >= 2**31 - 1  # never reached: CPython's own are off
    # Everything imported so far (drifttrio, trio, ...) is out of every collection.
    assert seen["frozen"] > frozen + 10_000
    assert (gc.get_threshold(), gc.get_freeze_count()) == (before, frozen)


async def test_an_embedded_server_leaves_the_collector_alone() -> None:
    threshold, frozen = gc.get_threshold(), gc.get_freeze_count()
    async with open_server(Config()):
        assert (gc.get_threshold(), gc.get_freeze_count()) == (threshold, frozen)
