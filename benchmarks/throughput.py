"""Side by side: fan-out throughput, ping latency and idle memory, with the goals checked.

Starts each server as its own process pinned to CPU 0 and drives it with the Node
load generator (``loadgen.js``) pinned to CPU 1. Each round starts every server
once, in turn (so machine noise hits them alike), and on that fresh process
measures, in this order:

- memory: RSS growth per idle connection (CONNECTIONS connections spread over
  ROOMS live rooms, each sent a ``get`` and answered), from ``/proc/PID/status``;
- latency: one connection, sequential ping -> pong round trips, p50 and p99;
- throughput: one room, one publisher keeping WINDOW pushes in flight, M
  subscribers, messages delivered per second; every member must see seqs
  1, 2, 3, ... with no gap, duplicate or reordering (lost / reordered must be 0).

Then it prints one table per measure (medians of the rounds, ratio to the first
row, [min-max]) and a goals section with PASS/FAIL.

    python benchmarks/throughput.py                 # defaults: M=1,10; 3 runs x 5 s
    python benchmarks/throughput.py --subscribers 1 10 100 --runs 3 --seconds 4
    python benchmarks/throughput.py --only "own transport" websockets --measure latency

Needs ``npm install --prefix benchmarks`` (the ``ws`` package) and ``taskset``
(util-linux) for pinning; without taskset it runs unpinned and says so. The TLS
row needs ``trustme`` (the ``test`` extra): its certificate is made at start,
and the load generator trusts it through ``NODE_EXTRA_CA_CERTS``.
"""

from __future__ import annotations

import argparse
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
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
URL = re.compile(rb"(https?://127\.0\.0\.1:\d+)")

DRIFTTRIO = "drifttrio serve (own transport)"
DRIFTTRIO_TLS = "drifttrio serve (own transport, TLS)"
DRIFTTRIO_ASGI = "hypercorn -k trio drifttrio.asgi:app"
ASGI_RELAY = "hypercorn -k trio asgi_relay:app (minimal ASGI relay)"
WEBSOCKETS = "minimal relay on websockets (asyncio)"
NODE = "minimal relay on Node ws (yardstick)"
#: drifttrio's shape (a reader task, a room task, a memory channel) with nothing else.
TRIO_ROOM = "minimal relay on trio, reader + room task"
WEBHOOK_ROW = "drifttrio serve (own transport, push webhook)"

DRIFTTRIO_SERVE = [sys.executable, "-m", "drifttrio.cli", "serve", "--port", "0"]
#: The TLS row's files, made by make_certificate() when the row runs.
TLS_DIR = Path(tempfile.gettempdir()) / "drifttrio-bench-tls"
SERVERS: dict[str, list[str]] = {
    DRIFTTRIO: [*DRIFTTRIO_SERVE, "--store", "memory"],
    DRIFTTRIO_TLS: [
        *DRIFTTRIO_SERVE,
        "--store",
        "memory",
        "--certfile",
        str(TLS_DIR / "cert.pem"),
        "--keyfile",
        str(TLS_DIR / "key.pem"),
    ],
    "drifttrio serve (own transport, SQLite)": [
        *DRIFTTRIO_SERVE,
        "--store",
        "sqlite:///" + str(Path(os.environ.get("TMPDIR", "/tmp")) / "drifttrio-bench.db"),
    ],
    "drifttrio serve --transport hypercorn": [
        *DRIFTTRIO_SERVE,
        "--store",
        "memory",
        "--transport",
        "hypercorn",
    ],
    DRIFTTRIO_ASGI: [
        sys.executable,
        "-m",
        "hypercorn",
        "-k",
        "trio",
        "--bind",
        "127.0.0.1:0",
        "drifttrio.asgi:app",
    ],
    ASGI_RELAY: [
        sys.executable,
        "-m",
        "hypercorn",
        "-k",
        "trio",
        "--bind",
        "127.0.0.1:0",
        str(HERE / "asgi_relay") + ":app",
    ],
    # The cost of server-side logic (issue 21): pass-through hooks (hook_rows.py).
    "drifttrio serve (own transport, sync on_push hook)": [
        *DRIFTTRIO_SERVE,
        "--store",
        "memory",
        "--hooks",
        "hook_rows:SyncPush",
    ],
    "drifttrio serve (own transport, async on_push hook)": [
        *DRIFTTRIO_SERVE,
        "--store",
        "memory",
        "--hooks",
        "hook_rows:AsyncPush",
    ],
    "drifttrio serve (own transport, decide hook)": [
        *DRIFTTRIO_SERVE,
        "--store",
        "memory",
        "--hooks",
        "hook_rows:Decide",
    ],
    WEBHOOK_ROW: [*DRIFTTRIO_SERVE, "--store", "memory"],
    WEBSOCKETS: [sys.executable, str(HERE / "websockets_relay.py")],
    "minimal relay on trio-websocket": [sys.executable, str(HERE / "trio_websocket_relay.py")],
    TRIO_ROOM: [sys.executable, str(HERE / "trio_room_relay.py")],
    NODE: ["node", str(HERE / "minimal_relay.js")],
}


