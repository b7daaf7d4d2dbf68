"""What replies, debug views and subscriptions cost a real ``drifttrio serve`` (issue 15).

Starts ``drifttrio serve`` (SQLite in a temporary directory; rate limits off
only while the room is filled), then runs one attack and prints the server's
RSS growth and an honest client's round trips before and during it:

- ``http-get``: a 16 MB retained stream; 24 HTTP clients send a ``get`` each
  and never read (``--value-bytes`` sets the size of each retained value);
- ``subscribe``: one client sends ``get`` with ``seq: null`` for new 1 KB keys
  at 190 a second for ``--seconds``;
- ``debug``: a debug member (JSON or ``--cbor``) of a room with a 9,800-value
  stream while an honest client appends.

Use ``--src`` to run another checkout's server (e.g. the base commit)::

    flock /tmp/bench.lock python benchmarks/reply_cost.py http-get
    flock /tmp/bench.lock python benchmarks/reply_cost.py http-get --src /tmp/base/src
"""

from __future__ import annotations

import argparse
import json
import os
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import trio
from trio_websocket import WebSocketConnection, open_websocket_url


def rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


async def http(host: str, port: int, method: str, path: str, body: object = None) -> object:
    stream = await trio.open_tcp_stream(host, port)
    data = b"" if body is None else json.dumps(body).encode()
    await stream.send_all(
        f"{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(data)}\r\n\r\n".encode()
        + data
    )
    raw = b""
    while chunk := await stream.receive_some(1 << 20):
        raw += chunk
    await stream.aclose()
    head, _, rest = raw.partition(b"\r\n\r\n")
    if b"transfer-encoding: chunked" in head.lower():
        body_bytes = b""
        while rest:
            size_line, _, rest = rest.partition(b"\r\n")
            size = int(size_line, 16)
            if size == 0:
                break
            body_bytes += rest[:size]
            rest = rest[size + 2 :]
        rest = body_bytes
    return json.loads(rest) if rest else None


async def ws_round_trip(ws: WebSocketConnection, message: dict[str, object], kind: str) -> float:
    started = time.perf_counter()
    await ws.send_message(json.dumps(message))
    while json.loads(await ws.get_message())["type"] != kind:
        pass
    return time.perf_counter() - started


async def honest(host: str, port: int, room: str, n: int = 30) -> tuple[float, float]:
    """Median round trips (ms): an HTTP ``ping`` and a WebSocket ``ping``."""
    http_times = []
    for i in range(n):
        started = time.perf_counter()
        await http(host, port, "POST", f"/room/{room}/send", {"type": "ping", "nonce": i})
        http_times.append(time.perf_counter() - started)
    async with open_websocket_url(f"ws://{host}:{port}/room/{room}/connect") as ws:
        ws_times = [await ws_round_trip(ws, {"type": "ping", "nonce": i}, "pong") for i in range(n)]
    return statistics.median(http_times) * 1e3, statistics.median(ws_times) * 1e3


