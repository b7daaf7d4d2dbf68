"""``drifttrio check URL`` passes against drifttrio and names what a broken server breaks."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from functools import partial
from pathlib import Path
from typing import Any

import hypercorn.trio
import pytest
import trio
from hypercorn.config import Config as HypercornConfig

from _procs import child_env, drifttrio_command, workers_process
from drifttrio import Config, DriftApp, RunningServer, open_server
from drifttrio.client._conformance import CHECKS, format_table, run_checks

ROOT = Path(__file__).resolve().parent.parent

Message = MutableMapping[str, Any]


class Broken:
    """DriftApp behind a filter that drops ``stream_size`` and forgets pong nonces."""

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

        async def filtered(message: Message) -> None:
            if message["type"] == "websocket.send" and message.get("text"):
                data = json.loads(message["text"])
                if data["type"] == "stream_size":
                    return
                if data["type"] == "pong":
                    message = {**message, "text": json.dumps({"type": "pong", "nonce": None})}
            await send(message)

        await self.app(scope, receive, filtered)


@pytest.fixture
async def broken_url() -> AsyncIterator[str]:
    config = HypercornConfig()
    config.bind = ["127.0.0.1:0"]
    config.accesslog = None
    async with trio.open_nursery() as nursery:
        binds: list[str] = await nursery.start(
            partial(hypercorn.trio.serve, Broken(DriftApp(Config())), config)  # type: ignore[arg-type]
        )
        yield binds[0]
        nursery.cancel_scope.cancel()


@pytest.fixture
async def server() -> AsyncIterator[RunningServer]:
    async with open_server(Config()) as running:
        yield running


async def test_check_passes_against_drifttrio(server: RunningServer) -> None:
    results = await run_checks(server.url, wait=5)
    assert [r.name for r in results] == list(CHECKS)
    assert all(r.passed for r in results), format_table(results)
    assert {r.kind for r in results} == {"core", "extension"}


async def test_check_passes_against_workers(tmp_path: Path) -> None:
    """``drifttrio check`` (the command line) against ``drifttrio serve --workers 2``,
    on its default store: every room it makes lives in one of two processes."""
    async with workers_process(tmp_path, 2) as workers:
        process = await trio.run_process(
            [*drifttrio_command(), "check", workers.url],
            capture_stdout=True,
            capture_stderr=True,
            check=False,
            env=child_env(),
        )
    assert process.returncode == 0, process.stdout.decode() + process.stderr.decode()
    assert "FAIL" not in process.stdout.decode()


async def test_check_names_what_a_broken_server_breaks(broken_url: str) -> None:
    results = {r.name: r for r in await run_checks(broken_url, wait=0.5)}
    failed = {name: r.reason for name, r in results.items() if not r.passed}
    assert set(failed) == {"stream_size after the echo", "ping / pong nonce"}, failed
    assert "no stream_size 2 after the second append" in failed["stream_size after the echo"]
    assert "pong did not echo the nonce" in failed["ping / pong nonce"]
    assert all(results[name].kind == "core" for name in failed)
    table = format_table(list(results.values()))
    assert "FAIL    core       stream_size after the echo" in table
    assert "12/14 passed; 2 core and 0 extension check(s) failed" in table


async def test_the_command_prints_the_table_and_exits_non_zero(broken_url: str) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    with trio.fail_after(60):
        result = await trio.run_process(
            [sys.executable, "-m", "drifttrio.cli", "check", broken_url, "--timeout", "0.5"],
            capture_stdout=True,
            capture_stderr=True,
            check=False,
            env=env,
        )
    out = result.stdout.decode()
    assert result.returncode == 1, out + result.stderr.decode()
    assert "PASS    core       CBOR byte strings" in out
    assert "FAIL    core       ping / pong nonce" in out
    assert "pong did not echo the nonce" in out
