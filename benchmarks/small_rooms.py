"""Many small rooms, the life of a short connection, and a connection storm, side by side.

Where DriftDB apps live: many rooms of a few members each, one push in flight
per publisher (where an extra hop per message shows; 100 in flight hides it),
and connections that come and go. Each server runs as its own process pinned
to CPU 0, driven by the Node driver ``rooms_loadgen.js`` pinned to CPU 1. Each
round starts every server once, in turn (so machine noise hits them alike), and
on that fresh process measures, in this order:

- storm: CONNECTIONS clients opening a WebSocket and sending ``get`` as fast as
  the driver can (at most CONCURRENCY opening at once), kept open; completed
  per second, and the server's RSS growth per open connection (first, while the
  process is fresh, so no memory freed by the other phases hides the growth);
- rooms: for each shape ROOMSxM, ROOMS fresh rooms of M subscribers and one
  publisher keeping WINDOW (1) pushes in flight: messages delivered per second
  to the subscribers, push -> own echo p50/p99, the server's CPU share over the
  window, and the check that every member saw its room's seqs 1, 2, 3, ...
  (lost / reordered must be 0);
- lifecycle: connect, ``get``, push, echo, close, CONCURRENCY at once; the
  server's CPU time (utime + stime of its process tree, from ``/proc``) over
  the phase, per connection.

The server's CPU is always its whole process tree (``drifttrio serve --workers
N`` is a supervisor and N worker processes): every process's utime and stime,
plus what its reaped children used (cutime, cstime). The driver's own CPU is
read over the same windows. With the rows of both ``--workers 1`` and
``--workers 2`` (``--only workers``) it also prints the two side by side: the
ratios, and the handoff's cost per connection.

Then it prints one table per measure (medians of the rounds, ratio to the first
row, [min-max]) and a goals section. It exits with 1 when a server did not
start or the verification failed (a seq lost or reordered, a connection that
failed or was closed by the server, a driver run that failed).

    python benchmarks/small_rooms.py --quick        # about 2 minutes
    python benchmarks/small_rooms.py                # 3 rounds (17 min on a loaded 2-core machine)
    python benchmarks/small_rooms.py --only "own transport)" websockets --measure rooms
    python benchmarks/small_rooms.py --only workers --runs 5     # --workers 1 against 2

Server rows, pinning and the RSS reading come from ``throughput.py``.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import platform
import re
import resource
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import throughput as tp  # a sibling script, not a package

HERE = tp.HERE
DRIVER = HERE / "rooms_loadgen.js"

DRIFTTRIO = tp.DRIFTTRIO
SQLITE = "drifttrio serve (own transport, SQLite)"
HYPERCORN = "drifttrio serve --transport hypercorn"
WEBSOCKETS = tp.WEBSOCKETS
TRIO_WEBSOCKET = "minimal relay on trio-websocket"
TRIO_ROOM = tp.TRIO_ROOM
NODE = tp.NODE
#: The rows run without --only: drifttrio on memory and SQLite, under hypercorn,
#: and the websockets, trio-websocket and Node ws relays. --only picks from every
#: row of throughput.py (so ``asgi`` adds the two ``hypercorn -k trio`` rows).
DEFAULT_ROWS = (DRIFTTRIO, SQLITE, HYPERCORN, WEBSOCKETS, TRIO_WEBSOCKET, TRIO_ROOM, NODE)

MEASURES = ("storm", "rooms", "lifecycle")

WORKERS_1 = tp.WORKERS_1
WORKERS_2 = tp.WORKERS_2
#: --workers 2 / --workers 1, server CPU per delivered message and per connection
#: lifecycle: within this of each other (the handoff is paid once per connection,
#: never per message).
WORKERS_CPU_GOAL = 0.10

#: drifttrio serve (memory) / websockets relay, messages per second, each shape: at least
#: this (the aim is ROOMS_AIM).
ROOMS_GOAL = 1.0
ROOMS_AIM = 1.5
#: drifttrio serve, SQLite / memory, messages per second, each shape: at least.
SQLITE_GOAL = 0.5
#: drifttrio serve / websockets relay, server CPU per connection lifecycle: at most.
LIFECYCLE_GOAL = 1.0
#: drifttrio serve / websockets relay, storm connections per second: at least.
STORM_GOAL = 1.0

#: Settings for a full run and for --quick; explicit options override them.
FULL = {
    "runs": 3,
    "seconds": 3.0,
    "lifecycle_connections": 1000,
    "storm_connections": 10_000,
}
QUICK = {
    "runs": 1,
    "seconds": 2.0,
    "lifecycle_connections": 500,
    "storm_connections": 2000,
}

CLOCK_TICK = os.sysconf("SC_CLK_TCK")


def parse_shape(text: str) -> tuple[int, int]:
    """``100x3``: 100 rooms of 3 subscribers (and one publisher) each."""
    try:
        rooms, subscribers = (int(part) for part in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected ROOMSxSUBSCRIBERS, like 100x3: {text!r}"
        ) from None
    if rooms < 1 or subscribers < 1:
        raise argparse.ArgumentTypeError(f"rooms and subscribers must be at least 1: {text!r}")
    return rooms, subscribers


def shape_label(shape: tuple[int, int]) -> str:
    return f"{shape[0]}x(1+{shape[1]})"


def server_env() -> dict[str, str]:
    """Rate limits off and connection limits far above what any phase opens.

    One publisher per room at full speed, 10,000 connections from one address and
    hundreds of ``POST /new`` a second are what those limits exist to stop: off, to
    measure the relay itself (the minimal relays have none).
    """
    high = "1000000"
    return {
        **os.environ,
        "DRIFTTRIO_STORE": "memory",
        "DRIFTTRIO_RATE_LIMIT_PER_SECOND": "0",
        "DRIFTTRIO_ADDRESS_MESSAGES_PER_SECOND": "0",
        "DRIFTTRIO_ADDRESS_BYTES_PER_SECOND": "0",
        "DRIFTTRIO_ADDRESS_NODES_PER_SECOND": "0",
        "DRIFTTRIO_NEW_ROOMS_PER_MINUTE": "0",
        "DRIFTTRIO_MAX_CONNECTIONS": high,
        "DRIFTTRIO_MAX_CONNECTIONS_PER_IP": high,
        "DRIFTTRIO_MAX_CONNECTIONS_PER_ROOM": high,
        "DRIFTTRIO_MAX_HTTP_CONNECTIONS": high,
        "DRIFTTRIO_MAX_HTTP_CONNECTIONS_PER_IP": high,
    }


class ServerDidNotStart(Exception):
    """The server exited or never printed its listening address."""


@contextlib.contextmanager
def running(
    argv: list[str], env: dict[str, str], cpus: int | str = 0, log: Path | None = None
) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    """One fresh server process (pinned to ``cpus``, CPU 0 unless the row says
    otherwise), stopped on exit; a SQLite row gets a fresh database file, removed
    afterwards."""
    with tempfile.TemporaryDirectory(prefix="drifttrio-small-rooms-") as tmp:
        argv = [
            "sqlite:///" + str(Path(tmp) / "bench.db") if a.startswith("sqlite:///") else a
            for a in argv
        ]
        try:
            proc, url = tp.start(argv, env, cpus, log)
        except RuntimeError as exc:
            raise ServerDidNotStart(str(exc)) from exc
        try:
            yield proc, url
        finally:
            tp.stop(proc)


def driver(url: str, mode: str, *options: object, cpus: int | str = 1) -> list[str]:
    argv = ["node", str(DRIVER), "--url", url, "--mode", mode]
    return tp.pinned(cpus, argv + [str(o) for o in options])


def cpu_split(pid: int) -> tuple[float, float]:
    """utime and stime of the process tree rooted at pid (all threads of every
    process: a supervisor and its workers too), in seconds: the server's own code,
    and the kernel's work for it (system calls, TCP). Each process's reaped
    children count too (cutime, cstime), so a worker that ended and was waited for
    within a window keeps its share."""
    user = system = 0
    for p in tp.tree(pid):
        try:
            stat = Path(f"/proc/{p}/stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()  # the name may hold spaces
        user += int(fields[11]) + int(fields[13])  # fields 14 and 16 of proc(5)
        system += int(fields[12]) + int(fields[14])  # fields 15 and 17
    return user / CLOCK_TICK, system / CLOCK_TICK


def own_cpu(pid: int) -> float:
    """utime + stime of one process (all its threads), in seconds: the driver's."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return float("nan")
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICK


def processes(pid: int) -> frozenset[int]:
    """The pids of the server's process tree (a reading's set, to compare)."""
    return frozenset(tp.tree(pid))


def tree_note(name: str, before: frozenset[int], after: frozenset[int]) -> int:
    """Says so (and returns 1) when the server's process tree changed within a
    window (a worker died or was started again): that run counts as failed."""
    if before == after:
        return 0
    print(
        f"    {name}: the server's processes changed within the window:"
        f" {sorted(before)} -> {sorted(after)}",
        file=sys.stderr,
    )
    return 1


def cpu_seconds(pid: int) -> float:
    """utime + stime of the process tree rooted at pid (all threads), in seconds."""
    return sum(cpu_split(pid))


def settle(pid: int, limit: float = 10.0) -> None:
    """Waits until the server's CPU time stops growing (the last phase's connections
    are cleaned up), so a phase's reading holds only its own work."""
    deadline = time.monotonic() + limit
    before = cpu_seconds(pid)
    while time.monotonic() < deadline:
        time.sleep(0.2)
        now = cpu_seconds(pid)
        if now - before <= 1.5 / CLOCK_TICK:
            return
        before = now


def run_phased(
    argv: list[str], at_ready: Callable[[int], None], at_done: Callable[[int], None]
) -> dict[str, Any] | None:
    """Runs a driver that stops at ``ready`` and ``done`` for a reading each (given
    the driver's pid)."""
    gen = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    assert gen.stdin is not None
    assert gen.stdout is not None
    result: dict[str, Any] | None = None
    try:
        for phase, reading in (("ready", at_ready), ("done", at_done)):
            line = gen.stdout.readline()
            if not line:
                print(f"    driver ended before {phase!r}", file=sys.stderr)
                return None
            result = json.loads(line)
            reading(gen.pid)
            gen.stdin.write(b"next\n")
            gen.stdin.flush()
    finally:
        gen.stdin.close()
        try:
            gen.wait(timeout=120)
        except subprocess.TimeoutExpired:
            gen.kill()
            gen.wait()
    return result


