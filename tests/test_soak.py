"""Soak: ~1,000 connections in one room, a share of them hostile, for well under a minute.

The server runs as `drifttrio serve` in a child process (so its memory is its
own); clients are raw sockets (tests/_rawws.py). Well-behaved members must
receive every broadcast, in order, while slow readers, garbage senders,
protocol violators and ping flooders do their worst. Select it with
``pytest -m soak`` (or leave it out with ``-m "not soak"``); run with ``-s`` to
see the figures it prints.
"""

from __future__ import annotations

import os
import random
import resource
import socket
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from _rawws import CLOSE, PING, TEXT, RawWebSocket, close_code, frame

pytestmark = pytest.mark.soak

GOOD, SLOW, GARBAGE, VIOLATORS, PINGERS = 850, 50, 25, 25, 50
MESSAGES, BATCH = 300, 50
VALUE = "v" * 1000
WRITE_TIMEOUT = 2.0
VIOLATIONS = [
    frame(TEXT, b'{"type":"ping"}', mask=False),  # unmasked
    frame(PING, b"x", fin=False),  # fragmented control frame
    frame(TEXT, b'"\xff"'),  # invalid UTF-8
    frame(0x3, b""),  # reserved opcode
]


def rss_kib(pid: int, field: str = "VmRSS") -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise LookupError(field)


def scale() -> float:
    """Raise the open-file limit for ~1,000 sockets per side; scale down if it cannot be."""
    if "SOAK_SCALE" in os.environ:  # for a quick local run
        return float(os.environ["SOAK_SCALE"])
    total = GOOD + SLOW + GARBAGE + VIOLATORS + PINGERS
    need = total + 256
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < need:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        return max(0.1, (hard - 256) / total)
    if soft != resource.RLIM_INFINITY and soft < need:
        resource.setrlimit(resource.RLIMIT_NOFILE, (need, hard))
    return 1.0


