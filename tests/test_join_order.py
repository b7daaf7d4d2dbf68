"""A connection that asks for a key gets the key's ``init`` before any push of it (issue 17).

The npm client sends its ``get`` only once the socket is open; a push of the key
that reached it first made its ``Reducer`` skip the replayed history for good.
These tests join a busy room many times, over the real server (both transports,
memory, SQLite, two Redis nodes) and in-process, and check every join's first
frame for the key. Then the rule itself: the pure gate (``core/join_gate.py``),
synchronously, and the room's use of it on virtual time.
"""

from __future__ import annotations

import json
import secrets
import struct
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
import trio.testing

from _rawws import CLOSE, RawWebSocket, frame
from _redis import RedisServer
from drifttrio import Config, RunningServer, open_server
from drifttrio.core.join_gate import GateMode, JoinGate, Offer
from drifttrio.protocol import JSON
from drifttrio.protocol.messages import Append, Init, Relay
from drifttrio.runtime import Hub, Member, Outbox
from drifttrio.runtime.commands import GatesDue
from drifttrio.runtime.hub import open_hub
from drifttrio.runtime.room import GetCommand, Join, Leave, PingCommand, PushCommand, Room

TIMEOUT = 60  # a guard against hangs, never a way to wait for something
JOINS = 30
KEY = "tally"

#: No per-address rate limit: every client of these tests comes from 127.0.0.1.
UNLIMITED = {"rate_limit_per_second": 0, "max_connections_per_ip": 0}


# -- a busy room, joined many times, over the network --------------------------------------


def push_frame(key: str, value: Any, action: str = "append") -> dict[str, Any]:
    return {"type": "push", "key": key, "value": value, "action": {"type": action}}


async def member(server: RunningServer, room: str, hello: str = "ping") -> RawWebSocket:
    """A connection whose broadcasts flow: its first ``ping`` (or ``push``) was answered."""
    ws = await RawWebSocket.connect(server.host, server.port)
    await ws.handshake(f"/room/{room}/connect")
    if hello == "ping":
        await ws.send_json({"type": "ping", "nonce": 1})
        while (await ws.recv())["type"] != "pong":
            pass
    else:
        await ws.send_json(push_frame("hello", "me", "relay"))
        while (await ws.recv()).get("key") != "hello":
            pass
    return ws


async def append_until(ws: RawWebSocket, stop: trio.Event) -> None:
    """Append to KEY as fast as the room echoes, until ``stop``: a busy room."""
    n = 0
    while not stop.is_set():
        n += 1
        await ws.send_json(push_frame(KEY, {"n": n}))
        while True:
            message = await ws.recv()
            if message["type"] == "push" and message["value"] == {"n": n}:
                break
            assert message["type"] != "error", message


async def join_once(server: RunningServer, room: str) -> tuple[str, int, int]:
    """Connect and at once ask for KEY (as the npm client does once the socket opens).

    Returns the type of the first frame for KEY, the last seq its ``init`` covers,
    and the seq of the first push of KEY after it.
    """
    ws = await RawWebSocket.connect(server.host, server.port)
    try:
        await ws.handshake(f"/room/{room}/connect")
        await ws.send_json({"type": "get", "key": KEY, "seq": 0})
        first = await ws.recv()
        while first.get("key") != KEY:
            first = await ws.recv()
        if first["type"] != "init":
            return first["type"], 0, 0
        covered = max((entry["seq"] for entry in first["data"]), default=0)
        following = await ws.recv()
        while following.get("key") != KEY:
            following = await ws.recv()
        return "init", covered, following["seq"]
    finally:
        await ws.aclose()


async def busy_joins(
    writer: RunningServer, reader: RunningServer, room: str, hello: str = "ping"
) -> list[str]:
    """Join ``room`` on ``reader`` JOINS times while a member of ``writer`` appends."""
    problems: list[str] = []
    with trio.fail_after(TIMEOUT):
        ws = await member(writer, room, hello)
        try:
            async with trio.open_nursery() as nursery:
                stop = trio.Event()
                nursery.start_soon(append_until, ws, stop)
                for attempt in range(JOINS):
                    kind, covered, following = await join_once(reader, room)
                    if kind != "init":
                        problems.append(f"join {attempt}: first frame for {KEY} is a {kind}")
                    elif following != covered + 1:
                        problems.append(
                            f"join {attempt}: init covers seq {covered}, next push is {following}"
                        )
                stop.set()
        finally:
            await ws.aclose()
    return problems


async def new_room(server: RunningServer) -> str:
    async with httpx.AsyncClient(base_url=server.url, trust_env=False) as http:
        response = await http.post("/new")
        response.raise_for_status()
        room: str = response.json()["room"]
        return room