def run_rooms(
    proc: subprocess.Popen[bytes],
    url: str,
    shape: tuple[int, int],
    args: argparse.Namespace,
    cpus: int | str = 1,
) -> dict[str, Any] | None:
    rooms, subscribers = shape
    argv = driver(
        url,
        "rooms",
        "--rooms",
        rooms,
        "--subscribers",
        subscribers,
        "--window",
        args.window,
        "--seconds",
        args.seconds,
        cpus=cpus,
    )
    settle(proc.pid)  # the last phase's connections are cleaned up
    # The server's CPU time at the start and the end of the measured window: a
    # server at 100% of its core is the bottleneck, one below it waits on the rest.
    gen = subprocess.Popen(argv, stdout=subprocess.PIPE)
    assert gen.stdout is not None
    cpu: dict[str, tuple[float, float]] = {}
    own: dict[str, float] = {}
    pids: dict[str, frozenset[int]] = {}
    result: dict[str, Any] | None = None
    for line in gen.stdout:
        message = json.loads(line)
        if message.get("phase") in ("start", "stop"):
            phase = message["phase"]
            pids[phase] = processes(proc.pid)
            cpu[phase] = cpu_split(proc.pid)
            own[phase] = own_cpu(gen.pid)
        else:
            result = message
    if gen.wait() != 0 or result is None or len(cpu) != 2:
        print(f"    driver failed (exit status {gen.returncode})", file=sys.stderr)
        return None
    result["tree_changed"] = tree_note(shape_label(shape), pids["start"], pids["stop"])
    result["server_processes"] = len(pids["stop"])
    user = cpu["stop"][0] - cpu["start"][0]
    system = cpu["stop"][1] - cpu["start"][1]
    result["server_cpu_percent"] = 100 * (user + system) / result["seconds"]
    result["driver_cpu_percent"] = 100 * (own["stop"] - own["start"]) / result["seconds"]
    # Per push (a push reaches M subscribers and comes back to its publisher).
    pushes = result["per_second"] * result["seconds"] / subscribers
    result["user_us_per_push"] = 1e6 * user / pushes if pushes else None
    result["sys_us_per_push"] = 1e6 * system / pushes if pushes else None
    # Per message delivered to a subscriber (what per_second counts).
    delivered = result["per_second"] * result["seconds"]
    result["user_us_per_message"] = 1e6 * user / delivered if delivered else None
    result["sys_us_per_message"] = 1e6 * system / delivered if delivered else None
    result["us_per_message"] = 1e6 * (user + system) / delivered if delivered else None
    return result


def run_lifecycle(
    proc: subprocess.Popen[bytes], url: str, args: argparse.Namespace, cpus: int | str = 1
) -> dict[str, Any] | None:
    argv = driver(
        url,
        "lifecycle",
        "--connections",
        args.lifecycle_connections,
        "--concurrency",
        args.lifecycle_concurrency,
        cpus=cpus,
    )
    cpu: list[float] = []
    own: list[float] = []
    pids: list[frozenset[int]] = []

    def reading(driver_pid: int) -> None:
        settle(proc.pid)
        pids.append(processes(proc.pid))
        cpu.append(cpu_seconds(proc.pid))
        own.append(own_cpu(driver_pid))

    result = run_phased(argv, reading, reading)
    if result is None or len(cpu) != 2:
        return None
    result["tree_changed"] = tree_note("lifecycle", pids[0], pids[1])
    result["server_processes"] = len(pids[1])
    completed = max(1, result["completed"])
    result["cpu_seconds"] = cpu[1] - cpu[0]
    result["cpu_ms_per_connection"] = 1000 * result["cpu_seconds"] / completed
    result["driver_cpu_ms_per_connection"] = 1000 * (own[1] - own[0]) / completed
    return result


def run_storm(
    proc: subprocess.Popen[bytes], url: str, args: argparse.Namespace, cpus: int | str = 1
) -> dict[str, Any] | None:
    argv = driver(
        url,
        "storm",
        "--connections",
        args.storm_connections,
        "--concurrency",
        args.storm_concurrency,
        "--rooms",
        args.storm_rooms,
        cpus=cpus,
    )
    rss: list[int] = []
    cpu: list[float] = []
    own: list[float] = []
    pids: list[frozenset[int]] = []

    def reading(driver_pid: int) -> None:
        settle(proc.pid)
        pids.append(processes(proc.pid))
        rss.append(tp.rss_kib(proc.pid))
        cpu.append(cpu_seconds(proc.pid))
        own.append(own_cpu(driver_pid))

    result = run_phased(argv, reading, reading)
    if result is None or len(rss) != 2:
        return None
    result["tree_changed"] = tree_note("storm", pids[0], pids[1])
    result["server_processes"] = len(pids[1])
    result["kib_per_connection"] = (rss[1] - rss[0]) / max(1, result["open"])
    # The server's CPU from the ready line to the settled end (its cleanup of the
    # handshakes included), per connection opened; the driver's over the same span,
    # as a share of one core over the storm's own duration.
    result["cpu_ms_per_connection"] = 1000 * (cpu[1] - cpu[0]) / max(1, result["completed"])
    result["driver_cpu_percent"] = 100 * (own[1] - own[0]) / max(1e-9, result["seconds"])
    return result