async def fill(host: str, port: int, room: str, key: str, values: list[object]) -> None:
    async with open_websocket_url(f"ws://{host}:{port}/room/{room}/connect") as ws:
        # In flight at once: well within the outbox (8 MiB), or the echoes overflow it.
        step = max(1, min(200, 2_000_000 // len(json.dumps(values[0]))))
        for start in range(0, len(values), step):
            batch = values[start : start + step]
            for value in batch:
                await ws.send_message(
                    json.dumps(
                        {"type": "push", "key": key, "value": value, "action": {"type": "append"}}
                    )
                )
            pushed = 0
            while pushed < len(batch):
                if json.loads(await ws.get_message())["type"] == "push":
                    pushed += 1


async def stalled_get(host: str, port: int, room: str, key: str) -> trio.SocketStream:
    sock = trio.socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    await sock.connect((host, port))
    stream = trio.SocketStream(sock)
    body = json.dumps({"type": "get", "key": key, "seq": 0}).encode()
    await stream.send_all(
        f"POST /room/{room}/send HTTP/1.1\r\nHost: x\r\n".encode()
        + f"Content-Length: {len(body)}\r\n\r\n".encode()
        + body
    )
    await stream.receive_some(12)
    return stream


async def peak_rss(pid: int, seconds: float) -> int:
    peak = 0
    deadline = trio.current_time() + seconds
    while trio.current_time() < deadline:
        peak = max(peak, rss(pid))
        await trio.sleep(0.05)
    return peak


async def attack_http_get(
    pid: int, host: str, port: int, room: str, args: argparse.Namespace
) -> None:
    count = 16 * 1024 * 1024 // args.value_bytes
    values = [f"{i:08d}" + "x" * (args.value_bytes - 20) for i in range(count)]
    await fill(host, port, room, "big", values)
    before_http, before_ws = await honest(host, port, room)
    base = rss(pid)
    streams = [await stalled_get(host, port, room, "big") for _ in range(24)]
    during = await peak_rss(pid, 1.0)
    during_http, during_ws = await honest(host, port, room)
    print(f"16 MB stream ({count} values of {args.value_bytes} B), 24 stalled HTTP gets")
    print(f"  RSS growth: {(during - base) / 2**20:.1f} MiB (peak over 1 s after the gets)")
    print(f"  honest HTTP ping median: {before_http:.2f} ms before, {during_http:.2f} ms during")
    print(f"  honest WS ping median:   {before_ws:.2f} ms before, {during_ws:.2f} ms during")
    for stream in streams:
        await stream.aclose()


async def attack_subscribe(
    pid: int, host: str, port: int, room: str, args: argparse.Namespace
) -> None:
    before_http, before_ws = await honest(host, port, room)
    base = rss(pid)
    errors = 0
    async with open_websocket_url(f"ws://{host}:{port}/room/{room}/connect") as ws:
        sent = 0
        started = trio.current_time()
        async with trio.open_nursery() as nursery:

            async def read() -> None:
                nonlocal errors
                while True:
                    if json.loads(await ws.get_message())["type"] == "error":
                        errors += 1

            nursery.start_soon(read)
            while sent < 190 * args.seconds:
                key = f"{sent:08d}" + "k" * 1016
                await ws.send_message(json.dumps({"type": "get", "key": key, "seq": None}))
                sent += 1
                await trio.sleep_until(started + sent / 190)
            grown = rss(pid) - base
            during_http, during_ws = await honest(host, port, room)
            nursery.cancel_scope.cancel()
    print(f"{sent} gets with seq null for new 1 KB keys at 190/s on one connection")
    print(f"  RSS growth: {grown / 2**20:.1f} MiB; errors received: {errors}")
    print(f"  honest HTTP ping median: {before_http:.2f} ms before, {during_http:.2f} ms during")
    print(f"  honest WS ping median:   {before_ws:.2f} ms before, {during_ws:.2f} ms during")


async def attack_debug(pid: int, host: str, port: int, room: str, args: argparse.Namespace) -> None:
    await fill(host, port, room, "s", [{"n": i} for i in range(9800)])
    url = f"ws://{host}:{port}/room/{room}/connect"
    async with open_websocket_url(url) as pusher:

        async def appends(n: int) -> list[float]:
            return [
                await ws_round_trip(
                    pusher,
                    {"type": "push", "key": "s", "value": {"m": i}, "action": {"type": "append"}},
                    "stream_size",
                )
                for i in range(n)
            ]

        alone = statistics.median(await appends(50)) * 1e3
        query = "?debug=true" + ("&cbor=true" if args.cbor else "")
        received = 0
        async with open_websocket_url(url + query) as debug, trio.open_nursery() as nursery:

            async def drain() -> None:
                nonlocal received
                while True:
                    message = await debug.get_message()
                    received += len(message)

            nursery.start_soon(drain)
            await ws_round_trip(pusher, {"type": "ping"}, "pong")
            await trio.sleep(0.5)
            joined = received
            watched = statistics.median(await appends(100)) * 1e3
            await ws_round_trip(pusher, {"type": "ping"}, "pong")
            await trio.sleep(0.5)
            per_append = (received - joined) / 100
            nursery.cancel_scope.cancel()
    codec = "CBOR" if args.cbor else "JSON"
    print(f"9,800-value stream, appends with a {codec} debug member reading")
    print(f"  append round trip median: {alone:.2f} ms alone, {watched:.2f} ms watched")
    print(f"  debug member: {joined / 1024:.0f} KiB on join, {per_append:.0f} B per append")


async def main(args: argparse.Namespace) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DRIFTTRIO_")}
    env["PYTHONPATH"] = args.src
    env["DRIFTTRIO_RATE_LIMIT_PER_SECOND"] = "0"
    env["DRIFTTRIO_MAX_STREAM_VALUES"] = "0"
    with tempfile.TemporaryDirectory() as tmp:
        process = await trio.lowlevel.open_process(
            [sys.executable, "-m", "drifttrio.cli", "serve", "--port", "0", "--store",
             f"sqlite:///{tmp}/rooms.db", "--log-level", "info"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env,
        )  # fmt: skip
        try:
            assert process.stderr is not None
            stderr = process.stderr
            buffer = b""
            while not (match := re.search(rb"listening on http://([\d.]+):(\d+)", buffer)):
                buffer += await stderr.receive_some(4096)
            host, port = match.group(1).decode(), int(match.group(2))
            async with trio.open_nursery() as nursery:

                async def drain_log() -> None:  # the server must never block on its log
                    while await stderr.receive_some(1 << 16):
                        pass

                nursery.start_soon(drain_log)
                room = (await http(host, port, "POST", "/new"))["room"]  # type: ignore[index]
                attacks = {"http-get": attack_http_get, "subscribe": attack_subscribe}
                await attacks.get(args.attack, attack_debug)(process.pid, host, port, room, args)
                nursery.cancel_scope.cancel()
        finally:
            process.terminate()
            await process.wait()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("attack", choices=["http-get", "subscribe", "debug"])
    parser.add_argument("--src", default=str(Path(__file__).parent.parent / "src"))
    parser.add_argument("--value-bytes", type=int, default=4096)
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--cbor", action="store_true")
    trio.run(main, parser.parse_args())