def _ablation(stubs: str) -> list[str]:
    """``drifttrio serve`` on the memory store with ``stubs`` stubbed (ablation.py)."""
    serve = [*DRIFTTRIO_SERVE[3:], "--store", "memory"]
    return [sys.executable, str(HERE / "ablation.py"), "--stub", stubs, *serve]


#: drifttrio serve with parts of its per-message work stubbed out (ablation.py):
#: where a push's time goes. Only run when picked with --only (say ``stubbed``),
#: beside DRIFTTRIO and TRIO_ROOM.
ABLATION_ROWS: dict[str, list[str]] = {
    "drifttrio serve, stubbed: metrics, decode, limits": _ablation("metrics,decode,limits"),
    "drifttrio serve, stubbed: room step": _ablation("room"),
    "drifttrio serve, stubbed: all four": _ablation("metrics,decode,limits,room"),
    "drifttrio serve, sketch: the room's step in the reader": _ablation("inline"),
}

WORKERS_1 = "drifttrio serve --workers 1 (cores 0-1)"
WORKERS_2 = "drifttrio serve --workers 2 (cores 0-1)"
#: ``drifttrio serve --workers N`` (a supervisor and N worker processes, each room
#: owned by one worker, a connection handed to its room's owner once its request
#: names the room): one process against two. Only run when picked with --only (say
#: ``workers``). Both rows run on both cores, the load generator too (CORES): a
#: second worker needs a second core, and shares it with the load generator.
WORKER_ROWS: dict[str, list[str]] = {
    WORKERS_1: [*DRIFTTRIO_SERVE, "--store", "memory", "--workers", "1"],
    WORKERS_2: [*DRIFTTRIO_SERVE, "--store", "memory", "--workers", "2"],
}

#: The cores (``taskset -c`` lists) of a row's server and of its load generator,
#: for rows not on the usual 0 and 1.
CORES: dict[str, tuple[str, str]] = {WORKERS_1: ("0,1", "0,1"), WORKERS_2: ("0,1", "0,1")}


def cores(name: str) -> tuple[str, str]:
    """The cores of row ``name``'s server and of its load generator."""
    return CORES.get(name, ("0", "1"))


#: Rows that need a process of their own beside the server: its command line (it
#: prints its URL) and the variable that gives the server that URL.
WEBHOOK_SECRET = "benchmark-webhook-secret-0123456789"
SIDECARS: dict[str, tuple[list[str], dict[str, str]]] = {
    WEBHOOK_ROW: (
        [sys.executable, str(HERE / "webhook_backend.py")],
        {
            "DRIFTTRIO_WEBHOOK_URL": "{url}",
            "DRIFTTRIO_WEBHOOK_SECRET": WEBHOOK_SECRET,
            "DRIFTTRIO_WEBHOOK_HOOKS": "push",
        },
    ),
}

