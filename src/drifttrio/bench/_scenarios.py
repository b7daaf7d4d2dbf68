"""The scenarios on their own connections: replay, churn, ping; and the table of all."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from functools import partial
from time import perf_counter_ns

import orjson
import trio

from ._context import Context, Phase, close_all, decode
from ._errors import BenchError, ConnectionLost
from ._model import ScenarioResult
from ._rooms import KEY, fanout, push_template, rooms, writers
from ._stats import SeqVerifier
from ._team import share
from ._ws import WsClient

__all__ = ["RUNNERS"]


async def _fill(
    ctx: Context, result: ScenarioResult, client: WsClient, key: str
) -> tuple[int, int]:
    """Append ``values`` values to ``key``; the first and last seq they got."""
    o = ctx.options
    push = push_template("append", key, o.payload)
    remaining, in_flight = o.values, 0
    first: int | None = None
    last = 0
    while remaining or in_flight:
        n = min(remaining, max(1, o.in_flight) - in_flight)
        if n > 0:
            await client.send([push(0) for _ in range(n)])
            remaining -= n
            in_flight += n
        batch: list[str | bytes] = []
        with trio.move_on_after(ctx.timeout):
            batch = await client.receive()
        if not batch:
            raise BenchError(f"no echo within {ctx.timeout:g}s while appending the replay values")
        for raw in batch:
            message = decode(raw)
            if message.get("type") == "push" and isinstance(seq := message.get("seq"), int):
                in_flight -= 1
                first = seq if first is None else first
                last = seq
            elif message.get("type") == "error":
                raise BenchError(
                    f"the server refused an append of the replay stream: {message.get('message')}"
                    " (fewer --values?)"
                )
    if first is None:
        raise BenchError("no replay value was appended")
    return first, last


async def replay(ctx: Context, result: ScenarioResult) -> None:
    """Fill a stream, then ``get`` it from seq 0 again and again; values/s and get latency.

    Every load process does so on a room and connection of its own.
    """
    o = ctx.options
    result.unit = "values/s"
    result.params = {"values": o.values}
    key = "replay"
    before = ctx.sample()
    [client] = await ctx.join_all([await ctx.new_room()], key)
    result.connections = 1
    phase = Phase()
    done = trio.Event()
    get = orjson.dumps({"type": "get", "key": key, "seq": 0}).decode()

    async def gets(first: int, last: int) -> None:
        while not phase.stopping:
            start = perf_counter_ns()
            await client.send([get])
            init = await _next(client, result, "init", key)
            if init is None:
                continue
            data = init.get("data")
            if not isinstance(data, list):
                result.fail(f"init without a data list: {init!r:.200}")
                break
            verifier = SeqVerifier(after=first - 1)
            for item in data:
                seq = item.get("seq") if isinstance(item, dict) else None
                if isinstance(seq, int):
                    verifier.observe(seq)
            verifier.expect(first, last)
            result.lost += verifier.lost
            result.reordered += verifier.reordered
            result.duplicated += verifier.duplicated
            if phase.measuring:
                result.latency.add(perf_counter_ns() - start)
                result.delivered += len(data)
                result.sent += 1
        done.set()

    try:
        first, last = await _fill(ctx, result, client, key)
        start = await ctx.team.start()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_closed_is_reported, partial(gets, first, last), "replay", result)
            await ctx.measure(result, phase, before, start)
            phase.stopping = True
            with trio.move_on_after(ctx.timeout):
                await done.wait()
            nursery.cancel_scope.cancel()
    finally:
        await close_all([client])


async def _next(
    client: WsClient, result: ScenarioResult, kind: str, key: str | None = None
) -> dict[str, object] | None:
    """The next message of ``kind`` (and ``key``), or None after an ``error`` (counted).

    An error is taken as the answer to what was sent: the server refused it.
    """
    while True:
        raw = await client.receive_one()
        try:
            message = decode(raw)
        except ValueError as exc:
            result.fail(f"undecodable message ({exc}): {raw!r:.200}")
            continue
        if message.get("type") == kind and (key is None or message.get("key") == key):
            return message
        if message.get("type") == "error":
            result.error(str(message.get("message")))
            return None


async def _closed_is_reported(
    work: Callable[[], Awaitable[None]], label: str, result: ScenarioResult
) -> None:
    try:
        await work()
    except ConnectionLost as exc:
        result.closed.append(f"{label}: {exc.code} {exc.reason}".rstrip())


async def churn(ctx: Context, result: ScenarioResult) -> None:
    """Open, subscribe, push, see the echo, close: again and again, ``concurrency`` at once.

    Every load process runs its share of the loops, in a room of its own.
    """
    o = ctx.options
    result.unit = "conn/s"
    result.params = {"concurrency": o.concurrency}
    before = ctx.sample()
    url = await ctx.new_room()
    loops = share(ctx.team, o.concurrency)
    result.connections = len(loops)
    phase = Phase()
    push = push_template("relay", KEY, o.payload)
    get = orjson.dumps({"type": "get", "key": KEY, "seq": 0}).decode()
    echoes: set[int] = set()
    next_id = 0

    async def own_echo(client: WsClient, ident: int, verifier: SeqVerifier) -> int | None:
        while True:
            message = await _next(client, result, "push")
            if message is None:
                return None  # the push was refused
            seq, value = message.get("seq"), message.get("value")
            if not isinstance(seq, int) or not isinstance(value, dict):
                result.fail(f"a push without an integer seq: {message!r:.200}")
                continue
            verifier.observe(seq)
            if value.get("p") == ident:
                return seq

    async def cycle(ident: int) -> None:
        start = perf_counter_ns()
        client = await WsClient.connect(url)
        verifier = SeqVerifier()
        try:
            await client.send([get, push(ident)])
            seq = await own_echo(client, ident, verifier)
        finally:
            await client.aclose(ctx.timeout)
        if seq is None:
            return
        if seq in echoes:
            result.duplicated += 1
        echoes.add(seq)
        result.lost += verifier.lost
        result.reordered += verifier.reordered
        result.duplicated += verifier.duplicated
        if phase.measuring:
            result.latency.add(perf_counter_ns() - start)
            result.delivered += 1
            result.sent += 1

    async def worker(number: int) -> None:
        nonlocal next_id
        while not phase.stopping:
            next_id += 1
            try:
                with trio.fail_after(ctx.timeout):
                    await cycle(next_id)
            except trio.TooSlowError:
                result.fail(f"churn worker {number}: no echo within {ctx.timeout:g}s")
                return
            except BenchError as exc:
                result.fail(f"churn worker {number}: {exc}")
                return

    start = await ctx.team.start()
    async with trio.open_nursery() as nursery:
        for number in loops:
            nursery.start_soon(worker, number)
        await ctx.measure(result, phase, before, start)
        phase.stopping = True
    # Every push got its own seq, and together they are the room's seqs: no hole.
    if echoes and not result.failures:
        result.lost += max(echoes) - min(echoes) + 1 - len(echoes)


async def ping(ctx: Context, result: ScenarioResult) -> None:
    """Sequential ping/pong round trips on one connection: latency without load.

    With several load processes, one of them pings; the others wait the window out.
    """
    result.unit = "rtt/s"
    result.params = {}
    phase = Phase()
    if not share(ctx.team, 1):
        await ctx.measure(result, phase, None, await ctx.team.start())
        return
    before = ctx.sample()
    client = await ctx.connect(await ctx.new_room())
    result.connections = 1

    async def pings() -> None:
        nonce = 0
        while not phase.stopping:
            nonce += 1
            start = perf_counter_ns()
            await client.send([f'{{"type":"ping","nonce":{nonce}}}'])
            with trio.move_on_after(ctx.timeout) as waited:
                pong = await _next(client, result, "pong")
            elapsed = perf_counter_ns() - start
            if waited.cancelled_caught:
                result.fail(f"no pong within {ctx.timeout:g}s")
                return
            if pong is None:
                continue  # refused: counted as an error
            if pong.get("nonce") != nonce:
                result.fail(f"pong nonce {pong.get('nonce')!r}, expected {nonce}")
            if phase.measuring:
                result.latency.add(elapsed)
                result.delivered += 1
                result.sent += 1

    try:
        start = await ctx.team.start()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_closed_is_reported, pings, "ping connection", result)
            await ctx.measure(result, phase, before, start)
            phase.stopping = True
    finally:
        await close_all([client])


#: Scenario name -> coroutine function filling a result.
RUNNERS: dict[str, Callable[[Context, ScenarioResult], Awaitable[None]]] = {
    "fanout": fanout,
    "writers": writers,
    "rooms": rooms,
    "replay": replay,
    "churn": churn,
    "ping": ping,
}
