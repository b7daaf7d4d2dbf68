"""``drifttrio bench --procs N``: the load from N processes, one merged result.

The runs are real: a server on 127.0.0.1:0 in this process, load processes started
by the bench. Nothing here asserts a speed.
"""

from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path

import pytest
import trio

import test_bench
from drifttrio import Config, RunningServer, open_server
from drifttrio.bench import (
    SCENARIOS,
    BenchError,
    LatencyHistogram,
    ScenarioResult,
    _parallel,
    format_table,
    run_bench,
    to_json,
)
from drifttrio.bench._model import merge_results
from drifttrio.cli import main
from test_bench import small

ROOT = Path(__file__).resolve().parent.parent
TIMEOUT = 60  # a guard against hangs, never a way to wait for something

# test_bench's fixtures: a server with the limits off, and one that loses messages.
server = test_bench.server
lossy_url = test_bench.lossy_url


# -- merging, on its own ---------------------------------------------------------------

PARAMS = {"subscribers": 4, "in_flight": 8, "action": "relay"}


def _part(latencies_ms: list[float], **counts: int) -> ScenarioResult:
    part = ScenarioResult(name="fanout", params=PARAMS)
    for ms in latencies_ms:
        part.latency.add(int(ms * 1e6))
    part.delivered = len(latencies_ms)
    for name, value in counts.items():
        setattr(part, name, value)
    return part


def test_merged_percentiles_are_those_of_all_samples_not_an_average() -> None:
    fast = _part([1.0] * 900, connections=3, sent=90, lost=1)
    slow = _part([100.0] * 100, connections=2, sent=10, reordered=2, duplicated=3)
    fast.client_cpus, fast.client_cpu, fast.seconds = [0.5], 0.5, 2.0
    slow.client_cpus, slow.client_cpu, slow.seconds = [0.95], 0.95, 2.1
    slow.error("refused")
    slow.closed.append("subscriber 4: 1001 going away")
    merged = merge_results([fast, slow])

    everything = LatencyHistogram()
    for ms in [1.0] * 900 + [100.0] * 100:
        everything.add(int(ms * 1e6))
    for fraction in (0.5, 0.9, 0.95, 0.99, 1.0):
        assert merged.latency.percentile(fraction) == everything.percentile(fraction)
    p50, p99 = merged.latency.percentile(0.5), merged.latency.percentile(0.99)
    assert p50 is not None
    assert p99 is not None
    assert abs(p50 - 1e6) <= 1e4  # an average of the parts' p50s would be 50.5 ms
    assert abs(p99 - 100e6) <= 1e6
    assert merged.latency.mean_ns == everything.mean_ns
    assert (merged.delivered, merged.sent, merged.connections) == (1000, 100, 5)
    assert (merged.lost, merged.reordered, merged.duplicated) == (1, 2, 3)
    assert (merged.errors, merged.first_error) == (1, "refused")
    assert merged.closed == ["subscriber 4: 1001 going away"]
    assert merged.seconds == 2.1
    assert merged.client_cpus == [0.5, 0.95]
    assert merged.client_cpu == 0.95
    assert merged.generator_limited
    assert merged.params == PARAMS
    assert not merged.ok


def test_the_generator_limit_is_one_line_in_the_table_and_a_flag_in_the_json() -> None:
    options = small("http://127.0.0.1:1", "fanout", "ping", procs=2)
    busy = _part([1.0] * 10)
    busy.client_cpus, busy.client_cpu = [0.97, 0.4], 0.97
    idle = ScenarioResult(name="ping", unit="rtt/s")
    idle.client_cpus, idle.client_cpu = [0.1, 0.3], 0.3
    table = format_table([busy, idle], options)
    assert "the load from 2 processes" in table.splitlines()[0]
    [line] = [line for line in table.splitlines() if "load generator was the limit" in line]
    assert "in fanout:" in line
    assert "97%" in line
    assert "--procs 4" in line
    report = to_json([busy, idle], options)
    assert report["procs"] == 2
    assert report["generator_limited"] is True
    assert [s["generator_limited"] for s in report["scenarios"]] == [True, False]
    assert report["scenarios"][0]["client_cpus"] == [0.97, 0.4]

    quiet = format_table([idle], options)
    assert "load generator was the limit" not in quiet
    assert to_json([idle], options)["generator_limited"] is False


# -- every scenario from two processes against a real server ---------------------------


