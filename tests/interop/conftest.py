"""Fixtures for the interop tests: a running drifttrio server and a Node runner.

The scenario scripts in this folder drive the published ``driftdb`` npm client
(pinned in ``package.json``) under Node 20. ``bash .ci/run`` installs Node and
runs ``npm ci`` here; without them these tests skip with the reason.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest
import trio

from _procs import workers_process
from drifttrio import Config, RunningServer, open_server
from drifttrio.hooks import (
    Admit,
    Committed,
    ConnectRequest,
    Event,
    Hooks,
    PushRequest,
    RoomView,
)

INTEROP_DIR = Path(__file__).resolve().parent

#: Bound on one scenario script (each script also stops itself after 20 s).
SCRIPT_TIMEOUT = 60.0

RunNode = Callable[..., Awaitable[dict[str, Any]]]


@pytest.fixture(scope="session")
def node() -> str:
    """The ``node`` executable, or skip when Node or the npm packages are missing."""
    exe = shutil.which("node")
    if exe is None:
        pytest.skip("node is not installed (bash .ci/run installs Node 20 for these tests)")
    if not (INTEROP_DIR / "node_modules" / "driftdb").is_dir():
        pytest.skip("tests/interop/node_modules is missing: run `npm ci` in tests/interop")
    version = subprocess.run(
        [exe, "--version"], capture_output=True, text=True, check=True
    ).stdout.strip()
    major = int(version.lstrip("v").split(".")[0])
    assert major >= 20, f"the interop tests need Node 20 or later, found {version}"
    return exe


class PassThrough(Hooks):
    """Every hook overridden, each letting everything through unchanged: the npm
    client must not notice that server-side logic runs."""

    def authorize(self, request: ConnectRequest) -> Admit:
        return Admit(identity={"client": request.client})

    async def on_push(self, push: PushRequest) -> None:
        await trio.lowlevel.checkpoint()  # a real await: the reader task yields

    def decide(self, room: RoomView, push: PushRequest) -> None:
        return None

    async def on_event(self, event: Event) -> None:
        return None

    async def on_committed(self, pushes: Sequence[Committed]) -> None:
        return None


@pytest.fixture(params=["memory", "redis", "hooks", "workers"])
async def server(request: pytest.FixtureRequest) -> AsyncIterator[RunningServer]:
    """A drifttrio server on 127.0.0.1 and a free port, default configuration; each
    scenario runs on the in-process store, on a shared Redis store (a real
    ``redis-server``, the ``redis_server`` fixture of tests/conftest.py), on
    the in-process store with pass-through hooks (:class:`PassThrough`), and on
    ``drifttrio serve --workers 2`` (a real command line: its rooms live in two
    worker processes, and the server's ``hub`` is ``None``)."""
    if request.param == "workers":
        cwd = request.getfixturevalue("tmp_path")
        async with workers_process(cwd, 2, "--store", "memory") as workers:
            yield workers  # type: ignore[misc]
        return
    store = "memory"
    if request.param == "redis":
        redis = request.getfixturevalue("redis_server")
        store = f"{redis.url}?prefix=interop{secrets.token_hex(6)}"
    hooks = PassThrough() if request.param == "hooks" else None
    async with open_server(Config(store=store), hooks=hooks) as running:
        yield running


@pytest.fixture
def run_node(node: str) -> RunNode:
    """Run one scenario script; return the JSON line it printed.

    ``await run_node("state.js", server.url, room_id, env={"X": "1"})``. A
    non-zero exit, or anything but one JSON line on stdout, fails the test
    with the script's stderr.
    """

    async def run(script: str, *args: str, env: Mapping[str, str] | None = None) -> dict[str, Any]:
        with trio.fail_after(SCRIPT_TIMEOUT):
            proc = await trio.run_process(
                [node, str(INTEROP_DIR / script), *args],
                cwd=INTEROP_DIR,
                env={**os.environ, **(env or {})},
                capture_stdout=True,
                capture_stderr=True,
                check=False,
            )
        stdout = proc.stdout.decode(errors="replace")
        stderr = proc.stderr.decode(errors="replace")
        assert proc.returncode == 0, (
            f"node {script} exited with {proc.returncode}\n"
            f"--- stderr ---\n{stderr}\n--- stdout ---\n{stdout}"
        )
        lines = [line for line in stdout.splitlines() if line.strip()]
        assert len(lines) == 1, f"node {script} printed {len(lines)} lines:\n{stdout}"
        result: dict[str, Any] = json.loads(lines[0])
        return result

    return run
