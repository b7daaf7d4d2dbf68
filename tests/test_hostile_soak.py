"""The hostile soak: every kind of attacker at once, at the default limits, against
a default ``drifttrio serve`` (a real process, a real SQLite file), while an honest
client in another room (another client address) appends every 50 ms.

The attacks are those of ``benchmarks/hostile.py`` (which reports the same
figures per attack); the bounds are the ones ``docs/protocol.md`` documents
("What one client can cost the others"), with room for a shared CI machine.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

#: The honest client's round trip p99 while the attack lasts. Measured: 63-88 ms
#: with the attackers, the canary and the server on 2 cores, up to 142 ms with
#: other load on the machine; seconds before drifttrio counted what messages cost.
ROUND_TRIP_P99_MS = 250
#: The server's RSS growth while it lasts.
RSS_GROWTH_MB = 300
SECONDS = 20


def _hostile() -> ModuleType:
    path = Path(__file__).parents[1] / "benchmarks" / "hostile.py"
    spec = importlib.util.spec_from_file_location("hostile", path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["hostile"] = module
    spec.loader.exec_module(module)
    return module


@pytest.mark.soak
async def test_every_attacker_at_once_costs_the_honest_client_little() -> None:
    hostile = _hostile()
    result = await hostile.run_attacks(list(hostile.ATTACKS), SECONDS, warmup=1.0)
    during = result["canary_during"]
    report = f"{result}"
    assert not result["canary_failed"], report
    assert result["canary_out_of_order"] == 0, report
    assert during["samples"] >= SECONDS / 0.05 / 4, report  # it kept being served
    assert during["p99_ms"] < ROUND_TRIP_P99_MS, report
    assert result["rss_growth_mb"] < RSS_GROWTH_MB, report