async def test_every_scenario_from_two_processes_is_merged(server: RunningServer) -> None:
    options = small(server.url, *SCENARIOS, procs=2, pid=os.getpid())
    with trio.fail_after(TIMEOUT):
        results = await run_bench(options)
    assert [r.name for r in results] == list(SCENARIOS), format_table(results, options)
    assert all(r.ok for r in results), format_table(results, options)
    by_name = {r.name: r for r in results}
    # The connections of both processes add up to the scenario's: the rooms are
    # shared (fanout, writers), split (rooms), or one per process (replay).
    expected_connections = {
        "fanout": 3,  # 2 subscribers and the publisher, in one room
        "writers": 3,
        "rooms": 6,  # 2 rooms of 2 subscribers and a publisher
        "replay": 2,  # a stream of its own in each process
        "churn": 2,  # --concurrency 2: one loop each
        "ping": 1,  # one process pings
    }
    for name, result in by_name.items():
        assert result.connections == expected_connections[name], name
        assert result.delivered > 0, name
        assert result.latency.count > 0, name
        assert len(result.client_cpus) == 2, name  # each process measured its own CPU
        assert result.client_cpu == max(result.client_cpus)
        assert result.server is not None  # sampled once, by the process that started them
    for name in ("fanout", "writers", "rooms"):
        # Every delivery in the window carried a latency sample: the merge kept both whole.
        assert by_name[name].delivered == by_name[name].latency.count, name
    assert by_name["replay"].delivered == 50 * by_name["replay"].sent


async def test_loss_seen_in_either_process_is_counted(lossy_url: str) -> None:
    """The lossy server drops every 5th push to subscribers; the two subscribers of
    the fanout room are in different processes and both report what they lost."""
    options = small(lossy_url, "fanout", timeout=2.0, procs=2)
    with trio.fail_after(TIMEOUT):
        [result] = await run_bench(options)
    assert result.lost > 0
    assert result.reordered == result.duplicated == 0
    assert not result.ok
    assert "FAIL fanout" in format_table([result], options)


async def test_a_load_process_that_cannot_run_fails_the_run_with_what_was_done() -> None:
    config = Config(rate_limit_per_second=0, new_rooms_per_minute=0, max_connections_per_room=3)
    async with open_server(config) as running:
        options = small(running.url, "ping", "fanout", subscribers=3, procs=2)  # 4 in the room
        with trio.fail_after(TIMEOUT), pytest.raises(BenchError) as raised:
            await run_bench(options)
    message = str(raised.value)
    assert message.startswith("load process ")
    assert " of 2: " in message
    assert "WebSocket upgrade refused with HTTP 503" in message
    assert "\n" not in message
    assert raised.value.scenario == "fanout"
    assert [r.name for r in raised.value.completed] == ["ping"]


async def test_a_load_process_that_exits_early_fails_the_run(
    server: RunningServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    def exits_at_once() -> tuple[list[str], dict[str, str]]:
        return [sys.executable, "-c", "raise SystemExit(3)"], dict(os.environ)

    monkeypatch.setattr(_parallel, "_worker_command", exits_at_once)
    with trio.fail_after(TIMEOUT), pytest.raises(BenchError) as raised:
        await run_bench(small(server.url, "ping", procs=2))
    assert "exited with code 3 before the end" in str(raised.value)
    assert raised.value.scenario == "ping"


# -- the command line ------------------------------------------------------------------


async def test_the_command_with_procs_2_prints_merged_json(server: RunningServer) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    argv = [
        *("bench", server.url, "--scenario", "fanout", "--seconds", "0.5", "--procs", "2"),
        *("--warmup", "0.2", "--subscribers", "4", "--in-flight", "8", "--json"),
    ]
    with trio.fail_after(TIMEOUT):
        done = await trio.run_process(
            [sys.executable, "-m", "drifttrio.cli", *argv],
            capture_stdout=True,
            capture_stderr=True,
            check=False,
            env=env,
        )
    out, err = done.stdout.decode(), done.stderr.decode()
    assert done.returncode == 0, out + err
    report = json.loads(out)
    assert report["ok"] is True
    assert report["procs"] == 2
    [fanout] = report["scenarios"]
    assert fanout["connections"] == 5  # 4 subscribers and the publisher
    assert fanout["delivered"] == fanout["latency_ms"]["samples"] > 0
    assert fanout["lost"] == fanout["reordered"] == fanout["duplicated"] == 0
    assert len(fanout["client_cpus"]) == 2
    # Progress: one merged line a second and at the end, from the process that started them.
    assert "bench fanout: warming up for 0.2 s" in err
    assert re.search(r"bench fanout: +[\d.]+/0\.5 s +[\d,]+ delivered", err), err
    assert "Traceback" not in err


@pytest.mark.parametrize("procs", ["0", "-1"])
def test_procs_below_1_is_argparses_one_line_error_and_exit_2(
    procs: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["bench", "http://127.0.0.1", "--procs", procs])
    assert exit_info.value.code == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.strip().splitlines()[-1] == (
        f"drifttrio: argument --procs: must be at least 1, got {procs} "
        "(see: drifttrio bench --help)"
    )
