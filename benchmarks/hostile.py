"""What one attacker costs everyone else: an honest client's round trip and the
server's memory while an attacker abuses a default ``drifttrio serve``.

Each attack gets a fresh server process (``drifttrio serve --port 0`` on a SQLite
file in a temporary directory, every other setting at its default). An honest
*canary* in its own room, connecting from another loopback address (127.0.0.2,
so per-address budgets do not lump it with the attacker), appends a value every
``--interval`` seconds and times the echo. After a quiet warm-up, the attacker
(from 127.0.0.1) runs for ``--seconds``; the report gives the canary's round trip
p50/p99/max during the attack, the server's RSS before and at its peak, and what
the attacker saw (messages sent, errors, closes, HTTP statuses).

    python benchmarks/hostile.py                       # every attack, 8 s each
    python benchmarks/hostile.py --only json cbor --seconds 5
    python benchmarks/hostile.py --src /tmp/base/src   # another checkout's server
    flock /tmp/bench.lock python benchmarks/hostile.py --json > hostile.json

It sends traffic only to 127.0.0.1 and stops by itself.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import re
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import cbor2
import trio

ATTACKER = "127.0.0.1"
CANARY = "127.0.0.2"
MIB = 1024 * 1024


# -- a raw WebSocket client (mask key 0: masking is then the identity) --------------


class Raw:
    """A minimal client: handshake, send frames, read server frames."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.buf = bytearray()

    @classmethod
    async def connect(cls, port: int, path: str, source: str = ATTACKER) -> Raw:
        stream = await trio.open_tcp_stream("127.0.0.1", port, local_address=source)
        raw = cls(stream)
        try:
            await raw._handshake(port, path)
        except BaseException:
            await trio.aclose_forcefully(stream)
            raise
        return raw

    async def _handshake(self, port: int, path: str) -> None:
        raw, stream = self, self.stream
        key = base64.b64encode(os.urandom(16)).decode()
        await stream.send_all(
            (
                f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
                f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                "Sec-WebSocket-Version: 13\r\n\r\n"
            ).encode()
        )
        while b"\r\n\r\n" not in raw.buf:
            data = await stream.receive_some(65536)
            if not data:
                raise ConnectionError("closed during the handshake")
            raw.buf += data
        head, _, rest = bytes(raw.buf).partition(b"\r\n\r\n")
        if b" 101 " not in head.split(b"\r\n", 1)[0]:
            raise ConnectionError(head.split(b"\r\n", 1)[0].decode(errors="replace"))
        raw.buf = bytearray(rest)

    @staticmethod
    def frame(opcode: int, payload: bytes) -> bytes:
        n = len(payload)
        if n < 126:
            head = struct.pack("!BB", 0x80 | opcode, 0x80 | n)
        elif n < 65536:
            head = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, n)
        else:
            head = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, n)
        return head + b"\0\0\0\0" + payload

    async def send(self, opcode: int, payload: bytes) -> None:
        await self.stream.send_all(self.frame(opcode, payload))

    async def send_json(self, message: object) -> None:
        await self.send(0x1, json.dumps(message).encode())

    async def recv(self) -> tuple[int, bytes]:
        """The next data or close frame (opcode, payload); pings and pongs are skipped."""
        while True:
            while True:
                if len(self.buf) >= 2:
                    n = self.buf[1] & 0x7F
                    at = 2
                    if n == 126 and len(self.buf) >= 4:
                        n, at = struct.unpack("!H", self.buf[2:4])[0], 4
                    elif n == 127 and len(self.buf) >= 10:
                        n, at = struct.unpack("!Q", self.buf[2:10])[0], 10
                    if (n < 126 or at > 2) and len(self.buf) >= at + n:
                        break
                data = await self.stream.receive_some(1 << 20)
                if not data:
                    raise EOFError
                self.buf += data
            opcode = self.buf[0] & 0x0F
            payload = bytes(self.buf[at : at + n])
            del self.buf[: at + n]
            if opcode in (0x9, 0xA):
                if opcode == 0x9:
                    await self.send(0xA, payload)
                continue
            return opcode, payload

    async def __aenter__(self) -> Raw:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        with trio.move_on_after(1) as scope:
            scope.shield = True
            await self.stream.aclose()


