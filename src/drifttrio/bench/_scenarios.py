"""The scenarios: fanout, writers, rooms, replay, churn, ping.

Each takes a :class:`Context` and fills in a :class:`ScenarioResult`. Pushed
values carry ``{"p": publisher, "t": perf_counter_ns(), "x": padding}``: the
publisher recognises its own echoes by ``p`` (to keep a fixed number of pushes in
flight), and receivers, in the same process and so on the same clock, take the
latency from ``t``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from functools import partial
from time import perf_counter_ns

import orjson
import trio

from ._context import Context, Phase, close_all, decode
from ._errors import BenchError, ConnectionLost
from ._model import ScenarioResult
from ._stats import SeqVerifier
from ._ws import WsClient

__all__ = ["RUNNERS"]

KEY = "bench"


def _push_template(action: str, key: str, payload: int) -> Callable[[int], str]:
    """A function of the publisher id giving a push to send now (JSON text)."""
    head = orjson.dumps({"type": "push", "key": key, "action": {"type": action}}).decode()[:-1]
    pad = "x" * payload

    def push(ident: int) -> str:
        return f'{head},"value":{{"p":{ident},"x":"{pad}","t":{perf_counter_ns()}}}}}'

    return push


class Member:
    """One connection in a room: checks the seq of every push; publishers also send.

    ``window`` > 0 makes it a publisher keeping that many pushes in flight (it counts
    its own echoes); ``counts`` says whether its receipts are deliveries (subscribers,
    writers) or not (a fanout publisher).
    """

    def __init__(
        self,
        client: WsClient,
        label: str,
        *,
        ident: int,
        window: int,
        counts: bool,
        push: Callable[[int], str],
        result: ScenarioResult,
        phase: Phase,
    ) -> None:
        self.client = client
        self.label = label
        self.ident = ident
        self.window = window
        self.counts = counts
        self.push = push
        self.result = result
        self.phase = phase
        self.verifier = SeqVerifier()
        self.in_flight = 0
        #: The seq to reach before the run ends (set once the load stopped).
        self.target: int | None = None
        self.idle = trio.Event()
        self.caught_up = trio.Event()
        self.gone = False

    async def run(self) -> None:
        try:
            await self._loop()
        except ConnectionLost as exc:
            self.result.closed.append(f"{self.label}: {exc.code} {exc.reason}".rstrip())
            self.gone = True
            self.idle.set()
            self.caught_up.set()

    async def _loop(self) -> None:
        client, result, phase, verifier = self.client, self.result, self.phase, self.verifier
        latency, ident, counts, push = result.latency, self.ident, self.counts, self.push
        while True:
            if self.window and not phase.stopping and self.in_flight < self.window:
                n = self.window - self.in_flight
                await client.send([push(ident) for _ in range(n)])
                self.in_flight += n
            batch = await client.receive()
            now = perf_counter_ns()
            measuring = phase.measuring
            delivered = echoed = 0
            for raw in batch:
                try:
                    message = decode(raw)
                except ValueError as exc:
                    result.fail(f"{self.label}: undecodable message ({exc})")
                    continue
                kind = message.get("type")
                if kind == "push":
                    seq = message.get("seq")
                    value = message.get("value")
                    if not isinstance(seq, int) or not isinstance(value, dict):
                        result.fail(f"{self.label}: a push without an integer seq: {raw!r:.200}")
                        continue
                    verifier.observe(seq)
                    if counts:
                        delivered += 1
                        if measuring and isinstance(t := value.get("t"), int):
                            latency.add(now - t)
                    if value.get("p") == ident:
                        echoed += 1
                elif kind == "error":
                    result.error(str(message.get("message")))
                    if self.window and self.in_flight - echoed > 0:
                        self.in_flight -= 1  # the push it refused will not be echoed
            self.in_flight -= echoed
            if measuring:
                result.delivered += delivered
                result.sent += echoed
            self.check()

    def check(self) -> None:
        if self.phase.stopping and self.in_flight <= 0:
            self.idle.set()
        last = self.verifier.last
        if self.target is not None and last is not None and last >= self.target:
            self.caught_up.set()


async def _rooms_run(
    ctx: Context, result: ScenarioResult, layout: list[list[tuple[int, bool]]]
) -> None:
    """Rooms of members, each a ``(window, counts)`` (see :class:`Member`), run to the end.

    In every room, all members join before anyone publishes; after the window the
    publishers stop, their last pushes are awaited, and every member must catch up
    with its room's last seq: what it never saw is lost.
    """
    o = ctx.options
    phase = Phase()
    before = ctx.sample()
    urls = [await ctx.new_room() for _ in layout]
    targets = [url for url, windows in zip(urls, layout, strict=True) for _ in windows]
    clients = await ctx.join_all(targets, KEY)
    result.connections = len(clients)
    push = _push_template(o.action, KEY, o.payload)
    rooms: list[list[Member]] = []
    ident = 0
    for r, windows in enumerate(layout):
        room: list[Member] = []
        for window, counts in windows:
            role = "publisher" if window else "subscriber"
            label = f"room {r} {role} {ident}" if len(layout) > 1 else f"{role} {ident}"
            room.append(
                Member(
                    clients[ident],
                    label,
                    ident=ident,
                    window=window,
                    counts=counts,
                    push=push,
                    result=result,
                    phase=phase,
                )
            )
            ident += 1
        rooms.append(room)
    try:
        async with trio.open_nursery() as nursery:
            for room in rooms:
                for member in room:
                    nursery.start_soon(member.run)
            await ctx.measure(result, phase, before)
            await _drain(ctx, result, phase, rooms)
            nursery.cancel_scope.cancel()
    finally:
        await close_all(clients)
    for room in rooms:
        firsts = [m.verifier.first for m in room if m.verifier.first is not None]
        lasts = [m.verifier.last for m in room if m.verifier.last is not None]
        if not firsts or not lasts:
            result.fail("no push came back in a room: does the server echo pushes?")
            continue
        for member in room:
            if member.gone:
                continue  # reported as closed
            member.verifier.expect(min(firsts), max(lasts))
            result.lost += member.verifier.lost
            result.reordered += member.verifier.reordered
            result.duplicated += member.verifier.duplicated


async def _drain(
    ctx: Context, result: ScenarioResult, phase: Phase, rooms: list[list[Member]]
) -> None:
    """Stop publishing; wait for the last echoes, then for every member to catch up."""
    phase.stopping = True
    members = [m for room in rooms for m in room]
    publishers = [m for m in members if m.window]
    for member in publishers:
        member.check()
    with trio.move_on_after(ctx.timeout):
        for member in publishers:
            await member.idle.wait()
    stuck = sum(max(m.in_flight, 0) for m in publishers if not m.idle.is_set())
    if stuck:
        result.fail(f"{stuck} pushes not echoed to their publisher within {ctx.timeout:g}s")
    for room in rooms:
        lasts = [m.verifier.last for m in room if m.verifier.last is not None]
        for member in room:
            member.target = max(lasts, default=0)
            member.check()
    with trio.move_on_after(ctx.timeout):
        for member in members:
            await member.caught_up.wait()


async def fanout(ctx: Context, result: ScenarioResult) -> None:
    o = ctx.options
    subscribers = o.subscribers_for("fanout")
    result.params = {"subscribers": subscribers, "in_flight": o.in_flight, "action": o.action}
    await _rooms_run(ctx, result, [[(0, True)] * subscribers + [(o.in_flight, False)]])


async def writers(ctx: Context, result: ScenarioResult) -> None:
    o = ctx.options
    window = max(1, o.in_flight // o.writers)
    result.params = {"writers": o.writers, "in_flight": window * o.writers, "action": o.action}
    await _rooms_run(ctx, result, [[(window, True)] * o.writers])


async def rooms(ctx: Context, result: ScenarioResult) -> None:
    o = ctx.options
    subscribers = o.subscribers_for("rooms")
    window = max(1, o.in_flight // o.rooms)
    result.params = {
        "rooms": o.rooms,
        "subscribers": subscribers,
        "in_flight": window * o.rooms,
        "action": o.action,
    }
    room = [(0, True)] * subscribers + [(window, False)]
    await _rooms_run(ctx, result, [room] * o.rooms)


async def _fill(
    ctx: Context, result: ScenarioResult, client: WsClient, key: str
) -> tuple[int, int]:
    """Append ``values`` values to ``key``; the first and last seq they got."""
    o = ctx.options
    push = _push_template("append", key, o.payload)
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
    """Fill a stream, then ``get`` it from seq 0 again and again; values/s and get latency."""
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
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_closed_is_reported, partial(gets, first, last), "replay", result)
            await ctx.measure(result, phase, before)
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
    """Open, subscribe, push, see the echo, close: again and again, ``concurrency`` at once."""
    o = ctx.options
    result.unit = "conn/s"
    result.params = {"concurrency": o.concurrency}
    before = ctx.sample()
    url = await ctx.new_room()
    result.connections = o.concurrency
    phase = Phase()
    push = _push_template("relay", KEY, o.payload)
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

    async with trio.open_nursery() as nursery:
        for number in range(o.concurrency):
            nursery.start_soon(worker, number)
        await ctx.measure(result, phase, before)
        phase.stopping = True
    # Every push got its own seq, and together they are the room's seqs: no hole.
    if echoes and not result.failures:
        result.lost += max(echoes) - min(echoes) + 1 - len(echoes)


async def ping(ctx: Context, result: ScenarioResult) -> None:
    """Sequential ping/pong round trips on one connection: latency without load."""
    result.unit = "rtt/s"
    result.params = {}
    before = ctx.sample()
    client = await ctx.connect(await ctx.new_room())
    result.connections = 1
    phase = Phase()

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
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_closed_is_reported, pings, "ping connection", result)
            await ctx.measure(result, phase, before)
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
