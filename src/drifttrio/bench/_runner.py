"""Run the chosen scenarios one after another against one server."""

from __future__ import annotations

import httpx

from ._context import Context, single_errors
from ._errors import BenchError
from ._model import SCENARIOS, BenchOptions, ScenarioResult
from ._proc import sample_process
from ._scenarios import RUNNERS

__all__ = ["run_bench"]


async def run_bench(options: BenchOptions) -> list[ScenarioResult]:
    """Run ``options.scenarios`` in order; one result each.

    Raises :class:`BenchError` when the bench cannot run at all (server unreachable,
    room not created, upgrade refused, no such ``pid``). Whatever goes wrong while a
    scenario runs is in its result instead (``ok`` is false).
    """
    unknown = [name for name in options.scenarios if name not in SCENARIOS]
    if unknown:
        raise BenchError(f"unknown scenario(s) {', '.join(unknown)}: pick from {SCENARIOS}")
    if options.pid is not None:
        sample_process(options.pid)
    results: list[ScenarioResult] = []
    # No proxies from the environment: the WebSockets go straight to the server too.
    async with httpx.AsyncClient(timeout=options.timeout, trust_env=False) as http:
        context = Context(options, http)
        for name in options.scenarios:
            result = ScenarioResult(name=name)
            try:
                with single_errors():
                    await RUNNERS[name](context, result)
            except BenchError as exc:
                exc.scenario, exc.completed = name, results
                raise
            results.append(result)
    return results
