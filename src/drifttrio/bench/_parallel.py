"""``--procs N``: the load from N processes, their results merged into one.

Each load process is ``python -m drifttrio.bench._worker``, told what to run and
its share (:class:`~._team.Assignment`) over its stdin, answering over its stdout
(a :class:`~._team.Channel`); its stderr is ours. This process drives no load: it
answers the processes' gathers (the table in ``_team.py``), prints the progress of
all of them, samples the ``--pid`` server over the shared window, and merges each
scenario's results (:func:`~._model.merge_results`). A process that fails or
exits early fails the run with a :class:`BenchError` saying which one and why.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import attrs
import trio

from ._context import progress_line, single_errors
from ._errors import BenchError
from ._model import BenchOptions, ScenarioResult, ServerUsage, merge_results
from ._proc import ProcSample, sample_process
from ._team import Assignment, Channel, Done, Failed, Gather, Tick, merge_bounds

__all__ = ["run_parallel"]

#: Seconds from agreeing on the start to the start: every process hears of it first.
_START_MARGIN = 0.05
#: Seconds a load process gets to exit once its work is done.
_EXIT_GRACE = 5.0


@attrs.frozen
class _Exited:
    """A load process closed its stdout (it exited) before the run was over."""

    returncode: int


@attrs.define
class _Window:
    """The ``--pid`` server sampled at the start and end of a scenario's window."""

    start: ProcSample | None = None
    end: ProcSample | None = None
    error: BenchError | None = None
    sampled: trio.Event = attrs.field(factory=trio.Event)


@attrs.define
class _Scenario:
    """The scenario under way, as the starter sees it."""

    name: str
    before: ProcSample | None = None
    window: _Window | None = None
    #: Progress from each process, by tick number, until all have sent it.
    ticks: dict[int, dict[int, Tick]] = attrs.field(factory=dict)
    parts: dict[int, ScenarioResult] = attrs.field(factory=dict)


def _worker_command() -> tuple[list[str], dict[str, str]]:
    """The load process's command, importing this very drifttrio (whatever the path)."""
    root = str(Path(__file__).resolve().parents[2])
    path = os.environ.get("PYTHONPATH")
    env = {**os.environ, "PYTHONPATH": root + (os.pathsep + path if path else "")}
    return [sys.executable, "-m", "drifttrio.bench._worker"], env


async def run_parallel(options: BenchOptions) -> list[ScenarioResult]:
    """Run ``options.scenarios`` from ``options.procs`` processes; merged results."""
    command, env = _worker_command()
    processes: list[trio.Process] = []
    finished = False
    try:
        for _ in range(options.procs):
            try:
                processes.append(
                    await trio.lowlevel.open_process(
                        command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env
                    )
                )
            except OSError as exc:
                raise BenchError(f"cannot start a load process ({command[0]}): {exc}") from None
        channels = []
        for process in processes:
            assert process.stdin is not None
            assert process.stdout is not None
            channels.append(Channel(process.stdin, process.stdout))
        # The progress and the server's usage are this process's to report.
        theirs = attrs.evolve(options, progress=None, pid=None)
        for index, channel in enumerate(channels):
            await channel.send(Assignment(theirs, index, options.procs))
        with single_errors():
            async with trio.open_nursery() as nursery:
                inbox_send, inbox = trio.open_memory_channel[tuple[int, object]](0)
                for index, (process, channel) in enumerate(zip(processes, channels, strict=True)):
                    nursery.start_soon(_read, index, process, channel, inbox_send.clone())
                starter = _Starter(options, channels, inbox, nursery)
                results = await starter.run()
                nursery.cancel_scope.cancel()
        finished = True
        return results
    except (OSError, trio.BrokenResourceError) as exc:
        raise BenchError(f"lost touch with a load process: {exc}") from None
    finally:
        with trio.CancelScope(shield=True):
            for process in processes:
                await _end(process, grace=_EXIT_GRACE if finished else 0.0)


async def _end(process: trio.Process, grace: float) -> None:
    """Close its pipes (it sees the end of its stdin) and wait ``grace`` seconds for
    it to exit; then kill it."""
    for stream in (process.stdin, process.stdout):
        if stream is not None:
            with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                await stream.aclose()
    with trio.move_on_after(grace):
        await process.wait()
    if process.returncode is None:
        process.kill()
        await process.wait()


async def _read(
    index: int,
    process: trio.Process,
    channel: Channel,
    inbox: trio.MemorySendChannel[tuple[int, object]],
) -> None:
    """Pass the process's messages on, and then that it exited."""
    async with inbox:
        while True:
            try:
                message = await channel.receive()
            except trio.EndOfChannel:
                await inbox.send((index, _Exited(await process.wait())))
                return
            await inbox.send((index, message))


