"""What retained values cost a real server, and what charging them costs (issue 15).

For each attack shape, starts ``drifttrio serve --store memory`` (defaults otherwise:
``max_room_bytes`` 64 MiB), opens one WebSocket (CBOR) to a new room and sends
``--messages`` ``replace`` pushes of that shape, each to its own key, then reports
how many the room accepted, the server's RSS growth (``/proc/PID/status``) and,
when the server exports it, the bytes charged (``drifttrio_retained_bytes``).
RSS per charged byte is the figure the charge must keep under about 2.

Then times the charge itself (``value_size``) against ``cbor2.dumps`` (the charge
before) on a few values.

    python benchmarks/memory_cost.py                      # this checkout
    PYTHONPATH=/path/to/old/src python benchmarks/memory_cost.py   # another version
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
import timeit
import urllib.request
from collections.abc import Callable

import cbor2
import trio
from trio_websocket import open_websocket_url

URL = re.compile(rb"(http://127\.0\.0\.1:\d+)")
METRICS_URL = re.compile(rb"metrics.*?(http://127\.0\.0\.1:\d+)")

#: Attack shapes: a value of about ``n`` items (n = --items).
SHAPES: dict[str, Callable[[int], object]] = {
    "empty maps": lambda n: [{}] * n,
    "empty lists": lambda n: [[]] * n,
    "small ints": lambda n: [7] * n,
    "large ints": lambda n: list(range(10**9, 10**9 + n // 5)),
    "floats": lambda n: [0.5 + i for i in range(n // 9)],
    "short strings": lambda n: [f"s{i}" for i in range(n // 8)],
    "deep nesting (62)": lambda n: [_nested(62)] * (n // 63),
    "one big string": lambda n: "x" * (n - 64),
    "byte strings": lambda n: [b"ab"] * (n // 3),
}


def _nested(depth: int) -> object:
    value: object = []
    for _ in range(depth):
        value = [value]
    return value


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def retained_bytes(metrics_url: str) -> float | None:
    with urllib.request.urlopen(metrics_url + "/metrics") as response:
        for line in response.read().decode().splitlines():
            if line.startswith("drifttrio_retained_bytes "):
                return float(line.split()[1])
    return None


def start_server() -> tuple[subprocess.Popen[bytes], str, str]:
    argv = [sys.executable, "-m", "drifttrio.cli", "serve", "--port", "0", "--store", "memory"]
    env = {**os.environ, "DRIFTTRIO_METRICS_PORT": "0", "DRIFTTRIO_RATE_LIMIT_PER_SECOND": "0"}
    proc = subprocess.Popen(argv, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, env=env)
    assert proc.stderr is not None
    url = metrics = None
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and (url is None or metrics is None):
        line = proc.stderr.readline()
        if not line:
            break
        if b"metrics" in line.lower() and (m := URL.search(line)):
            metrics = m.group(1).decode()
        elif m := URL.search(line):
            url = m.group(1).decode()
    if url is None or metrics is None:
        proc.kill()
        raise RuntimeError("the server did not report its addresses")
    subprocess.Popen(["cat"], stdin=proc.stderr, stdout=subprocess.DEVNULL)
    return proc, url, metrics


async def attack(url: str, value: object, messages: int) -> tuple[int, list[str]]:
    """Send the replaces; return how many were accepted and the distinct refusals."""
    import httpx

    async with httpx.AsyncClient(base_url=url, trust_env=False) as client:
        room = (await client.post("/new")).json()["room"]
    ws_url = url.replace("http://", "ws://") + f"/room/{room}/connect"
    accepted, refusals = 0, set()
    async with open_websocket_url(ws_url, max_message_size=1 << 22) as ws:
        for i in range(messages):
            message = {"type": "push", "key": f"k{i}", "action": {"type": "replace"}}
            await ws.send_message(cbor2.dumps({**message, "value": value}))
            answer = await ws.get_message()
            decoded = cbor2.loads(answer) if isinstance(answer, bytes) else json.loads(answer)
            if decoded.get("type") == "push":
                accepted += 1
            else:
                refusals.add(str(decoded.get("message"))[:90])
    return accepted, sorted(refusals)


def measure_attacks(args: argparse.Namespace) -> None:
    print(
        f"{'attack':20} {'msg KiB':>8} {'accepted':>8} {'RSS +MB':>8} {'MB/msg':>7} "
        f"{'charged MB':>10} {'RSS/charged':>11}  refusals"
    )
    for name, make in SHAPES.items():
        if args.only and not any(o in name for o in args.only):
            continue
        value = make(args.items)
        size = len(cbor2.dumps(value))
        proc, url, metrics = start_server()
        try:
            before = rss_kib(proc.pid)
            accepted, refusals = trio.run(attack, url, value, args.messages)
            time.sleep(0.5)  # let the room task settle before reading RSS (not a test)
            grown = (rss_kib(proc.pid) - before) / 1024
            charged = retained_bytes(metrics)
        finally:
            proc.kill()
            proc.wait()
        per = grown / accepted if accepted else float("nan")
        charged_mb = f"{charged / 2**20:10.1f}" if charged is not None else f"{'n/a':>10}"
        ratio = f"{grown * 2**20 / charged:11.2f}" if charged else f"{'n/a':>11}"
        print(
            f"{name:20} {size / 1024:8.0f} {accepted:8} {grown:8.1f} {per:7.2f} "
            f"{charged_mb} {ratio}  {'; '.join(refusals)[:100]}"
        )


def measure_charge_cost() -> None:
    try:
        from drifttrio.core.room_state import value_size
    except ImportError:
        return
    values: dict[str, object] = {
        "benchmark value {n, text}": {"n": 0, "text": "hello world"},
        "small int": 5,
        "20-char string": "hello world hello wo",
        "map of 30 fields": {f"f{i}": [i * 1000, "v" * 10, [1.5, 2.5]][i % 3] for i in range(30)},
        "10k empty maps": cbor2.loads(cbor2.dumps([{}] * 10_000)),
        "1 MiB string": "x" * (1 << 20),
    }
    print(f"\n{'value':28} {'cbor2.dumps us':>15} {'value_size us':>14}")
    for name, value in values.items():
        number = 20 if "10k" in name else 200 if "MiB" in name else 20_000
        timer = time.process_time  # CPU time: less disturbed by other processes
        dumps = (
            min(timeit.repeat(lambda v=value: cbor2.dumps(v), timer=timer, repeat=5, number=number))
            / number
        )
        size = (
            min(timeit.repeat(lambda v=value: value_size(v), timer=timer, repeat=5, number=number))
            / number
        )
        print(f"{name:28} {dumps * 1e6:15.2f} {size * 1e6:14.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=200_000, help="items per value")
    parser.add_argument("--messages", type=int, default=10, help="replaces per attack")
    parser.add_argument("--only", nargs="*", help="substrings of attack names")
    parser.add_argument("--skip-charge-cost", action="store_true")
    args = parser.parse_args()
    measure_attacks(args)
    if not args.skip_charge_cost:
        measure_charge_cost()


if __name__ == "__main__":
    main()
