"""``python -m drifttrio.bench._worker``: one load process of ``drifttrio bench --procs N``.

Started by the bench (``_parallel.py``), which is on the other end of its stdin and
stdout: it reads its :class:`~._team.Assignment`, runs its share of every scenario
as a :class:`~._team.Crew`, and sends each result, or the reason it cannot run
(then it exits 2). Not a command for people.
"""

from __future__ import annotations

import contextlib
import os

import trio

from ._errors import BenchError
from ._runner import run_scenarios
from ._team import Assignment, Channel, Crew, Failed

__all__ = ["main"]


def main() -> int:
    # The channel gets fds of its own; fd 1 then points at stderr, so that nothing
    # printed by accident can corrupt a message.
    channel_in, channel_out = os.dup(0), os.dup(1)
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.dup2(2, 1)
    os.close(devnull)
    try:
        return trio.run(_work, channel_in, channel_out)
    except KeyboardInterrupt:
        return 130


async def _work(channel_in: int, channel_out: int) -> int:
    channel = Channel(trio.lowlevel.FdStream(channel_out), trio.lowlevel.FdStream(channel_in))
    try:
        assignment = await channel.receive()
    except trio.EndOfChannel:
        return 2
    if not isinstance(assignment, Assignment):
        return 2
    try:
        await run_scenarios(assignment.options, Crew(channel, assignment.index, assignment.size))
    except BenchError as exc:
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            await channel.send(Failed(str(exc)))
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
