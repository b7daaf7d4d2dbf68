"""CPU time and resident memory of a local process, from ``/proc`` (Linux)."""

from __future__ import annotations

import os
import time

import attrs

from ._errors import BenchError

__all__ = ["ProcSample", "own_cpu_seconds", "sample_process"]


@attrs.frozen
class ProcSample:
    """A process's CPU time (user + system) and resident set size at one moment."""

    cpu_seconds: float
    rss_bytes: int


def sample_process(pid: int) -> ProcSample:
    """Read ``/proc/PID/stat`` and ``/proc/PID/status``; :class:`BenchError` if not there."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
            stat = f.read()
        with open(f"/proc/{pid}/status", encoding="ascii", errors="replace") as f:
            status = f.read()
    except FileNotFoundError:
        raise BenchError(f"no process {pid} (or no /proc on this system)") from None
    except OSError as exc:
        raise BenchError(f"cannot read /proc/{pid}: {exc}") from None
    # The command name (field 2) is in parentheses and may hold spaces: split after it.
    fields = stat[stat.rindex(")") + 2 :].split()
    ticks = os.sysconf("SC_CLK_TCK")
    cpu = (int(fields[11]) + int(fields[12])) / ticks  # utime, stime (fields 14, 15)
    rss = 0
    for line in status.splitlines():
        if line.startswith("VmRSS:"):
            rss = int(line.split()[1]) * 1024  # kB
            break
    return ProcSample(cpu_seconds=cpu, rss_bytes=rss)


def own_cpu_seconds() -> float:
    """CPU time this process (the load generator) has used so far."""
    return time.process_time()
