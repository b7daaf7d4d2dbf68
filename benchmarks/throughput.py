"""Side-by-side throughput: one room, one publisher, M subscribers.

Starts each server as its own process pinned to CPU 0, runs the Node load
generator (``loadgen.js``) pinned to CPU 1, repeats each cell, and prints the
median messages delivered per second and the ratio to the first server.

    python benchmarks/throughput.py                 # defaults: M=1,10  3 runs x 5 s
    python benchmarks/throughput.py --subscribers 1 10 100 --runs 5 --seconds 5

Needs ``npm install --prefix benchmarks`` (the ``ws`` package) and ``taskset``
(util-linux) for pinning; without taskset it runs unpinned and says so.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
URL = re.compile(rb"(http://127\.0\.0\.1:\d+)")

SERVERS: dict[str, list[str]] = {
    "drifttrio serve (own transport)": [
        sys.executable,
        "-m",
        "drifttrio.cli",
        "serve",
        "--port",
        "0",
        "--store",
        "memory",
    ],
    "drifttrio serve (own transport, SQLite)": [
        sys.executable,
        "-m",
        "drifttrio.cli",
        "serve",
        "--port",
        "0",
        "--store",
        "sqlite:///" + str(Path(os.environ.get("TMPDIR", "/tmp")) / "drifttrio-bench.db"),
    ],
    "drifttrio serve --transport hypercorn": [
        sys.executable,
        "-m",
        "drifttrio.cli",
        "serve",
        "--port",
        "0",
        "--store",
        "memory",
        "--transport",
        "hypercorn",
    ],
    "hypercorn -k trio drifttrio.asgi:app": [
        sys.executable,
        "-m",
        "hypercorn",
        "-k",
        "trio",
        "--bind",
        "127.0.0.1:0",
        "drifttrio.asgi:app",
    ],
    "minimal relay on Node ws (yardstick)": ["node", str(HERE / "minimal_relay.js")],
}


def pinned(cpu: int, argv: list[str]) -> list[str]:
    if shutil.which("taskset") and (os.cpu_count() or 1) > 1:
        return ["taskset", "-c", str(cpu), *argv]
    return argv


def start(argv: list[str]) -> tuple[subprocess.Popen[bytes], str]:
    # One publisher at full speed is what the per-connection rate limit exists to stop:
    # switch it off to measure the relay itself.
    env = {**os.environ, "DRIFTTRIO_STORE": "memory", "DRIFTTRIO_RATE_LIMIT_PER_SECOND": "0"}
    proc = subprocess.Popen(
        pinned(0, argv), stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, env=env
    )
    assert proc.stderr is not None
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        if not line:
            break
        match = URL.search(line)
        if match:
            # Keep draining stderr so the server never blocks on a full pipe.
            subprocess.Popen(["cat"], stdin=proc.stderr, stdout=subprocess.DEVNULL)
            return proc, match.group(1).decode()
    proc.kill()
    raise RuntimeError(f"{argv[0]} did not report a listening address")


def run_load(url: str, subscribers: int, seconds: float, window: int) -> float:
    out = subprocess.run(
        pinned(
            1,
            [
                "node",
                str(HERE / "loadgen.js"),
                "--url",
                url,
                "--subscribers",
                str(subscribers),
                "--seconds",
                str(seconds),
                "--window",
                str(window),
            ],
        ),
        capture_output=True,
        check=True,
        timeout=seconds + 60,
    )
    return float(json.loads(out.stdout.decode().strip().splitlines()[-1])["per_second"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--subscribers", type=int, nargs="+", default=[1, 10])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--window", type=int, default=100, help="pushes kept in flight")
    parser.add_argument("--only", nargs="*", help="substrings of server names to run")
    args = parser.parse_args()
    if not (HERE / "node_modules" / "ws").exists():
        sys.exit("run `npm install --prefix benchmarks` first")
    servers = {k: v for k, v in SERVERS.items() if not args.only or any(o in k for o in args.only)}
    if not shutil.which("taskset"):
        print("note: taskset not found, server and load generator are not pinned", file=sys.stderr)

    results: dict[str, dict[int, list[float]]] = {name: {} for name in servers}
    # Interleave servers within each round so machine noise hits all of them alike.
    for _round in range(args.runs):
        for name, argv in servers.items():
            proc, url = start(argv)
            try:
                for m in args.subscribers:
                    rate = run_load(url, m, args.seconds, args.window)
                    results[name].setdefault(m, []).append(rate)
                    print(f"  {name:<40} M={m:<4} {rate:>10,.0f} msg/s", file=sys.stderr)
            finally:
                proc.terminate()
                proc.wait(timeout=30)

    first = next(iter(servers))
    header = (
        "| server | " + " | ".join(f"M={m} median msg/s (ratio)" for m in args.subscribers) + " |"
    )
    print(
        f"\nmessages delivered per second; 1 publisher, {args.window} pushes in flight, "
        f"{args.runs} runs x {args.seconds:g} s, median; ratio to {first!r}\n"
    )
    print(header)
    print("|" + "---|" * (len(args.subscribers) + 1))
    for name in servers:
        cells = []
        for m in args.subscribers:
            med = statistics.median(results[name][m])
            base = statistics.median(results[first][m])
            low, high = min(results[name][m]), max(results[name][m])
            cells.append(f"{med:,.0f} ({med / base:.2f}x) [{low:,.0f}-{high:,.0f}]")
        print(f"| {name} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