def measure(
    proc: subprocess.Popen[bytes],
    url: str,
    name: str,
    measures: list[str],
    args: argparse.Namespace,
    got: dict[str, dict[str, Any] | None],
) -> None:
    """One server's round: each measure in order, results into ``got`` by phase.

    The storm comes first, on the fresh process, so its RSS growth is not hidden by
    memory the other phases freed (as throughput.py measures memory first)."""
    cpus = tp.cores(name)[1]  # the driver's
    if "storm" in measures:
        r = got["storm"] = run_storm(proc, url, args, cpus)
        if r:
            print(
                f"  {name:<55} storm       {r['per_second']:>8,.0f} conn/s"
                f"  {r['kib_per_connection']:.1f} KiB/conn  {r['cpu_ms_per_connection']:.2f} ms"
                f" CPU/conn  driver CPU {r['driver_cpu_percent']:.0f}%  failed {r['failed']}"
                + (f" closed {len(r['closed'])}" if r["closed"] else "")
                + (f"  e.g. {r['errors']}" if r["errors"] else ""),
                file=sys.stderr,
            )
    if "rooms" in measures:
        for shape in args.shapes:
            r = got[shape_label(shape)] = run_rooms(proc, url, shape, args, cpus)
            if r:
                print(
                    f"  {name:<55} {shape_label(shape):<11} {r['per_second']:>8,.0f} msg/s"
                    # (no echo at all in the window: a server that stopped answering)
                    f"  echo p50 {r['p50_ms'] or float('nan'):.1f}"
                    f" p99 {r['p99_ms'] or float('nan'):.1f} ms"
                    f"  server CPU {r['server_cpu_percent']:.0f}%"
                    f" ({r['user_us_per_push'] or 0:.0f} + {r['sys_us_per_push'] or 0:.0f} us/push)"
                    f"  driver CPU {r['driver_cpu_percent']:.0f}%"
                    f"  lost {r['lost']} reordered {r['reordered']}"
                    + (f" closed {r['closed']}" if r["closed"] else ""),
                    file=sys.stderr,
                )
    if "lifecycle" in measures:
        r = got["lifecycle"] = run_lifecycle(proc, url, args, cpus)
        if r:
            print(
                f"  {name:<55} lifecycle   {r['cpu_ms_per_connection']:>8.2f} ms CPU/conn"
                f"  {r['per_second']:,.0f} conn/s"
                f"  driver {r['driver_cpu_ms_per_connection']:.2f} ms CPU/conn"
                f"  failed {r['failed']}"
                f" lost {r['lost']} reordered {r['reordered']}"
                + (f"  e.g. {r['errors']}" if r["errors"] else ""),
                file=sys.stderr,
            )


def problems(result: dict[str, Any] | None) -> int:
    """What verification counts against one driver run: a failed run is one."""
    if result is None:
        return 1
    counted: int = (
        result.get("tree_changed", 0)
        + result.get("lost", 0)
        + result.get("reordered", 0)
        + result.get("failed", 0)
        + len(result.get("closed", []))
    )
    return counted


def values(entries: list[dict[str, Any] | None], key: str) -> list[float]:
    return [e[key] for e in entries if e is not None and e.get(key) is not None]


def cell(
    entries: list[dict[str, Any] | None], base: list[dict[str, Any] | None], key: str, spec: str
) -> str:
    got = values(entries, key)
    if not got:
        return "failed" if entries else "n/a"
    med = statistics.median(got)
    ref = values(base, key)
    ratio = f" ({med / statistics.median(ref):.2f}x)" if ref and statistics.median(ref) else ""
    failed = len(entries) - len(got)
    return f"{med:{spec}}{ratio} {tp.fmt_range(got, spec)}" + (
        f" {failed} failed" if failed else ""
    )


def latency_cell(entries: list[dict[str, Any] | None], with_cpu: bool = True) -> str:
    """p50 / p99 in ms (medians of the rounds), and the server's CPU share if measured."""
    p50, p99 = values(entries, "p50_ms"), values(entries, "p99_ms")
    if not p50 or not p99:
        return "failed" if entries else "n/a"
    text = f"{statistics.median(p50):.1f} / {statistics.median(p99):.1f}"
    cpu = values(entries, "server_cpu_percent") if with_cpu else []
    return text + (f", {statistics.median(cpu):.0f}%" if cpu else "")


def drifttrio_source(env: dict[str, str]) -> str:
    """Where the servers import drifttrio from (``PYTHONPATH`` may point at another
    checkout than the one the harness lives in)."""
    try:
        out = subprocess.run(
            [sys.executable, "-c", "import drifttrio; print(drifttrio.__file__)"],
            env=env,
            capture_output=True,
            text=True,
            check=True,
        )
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return str(Path(out.stdout.strip()).parent.parent)