class _Starter:
    """Answers the load processes until every scenario's results are in."""

    def __init__(
        self,
        options: BenchOptions,
        channels: list[Channel],
        inbox: trio.MemoryReceiveChannel[tuple[int, object]],
        nursery: trio.Nursery,
    ) -> None:
        self.options = options
        self.channels = channels
        self.inbox = inbox
        self.nursery = nursery
        self.size = len(channels)
        self.results: list[ScenarioResult] = []
        self.scenario = _Scenario(options.scenarios[0])
        self._gathers: dict[str, dict[int, Any]] = {}

    async def run(self) -> list[ScenarioResult]:
        while len(self.results) < len(self.options.scenarios):
            index, message = await self.inbox.receive()
            try:
                await self._handle(index, message)
            except BenchError as exc:
                exc.scenario, exc.completed = self.scenario.name, self.results
                raise
        return self.results

    def say(self, line: str) -> None:
        if self.options.progress is not None:
            self.options.progress(line)

    async def _handle(self, index: int, message: object) -> None:
        who = f"load process {index + 1} of {self.size}"
        match message:
            case Gather(kind=kind, value=value):
                waiting = self._gathers.setdefault(kind, {})
                waiting[index] = value
                if len(waiting) == self.size:
                    del self._gathers[kind]
                    answer = self._answer(kind, [waiting[i] for i in range(self.size)])
                    for channel in self.channels:
                        # One that is gone is reported by its reader, with its exit code.
                        with contextlib.suppress(trio.BrokenResourceError):
                            await channel.send(answer)
            case Tick(number=number):
                ticks = self.scenario.ticks.setdefault(number, {})
                ticks[index] = message
                if len(ticks) == self.size:
                    del self.scenario.ticks[number]
                    merged = merge_results([tick.result for tick in ticks.values()])
                    elapsed = max(tick.elapsed for tick in ticks.values())
                    self.say(progress_line(merged, elapsed, self.options.seconds))
            case Done(result=result):
                self.scenario.parts[index] = result
                if len(self.scenario.parts) == self.size:
                    await self._finish()
            case Failed(message=text):
                raise BenchError(f"{who}: {text}")
            case _Exited(returncode=code):
                raise BenchError(
                    f"{who} exited with code {code} before the end (its error, if any, is above)"
                )
            case _:
                raise BenchError(f"{who} sent {type(message).__name__}, not a bench message")

    def _answer(self, kind: str, values: list[Any]) -> Any:
        """What every process gets back from the gather ``kind`` (see ``_team.py``)."""
        if kind == "begin":
            self.scenario = _Scenario(self.options.scenarios[len(self.results)])
            self.scenario.before = self._sample()
            return None
        if kind == "rooms":
            return values[0]  # process 0 made them
        if kind == "start":
            start = time.perf_counter() + _START_MARGIN
            if self.options.warmup > 0:
                self.say(f"{self.scenario.name}: warming up for {self.options.warmup:g} s")
            if self.options.pid is not None:
                self.scenario.window = _Window()
                self.nursery.start_soon(self._sample_window, self.scenario.window, start)
            return start
        if kind == "bounds":
            return merge_bounds(values)
        raise BenchError(f"a load process asked for the unknown gather {kind!r}")

    def _sample(self) -> ProcSample | None:
        return None if self.options.pid is None else sample_process(self.options.pid)

    async def _sample_window(self, window: _Window, start: float) -> None:
        """Sample the server as the window opens and as it closes."""
        opens = start + self.options.warmup
        try:
            await trio.sleep(max(0.0, opens - time.perf_counter()))
            window.start = self._sample()
            await trio.sleep(max(0.0, opens + self.options.seconds - time.perf_counter()))
            window.end = self._sample()
        except BenchError as exc:
            window.error = exc
        finally:
            window.sampled.set()

    async def _finish(self) -> None:
        """Every process is done with the scenario: merge, add the server's usage."""
        scenario = self.scenario
        merged = merge_results([scenario.parts[i] for i in range(self.size)])
        window = scenario.window
        if window is not None:
            await window.sampled.wait()
            if window.error is not None:
                raise window.error
            if scenario.before and window.start and window.end and merged.seconds > 0:
                merged.server = ServerUsage.between(
                    scenario.before,
                    window.start,
                    window.end,
                    elapsed=merged.seconds,
                    delivered=merged.delivered,
                    connections=merged.connections,
                )
        self.results.append(merged)
