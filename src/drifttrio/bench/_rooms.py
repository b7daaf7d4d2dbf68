"""The scenarios with rooms of publishers and subscribers: fanout, writers, rooms.

Pushed values carry ``{"p": publisher, "x": padding, "t": perf_counter_ns()}``:
a publisher recognises its own echoes by ``p`` (to keep a fixed number of pushes
in flight), and receivers, in the same process and so on the same clock, take the
latency from ``t``.
"""

from __future__ import annotations

from collections.abc import Callable
from time import perf_counter_ns

import orjson
import trio

from ._context import Context, Phase, close_all, decode
from ._errors import ConnectionLost
from ._model import ScenarioResult
from ._stats import SeqVerifier
from ._team import Bounds, merge_bounds, share
from ._ws import WsClient

__all__ = ["KEY", "Member", "fanout", "push_template", "rooms", "writers"]

KEY = "bench"


def push_template(action: str, key: str, payload: int) -> Callable[[int], str]:
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

    This process drives its :func:`share` of the members (all of them with
    ``--procs 1``). In every room, all members join before anyone publishes; after
    the window the publishers stop, their last pushes are awaited, and every member
    must catch up with its room's last seq: what it never saw is lost.
    """
    o, team = ctx.options, ctx.team
    phase = Phase()
    before = ctx.sample()
    urls = await team.rooms(len(layout), ctx.new_room)
    everyone = [
        (r, window, counts) for r, windows in enumerate(layout) for window, counts in windows
    ]
    mine = share(team, len(everyone))
    clients = await ctx.join_all([urls[everyone[ident][0]] for ident in mine], KEY)
    result.connections = len(clients)
    push = push_template(o.action, KEY, o.payload)
    rooms: dict[int, list[Member]] = {}
    for client, ident in zip(clients, mine, strict=True):
        r, window, counts = everyone[ident]
        role = "publisher" if window else "subscriber"
        label = f"room {r} {role} {ident}" if len(layout) > 1 else f"{role} {ident}"
        rooms.setdefault(r, []).append(
            Member(
                client,
                label,
                ident=ident,
                window=window,
                counts=counts,
                push=push,
                result=result,
                phase=phase,
            )
        )
    try:
        start = await team.start()
        async with trio.open_nursery() as nursery:
            for room in rooms.values():
                for member in room:
                    nursery.start_soon(member.run)
            await ctx.measure(result, phase, before, start)
            bounds = await _drain(ctx, result, phase, rooms, len(layout))
            nursery.cancel_scope.cancel()
    finally:
        await close_all(clients)
    for r, room in rooms.items():
        first, last = merge_bounds([[bounds[r]], [_bounds(room)]])[0]
        if first is None or last is None:
            result.fail("no push came back in a room: does the server echo pushes?")
            continue
        for member in room:
            if member.gone:
                continue  # reported as closed
            member.verifier.expect(first, last)
            result.lost += member.verifier.lost
            result.reordered += member.verifier.reordered
            result.duplicated += member.verifier.duplicated


def _bounds(room: list[Member]) -> Bounds:
    """The lowest first and highest last seq the members of a room saw."""
    firsts = [m.verifier.first for m in room if m.verifier.first is not None]
    lasts = [m.verifier.last for m in room if m.verifier.last is not None]
    return min(firsts, default=None), max(lasts, default=None)


async def _drain(
    ctx: Context, result: ScenarioResult, phase: Phase, rooms: dict[int, list[Member]], count: int
) -> list[Bounds]:
    """Stop publishing; wait for the last echoes, then for every member to catch up
    with its room's last seq (over every load process); each room's bounds then."""
    phase.stopping = True
    members = [m for room in rooms.values() for m in room]
    publishers = [m for m in members if m.window]
    for member in publishers:
        member.check()
    with trio.move_on_after(ctx.timeout):
        for member in publishers:
            await member.idle.wait()
    stuck = sum(max(m.in_flight, 0) for m in publishers if not m.idle.is_set())
    if stuck:
        result.fail(f"{stuck} pushes not echoed to their publisher within {ctx.timeout:g}s")
    bounds = await ctx.team.bounds([_bounds(rooms.get(r, [])) for r in range(count)])
    for r, room in rooms.items():
        for member in room:
            member.target = bounds[r][1] or 0
            member.check()
    with trio.move_on_after(ctx.timeout):
        for member in members:
            await member.caught_up.wait()
    return bounds


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
