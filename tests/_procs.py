"""Child processes for end-to-end tests: the real ``drifttrio`` command line."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import trio

__all__ = [
    "ChildProcess",
    "Workers",
    "child_env",
    "drifttrio_command",
    "start_child",
    "workers_process",
]

TIMEOUT = 30  # a guard against hangs, never a way to wait for something


def drifttrio_command() -> list[str]:
    """The installed ``drifttrio`` script, or the module when it is not installed."""
    script = Path(sys.executable).with_name("drifttrio")
    if script.exists():
        return [str(script)]
    return [sys.executable, "-m", "drifttrio.cli"]


def child_env() -> dict[str, str]:
    """This environment without ``DRIFTTRIO_*`` settings, unbuffered."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DRIFTTRIO_")}
    env["PYTHONUNBUFFERED"] = "1"
    return env


class ChildProcess:
    """A subprocess whose stderr is read line by line in the background."""

    def __init__(self, process: trio.Process) -> None:
        self.process = process
        self.lines: list[str] = []
        self._changed = trio.Event()

    async def pump(self) -> None:
        assert self.process.stderr is not None
        buffer = b""
        async for chunk in self.process.stderr:
            buffer += chunk
            *complete, buffer = buffer.split(b"\n")
            self.lines.extend(line.decode(errors="replace") for line in complete)
            self._changed.set()
            self._changed = trio.Event()
        if buffer:
            self.lines.append(buffer.decode(errors="replace"))
        self._changed.set()

    async def wait_for_line(self, pattern: str) -> re.Match[str]:
        """The first line matching ``pattern``, waiting for it to be written."""
        regex = re.compile(pattern)
        with trio.fail_after(TIMEOUT):
            while True:
                for line in self.lines:
                    if match := regex.search(line):
                        return match
                if self.process.poll() is not None:
                    raise AssertionError("the process exited:\n" + self.log)
                await self._changed.wait()

    @property
    def log(self) -> str:
        return "\n".join(self.lines)


async def start_child(
    nursery: trio.Nursery, argv: list[str], cwd: Path, env: dict[str, str] | None = None
) -> ChildProcess:
    """Start ``argv`` in ``cwd`` (the default store is ./drifttrio.db: keep it there),
    with ``env`` added to :func:`child_env`."""
    process = await trio.lowlevel.open_process(
        argv,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env={**child_env(), **(env or {})},
        cwd=cwd,
    )
    child = ChildProcess(process)
    nursery.start_soon(child.pump)
    return child


class Workers:
    """A running ``drifttrio serve --workers N``."""

    def __init__(self, child: ChildProcess, url: str, ops_url: str) -> None:
        self.child = child
        self.url = url
        self.ws_url = "ws" + url.removeprefix("http")
        self.ops_url = ops_url
        #: (No hub in this process: the rooms live in the workers.)
        self.hub = None

    async def health(self, path: str = "/healthz") -> tuple[int, Any]:
        async with _http(self.ops_url) as client:
            response = await client.get(path)
        return response.status_code, response.json()

    async def pids(self) -> list[int]:
        _, body = await self.health()
        return [w["pid"] for w in body["workers"]]

    async def metrics(self) -> str:
        async with _http(self.ops_url) as client:
            return (await client.get("/metrics")).text


@asynccontextmanager
async def workers_process(cwd: Path, workers: int, *args: str) -> AsyncIterator[Workers]:
    """``drifttrio serve --workers N --port 0 --metrics-port 0 ARGS`` in ``cwd``; on
    exit, SIGTERM (killed if it does not end)."""
    argv = [*drifttrio_command(), "serve", "--port", "0", "--metrics-port", "0"]
    async with trio.open_nursery() as nursery:
        child = await start_child(nursery, [*argv, "--workers", str(workers), *args], cwd)
        process = child.process
        try:
            url = (await child.wait_for_line(r"listening on (http://127\.0\.0\.1:\d+)")).group(1)
            ops = (await child.wait_for_line(r"readiness on (http://127\.0\.0\.1:\d+)")).group(1)
            yield Workers(child, url, ops)
        finally:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
                with trio.move_on_after(TIMEOUT):
                    await process.wait()
                if process.poll() is None:
                    process.kill()
            with trio.fail_after(TIMEOUT):
                await process.wait()


def _http(base_url: str) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=base_url, trust_env=False, timeout=TIMEOUT)