def print_workers(
    args: argparse.Namespace,
    rooms: dict[str, dict[tuple[int, int], list[dict[str, Any] | None]]],
    life: dict[str, list[dict[str, Any] | None]],
    storm: dict[str, list[dict[str, Any] | None]],
    measures: list[str],
) -> None:
    """``--workers 1`` and ``--workers 2`` side by side: medians [min-max], and the
    ratio of medians with the range of the same-round ratios; then the handoff's
    cost, lifecycle CPU per connection with two workers minus with one."""
    one, two = WORKERS_1, WORKERS_2
    print(
        f"\n### Workers: one process against two\n\n`drifttrio serve --workers 1` and "
        f"`--workers 2` (a supervisor and two worker processes), the server and the driver "
        f"all on cores {tp.cores(two)[0]}; the server's CPU is its whole process tree "
        f"(user + sys); median [min-max] of {args.runs} runs; 2 / 1 is the ratio of the "
        f"medians [range of the same-round ratios]\n"
    )
    print("| measure | --workers 1 | --workers 2 | 2 / 1 |\n|---|---|---|---|")

    def line(
        label: str,
        a: list[dict[str, Any] | None],
        b: list[dict[str, Any] | None],
        key: str,
        spec: str,
    ) -> None:
        va, vb = values(a, key), values(b, key)
        if not va or not vb:
            print(f"| {label} | n/a | n/a | n/a |")
            return
        ma, mb = statistics.median(va), statistics.median(vb)
        rounds = tp.per_round_ratios(
            [e.get(key) if e else None for e in b], [e.get(key) if e else None for e in a]
        )
        ratio = f"{mb / ma:.2f}x {tp.fmt_range(rounds, '.2f')}" if ma and rounds else "n/a"
        print(
            f"| {label} | {ma:{spec}} {tp.fmt_range(va, spec)} | "
            f"{mb:{spec}} {tp.fmt_range(vb, spec)} | {ratio} |"
        )

    def split(entries: list[dict[str, Any] | None], what: str) -> str:
        user = values(entries, f"user_us_per_{what}")
        system = values(entries, f"sys_us_per_{what}")
        if not user or not system:
            return "n/a"
        return f"{statistics.median(user):.0f} + {statistics.median(system):.0f}"

    if "rooms" in measures:
        for s in args.shapes:
            a, b = rooms[one][s], rooms[two][s]
            label = shape_label(s)
            line(f"{label}: msg/s", a, b, "per_second", ",.0f")
            line(f"{label}: server CPU per delivered message, µs", a, b, "us_per_message", ".1f")
            print(
                f"| {label}: the same, user + sys µs | {split(a, 'message')} | "
                f"{split(b, 'message')} | |"
            )
            print(
                f"| {label}: server CPU per push, user + sys µs | {split(a, 'push')} | "
                f"{split(b, 'push')} | |"
            )
            line(f"{label}: server CPU, % of one core", a, b, "server_cpu_percent", ".0f")
            line(f"{label}: driver CPU, % of one core", a, b, "driver_cpu_percent", ".0f")
            line(f"{label}: push -> own echo p50, ms", a, b, "p50_ms", ".1f")
            line(f"{label}: push -> own echo p99, ms", a, b, "p99_ms", ".1f")
    if "lifecycle" in measures:
        a, b = life[one], life[two]
        line("lifecycle: server CPU per connection, ms", a, b, "cpu_ms_per_connection", ".2f")
        line("lifecycle: connections/s", a, b, "per_second", ",.0f")
        line(
            "lifecycle: driver CPU per connection, ms", a, b, "driver_cpu_ms_per_connection", ".2f"
        )
    if "storm" in measures:
        a, b = storm[one], storm[two]
        n = f"{args.storm_connections:,}"
        line(f"storm ({n}): connections/s", a, b, "per_second", ",.0f")
        line(f"storm ({n}): server CPU per connection, ms", a, b, "cpu_ms_per_connection", ".2f")
        line(f"storm ({n}): driver CPU, % of one core", a, b, "driver_cpu_percent", ".0f")
        line(f"storm ({n}): open + get p50, ms", a, b, "p50_ms", ".1f")
        line(f"storm ({n}): RSS per connection, KiB", a, b, "kib_per_connection", ".1f")
        for name, entries in ((one, a), (two, b)):
            failed = sum(e["failed"] + len(e["closed"]) for e in entries if e is not None)
            if failed:
                print(f"| storm ({n}): failed, {name} | {failed:,} | | |")
    counts = sorted(
        {
            (name, e["server_processes"])
            for name in (one, two)
            for group in (
                *(rooms[name][s] for s in args.shapes),
                life[name],
                storm[name],
            )
            for e in group
            if e is not None and "server_processes" in e
        }
    )
    if counts:
        shown = ", ".join(f"{n.split(' (')[0]}: {c}" for n, c in counts)
        print(f"\nProcesses in the server's tree at the readings: {shown}.")
    if "lifecycle" in measures:
        diffs = [
            round(y - x, 6) + 0.0  # (no "-0.000")
            for x, y in zip(
                [e.get("cpu_ms_per_connection") if e else None for e in life[one]],
                [e.get("cpu_ms_per_connection") if e else None for e in life[two]],
                strict=False,
            )
            if x is not None and y is not None
        ]
        if diffs:
            med = statistics.median(diffs)
            print(
                f"\nHandoff cost: lifecycle server CPU per connection, --workers 2 minus "
                f"--workers 1, same round: {med:+.3f} ms (median) {tp.fmt_range(diffs, '+.3f')};"
                f" about half the connections are accepted by the worker that does not own "
                f"their room, so about {2 * med:+.3f} ms per connection handed over "
                f"(the supervisor and the second worker's own upkeep included)."
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1 round, smaller phases (~2 min)")
    parser.add_argument("--runs", type=int, help="rounds (each server once per round); 3")
    parser.add_argument("--seconds", type=float, help="seconds per rooms cell, after 1 s warmup; 3")
    parser.add_argument("--only", nargs="*", help="substrings of server names to run")
    parser.add_argument(
        "--measure", nargs="+", choices=MEASURES, default=list(MEASURES), help="what to measure"
    )
    parser.add_argument(
        "--shapes",
        nargs="+",
        type=parse_shape,
        default=[(100, 3), (500, 1)],
        metavar="ROOMSxM",
        help="rooms: ROOMS rooms of M subscribers + 1 publisher; 100x3 500x1",
    )
    parser.add_argument("--window", type=int, default=1, help="rooms: pushes in flight per room")
    parser.add_argument(
        "--lifecycle-connections", type=int, help="lifecycle: connections in all; 1000"
    )
    parser.add_argument(
        "--lifecycle-concurrency", type=int, default=50, help="lifecycle: at once (one room each)"
    )
    parser.add_argument("--storm-connections", type=int, help="storm: connections; 10000")
    parser.add_argument("--storm-concurrency", type=int, default=500, help="storm: opening at once")
    parser.add_argument("--storm-rooms", type=int, default=100, help="storm: rooms spread over")
    parser.add_argument(
        "--server-logs",
        type=Path,
        metavar="DIR",
        help="keep each server's stderr in DIR/ROW.log (appended; thrown away without it)",
    )
    args = parser.parse_args()
    for key, value in (QUICK if args.quick else FULL).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    measures = [m for m in MEASURES if m in args.measure]

    if not (HERE / "node_modules" / "ws").exists():
        sys.exit("run `npm install --prefix benchmarks` first")
    if args.only:
        rows = {**tp.SERVERS, **tp.ABLATION_ROWS, **tp.WORKER_ROWS}
        servers = {k: v for k, v in rows.items() if any(o in k for o in args.only)}
    else:
        servers = {k: tp.SERVERS[k] for k in DEFAULT_ROWS}
    if not servers or not measures:
        sys.exit("nothing to run")
    if not shutil.which("taskset"):
        print("note: taskset not found, server and driver are not pinned", file=sys.stderr)
    # The storm keeps every connection open: a socket each in the driver and the server.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = args.storm_connections + args.storm_rooms + 1024
    if soft != resource.RLIM_INFINITY and soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, wanted), hard))
        if hard != resource.RLIM_INFINITY and hard < wanted:
            print(
                f"note: open files limited to {hard}, the storm needs about {wanted}",
                file=sys.stderr,
            )
    env = server_env()
    source = drifttrio_source(env)

    started = datetime.datetime.now().astimezone()
    wall = time.monotonic()
    state_start = tp.git_state()
    load_start = os.getloadavg()
    # results[server]: one entry per round (None when that run failed).
    rooms: dict[str, dict[tuple[int, int], list[dict[str, Any] | None]]] = {
        n: {s: [] for s in args.shapes} for n in servers
    }
    life: dict[str, list[dict[str, Any] | None]] = {n: [] for n in servers}
    storm: dict[str, list[dict[str, Any] | None]] = {n: [] for n in servers}
    not_started: list[str] = []
    for round_ in range(args.runs):
        print(f"round {round_ + 1}/{args.runs}", file=sys.stderr)
        for name, argv in servers.items():
            got: dict[str, dict[str, Any] | None] = {}
            try:
                log = None
                if args.server_logs:
                    args.server_logs.mkdir(parents=True, exist_ok=True)
                    log = args.server_logs / (re.sub(r"[^A-Za-z0-9.-]+", "_", name) + ".log")
                    with log.open("a") as out:
                        out.write(f"--- round {round_ + 1}: {shlex.join(argv)}\n")
                with running(argv, env, tp.cores(name)[0], log) as (proc, url):
                    measure(proc, url, name, measures, args, got)
            except ServerDidNotStart as exc:
                print(f"  {name:<55} did not start: {exc}", file=sys.stderr)
                not_started.append(name)
            # A measure that ran gets an entry per round, None when it failed.
            if "rooms" in measures:
                for shape in args.shapes:
                    rooms[name][shape].append(got.get(shape_label(shape)))
            if "lifecycle" in measures:
                life[name].append(got.get("lifecycle"))
            if "storm" in measures:
                storm[name].append(got.get("storm"))
    load_end = os.getloadavg()
    state_end = tp.git_state()
    minutes = (time.monotonic() - wall) / 60

    names = list(servers)
    first = names[0]
    print()
    print(
        f"{started:%Y-%m-%d %H:%M %Z}, commit {state_start}"
        + (f" (at the end: {state_end})" if state_end != state_start else "")
        + f", {platform.machine()} {os.cpu_count()} CPUs, load average {load_start[0]:.2f}"
        f" at start, {load_end[0]:.2f} at end, {minutes:.1f} min"
    )
    print("python benchmarks/small_rooms.py " + shlex.join(sys.argv[1:]))
    print(f"servers' drifttrio from {source}")

    if "rooms" in measures:
        print(
            f"\n### Many small rooms\n\nmessages delivered per second to the subscribers "
            f"(echoes not counted); ROOMSx(1 publisher + M subscribers), {args.window} push in "
            f"flight per publisher; {args.runs} runs x {args.seconds:g} s; median (ratio to "
            f"{first!r}) [min-max]; push -> own echo p50 / p99 in ms and the server's CPU "
            f"over the window in % of one core (medians); "
            f"lost / reordered summed over all cells (must be 0)\n"
        )
        head = [f"{shape_label(s)} msg/s | echo ms, server CPU" for s in args.shapes]
        print("| server | " + " | ".join(head) + " | lost / reordered |")
        print("|" + "---|" * (2 * len(args.shapes) + 2))
        for name in names:
            cells = []
            for s in args.shapes:
                cells.append(cell(rooms[name][s], rooms[first][s], "per_second", ",.0f"))
                cells.append(latency_cell(rooms[name][s]))
            runs = [r for s in args.shapes for r in rooms[name][s] if r is not None]
            check = f"{sum(r['lost'] for r in runs)} / {sum(r['reordered'] for r in runs)}"
            closed = [c for r in runs for c in r["closed"]]
            if closed:
                check += f", {len(closed)} closed by the server (codes {sorted(set(closed))})"
            other = sum(r["other"] for r in runs)
            if other:
                check += f", {other} unexpected messages"
            print(f"| {name} | " + " | ".join(cells) + f" | {check} |")

    if "rooms" in measures:
        print(
            "\n### Server CPU per push\n\nthe server's CPU time over the rooms window per push "
            "(a push reaches M subscribers and its publisher's echo), user (the server's own "
            "code) + system (the kernel: system calls, loopback TCP), in µs (medians; lower "
            "is better)\n"
        )
        print(
            "| server | "
            + " | ".join(f"{shape_label(s)} user + sys µs" for s in args.shapes)
            + " |"
        )
        print("|" + "---|" * (len(args.shapes) + 1))
        for name in names:
            cells = []
            for s in args.shapes:
                user = values(rooms[name][s], "user_us_per_push")
                system = values(rooms[name][s], "sys_us_per_push")
                cells.append(
                    f"{statistics.median(user):.0f} + {statistics.median(system):.0f}"
                    if user and system
                    else "n/a"
                )
            print(f"| {name} | " + " | ".join(cells) + " |")

    if "lifecycle" in measures:
        print(
            f"\n### Connection lifecycle\n\n{args.lifecycle_connections} times: connect, `get`, "
            f"push, echo, close; {args.lifecycle_concurrency} at once; the server's CPU time "
            f"(process tree, utime + stime) over the phase per connection, and connections "
            f"completed per second; median of {args.runs} runs (ratio to {first!r}) [min-max]\n"
        )
        print(
            "| server | server CPU ms per connection | connections/s | failed |\n|---|---|---|---|"
        )
        for name in names:
            failed = sum(e["failed"] for e in life[name] if e is not None)
            print(
                f"| {name} | {cell(life[name], life[first], 'cpu_ms_per_connection', '.2f')} | "
                f"{cell(life[name], life[first], 'per_second', ',.0f')} | {failed} |"
            )

    if "storm" in measures:
        print(
            f"\n### Connection storm\n\n{args.storm_connections:,} clients opening a WebSocket "
            f"to one of {args.storm_rooms} rooms and sending `get` (answered), at most "
            f"{args.storm_concurrency} opening at once, all kept open: completed per second, "
            f"open + `get` p50 / p99 in ms (medians), the server's RSS growth per open "
            f"connection; median of {args.runs} runs (ratio to {first!r}) [min-max]\n"
        )
        print(
            "| server | connections/s | open + get ms | KiB per connection | failed (errors) |\n"
            "|---|---|---|---|---|"
        )
        for name in names:
            done = [e for e in storm[name] if e is not None]
            failed = sum(e["failed"] + len(e["closed"]) for e in done)
            errors = sorted({error for e in done for error in e["errors"]})
            print(
                f"| {name} | {cell(storm[name], storm[first], 'per_second', ',.0f')} | "
                f"{latency_cell(storm[name])} | "
                f"{cell(storm[name], [], 'kib_per_connection', '.1f')} | {failed:,}"
                + (f" ({'; '.join(errors)})" if errors else "")
                + " |"
            )

    if WORKERS_1 in servers and WORKERS_2 in servers:
        print_workers(args, rooms, life, storm, measures)

    # Goals: a ratio of medians, with the range of the round-by-round ratios.
    goals: list[tuple[str, str, str, bool | None]] = []

    def ratio_goal(
        label: str,
        a: list[dict[str, Any] | None],
        b: list[dict[str, Any] | None],
        key: str,
        target: str,
        ok: Callable[[float], bool],
    ) -> None:
        va, vb = values(a, key), values(b, key)
        if not va or not vb:
            goals.append((label, "n/a", target, None))
            return
        ratio = statistics.median(va) / statistics.median(vb)
        rounds = tp.per_round_ratios(
            [e[key] if e else None for e in a], [e[key] if e else None for e in b]
        )
        goals.append((label, f"{ratio:.2f}x " + tp.fmt_range(rounds, ".2f"), target, ok(ratio)))

    def compare(
        label: str,
        a: str,
        b: str,
        results: dict[str, list[dict[str, Any] | None]],
        key: str,
        target: str,
        ok: Callable[[float], bool],
    ) -> None:
        absent = [n for n in (a, b) if n not in servers]
        if absent:
            goals.append((label, f"n/a (not run: {', '.join(absent)})", target, None))
        else:
            ratio_goal(label, results[a], results[b], key, target, ok)

    if "rooms" in measures:
        for s in args.shapes:
            compare(
                f"many small rooms {shape_label(s)}, {args.window} in flight: "
                "drifttrio serve (memory) / websockets relay",
                DRIFTTRIO,
                WEBSOCKETS,
                {n: rooms[n][s] for n in servers},
                "per_second",
                f"≥ {ROOMS_GOAL:g}x (aim {ROOMS_AIM:g}x)",
                lambda r: r >= ROOMS_GOAL,
            )
        for s in args.shapes:
            compare(
                f"many small rooms {shape_label(s)}: drifttrio SQLite / memory",
                SQLITE,
                DRIFTTRIO,
                {n: rooms[n][s] for n in servers},
                "per_second",
                f"≥ {SQLITE_GOAL:g}x",
                lambda r: r >= SQLITE_GOAL,
            )
    if "lifecycle" in measures:
        compare(
            "server CPU per connect + get + push + close: drifttrio serve / websockets relay",
            DRIFTTRIO,
            WEBSOCKETS,
            life,
            "cpu_ms_per_connection",
            f"≤ {LIFECYCLE_GOAL:g}x",
            lambda r: r <= LIFECYCLE_GOAL,
        )
    if "storm" in measures:
        compare(
            f"{args.storm_connections:,}-client storm, connections/s: "
            "drifttrio serve / websockets relay",
            DRIFTTRIO,
            WEBSOCKETS,
            storm,
            "per_second",
            f"≥ {STORM_GOAL:g}x",
            lambda r: r >= STORM_GOAL,
        )
    if WORKERS_1 in servers and WORKERS_2 in servers:
        within = f"within {WORKERS_CPU_GOAL:.0%} (0.90-1.10x)"

        def near(r: float) -> bool:
            return abs(r - 1) <= WORKERS_CPU_GOAL

        if "rooms" in measures:
            for s in args.shapes:
                ratio_goal(
                    f"server CPU per delivered message {shape_label(s)}: --workers 2 / 1",
                    rooms[WORKERS_2][s],
                    rooms[WORKERS_1][s],
                    "us_per_message",
                    within,
                    near,
                )
        if "lifecycle" in measures:
            ratio_goal(
                "server CPU per connection lifecycle: --workers 2 / 1",
                life[WORKERS_2],
                life[WORKERS_1],
                "cpu_ms_per_connection",
                within,
                near,
            )
    if "rooms" in measures and args.shapes:
        s = args.shapes[0]
        for name in names:
            goals.append(
                (
                    f"push -> own echo p50 / p99 ms under {shape_label(s)}: {name}",
                    latency_cell(rooms[name][s], with_cpu=False),
                    "reported",
                    None,
                )
            )
    # A storm's failed connections are a result (an overloaded server sheds them),
    # shown in its table; only a storm run that failed as a whole counts here.
    every = [
        *(r for n in names for s in args.shapes for r in rooms[n][s]),
        *(r for n in names for r in life[n]),
    ]
    storms = [r for n in names for r in storm[n]]
    bad = (
        sum(problems(r) for r in every)
        + storms.count(None)
        + sum(r.get("tree_changed", 0) for r in storms if r is not None)
    )
    goals.append(
        (
            "verification: lost + reordered + failed or server-closed connections"
            " (rooms, lifecycle) + failed runs + runs whose server processes changed",
            f"{bad} over {len(every) + len(storms)} runs"
            + (f" (did not start: {', '.join(sorted(set(not_started)))})" if not_started else ""),
            "= 0",
            bad == 0,
        )
    )

    tp.print_goals(goals)
    if bad:
        sys.exit(1)


if __name__ == "__main__":
    main()
