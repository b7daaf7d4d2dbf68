"""What every scenario needs: rooms, joined connections, the measured window, progress."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import attrs
import cbor2
import httpx
import orjson
import trio

from ..client._reach import cannot_reach
from ._errors import BenchError
from ._model import BenchOptions, ScenarioResult, ServerUsage
from ._proc import ProcSample, own_cpu_seconds, sample_process
from ._team import Team
from ._ws import WsClient

__all__ = ["Context", "Phase", "close_all", "decode", "progress_line", "single_errors"]

#: Connections opened at once while a scenario sets up.
_JOIN_CONCURRENCY = 64


@attrs.define
class Phase:
    """Where a scenario is: counting (``measuring``), or winding down (``stopping``)."""

    measuring: bool = False
    stopping: bool = False


def decode(raw: str | bytes) -> dict[str, Any]:
    """A server message: JSON text or CBOR binary; ``{}`` if it is not an object."""
    message = orjson.loads(raw) if isinstance(raw, str) else cbor2.loads(raw)
    return message if isinstance(message, dict) else {}


@contextmanager
def single_errors() -> Iterator[None]:
    """Raise a nursery's :class:`BenchError` as itself, not wrapped in a group."""
    try:
        yield
    except BaseExceptionGroup as group:
        matched, _rest = group.split(BenchError)
        if matched is None:
            raise
        leaf: BaseException = matched
        while isinstance(leaf, BaseExceptionGroup):
            leaf = leaf.exceptions[0]
        raise leaf from None


async def close_all(clients: list[WsClient], grace: float = 1.0) -> None:
    """Close every client politely, all at once, waiting at most ``grace`` seconds."""
    with trio.CancelScope(shield=True):
        async with trio.open_nursery() as nursery:
            for client in clients:
                nursery.start_soon(client.aclose, grace)


class Context:
    """One bench run against one server: its options, HTTP client and team."""

    def __init__(self, options: BenchOptions, http: httpx.AsyncClient, team: Team) -> None:
        self.options = options
        self.http = http
        self.team = team
        self.base_url = options.url.rstrip("/")

    @property
    def timeout(self) -> float:
        return self.options.timeout

    def say(self, line: str) -> None:
        if self.options.progress is not None:
            self.options.progress(line)

    async def new_room(self) -> str:
        """Create a room with ``POST {url}/new``; its ``socket_url``."""
        url = f"{self.base_url}/new"
        try:
            response = await self.http.post(url)
        except httpx.HTTPError as exc:
            raise BenchError(cannot_reach(self.base_url, exc)) from None
        if response.status_code != 200:
            hint = " (too many new rooms: wait a minute)" if response.status_code == 429 else ""
            raise BenchError(
                f"POST {url} answered HTTP {response.status_code}{hint}: {response.text[:200]!r}"
            )
        try:
            socket_url = response.json()["socket_url"]
        except (ValueError, KeyError, TypeError):
            raise BenchError(
                f"POST {url} did not answer a room with a socket_url: {response.text[:200]!r}"
            ) from None
        if not isinstance(socket_url, str):
            raise BenchError(f"POST {url} answered a socket_url that is not a string")
        return socket_url

    async def connect(self, socket_url: str) -> WsClient:
        with trio.move_on_after(self.timeout):
            return await WsClient.connect(socket_url)
        raise BenchError(f"no WebSocket upgrade within {self.timeout:g}s: {socket_url}")

    async def join(self, socket_url: str, key: str) -> WsClient:
        """Connect and subscribe to ``key`` (``get`` from seq 0), waiting for the ``init``.

        The ``get`` also subscribes on servers that deliver only the keys a
        connection asked for (later upstream versions).
        """
        with trio.move_on_after(self.timeout):
            client = await WsClient.connect(socket_url)
            try:
                await client.send([orjson.dumps({"type": "get", "key": key, "seq": 0}).decode()])
                while True:
                    raw = await client.receive_one()
                    try:
                        message = decode(raw)
                    except ValueError:
                        raise BenchError(f"not a DriftDB message: {raw!r:.200}") from None
                    if message.get("type") == "init" and message.get("key") == key:
                        return client
                    if message.get("type") == "error":
                        raise BenchError(
                            f"the server answered get with an error: {message.get('message')}"
                        )
            except BenchError as exc:
                await client.aclose(0)
                raise BenchError(f"{socket_url}: {exc}") from None
            except BaseException:
                await client.aclose(0)
                raise
        raise BenchError(f"no init within {self.timeout:g}s after get: {socket_url}")

    async def join_all(self, targets: list[str], key: str) -> list[WsClient]:
        """:meth:`join` each socket URL of ``targets`` (several at once), in order."""
        clients: list[WsClient | None] = [None] * len(targets)
        limiter = trio.CapacityLimiter(_JOIN_CONCURRENCY)

        async def one(index: int, url: str) -> None:
            async with limiter:
                clients[index] = await self.join(url, key)

        try:
            with single_errors():
                async with trio.open_nursery() as nursery:
                    for index, url in enumerate(targets):
                        nursery.start_soon(one, index, url)
        except BaseException:
            await close_all([c for c in clients if c is not None], 0)
            raise
        return [c for c in clients if c is not None]

    def sample(self) -> ProcSample | None:
        """The ``--pid`` process's CPU and RSS now (None without ``--pid``)."""
        return None if self.options.pid is None else sample_process(self.options.pid)

    async def measure(
        self, result: ScenarioResult, phase: Phase, before: ProcSample | None, start: float
    ) -> None:
        """Warm up from ``start`` (the ``time.perf_counter()`` the team agreed on), then
        count for ``seconds`` with a progress line each second.

        Every load process of a run has the same ``start``, so their windows line up.
        ``before``: the server sampled before the scenario connected (for RSS per
        connection).
        """
        options, team = self.options, self.team
        window = start + options.warmup
        end = window + options.seconds
        if options.warmup > 0:
            self.say(f"{result.name}: warming up for {options.warmup:g} s")
            await trio.sleep(max(0.0, window - time.perf_counter()))
        server_start = self.sample()
        cpu_start = own_cpu_seconds()
        begun = time.perf_counter()
        phase.measuring = True
        number = 1
        while (now := time.perf_counter()) < end:
            await trio.sleep(min(window + number, end) - now)
            now = time.perf_counter()
            if now >= window + number and now < end:
                self.say(progress_line(result, now - begun, options.seconds))
                await team.tick(number, result, now - begun)
                number += 1
        phase.measuring = False
        elapsed = time.perf_counter() - begun
        result.seconds = elapsed
        result.client_cpu = (own_cpu_seconds() - cpu_start) / elapsed
        result.client_cpus = [result.client_cpu]
        self.say(progress_line(result, elapsed, options.seconds))
        await team.tick(0, result, elapsed)
        server_end = self.sample()
        if server_start is not None and server_end is not None and before is not None:
            result.server = ServerUsage.between(
                before,
                server_start,
                server_end,
                elapsed=elapsed,
                delivered=result.delivered,
                connections=result.connections,
            )


def progress_line(result: ScenarioResult, elapsed: float, seconds: float) -> str:
    """``fanout:  2.0/5 s  267,000 delivered  133,436 msg/s  p99 12.78 ms``."""
    rate = result.delivered / elapsed if elapsed > 0 else 0.0
    p99 = result.latency.percentile(0.99)
    latency = "" if p99 is None else f"  p99 {p99 / 1e6:.2f} ms"
    return (
        f"{result.name}: {elapsed:4.1f}/{seconds:g} s  "
        f"{result.delivered:,} delivered  {rate:,.0f} {result.unit}{latency}"
    )