async def http(port: int, method: str, path: str, body: bytes = b"", source: str = ATTACKER) -> int:
    """One HTTP request on its own connection; the status."""
    stream = await trio.open_tcp_stream("127.0.0.1", port, local_address=source)
    async with stream:
        await stream.send_all(
            f"{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n"
            "Connection: close\r\n\r\n".encode()
            + body
        )
        data = b""
        while b"\r\n" not in data:
            chunk = await stream.receive_some(65536)
            if not chunk:
                return 0
            data += chunk
        return int(data.split(b" ", 2)[1])


async def new_room(port: int, source: str = ATTACKER) -> str:
    stream = await trio.open_tcp_stream("127.0.0.1", port, local_address=source)
    async with stream:
        await stream.send_all(b"POST /new HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n")
        data = b""
        while True:
            chunk = await stream.receive_some(65536)
            data += chunk
            head, _, body = data.partition(b"\r\n\r\n")
            length = re.search(rb"(?i)content-length: *(\d+)", head)
            if length and len(body) >= int(length.group(1)):
                return str(json.loads(body)["room"])
            if not chunk:
                raise ConnectionError(data.decode(errors="replace"))


# -- the server under test ---------------------------------------------------------------


class Server:
    def __init__(self, process: trio.Process, port: int, lines: list[str]) -> None:
        self.process = process
        self.port = port
        self.lines = lines

    def rss(self) -> int:
        try:
            status = Path(f"/proc/{self.process.pid}/status").read_text()
        except OSError:
            return 0
        match = re.search(r"VmRSS:\s+(\d+) kB", status)
        return int(match.group(1)) * 1024 if match else 0