@pytest.mark.parametrize("transport", ["drifttrio", "hypercorn"])
@pytest.mark.parametrize("store", ["memory", "sqlite"])
async def test_every_join_gets_the_init_before_any_push(
    transport: str, store: str, tmp_path: Path
) -> None:
    url = f"sqlite:///{tmp_path}/rooms.db" if store == "sqlite" else "memory"
    async with open_server(Config(store=url, **UNLIMITED), transport=transport) as server:
        room = await new_room(server)
        assert await busy_joins(server, server, room) == []


async def test_every_join_on_another_redis_node_gets_the_init_first(
    redis_server: RedisServer,
) -> None:
    """The writer's first push opens its gate (a hold of a minute would otherwise
    keep its own echo back past the test's guard)."""
    store = f"{redis_server.url}?prefix=t{secrets.token_hex(6)}"
    settings = {"store": store, "join_hold_seconds": 60.0, **UNLIMITED}
    async with (
        open_server(Config(**settings)) as writer,
        open_server(Config(**settings), transport="hypercorn") as reader,
    ):
        room = await new_room(writer)
        assert await busy_joins(writer, reader, room, hello="push") == []


@pytest.mark.parametrize("transport", ["drifttrio", "hypercorn"])
async def test_no_data_frame_follows_the_close_frame_when_leaving_a_busy_room(
    transport: str,
) -> None:
    """A page that unmounts a connection closes it while pushes stream in; its
    browser reports "Data frame received after close" if any follows ours."""
    async with open_server(Config(**UNLIMITED), transport=transport) as server:
        room = await new_room(server)
        with trio.fail_after(TIMEOUT):
            ws = await member(server, room)
            late: list[int] = []
            async with trio.open_nursery() as nursery:
                stop = trio.Event()
                nursery.start_soon(append_until, ws, stop)
                for _ in range(JOINS):
                    leaving = await member(server, room)
                    while (await leaving.recv())["type"] != "push":
                        pass
                    await leaving.send(frame(CLOSE, struct.pack("!H", 1000)))
                    while (await leaving.recv_frame())[0] != CLOSE:
                        pass
                    with suppress(ConnectionError, trio.BrokenResourceError):
                        while True:
                            late.append((await leaving.recv_frame())[0])
                    await leaving.aclose()
                stop.set()
            await ws.aclose()
        assert late == []


async def test_in_process_subscription_with_keys_gets_the_init_first() -> None:
    async with open_hub(Config()) as hub:
        room_id = await hub.create_room()
        stop = trio.Event()

        async def append() -> None:
            n = 0
            while not stop.is_set():
                n += 1
                await hub.push(room_id, KEY, n, Append())

        problems = []
        with trio.fail_after(TIMEOUT):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(append)
                for attempt in range(JOINS):
                    async with hub.subscribe(room_id, [KEY], since=0) as sub:
                        first = await sub.__anext__()
                        following = await sub.__anext__()
                    if not isinstance(first, Init):
                        problems.append(f"join {attempt}: first message is {first!r}")
                    elif following.seq != max((e.seq for e in first.data), default=0) + 1:  # type: ignore[union-attr]
                        problems.append(f"join {attempt}: {following!r} after init {first.data}")
                stop.set()
        assert problems == []


# -- the gate, synchronously ------------------------------------------------------------------


def holding(**kw: Any) -> JoinGate[str]:
    return JoinGate(GateMode.HOLDING, opens_at=10.0, **kw)


def test_gate_holds_until_the_key_is_asked_for_and_gives_back_only_relays() -> None:
    gate = holding()
    assert gate.offer("k", "append 1", 1, retained=True, size=8) is Offer.HELD
    assert gate.offer("k", "relay 2", 2, retained=False, size=7) is Offer.HELD
    assert gate.offer("other", "append 3", 3, retained=True, size=8) is Offer.HELD
    # The init of k covers the append; the relay is not retained, so it follows the init.
    assert [h.item for h in gate.asked("k")] == ["relay 2"]
    assert gate.offer("k", "append 4", 4, retained=True, size=8) is Offer.DELIVER
    assert gate.offer("other", "append 5", 5, retained=True, size=8) is Offer.HELD
    assert (gate.held, gate.held_bytes) == (2, 16)
    # Without an init (get with seq null) nothing covers the held ones.
    assert [h.item for h in gate.asked("other", init_sent=False)] == ["append 3", "append 5"]
    assert (gate.held, gate.held_bytes) == (0, 0)


def test_gate_opens_on_ping_or_time_with_everything_in_order() -> None:
    for opening in ("ping", "time"):
        gate = holding()
        for seq in (1, 2, 3):
            gate.offer(f"k{seq % 2}", f"push {seq}", seq, retained=True, size=1)
        assert not gate.expired(9.9)
        if opening == "ping":
            held = gate.spoke()
        else:
            assert gate.expired(10.0)
            held = gate.open()
        assert [h.item for h in held] == ["push 1", "push 2", "push 3"]
        assert gate.mode is GateMode.OPEN
        assert gate.offer("k9", "push 4", 4, retained=True, size=1) is Offer.DELIVER
        assert not gate.expired(99.0)