#: drifttrio serve (memory) / websockets relay, messages per second, per M: at least this.
THROUGHPUT_GOALS = {1: 0.7, 10: 1.5, 100: 2.0}
#: hypercorn -k trio drifttrio.asgi:app / minimal ASGI relay under hypercorn, any M: at least.
ASGI_GOAL = 1.3
#: drifttrio p50 round trip / websockets relay p50: at most.
LATENCY_GOAL = 1.5
#: drifttrio serve, KiB of RSS per idle subscribed connection: at most.
MEMORY_GOAL_KIB = 16.0

MEASURES = ("memory", "latency", "throughput")


def make_certificate() -> None:
    """A certificate for 127.0.0.1 from a throwaway CA (trustme), in TLS_DIR; the
    load generator (Node) is told to trust the CA."""
    import trustme

    ca = trustme.CA()
    issued = ca.issue_cert("127.0.0.1")
    TLS_DIR.mkdir(exist_ok=True)
    ca.cert_pem.write_to_path(str(TLS_DIR / "ca.pem"))
    issued.cert_chain_pems[0].write_to_path(str(TLS_DIR / "cert.pem"))
    issued.private_key_pem.write_to_path(str(TLS_DIR / "key.pem"))
    os.environ["NODE_EXTRA_CA_CERTS"] = str(TLS_DIR / "ca.pem")


def pinned(cpu: int | str, argv: list[str]) -> list[str]:
    """argv pinned to ``cpu`` (a core, or a ``taskset -c`` list such as ``0,1``)."""
    if shutil.which("taskset") and (os.cpu_count() or 1) > 1:
        return ["taskset", "-c", str(cpu), *argv]
    return argv


