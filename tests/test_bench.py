"""``drifttrio bench URL``: every scenario runs clean against drifttrio, and loss is caught."""

from __future__ import annotations

import json
import os
import socket
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, MutableMapping
from functools import partial
from pathlib import Path
from typing import Any

import hypercorn.trio
import pytest
import trio
from hypercorn.config import Config as HypercornConfig

from drifttrio import Config, DriftApp, RunningServer, open_server
from drifttrio.bench import (
    SCENARIOS,
    BenchError,
    BenchOptions,
    LatencyHistogram,
    ScenarioResult,
    SeqVerifier,
    format_table,
    run_bench,
)
from drifttrio.cli import main

ROOT = Path(__file__).resolve().parent.parent
TIMEOUT = 60  # a guard against hangs, never a way to wait for something

# Load at full speed is what the rate limits exist to stop: off for the bench.
UNLIMITED = Config(rate_limit_per_second=0, new_rooms_per_minute=0)

Message = MutableMapping[str, Any]


def small(url: str, *scenarios: str, **changes: Any) -> BenchOptions:
    """A short run with small sizes (the load is real: keep it light)."""
    settings: dict[str, Any] = {
        "url": url,
        "scenarios": scenarios,
        "seconds": 0.3,
        "warmup": 0.0,
        "subscribers": 2,
        "in_flight": 8,
        "writers": 3,
        "rooms": 2,
        "values": 50,
        "concurrency": 2,
        "timeout": 5.0,
        **changes,
    }
    return BenchOptions(**settings)


@pytest.fixture
async def server() -> AsyncIterator[RunningServer]:
    async with open_server(UNLIMITED) as running:
        yield running


# -- the seq verifier and the histogram, on their own ---------------------------------


def test_in_order_is_clean() -> None:
    verifier = SeqVerifier()
    for seq in range(5, 15):
        verifier.observe(seq)
    verifier.expect(5, 14)
    assert (verifier.lost, verifier.reordered, verifier.duplicated) == (0, 0, 0)
    assert (verifier.first, verifier.last, verifier.received) == (5, 14, 10)


def test_a_gap_is_lost() -> None:
    verifier = SeqVerifier(after=0)
    for seq in (1, 2, 3, 6, 7):
        verifier.observe(seq)
    verifier.expect(1, 7)
    assert (verifier.lost, verifier.reordered, verifier.duplicated) == (2, 0, 0)


def test_a_late_seq_is_reordered_not_lost_and_a_repeat_is_duplicated() -> None:
    verifier = SeqVerifier(after=0)
    for seq in (1, 3, 2, 4, 4, 2):
        verifier.observe(seq)
    verifier.expect(1, 4)
    assert (verifier.lost, verifier.reordered, verifier.duplicated) == (0, 1, 2)


def test_what_never_came_at_either_end_is_lost() -> None:
    verifier = SeqVerifier()
    for seq in (3, 4, 5):
        verifier.observe(seq)
    verifier.expect(1, 8)  # 1, 2 before the first seen; 6, 7, 8 after the last
    assert verifier.lost == 5
    nothing = SeqVerifier()
    nothing.expect(1, 4)
    assert nothing.lost == 4


def test_a_huge_gap_is_counted_without_remembering_each_seq() -> None:
    verifier = SeqVerifier(after=0)
    verifier.observe(1)
    verifier.observe(2 + 10 * SeqVerifier.MAX_TRACKED_GAP)
    assert verifier.lost == 10 * SeqVerifier.MAX_TRACKED_GAP


def test_histogram_percentiles_are_within_a_percent() -> None:
    histogram = LatencyHistogram()
    assert histogram.percentile(0.5) is None
    for us in range(1, 1001):
        histogram.add(us * 1000)
    p50, p99 = histogram.percentile(0.5), histogram.percentile(0.99)
    assert p50 is not None
    assert p99 is not None
    assert abs(p50 - 500_000) <= 5_000
    assert abs(p99 - 990_000) <= 10_000
    assert histogram.percentile(1.0) == histogram.max_ns == 1_000_000


# -- every scenario against a real server ---------------------------------------------


@pytest.mark.parametrize("scenario", SCENARIOS)
async def test_each_scenario_runs_clean(server: RunningServer, scenario: str) -> None:
    with trio.fail_after(TIMEOUT):
        [result] = await run_bench(small(server.url, scenario, pid=os.getpid()))
    assert result.ok, format_table([result], small(server.url, scenario))
    assert result.name == scenario
    assert result.delivered > 0
    assert result.rate > 0
    assert result.latency.count > 0
    assert (result.lost, result.reordered, result.duplicated, result.errors) == (0, 0, 0, 0)
    expected_connections = {
        "fanout": 3,  # 2 subscribers and the publisher
        "writers": 3,
        "rooms": 6,  # 2 rooms of 2 subscribers and a publisher
        "replay": 1,
        "churn": 2,
        "ping": 1,
    }
    assert result.connections == expected_connections[scenario]
    if scenario == "replay":
        assert result.delivered == 50 * result.sent  # every get answered all 50 values
    # The server runs in this process: --pid sampled it.
    assert result.server is not None
    assert result.server.cpu_seconds >= 0
    assert result.server.rss_after > 0


async def test_append_action_and_payload(server: RunningServer) -> None:
    options = small(server.url, "fanout", "writers", action="append", payload=200)
    with trio.fail_after(TIMEOUT):
        results = await run_bench(options)
    assert [r.name for r in results] == ["fanout", "writers"]
    assert all(r.ok for r in results), format_table(results, options)
    assert results[0].params == {"subscribers": 2, "in_flight": 8, "action": "append"}