def test_gate_shares_the_outbox_budget_and_opens_when_it_is_spent() -> None:
    gate = holding(max_items=4, max_bytes=100)
    assert gate.offer("k", "a", 1, retained=True, size=10, queued=(1, 10)) is Offer.HELD
    assert gate.offer("k", "b", 2, retained=True, size=10, queued=(1, 10)) is Offer.HELD
    # One frame queued + three held fill the budget: the gate opens, the outbox takes them.
    assert gate.offer("k", "c", 3, retained=True, size=10, queued=(1, 10)) is Offer.FULL
    assert gate.mode is GateMode.OPEN
    assert [h.item for h in gate.open()] == ["a", "b", "c"]
    bytes_gate = holding(max_items=100, max_bytes=100)
    assert bytes_gate.offer("k", "a", 1, retained=True, size=60, queued=(0, 30)) is Offer.HELD
    assert bytes_gate.offer("k", "b", 2, retained=True, size=10, queued=(0, 30)) is Offer.FULL


def test_explicit_gate_never_holds_and_never_opens() -> None:
    gate: JoinGate[str] = JoinGate(GateMode.EXPLICIT)
    assert gate.offer("k", "a", 1, retained=False, size=1) is Offer.SKIP
    assert gate.spoke() == []
    assert gate.open() == []
    assert not gate.expired(1e9)
    assert gate.asked("k") == []
    assert gate.offer("k", "b", 2, retained=False, size=1) is Offer.DELIVER
    assert gate.offer("j", "c", 3, retained=False, size=1) is Offer.SKIP


# -- the room's use of the gate, on virtual time ---------------------------------------------


@asynccontextmanager
async def room_of(**settings: Any) -> AsyncIterator[tuple[Hub, Room]]:
    async with open_hub(Config(**settings)) as hub:
        room = await hub.room(await hub.create_room())
        yield hub, room


def websocket_member(hub: Hub, *, explicit: bool = False) -> Member:
    """A member as the web layer makes it: JSON frames, asking only after the join."""
    return hub.new_member(encoder=JSON, explicit=explicit, asks_after_join=True)


async def received(conn: Member) -> list[dict[str, Any]]:
    """What is queued for ``conn`` once the room is idle, decoded."""
    await trio.testing.wait_all_tasks_blocked()
    frames: list[dict[str, Any]] = []
    while len(conn.outbox):
        frames.extend(json.loads(f) for f in await conn.outbox.receive_batch())  # type: ignore[arg-type]
    return frames


async def push(room: Room, key: str, value: Any, relay: bool = False) -> None:
    await room.inbox.send(PushCommand(key, value, Relay() if relay else Append(), pusher()))


def pusher() -> Member:
    """An in-process origin for pushes (its replies are not looked at)."""
    return Member(encoder=None, outbox=Outbox(1 << 16, 1 << 30))


