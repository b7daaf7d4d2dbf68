"""Run the chosen scenarios one after another against one server."""

from __future__ import annotations

import httpx

from ._context import Context, single_errors
from ._errors import BenchError
from ._model import SCENARIOS, BenchOptions, ScenarioResult
from ._parallel import run_parallel
from ._proc import sample_process
from ._scenarios import RUNNERS
from ._team import Alone, Team

__all__ = ["run_bench", "run_scenarios"]


async def run_bench(options: BenchOptions) -> list[ScenarioResult]:
    """Run ``options.scenarios`` in order; one result each.

    With ``options.procs`` above 1 the load runs in that many processes and each
    result is their merge (see ``_parallel.py``).

    Raises :class:`BenchError` when the bench cannot run at all (server unreachable,
    room not created, upgrade refused, no such ``pid``, a load process failed).
    Whatever goes wrong while a scenario runs is in its result instead (``ok`` is
    false).
    """
    unknown = [name for name in options.scenarios if name not in SCENARIOS]
    if unknown:
        raise BenchError(f"unknown scenario(s) {', '.join(unknown)}: pick from {SCENARIOS}")
    if options.procs < 1:
        raise BenchError(f"procs must be at least 1, got {options.procs}")
    if options.pid is not None:
        sample_process(options.pid)
    if options.procs > 1:
        return await run_parallel(options)
    return await run_scenarios(options, Alone())


async def run_scenarios(options: BenchOptions, team: Team) -> list[ScenarioResult]:
    """This process's part of every scenario (all of it when ``team`` is :class:`Alone`)."""
    results: list[ScenarioResult] = []
    # No proxies from the environment: the WebSockets go straight to the server too.
    async with httpx.AsyncClient(timeout=options.timeout, trust_env=False) as http:
        context = Context(options, http, team)
        for name in options.scenarios:
            await team.begin()
            result = ScenarioResult(name=name)
            try:
                with single_errors():
                    await RUNNERS[name](context, result)
            except BenchError as exc:
                exc.scenario, exc.completed = name, results
                raise
            await team.done(result)
            results.append(result)
    return results