async def start_server(nursery: trio.Nursery, cwd: Path) -> tuple[trio.Process, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DRIFTTRIO_")}
    env.update(
        PYTHONUNBUFFERED="1",
        DRIFTTRIO_MAX_CONNECTIONS="0",
        DRIFTTRIO_MAX_CONNECTIONS_PER_IP="0",
        DRIFTTRIO_MAX_CONNECTIONS_PER_ROOM="0",
        # Every client here shares 127.0.0.1, the well-behaved pusher too: the
        # per-address budgets are the hostile soak's subject (test_hostile_soak.py,
        # where the honest client has an address of its own), not this one's.
        DRIFTTRIO_ADDRESS_MESSAGES_PER_SECOND="0",
        DRIFTTRIO_ADDRESS_BYTES_PER_SECOND="0",
        DRIFTTRIO_ADDRESS_NODES_PER_SECOND="0",
        DRIFTTRIO_OUTBOX_BYTES=str(128 * 1024),
        DRIFTTRIO_WRITE_TIMEOUT=str(WRITE_TIMEOUT),
    )
    process = await trio.lowlevel.open_process(
        [sys.executable, "-m", "drifttrio.cli", "serve", "--port", "0", "--store", "memory"],
        stdin=None,
        stdout=None,
        stderr=-1,  # subprocess.PIPE
        env=env,
        cwd=cwd,
    )
    assert process.stderr is not None
    url = trio.Event()
    found: list[str] = []

    async def pump() -> None:
        assert process.stderr is not None
        buffer = b""
        async for chunk in process.stderr:  # keep draining, or the child blocks on logging
            buffer += chunk
            *lines, buffer = buffer.split(b"\n")
            for line in lines:
                text = line.decode(errors="replace")
                if not found and "listening on " in text:
                    found.append(text.split("listening on ")[1].split()[0])
                    url.set()

    nursery.start_soon(pump)
    with trio.fail_after(30):
        await url.wait()
    return process, found[0]


async def test_soak_thousand_connections_with_misbehaving_members(tmp_path: Path) -> None:
    factor = scale()
    good_n = max(10, int(GOOD * factor))
    slow_n, garbage_n, violators_n, pingers_n = (
        max(2, int(n * factor)) for n in (SLOW, GARBAGE, VIOLATORS, PINGERS)
    )
    total = good_n + slow_n + garbage_n + violators_n + pingers_n
    started = time.monotonic()
    stats: Counter[str] = Counter()
    close_codes: Counter[str] = Counter()

    async with trio.open_nursery() as nursery:
        process, url = await start_server(nursery, tmp_path)
        try:
            host, port = url.removeprefix("http://").rsplit(":", 1)
            async with httpx.AsyncClient(base_url=url, trust_env=False) as client:
                room = (await client.post("/new")).json()["room"]
            path = f"/room/{room}/connect"
            rss_before = rss_kib(process.pid)
            limiter = trio.CapacityLimiter(100)

            async def member(nonce: int, *, small_window: bool = False) -> RawWebSocket:
                async with limiter:
                    if small_window:
                        # A small receive window from the start: the server's writes
                        # block after a few KiB, and its outbox fills.
                        sock = trio.socket.socket()
                        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
                        await sock.connect((host, int(port)))
                        ws = RawWebSocket(trio.SocketStream(sock))
                    else:
                        ws = await RawWebSocket.connect(host, int(port))
                    await ws.handshake(path)
                    await ws.send_json({"type": "ping", "nonce": nonce})
                    while (await ws.recv())["type"] != "pong":
                        pass  # a broadcast that raced the pong
                    return ws

            with trio.fail_after(55):
                # -- connect every well-behaved and slow member, and measure -------
                good: list[RawWebSocket] = []
                slow: list[RawWebSocket] = []

                async def join(target: list[RawWebSocket], nonce: int) -> None:
                    target.append(await member(nonce, small_window=target is slow))

                async with trio.open_nursery() as joining:
                    for i in range(good_n):
                        joining.start_soon(join, good, i)
                    for i in range(slow_n):
                        joining.start_soon(join, slow, 100_000 + i)
                rss_joined = rss_kib(process.pid)
                per_connection = (rss_joined - rss_before) / (good_n + slow_n)

                # -- the run --------------------------------------------------------
                received = [0] * good_n
                in_order = [True] * good_n
                batch_done = {end: trio.Event() for end in range(BATCH, MESSAGES + 1, BATCH)}
                reached: Counter[int] = Counter()
                stop = trio.Event()

                async def read_good(index: int, ws: RawWebSocket) -> None:
                    while received[index] < MESSAGES:
                        message = await ws.recv()
                        if message["type"] != "push":
                            continue
                        if message["seq"] != received[index] + 1:
                            in_order[index] = False
                        received[index] = message["seq"]
                        if message["seq"] in batch_done:
                            reached[message["seq"]] += 1
                            if reached[message["seq"]] == good_n:
                                batch_done[message["seq"]].set()

                async def push_all(ws: RawWebSocket) -> None:
                    for end in batch_done:
                        for _ in range(BATCH):
                            await ws.send_json(
                                {
                                    "type": "push",
                                    "key": "k",
                                    "value": VALUE,
                                    "action": {"type": "relay"},
                                }
                            )
                        await batch_done[end].wait()

                async def churn(attack: Callable[[RawWebSocket], Any]) -> None:
                    """Connect, misbehave, be closed; again, until the run ends."""
                    while not stop.is_set():
                        async with limiter:
                            ws = await RawWebSocket.connect(host, int(port))
                        try:
                            await ws.handshake(path)
                            await attack(ws)
                            while True:
                                opcode, payload = await ws.recv_frame()
                                if opcode == CLOSE:
                                    close_codes[str(close_code(payload))] += 1
                                    break
                        except (ConnectionError, trio.BrokenResourceError):
                            close_codes["reset"] += 1
                        finally:
                            await ws.aclose()

                async def garbage(ws: RawWebSocket) -> None:
                    junk = random.choice([b"not json", b'{"type":"push"}', b"[1,2", b"\x00"])
                    for _ in range(110):  # 100 invalid in a row close with 4000
                        await ws.send(frame(TEXT, junk))
                    stats["garbage frames"] += 110

                async def violate(ws: RawWebSocket) -> None:
                    await ws.send(random.choice(VIOLATIONS))
                    stats["protocol violations"] += 1

                async def ping_flood(ws: RawWebSocket) -> None:
                    async def drain() -> None:
                        try:
                            while True:
                                await ws.recv_frame()
                        except (ConnectionError, trio.BrokenResourceError):
                            # Past its address's budget for control frames: 4029.
                            stats["ping flooders cut off"] += 1
                            flood.cancel_scope.cancel()

                    async with trio.open_nursery() as flood:
                        flood.start_soon(drain)
                        while not stop.is_set():
                            try:
                                await ws.send(frame(PING, b"p" * 125) * 50)
                            except (trio.BrokenResourceError, trio.ClosedResourceError):
                                break
                            stats["pings"] += 50
                            await trio.sleep(0.1)
                        flood.cancel_scope.cancel()

                async with trio.open_nursery() as run:
                    pingers = [await member(200_000 + i) for i in range(pingers_n)]
                    for ws in pingers:
                        run.start_soon(ping_flood, ws)
                    for _ in range(garbage_n):
                        run.start_soon(churn, garbage)
                    for _ in range(violators_n):
                        run.start_soon(churn, violate)
                    async with trio.open_nursery() as delivery:
                        for index, ws in enumerate(good):
                            delivery.start_soon(read_good, index, ws)
                        delivery.start_soon(push_all, good[0])
                    stop.set()
                rss_peak = rss_kib(process.pid, "VmHWM")

                # -- slow readers: cut off by the write deadline -------------------
                async def cut_off(ws: RawWebSocket) -> None:
                    # What the server had written arrives, then the end: it let go.
                    with trio.move_on_after(WRITE_TIMEOUT + 5):
                        try:
                            while await ws.stream.receive_some(1 << 20):
                                pass
                        except trio.BrokenResourceError:
                            pass
                        stats["slow readers cut off"] += 1

                async with trio.open_nursery() as checks:
                    for ws in slow:
                        checks.start_soon(cut_off, ws)
                for ws in [*good, *slow, *pingers]:
                    await ws.aclose()
        finally:
            process.terminate()
            with trio.move_on_after(10):
                await process.wait()
            if process.returncode is None:
                process.kill()
        nursery.cancel_scope.cancel()

    elapsed = time.monotonic() - started
    print(
        f"\nsoak: {total} connections ({good_n} well-behaved, {slow_n} slow readers, "
        f"{garbage_n} garbage senders, {violators_n} protocol violators, {pingers_n} ping "
        f"flooders) in {elapsed:.1f} s\n"
        f"  server RSS: {rss_before} KiB before, {rss_joined} KiB with "
        f"{good_n + slow_n} members: {per_connection:.1f} KiB per connection; peak "
        f"{rss_peak} KiB\n"
        f"  deliveries: {sum(received)} of {good_n * MESSAGES} broadcasts "
        f"(min {min(received)}, max {max(received)} per member), "
        f"all in order: {all(in_order)}\n"
        f"  misbehaviour: {dict(stats)}; close codes seen by attackers: {dict(close_codes)}"
    )
    assert received == [MESSAGES] * good_n, "every well-behaved member got every broadcast"
    assert all(in_order)
    assert stats["slow readers cut off"] == slow_n
    assert set(close_codes) <= {"4000", "1002", "1007", "reset"}
    assert close_codes["4000"] >= garbage_n
    assert per_connection < 256, "server memory per connection stays small"