async def test_a_member_that_never_asks_gets_everything_when_its_hold_ends(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """The npm client after a reconnect: it pushes, never sends a get."""
    async with room_of(join_hold_seconds=2.0) as (hub, room):
        conn = websocket_member(hub)
        await room.inbox.send(Join(conn))
        await push(room, "a", 1)
        await push(room, "b", 2, relay=True)
        assert await received(conn) == []
        await trio.sleep(1.9)  # virtual time
        assert await received(conn) == []
        await trio.sleep(0.2)
        assert [(m["key"], m["seq"]) for m in await received(conn)] == [("a", 1), ("b", 2)]
        await push(room, "a", 3)
        assert [m["seq"] for m in await received(conn)] == [3]
        assert not room._holding  # the room no longer waits on this member


async def test_get_releases_its_key_after_the_init_and_ping_releases_the_rest(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with room_of(join_hold_seconds=2.0) as (hub, room):
        conn = websocket_member(hub)
        await room.inbox.send(Join(conn))
        await push(room, "k", "kept")
        await push(room, "k", "relayed", relay=True)
        await push(room, "other", "o")
        await room.inbox.send(GetCommand("k", 0, conn))
        assert await received(conn) == [
            {"type": "init", "key": "k", "data": [{"seq": 1, "value": "kept"}]},
            {"type": "push", "key": "k", "value": "relayed", "seq": 2},
        ]
        await push(room, "k", "live")
        assert [m["seq"] for m in await received(conn)] == [4]
        await room.inbox.send(PingCommand(5, conn))
        assert [(m["type"], m.get("seq")) for m in await received(conn)] == [
            ("push", 3),
            ("pong", None),
        ]


async def test_its_own_first_push_lets_everything_flow(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """The npm client after a reconnect pushes its presence: from then on it gets all."""
    async with room_of(join_hold_seconds=60.0) as (hub, room):
        conn = websocket_member(hub)
        await room.inbox.send(Join(conn))
        await push(room, "k", "before")
        assert await received(conn) == []
        await room.inbox.send(PushCommand("presence", "me", Relay(), conn))
        assert [(m["key"], m["seq"]) for m in await received(conn)] == [
            ("k", 1),
            ("presence", 2),
        ]
        assert not room._holding


async def test_a_push_in_the_same_batch_never_overtakes_the_init() -> None:
    """Push and get in one batch: the push is before the get, so the init covers it."""
    async with room_of(join_hold_seconds=2.0) as (hub, room):
        for explicit in (False, True):
            conn = websocket_member(hub, explicit=explicit)
            await room.inbox.send(Join(conn))
            await trio.testing.wait_all_tasks_blocked()
            room.inbox.send_nowait(PushCommand("k", explicit, Append(), pusher()))
            room.inbox.send_nowait(GetCommand("k", 0, conn))
            messages = await received(conn)
            assert messages[0]["type"] == "init"
            assert [m for m in messages if m["type"] == "push"] == []


async def test_held_broadcasts_share_the_outbox_budget(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A silent member of a busy room holds at most an outbox's worth, then takes
    everything as an ordinary member would."""
    async with room_of(join_hold_seconds=60.0, outbox_messages=4) as (hub, room):
        conn = websocket_member(hub)
        await room.inbox.send(Join(conn))
        for n in range(3):
            await push(room, "k", n)
        assert await received(conn) == []
        await push(room, "k", 3)
        assert [m["seq"] for m in await received(conn)] == [1, 2, 3, 4]
        assert not room._holding


async def test_leaving_while_held_forgets_the_member(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with room_of(join_hold_seconds=2.0) as (hub, room):
        conn = websocket_member(hub)
        await room.inbox.send(Join(conn))
        await push(room, "k", 1)
        await room.inbox.send(Leave(conn))
        await trio.testing.wait_all_tasks_blocked()
        assert not room._holding
        assert conn.gate is None


async def test_no_hold_when_disabled_and_for_debug_members() -> None:
    async with room_of(join_hold_seconds=0) as (hub, room):
        conn = websocket_member(hub)
        await room.inbox.send(Join(conn))
        await push(room, "k", 1)
        assert [m["seq"] for m in await received(conn)] == [1]
    async with room_of() as (hub, room):
        debug = hub.new_member(encoder=JSON, debug=True, asks_after_join=True)
        await room.inbox.send(Join(debug))
        await push(room, "k", 1, relay=True)
        assert [m["type"] for m in await received(debug)] == ["push"]


async def test_a_gates_nudge_does_not_keep_an_empty_room_alive(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """The gates' timer rings after the last member left: the room still ends
    ``room_idle_seconds`` after that member left, not after the ring."""
    async with room_of(join_hold_seconds=5.0, room_idle_seconds=1.0) as (hub, room):
        conn = websocket_member(hub)
        await room.inbox.send(Join(conn))
        await trio.sleep(4.5)
        await room.inbox.send(Leave(conn))
        left_at = trio.current_time()
        with trio.fail_after(60):
            await room.ended.wait()
        # 1 s after the leave; not 1 s after the ring (at 5 s), 0.5 s later
        assert trio.current_time() - left_at < 1.25


class _LosesNudges:
    """A room's inbox that is full whenever the gates' timer nudges (nothing else)."""

    def __init__(self, inbox: trio.MemorySendChannel[Any]) -> None:
        self._inbox = inbox

    def send_nowait(self, command: Any) -> None:
        if isinstance(command, GatesDue):
            raise trio.WouldBlock
        self._inbox.send_nowait(command)

    async def send(self, command: Any) -> None:
        await self._inbox.send(command)


async def test_a_gate_whose_nudge_was_lost_opens_after_the_next_batch(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """The timer's nudge found the inbox full: the room's next batch opens the gate
    that is due, in order, and no gate is held after it."""
    async with room_of(join_hold_seconds=2.0) as (hub, room):
        room.inbox = _LosesNudges(room.inbox)  # type: ignore[assignment]
        conn = websocket_member(hub)
        await room.inbox.send(Join(conn))
        await push(room, "a", 1)
        await trio.sleep(2.5)  # virtual time: the timer rang, its nudge was lost
        assert await received(conn) == []
        await push(room, "b", 2)
        assert [(m["key"], m["seq"]) for m in await received(conn)] == [("a", 1), ("b", 2)]
        assert not room._holding