async def test_a_paced_server_is_measured_whole_and_the_report_says_how_to_lift_it(
    tmp_path: Path,
) -> None:
    """The server paces a connection over its rate limit instead of refusing: the
    bench sees every message, slowly, and its report says how to lift the limits."""
    config = Config(rate_limit_per_second=50, rate_limit_burst=5, new_rooms_per_minute=0)
    async with open_server(config) as running:
        options = small(running.url, "ping")
        with trio.fail_after(TIMEOUT):
            [result] = await run_bench(options)
    assert result.ok, result
    assert not result.errors
    assert not result.closed
    table = format_table([result], options)
    assert "DRIFTTRIO_RATE_LIMIT_PER_SECOND=0" in table


async def test_a_scenario_that_cannot_run_stops_the_bench_with_what_was_done() -> None:
    config = Config(rate_limit_per_second=0, new_rooms_per_minute=0, max_connections_per_room=3)
    async with open_server(config) as running:
        options = small(running.url, "ping", "fanout", subscribers=3)  # 4 in the fanout room
        with trio.fail_after(TIMEOUT), pytest.raises(BenchError) as raised:
            await run_bench(options)
    assert "WebSocket upgrade refused with HTTP 503" in str(raised.value)
    assert raised.value.scenario == "fanout"
    assert [r.name for r in raised.value.completed] == ["ping"]
    assert raised.value.completed[0].ok


# -- a server that loses messages -----------------------------------------------------


class Lossy:
    """DriftApp behind a filter that drops every 5th push to connections that never push."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(
        self,
        scope: Message,
        receive: Callable[[], Awaitable[Message]],
        send: Callable[[Message], Awaitable[None]],
    ) -> None:
        if scope["type"] != "websocket":
            await self.app(scope, receive, send)
            return
        publisher = False

        async def watched() -> Message:
            nonlocal publisher
            message = await receive()
            publisher = publisher or '"push"' in (message.get("text") or "")
            return message

        async def filtered(message: Message) -> None:
            if not publisher and message["type"] == "websocket.send" and message.get("text"):
                data = json.loads(message["text"])
                if data["type"] == "push" and data["seq"] % 5 == 0:
                    return
            await send(message)

        await self.app(scope, watched, filtered)


@pytest.fixture
async def lossy_url() -> AsyncIterator[str]:
    config = HypercornConfig()
    config.bind = ["127.0.0.1:0"]
    config.accesslog = None
    async with trio.open_nursery() as nursery:
        binds: list[str] = await nursery.start(
            partial(hypercorn.trio.serve, Lossy(DriftApp(UNLIMITED)), config)  # type: ignore[arg-type]
        )
        yield binds[0]
        nursery.cancel_scope.cancel()


async def test_loss_is_detected(lossy_url: str) -> None:
    options = small(lossy_url, "fanout", timeout=2.0)
    with trio.fail_after(TIMEOUT):
        [result] = await run_bench(options)
    assert result.lost > 0
    assert result.reordered == result.duplicated == 0
    assert not result.ok
    assert "FAIL fanout" in format_table([result], options)


# -- the command line -----------------------------------------------------------------


async def test_the_command_prints_json(server: RunningServer) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    argv = [
        *("bench", server.url, "--scenario", "fanout,ping", "--seconds", "0.3"),
        *("--warmup", "0", "--subscribers", "2", "--in-flight", "8", "--json", "--quiet"),
    ]
    with trio.fail_after(TIMEOUT):
        result = await trio.run_process(
            [sys.executable, "-m", "drifttrio.cli", *argv],
            capture_stdout=True,
            capture_stderr=True,
            check=False,
            env=env,
        )
    assert result.returncode == 0, result.stdout.decode() + result.stderr.decode()
    assert result.stderr == b""  # --quiet: no progress lines
    report = json.loads(result.stdout)
    assert report["ok"] is True
    assert [s["scenario"] for s in report["scenarios"]] == ["fanout", "ping"]
    fanout = report["scenarios"][0]
    assert fanout["delivered"] > 0
    assert fanout["lost"] == 0
    assert fanout["latency_ms"]["p50"] > 0


async def test_the_command_shows_progress_and_a_table(server: RunningServer) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    argv = ["bench", server.url, "--scenario", "ping", "--seconds", "1.2", "--warmup", "0"]
    with trio.fail_after(TIMEOUT):
        result = await trio.run_process(
            [sys.executable, "-m", "drifttrio.cli", *argv],
            capture_stdout=True,
            capture_stderr=True,
            check=False,
            env=env,
        )
    out, err = result.stdout.decode(), result.stderr.decode()
    assert result.returncode == 0, out + err
    assert "bench ping:  1.0/1.2 s" in err
    assert "ping      1 connection, sequential" in out
    assert "all scenarios ok" in out


@pytest.fixture
def closed_port() -> Iterator[int]:
    """A port on 127.0.0.1 that refuses connections (bound, never listening)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield sock.getsockname()[1]


def test_an_unreachable_server_is_one_line_and_exit_code_2(
    closed_port: int, capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"http://127.0.0.1:{closed_port}"
    assert main(["bench", url, "--quiet", "--seconds", "0.1", "--timeout", "5"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, captured.err
    assert lines[0].startswith(f"drifttrio bench: cannot reach {url}")


def test_bad_arguments_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["bench", "http://127.0.0.1", "--scenario", "nope"])
    assert exit_info.value.code == 2
    assert "unknown scenario" in capsys.readouterr().err


def test_a_result_with_a_problem_is_not_ok() -> None:
    result = ScenarioResult(name="fanout")
    assert result.ok
    result.error("rate limit")
    assert not result.ok
    assert result.first_error == "rate limit"