async def start_server(nursery: trio.Nursery, src: str | None, workdir: str) -> Server:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DRIFTTRIO_")}
    env["PYTHONUNBUFFERED"] = "1"
    if src:
        env["PYTHONPATH"] = src
    process = await trio.lowlevel.open_process(
        [sys.executable, "-c", "from drifttrio.cli import main; main()", "serve", "--port", "0"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env=env,
        cwd=workdir,
    )
    lines: list[str] = []
    found = trio.Event()
    port = [0]

    async def pump() -> None:
        assert process.stderr is not None
        buffer = b""
        async for chunk in process.stderr:
            buffer += chunk
            *done, buffer = buffer.split(b"\n")
            for raw in done:
                line = raw.decode(errors="replace")
                lines.append(line)
                if not found.is_set() and (
                    m := re.search(r"listening on http://[^:]+:(\d+)", line)
                ):
                    port[0] = int(m.group(1))
                    found.set()

    nursery.start_soon(pump)
    with trio.fail_after(30):
        await found.wait()
    return Server(process, port[0], lines)


# -- the canary ---------------------------------------------------------------------------


class Canary:
    """An honest client: appends to its own room every ``interval`` and times the echo."""

    def __init__(self, port: int, interval: float) -> None:
        self.port = port
        self.interval = interval
        self.samples: list[tuple[float, float]] = []  # (when, round trip in s)
        self.lost = 0
        self.out_of_order = 0
        self.failed = ""
        #: When the round trip in flight started (it counts as a sample if it
        #: has not come back by the end of a window: a stalled canary is slow).
        self.in_flight: float | None = None

    async def run(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        room = await new_room(self.port, CANARY)
        ws = await Raw.connect(self.port, f"/room/{room}/connect", CANARY)
        task_status.started()
        n = 0
        last_seq = 0
        try:
            while True:
                n += 1
                started = self.in_flight = time.perf_counter()
                await ws.send_json(
                    {"type": "push", "key": "c", "value": n, "action": {"type": "append"}}
                )
                while True:
                    opcode, payload = await ws.recv()
                    if opcode == 0x8:
                        self.failed = f"closed: {payload[2:].decode(errors='replace')}"
                        return
                    message = json.loads(payload)
                    if message.get("type") == "push" and message.get("value") == n:
                        seq = message["seq"]
                        if seq != last_seq + 1:
                            self.out_of_order += 1
                        last_seq = seq
                        break
                self.samples.append((started, time.perf_counter() - started))
                self.in_flight = None
                await trio.sleep(max(0.0, self.interval - (time.perf_counter() - started)))
        except (EOFError, trio.BrokenResourceError, OSError) as exc:
            self.failed = f"connection lost: {exc!r}"
        finally:
            await ws.aclose()

    def stats(self, since: float, until: float) -> dict[str, float | int]:
        rtts = sorted(r for t, r in self.samples if since <= t <= until)
        if self.in_flight is not None and self.in_flight <= until:
            rtts.append(until - max(since, self.in_flight))
            rtts.sort()
        if not rtts:
            return {"samples": 0}
        return {
            "samples": len(rtts),
            "p50_ms": round(statistics.median(rtts) * 1000, 1),
            "p99_ms": round(rtts[min(len(rtts) - 1, int(len(rtts) * 0.99))] * 1000, 1),
            "max_ms": round(rtts[-1] * 1000, 1),
        }


# -- the attacks --------------------------------------------------------------------------


class Tally:
    def __init__(self) -> None:
        self.counts: dict[str, int] = {}

    def add(self, what: str, n: int = 1) -> None:
        self.counts[what] = self.counts.get(what, 0) + n


async def _drain(ws: Raw, tally: Tally) -> None:
    """Read and count what the server says to an attacker, until it closes."""
    try:
        while True:
            opcode, payload = await ws.recv()
            if opcode == 0x8:
                code = struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else 1005
                tally.add(f"closed {code}")
                return
            if opcode == 0x1:
                kind = json.loads(payload).get("type")
            else:
                kind = cbor2.loads(payload).get("type")
            tally.add(f"got {kind}")
    except (EOFError, trio.BrokenResourceError, trio.ClosedResourceError, OSError):
        tally.add("connection lost")


async def _flood(
    port: int,
    room: str,
    tally: Tally,
    make: Callable[[], tuple[int, bytes]],
    query: str = "",
    connections: int = 4,
) -> None:
    """``connections`` sockets, each sending ``make()`` frames as fast as the server
    reads them, reconnecting when closed."""

    async def one() -> None:
        while True:
            try:
                ws = await Raw.connect(port, f"/room/{room}/connect{query}")
            except (ConnectionError, OSError) as exc:
                tally.add(f"refused: {str(exc)[:40]}")
                await trio.sleep(0.1)
                continue
            tally.add("connected")
            try:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(_drain, ws, tally)
                    try:
                        while True:
                            opcode, payload = make()
                            await ws.send(opcode, payload)
                            tally.add("sent")
                    except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                        pass
            finally:
                await ws.aclose()

    async with trio.open_nursery() as nursery:
        for _ in range(connections):
            nursery.start_soon(one)


def _push(value: Any, key: str = "k", action: str = "relay") -> dict[str, Any]:
    return {"type": "push", "key": key, "value": value, "action": {"type": action}}


def _containers_json() -> tuple[int, bytes]:
    head = json.dumps(_push(None)).encode().split(b"null")
    n = (MIB - 200) // 3
    return 0x1, head[0] + b"[" + b"[]," * (n - 1) + b"[]]" + head[1]


def _containers_cbor() -> tuple[int, bytes]:
    return 0x2, cbor2.dumps(_push([[]] * (MIB - 200)))


async def attack_json(port: int, room: str, tally: Tally) -> None:
    """1 MiB JSON messages of ~350,000 empty arrays, relayed, on 4 connections."""
    frame = _containers_json()
    await _flood(port, room, tally, lambda: frame)


async def attack_cbor(port: int, room: str, tally: Tally) -> None:
    """1 MiB CBOR messages of ~1,000,000 empty arrays, relayed, on 4 connections."""
    frame = _containers_cbor()
    await _flood(port, room, tally, lambda: frame, "?cbor=true")


async def attack_maps(port: int, room: str, tally: Tally) -> None:
    """``replace`` of ~1,000,000 empty maps (1 MiB of CBOR), a new key each time."""
    body = cbor2.dumps([{}] * (MIB - 200))
    keys = iter(range(10**9))

    def make() -> tuple[int, bytes]:
        # Splice the value in: encoding a million maps per message would be the
        # attacker's bottleneck, not the server's.
        head = cbor2.dumps({"type": "push", "key": f"k{next(keys)}", "action": {"type": "replace"}})
        # {type, key, action} -> add "value": body (map of 4 entries)
        return 0x2, bytes([0xA4]) + head[1:] + cbor2.dumps("value") + body

    await _flood(port, room, tally, make, "?cbor=true", connections=1)


async def _fill(port: int, room: str, frames: list[bytes]) -> None:
    """Send ``frames`` on a connection of their own; return once the room applied them."""
    async with await Raw.connect(port, f"/room/{room}/connect") as ws:
        await ws.stream.send_all(b"".join(frames))
        await ws.send_json({"type": "ping", "nonce": 1})
        while True:
            opcode, payload = await ws.recv()
            if opcode == 0x1 and json.loads(payload).get("type") == "pong":
                return


async def attack_get_no_read(port: int, room: str, tally: Tally) -> None:
    """A 16 MB retained stream; 24 HTTP clients send a ``get`` each and never read."""
    value = json.dumps(_push("x" * (MIB - 1000), "big", "append")).encode()
    await _fill(port, room, [Raw.frame(0x1, value)] * 16)
    body = json.dumps({"type": "get", "key": "big", "seq": 0}).encode()
    streams = []
    try:
        for _ in range(24):
            stream = await trio.open_tcp_stream("127.0.0.1", port, local_address=ATTACKER)
            streams.append(stream)
            await stream.send_all(
                f"POST /room/{room}/send HTTP/1.1\r\nHost: x\r\n"
                f"Content-Length: {len(body)}\r\n\r\n".encode()
                + body
            )
            tally.add("sent")
        await trio.sleep_forever()
    finally:
        for stream in streams:
            with trio.move_on_after(1) as scope:
                scope.shield = True
                await stream.aclose()


async def attack_new_keys(port: int, room: str, tally: Tally) -> None:
    """``get`` with ``seq: null`` for a new 1 KB key, 190 times a second."""
    async with (
        await Raw.connect(port, f"/room/{room}/connect") as ws,
        trio.open_nursery() as nursery,
    ):
        nursery.start_soon(_drain, ws, tally)
        n = 0
        while True:
            n += 1
            await ws.send_json({"type": "get", "key": f"{n:08d}" + "k" * 1016, "seq": None})
            tally.add("sent")
            await trio.sleep(1 / 190)


async def attack_pongs(port: int, room: str, tally: Tally) -> None:
    """3 connections sending unsolicited pongs as fast as they can."""
    frame = (0xA, b"")
    batch = Raw.frame(0xA, b"") * 1000

    async def one() -> None:
        async with (
            await Raw.connect(port, f"/room/{room}/connect") as ws,
            trio.open_nursery() as nursery,
        ):
            nursery.start_soon(_drain, ws, tally)
            try:
                while True:
                    await ws.stream.send_all(batch)
                    tally.add("sent", 1000)
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                tally.add("connection lost")
            nursery.cancel_scope.cancel()

    del frame
    async with trio.open_nursery() as nursery:
        for _ in range(3):
            nursery.start_soon(one)


async def attack_send(port: int, room: str, tally: Tally) -> None:
    """Pushes over ``POST /room/ID/send`` on one keep-alive connection, back to back."""
    body = json.dumps(_push(1)).encode()
    request = (
        f"POST /room/{room}/send HTTP/1.1\r\nHost: x\r\n"
        f"Content-Length: {len(body)}\r\n\r\n".encode()
        + body
    )
    while True:
        stream = await trio.open_tcp_stream("127.0.0.1", port, local_address=ATTACKER)
        async with stream:
            buf = b""
            try:
                while True:
                    await stream.send_all(request)
                    while True:
                        head, sep, rest = buf.partition(b"\r\n\r\n")
                        if sep:
                            length = re.search(rb"(?i)content-length: *(\d+)", head)
                            size = int(length.group(1)) if length else 0
                            if len(rest) >= size:
                                tally.add(f"HTTP {head.split(b' ', 2)[1].decode()}")
                                buf = rest[size:]
                                break
                        chunk = await stream.receive_some(65536)
                        if not chunk:
                            raise EOFError
                        buf += chunk
                    if b"connection: close" in head.lower():
                        break
            except (EOFError, trio.BrokenResourceError, OSError):
                tally.add("connection lost")


async def attack_bytes(port: int, room: str, tally: Tally) -> None:
    """1 MB CBOR byte strings relayed into a room with a JSON member (bytes become
    arrays of integers in JSON, ~3.6 MB a frame)."""
    frame = (0x2, cbor2.dumps(_push(os.urandom(MIB - 200))))
    async with (
        await Raw.connect(port, f"/room/{room}/connect") as member,
        trio.open_nursery() as nursery,
    ):
        nursery.start_soon(_drain, member, tally)
        await _flood(port, room, tally, lambda: frame, "?cbor=true", connections=2)


async def attack_debug(port: int, room: str, tally: Tally) -> None:
    """A debug member of a room with a 10,000-value stream; appends as fast as allowed."""
    # 10 connections of 1,000 appends each: within the per-connection burst.
    for i in range(10):
        frames = [
            Raw.frame(0x1, json.dumps(_push(i * 1000 + j, "log", "append")).encode())
            for j in range(1000)
        ]
        await _fill(port, room, frames)
    debug = await Raw.connect(port, f"/room/{room}/connect?debug=true")
    async with debug, trio.open_nursery() as nursery:
        nursery.start_soon(_drain, debug, tally)
        frame = (0x1, json.dumps(_push(1, "log", "append")).encode())
        await _flood(port, room, tally, lambda: frame, connections=1)


async def _persist(name: str, port: int, room: str, tally: Tally) -> None:
    """Run an attack, and again whenever the server's answers break it (a closed
    connection mid-send, say), until the window ends: an attacker does not give up."""
    while True:
        try:
            await ATTACKS[name](port, room, tally)
        except Exception as exc:  # an ExceptionGroup of its tasks too
            tally.add(f"{name} restarted after {type(exc).__name__}")
        await trio.sleep(0.05)


ATTACKS: dict[str, Callable[[int, str, Tally], Awaitable[None]]] = {
    "json_containers": attack_json,
    "cbor_containers": attack_cbor,
    "replace_empty_maps": attack_maps,
    "get_never_read": attack_get_no_read,
    "get_new_keys": attack_new_keys,
    "pong_flood": attack_pongs,
    "send_flood": attack_send,
    "bytes_to_json": attack_bytes,
    "debug_view": attack_debug,
}


async def run_attack(name: str, args: argparse.Namespace) -> dict[str, Any]:
    return await run_attacks(
        [name], args.seconds, src=args.src, warmup=args.warmup, interval=args.interval
    )


async def run_attacks(
    names: list[str],
    seconds: float,
    *,
    src: str | None = None,
    warmup: float = 2.0,
    interval: float = 0.05,
) -> dict[str, Any]:
    """Run the named attacks together (each in a room of its own) against one fresh
    server while the canary measures; what :func:`main` reports per attack."""
    with tempfile.TemporaryDirectory() as workdir:
        async with trio.open_nursery() as nursery:
            server = await start_server(nursery, src, workdir)
            canary = Canary(server.port, interval)
            await nursery.start(canary.run)
            await trio.sleep(warmup)
            quiet = canary.stats(0, time.perf_counter())
            rss_before = server.rss()
            peak = rss_before
            tally = Tally()
            rooms = [await new_room(server.port) for _ in names]
            started = time.perf_counter()
            try:
                with trio.move_on_after(seconds):
                    async with trio.open_nursery() as attack:
                        for name, room in zip(names, rooms, strict=True):
                            attack.start_soon(_persist, name, server.port, room, tally)
                        while True:
                            peak = max(peak, server.rss())
                            await trio.sleep(0.1)
            except Exception as exc:  # the attacker's own failure, reported as such
                tally.add(f"attacker failed: {exc!r}"[:80])
            ended = time.perf_counter()
            during = canary.stats(started, ended)
            rss_after = server.rss()
            failed = canary.failed
            server.process.terminate()
            with trio.move_on_after(10):
                await server.process.wait()
            server.process.kill()
            await server.process.wait()
            nursery.cancel_scope.cancel()
    tracebacks = sum("Traceback" in line for line in server.lines)
    first = next((i for i, line in enumerate(server.lines) if "Traceback" in line), None)
    sample = "\n".join(server.lines[max(0, first - 2) : first + 40]) if first is not None else ""
    return {
        "attack": "+".join(names),
        "canary_quiet": quiet,
        "canary_during": during,
        "canary_failed": failed,
        "canary_out_of_order": canary.out_of_order,
        "rss_before_mb": round(rss_before / MIB, 1),
        "rss_peak_mb": round(peak / MIB, 1),
        "rss_growth_mb": round((peak - rss_before) / MIB, 1),
        "rss_after_mb": round(rss_after / MIB, 1),
        "attacker": tally.counts,
        "server_tracebacks": tracebacks,
        "server_first_traceback": sample,
        "server_log_lines": len(server.lines),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--src", help="PYTHONPATH for the server (another checkout's src)")
    parser.add_argument(
        "--only", nargs="*", default=[], help="attacks whose name contains one of these"
    )
    parser.add_argument("--seconds", type=float, default=8.0, help="attack duration (8)")
    parser.add_argument("--warmup", type=float, default=2.0, help="quiet canary time first (2)")
    parser.add_argument("--interval", type=float, default=0.05, help="canary period (0.05 s)")
    parser.add_argument("--json", action="store_true", help="one JSON document on stdout")
    args = parser.parse_args()
    names = [n for n in ATTACKS if not args.only or any(o in n for o in args.only)]
    results = []
    for name in names:
        result = trio.run(run_attack, name, args)
        results.append(result)
        if not args.json:
            during, quiet = result["canary_during"], result["canary_quiet"]
            p50, p99, top = (during.get(k, "-") for k in ("p50_ms", "p99_ms", "max_ms"))
            print(
                f"{name:20} canary p50 {p50:>7} ms  p99 {p99:>7} ms  max {top:>7} ms"
                f"  (quiet p50 {quiet.get('p50_ms', '-')})"
                f"  RSS {result['rss_before_mb']} -> peak {result['rss_peak_mb']} MB"
                f"  tracebacks {result['server_tracebacks']}"
                f"{'  CANARY ' + result['canary_failed'] if result['canary_failed'] else ''}",
                flush=True,
            )
            print(f"{'':20} attacker: {result['attacker']}", flush=True)
    if args.json:
        json.dump(results, sys.stdout, indent=1)
        print()


if __name__ == "__main__":
    main()