def server_env(args: argparse.Namespace) -> dict[str, str]:
    # One publisher at full speed is what the per-connection rate limit and the
    # per-address budgets exist to stop: switch them off to measure the relay itself.
    # The connection limits only move when --connections needs more than their defaults.
    path = os.pathsep.join(filter(None, [str(HERE), os.environ.get("PYTHONPATH")]))
    return {
        **os.environ,
        "PYTHONPATH": path,  # the hook rows' hooks (hook_rows.py)
        "DRIFTTRIO_STORE": "memory",
        "DRIFTTRIO_RATE_LIMIT_PER_SECOND": "0",
        "DRIFTTRIO_ADDRESS_MESSAGES_PER_SECOND": "0",
        "DRIFTTRIO_ADDRESS_BYTES_PER_SECOND": "0",
        "DRIFTTRIO_ADDRESS_NODES_PER_SECOND": "0",
        "DRIFTTRIO_NEW_ROOMS_PER_MINUTE": "0",
        "DRIFTTRIO_MAX_CONNECTIONS": str(max(10000, args.connections + args.rooms + 16)),
        "DRIFTTRIO_MAX_CONNECTIONS_PER_IP": str(max(1024, args.connections + args.rooms + 16)),
        "DRIFTTRIO_MAX_CONNECTIONS_PER_ROOM": str(
            max(1024, args.connections // max(1, args.rooms) + 16)
        ),
    }


def stop(proc: subprocess.Popen[bytes]) -> None:
    """Stop a server (or sidecar): SIGTERM, then SIGKILL after 30 s."""
    proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def start_sidecar(
    name: str, env: dict[str, str]
) -> tuple[subprocess.Popen[bytes] | None, dict[str, str]]:
    """The row's sidecar (pinned beside the load generator, on core 1), and the
    server environment that points at it."""
    if name not in SIDECARS:
        return None, env
    argv, settings = SIDECARS[name]
    proc = subprocess.Popen(pinned(1, argv), stdout=subprocess.PIPE)
    assert proc.stdout is not None
    found = URL.search(proc.stdout.readline())
    if found is None:
        proc.kill()
        sys.exit(f"{name}: its sidecar did not say where it listens")
    url = found.group(1).decode()
    return proc, {**env, **{k: v.format(url=url) for k, v in settings.items()}}


def start(
    argv: list[str], env: dict[str, str], cpus: int | str = 0, log: Path | None = None
) -> tuple[subprocess.Popen[bytes], str]:
    """Starts a server pinned to ``cpus`` and returns it with its URL; its stderr is
    drained into ``log`` (appended) or thrown away."""
    proc = subprocess.Popen(
        pinned(cpus, argv), stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, env=env
    )
    assert proc.stderr is not None
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        if not line:
            break
        if log is not None:
            with log.open("ab") as out:
                out.write(line)
        match = URL.search(line)
        if match:
            # Keep draining stderr so the server never blocks on a full pipe.
            if log is None:
                subprocess.Popen(["cat"], stdin=proc.stderr, stdout=subprocess.DEVNULL)
            else:
                with log.open("ab") as out:
                    subprocess.Popen(["cat"], stdin=proc.stderr, stdout=out)
            return proc, match.group(1).decode()
    proc.kill()
    raise RuntimeError(f"{argv[0]} did not report a listening address")


def loadgen(url: str, mode: str, *options: object, cpus: int | str = 1) -> list[str]:
    argv = ["node", str(HERE / "loadgen.js"), "--url", url, "--mode", mode]
    return pinned(cpus, argv + [str(o) for o in options])


def run_node(argv: list[str], timeout: float) -> dict[str, Any] | None:
    try:
        out = subprocess.run(argv, capture_output=True, check=True, timeout=timeout)
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as exc:
        stderr = (exc.stderr or b"").decode(errors="replace").strip()
        print(f"    load generator failed: {exc}\n    {stderr[-800:]}", file=sys.stderr)
        return None
    result: dict[str, Any] = json.loads(out.stdout.decode().strip().splitlines()[-1])
    return result


def run_throughput(
    url: str, m: int, args: argparse.Namespace, cpus: int | str = 1
) -> dict[str, Any] | None:
    argv = loadgen(
        url,
        "throughput",
        "--subscribers",
        m,
        "--seconds",
        args.seconds,
        "--window",
        args.window,
        cpus=cpus,
    )
    return run_node(argv, timeout=args.seconds + 120)


def run_latency(url: str, args: argparse.Namespace, cpus: int | str = 1) -> dict[str, Any] | None:
    argv = loadgen(
        url, "latency", "--pings", args.pings, "--warmup-pings", args.warmup_pings, cpus=cpus
    )
    return run_node(argv, timeout=180)


def tree(pid: int) -> list[int]:
    """pid and all its descendants (hypercorn serves from a worker child process,
    ``drifttrio serve --workers N`` from N), found by each process's parent in
    ``/proc/PID/stat`` (``/proc/PID/task/TID/children`` needs CONFIG_PROC_CHILDREN,
    which some kernels lack: without it only pid itself was found)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue  # ended meanwhile
        ppid = int(stat.rsplit(")", 1)[1].split()[1])  # the name may hold spaces
        children.setdefault(ppid, []).append(int(entry.name))
    pids = [pid]
    for p in pids:
        pids.extend(children.get(p, []))
    return pids


def rss_kib(pid: int) -> int:
    """VmRSS of the process tree rooted at pid, in KiB."""
    total = 0
    for p in tree(pid):
        try:
            status = Path(f"/proc/{p}/status").read_text()
        except OSError:
            continue
        match = re.search(r"^VmRSS:\s+(\d+) kB", status, re.M)
        if match:
            total += int(match.group(1))
    return total


def run_memory(
    proc: subprocess.Popen[bytes], url: str, args: argparse.Namespace, cpus: int | str = 1
) -> dict[str, Any] | None:
    argv = loadgen(url, "idle", "--connections", args.connections, "--rooms", args.rooms, cpus=cpus)
    gen = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    assert gen.stdin is not None
    assert gen.stdout is not None
    try:
        phases: dict[str, dict[str, Any]] = {}
        for phase in ("baseline", "ready"):
            line = gen.stdout.readline()
            if not line:
                print(f"    load generator ended before {phase!r}", file=sys.stderr)
                return None
            phases[phase] = json.loads(line)
            phases[phase]["rss_kib"] = rss_kib(proc.pid)
            gen.stdin.write(b"next\n")
            gen.stdin.flush()
    finally:
        gen.stdin.close()
        try:
            gen.wait(timeout=60)
        except subprocess.TimeoutExpired:
            gen.kill()
            gen.wait()
    before, after = phases["baseline"]["rss_kib"], phases["ready"]["rss_kib"]
    connections = phases["ready"]["connections"]
    return {
        "before_kib": before,
        "after_kib": after,
        "connections": connections,
        "closed": phases["ready"]["closed"],
        "kib_per_connection": (after - before) / connections,
    }


def git_state() -> str:
    def git(*argv: str) -> str:
        try:
            return subprocess.run(
                ["git", *argv], cwd=HERE, capture_output=True, text=True, check=True
            ).stdout.strip()
        except (OSError, subprocess.CalledProcessError):
            return ""

    commit = git("rev-parse", "--short", "HEAD") or "unknown"
    dirty = git("status", "--porcelain", "--", "../src").splitlines()
    return commit + (f" + uncommitted changes to {len(dirty)} paths in src/" if dirty else "")


def fmt_range(values: list[float], spec: str) -> str:
    return f"[{min(values):{spec}}-{max(values):{spec}}]"


def per_round_ratios(a: list[float | None], b: list[float | None]) -> list[float]:
    """Ratios of two rows round by round (they ran back to back in each round)."""
    return [x / y for x, y in zip(a, b, strict=False) if x is not None and y]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--subscribers", type=int, nargs="+", default=[1, 10], metavar="M")
    parser.add_argument("--runs", type=int, default=3, help="rounds (each server once per round)")
    parser.add_argument("--seconds", type=float, default=5.0, help="seconds per throughput cell")
    parser.add_argument("--window", type=int, default=100, help="pushes kept in flight")
    parser.add_argument("--only", nargs="*", help="substrings of server names to run")
    parser.add_argument(
        "--measure", nargs="+", choices=MEASURES, default=list(MEASURES), help="what to measure"
    )
    parser.add_argument(
        "--skip-latency", action="store_true", help="same as leaving it out of --measure"
    )
    parser.add_argument(
        "--skip-memory", action="store_true", help="same as leaving it out of --measure"
    )
    parser.add_argument("--pings", type=int, default=2000, help="latency: round trips measured")
    parser.add_argument(
        "--warmup-pings", type=int, default=200, help="latency: round trips not measured"
    )
    parser.add_argument("--connections", type=int, default=1000, help="memory: idle connections")
    parser.add_argument("--rooms", type=int, default=10, help="memory: rooms they are spread over")
    args = parser.parse_args()
    measures = [
        m
        for m in MEASURES
        if m in args.measure
        and not (m == "latency" and args.skip_latency)
        and not (m == "memory" and args.skip_memory)
    ]
    if not (HERE / "node_modules" / "ws").exists():
        sys.exit("run `npm install --prefix benchmarks` first")
    rows = {**SERVERS, **ABLATION_ROWS, **WORKER_ROWS}
    servers = (
        {k: v for k, v in rows.items() if any(o in k for o in args.only)}
        if args.only
        else dict(SERVERS)
    )
    if not servers or not measures:
        sys.exit("nothing to run")
    if DRIFTTRIO_TLS in servers:
        make_certificate()
    if not shutil.which("taskset"):
        print("note: taskset not found, server and load generator are not pinned", file=sys.stderr)
    # Every idle connection is a socket in the load generator and in the server.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = args.connections + args.rooms + 256
    if soft != resource.RLIM_INFINITY and soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(wanted, 4096)), hard))
    env = server_env(args)

    started = datetime.datetime.now().astimezone()
    state_start = git_state()
    load_start = os.getloadavg()
    # results[server][measure]: one entry per round (None when that run failed);
    # throughput is keyed by M first.
    tput: dict[str, dict[int, list[dict[str, Any] | None]]] = {n: {} for n in servers}
    lat: dict[str, list[dict[str, Any] | None]] = {n: [] for n in servers}
    mem: dict[str, list[dict[str, Any] | None]] = {n: [] for n in servers}
    for round_ in range(args.runs):
        print(f"round {round_ + 1}/{args.runs}", file=sys.stderr)
        for name, argv in servers.items():
            sidecar, row_env = start_sidecar(name, env)
            server_cpus, load_cpus = cores(name)
            proc, url = start(argv, row_env, server_cpus)
            try:
                if "memory" in measures:
                    r = run_memory(proc, url, args, load_cpus)
                    mem[name].append(r)
                    if r:
                        print(
                            f"  {name:<55} memory    {r['kib_per_connection']:>8.1f} KiB/conn",
                            file=sys.stderr,
                        )
                if "latency" in measures:
                    r = run_latency(url, args, load_cpus)
                    lat[name].append(r)
                    if r:
                        print(
                            f"  {name:<55} latency   p50 {r['p50_us']:>6.0f} us"
                            f"  p99 {r['p99_us']:>6.0f} us",
                            file=sys.stderr,
                        )
                if "throughput" in measures:
                    for m in args.subscribers:
                        r = run_throughput(url, m, args, load_cpus)
                        tput[name].setdefault(m, []).append(r)
                        if r:
                            print(
                                f"  {name:<55} M={m:<4} {r['per_second']:>10,.0f} msg/s"
                                f"  lost {r['lost']} reordered {r['reordered']}"
                                + (f" closed {r['closed']}" if r["closed"] else ""),
                                file=sys.stderr,
                            )
            finally:
                stop(proc)
                if sidecar is not None:
                    stop(sidecar)
    load_end = os.getloadavg()
    state_end = git_state()

    names = list(servers)
    first = names[0]
    print()
    print(
        f"{started:%Y-%m-%d %H:%M %Z}, commit {state_start}"
        + (f" (at the end: {state_end})" if state_end != state_start else "")
        + f", {platform.machine()} "
        f"{os.cpu_count()} CPUs, load average {load_start[0]:.2f} at start, "
        f"{load_end[0]:.2f} at end"
    )
    print("python benchmarks/throughput.py " + shlex.join(sys.argv[1:]))

    def values(entries: list[dict[str, Any] | None], key: str) -> list[float]:
        return [e[key] for e in entries if e is not None]

    def cell(
        entries: list[dict[str, Any] | None], base: list[dict[str, Any] | None], key: str, spec: str
    ) -> str:
        got = values(entries, key)
        if not got:
            return "failed"
        med = statistics.median(got)
        ref = values(base, key)
        ratio = f" ({med / statistics.median(ref):.2f}x)" if ref and statistics.median(ref) else ""
        failed = len(entries) - len(got)
        return f"{med:{spec}}{ratio} {fmt_range(got, spec)}" + (
            f" {failed} failed" if failed else ""
        )

    if "throughput" in measures:
        print(
            f"\n### Throughput\n\nmessages delivered per second to the subscribers; 1 publisher, "
            f"{args.window} pushes in flight, {args.runs} runs x {args.seconds:g} s; "
            f"median (ratio to {first!r}) [min-max]; lost / reordered summed over all cells "
            f"(must be 0)\n"
        )
        print(
            "| server | "
            + " | ".join(f"M={m} msg/s" for m in args.subscribers)
            + " | lost / reordered |"
        )
        print("|" + "---|" * (len(args.subscribers) + 2))
        for name in names:
            cells = [
                cell(tput[name][m], tput[first][m], "per_second", ",.0f") for m in args.subscribers
            ]
            runs = [r for m in args.subscribers for r in tput[name][m] if r is not None]
            lost = sum(r["lost"] for r in runs)
            reordered = sum(r["reordered"] for r in runs)
            closed = [c for r in runs for c in r["closed"]]
            other = sum(r["other"] for r in runs)
            check = f"{lost} / {reordered}"
            if closed:
                check += f", {len(closed)} closed by the server (codes {sorted(set(closed))})"
            if other:
                check += f", {other} unexpected messages"
            print(f"| {name} | " + " | ".join(cells) + f" | {check} |")

    if "latency" in measures:
        print(
            f"\n### Latency\n\none connection, sequential ping -> pong, {args.pings} round trips "
            f"after {args.warmup_pings} warmup, microseconds; median of {args.runs} runs "
            f"(ratio to {first!r}) [min-max]\n"
        )
        print("| server | p50 us | p99 us |\n|---|---|---|")
        for name in names:
            print(
                f"| {name} | {cell(lat[name], lat[first], 'p50_us', '.0f')} | "
                f"{cell(lat[name], lat[first], 'p99_us', '.0f')} |"
            )

    if "memory" in measures:
        print(
            f"\n### Idle memory\n\nRSS growth of the server process (tree) for {args.connections} "
            f"idle connections in {args.rooms} live rooms, each sent a `get` and answered; "
            f"median of {args.runs} runs [min-max]\n"
        )
        print("| server | RSS before MiB | RSS after MiB | KiB per connection |\n|---|---|---|---|")
        for name in names:
            got = [e for e in mem[name] if e is not None]
            if not got:
                print(f"| {name} | failed | failed | failed |")
                continue
            before = statistics.median(e["before_kib"] for e in got) / 1024
            after = statistics.median(e["after_kib"] for e in got) / 1024
            per = values(mem[name], "kib_per_connection")
            print(
                f"| {name} | {before:.1f} | {after:.1f} | "
                f"{statistics.median(per):.1f} {fmt_range(per, '.1f')} |"
            )

    if DRIFTTRIO_TLS in servers and DRIFTTRIO in servers:
        # No goal: what serving TLS directly costs, for docs/operations.md.
        print(
            f"\n### TLS cost\n\n{DRIFTTRIO_TLS!r} / {DRIFTTRIO!r}: ratio of medians "
            "[range of the round-by-round ratios]\n"
        )
        print("| measure | TLS / plain |\n|---|---|")
        rows: list[tuple[str, list[Any], list[Any], str]] = []
        if "throughput" in measures:
            rows += [
                (f"throughput M={m}", tput[DRIFTTRIO_TLS][m], tput[DRIFTTRIO][m], "per_second")
                for m in args.subscribers
            ]
        if "latency" in measures:
            rows += [("latency p50", lat[DRIFTTRIO_TLS], lat[DRIFTTRIO], "p50_us")]
        if "memory" in measures:
            rows += [
                ("idle KiB/connection", mem[DRIFTTRIO_TLS], mem[DRIFTTRIO], "kib_per_connection")
            ]
        for label, tls, plain, key in rows:
            va, vb = values(tls, key), values(plain, key)
            if not va or not vb or not statistics.median(vb):
                print(f"| {label} | n/a |")
                continue
            rounds = per_round_ratios([e and e[key] for e in tls], [e and e[key] for e in plain])
            print(
                f"| {label} | {statistics.median(va) / statistics.median(vb):.2f}x "
                f"{fmt_range(rounds, '.2f') if rounds else ''} |"
            )

    # Goals: a ratio of medians, with the range of the round-by-round ratios.
    goals: list[tuple[str, str, str, bool | None]] = []

    def ratio_goal(
        label: str, a: list[Any], b: list[Any], key: str, target: float, at_least: bool
    ) -> None:
        va, vb = values(a, key), values(b, key)
        if not va or not vb:
            goals.append((label, "n/a", "", None))
            return
        ratio = statistics.median(va) / statistics.median(vb)
        rounds = per_round_ratios([e and e[key] for e in a], [e and e[key] for e in b])
        measured = f"{ratio:.2f}x " + fmt_range(rounds, ".2f")
        ok = ratio >= target if at_least else ratio <= target
        goals.append((label, measured, ("≥ " if at_least else "≤ ") + f"{target:g}x", ok))

    def missing(*needed: str) -> str | None:
        absent = [n for n in needed if n not in servers]
        return ", ".join(absent) if absent else None

    if "throughput" in measures:
        for m in args.subscribers:
            label = f"throughput M={m}: drifttrio serve (memory) / websockets relay"
            if m not in THROUGHPUT_GOALS:
                continue
            if missing(DRIFTTRIO, WEBSOCKETS):
                goals.append((label, f"n/a (not run: {missing(DRIFTTRIO, WEBSOCKETS)})", "", None))
            else:
                ratio_goal(
                    label,
                    tput[DRIFTTRIO][m],
                    tput[WEBSOCKETS][m],
                    "per_second",
                    THROUGHPUT_GOALS[m],
                    True,
                )
        for m in args.subscribers:
            label = f"throughput M={m}: hypercorn drifttrio.asgi:app / minimal ASGI relay"
            if missing(DRIFTTRIO_ASGI, ASGI_RELAY):
                goals.append(
                    (label, f"n/a (not run: {missing(DRIFTTRIO_ASGI, ASGI_RELAY)})", "", None)
                )
            else:
                ratio_goal(
                    label,
                    tput[DRIFTTRIO_ASGI][m],
                    tput[ASGI_RELAY][m],
                    "per_second",
                    ASGI_GOAL,
                    True,
                )
    if "latency" in measures:
        label = "latency p50: drifttrio serve / websockets relay"
        if missing(DRIFTTRIO, WEBSOCKETS):
            goals.append((label, f"n/a (not run: {missing(DRIFTTRIO, WEBSOCKETS)})", "", None))
        else:
            ratio_goal(label, lat[DRIFTTRIO], lat[WEBSOCKETS], "p50_us", LATENCY_GOAL, False)
    if "memory" in measures:
        label = "idle memory: drifttrio serve, KiB per connection"
        per = values(mem.get(DRIFTTRIO, []), "kib_per_connection")
        if per:
            med = statistics.median(per)
            goals.append(
                (
                    label,
                    f"{med:.1f} {fmt_range(per, '.1f')}",
                    f"≤ {MEMORY_GOAL_KIB:g}",
                    med <= MEMORY_GOAL_KIB,
                )
            )
        else:
            goals.append((label, "n/a", "", None))
    if "throughput" in measures:
        every = [r for n in names for m in args.subscribers for r in tput[n][m]]
        done = [run for run in every if run is not None]
        bad = sum(r["lost"] + r["reordered"] for r in done) + len(every) - len(done)
        goals.append(
            (
                "verification: every row, lost + reordered (+ failed runs)",
                f"{bad} over {len(every)} runs",
                "= 0",
                bad == 0,
            )
        )

    print_goals(goals)
    # A lost or reordered message (or a failed run) is a bug, not a slow figure: exit 1.
    if any(label.startswith("verification") and ok is False for label, _, _, ok in goals):
        sys.exit(1)


def print_goals(goals: list[tuple[str, str, str, bool | None]]) -> None:
    """The goals section: one row per goal, PASS/FAIL (``None``: not run)."""
    print("\n### Goals\n\nratio of medians [range of the round-by-round ratios]\n")
    print("| goal | measured | target | result |\n|---|---|---|---|")
    for label, measured, target, ok in goals:
        result = "n/a" if ok is None else "PASS" if ok else "**FAIL**"
        print(f"| {label} | {measured} | {target} | {result} |")


if __name__ == "__main__":
    main()
