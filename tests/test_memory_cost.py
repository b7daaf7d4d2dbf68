"""Retained values are charged at their cost in memory, and all live rooms share a budget.

Issue 15: a ``replace`` of a million empty maps is 1 MiB on the wire (so it was charged
1 MiB against ``max_room_bytes``) but about 65 MB of Python objects, so one room could
reach about 4 GB before its cap refused anything. Here the memory a room holds is
measured with ``tracemalloc`` (deterministic, unlike RSS) against what it is charged;
the real server refuses that push; ``max_retained_bytes`` unloads idle rooms first and
then refuses growing pushes; and the Redis script charges exactly as the Python room.
"""

from __future__ import annotations

import gc
import secrets
import tracemalloc
from collections.abc import Callable
from typing import Any

import cbor2
import httpx
import orjson
import pytest
import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from _rawws import BINARY, TIMEOUT, RawWebSocket, frame
from _redis import RedisServer
from drifttrio import Config, DriftError, open_server
from drifttrio.core.room_state import RoomLimits, RoomState, key_size, value_size
from drifttrio.protocol import Append, Compact, Relay, Replace
from drifttrio.protocol.codec import CBOR, JSON, DecodeLimits, decode_client_message
from drifttrio.protocol.messages import Action, Push, PushEvent, Value
from drifttrio.runtime.hub import Hub, open_hub
from drifttrio.storage.redis import PushItem, RedisStorage, encode_value

#: Nodes per value: enough to dwarf a stream entry's own overhead, and below any
#: per-message node limit at decode.
NODES = 5000
VALUES_PER_ROOM = 4

#: Worst-case shapes: many small items, each costing far more in memory than on the wire.
SMALL_ITEM_SHAPES: dict[str, Callable[[int], object]] = {
    "empty maps": lambda i: [{} for _ in range(NODES)],
    "empty lists": lambda i: [[] for _ in range(NODES)],
    "small ints": lambda i: [n % 200 for n in range(NODES)],
    "large ints": lambda i: [10**9 + n + i for n in range(NODES)],
    "floats": lambda i: [n + 0.5 + i for n in range(NODES)],
    "short strings": lambda i: [f"s{n}" for n in range(NODES)],
    "short non-ASCII strings": lambda i: [f"é{n}" for n in range(NODES)],
    "short byte strings": lambda i: [b"abc" for _ in range(NODES)],
    "nested to max_value_depth": lambda i: [_nested(62) for _ in range(NODES // 62)],
    "maps of one key": lambda i: [{"a": n} for n in range(NODES)],
    "maps of many keys": lambda i: [{f"k{k}": k for k in range(25)} for _ in range(NODES // 25)],
}

#: Large scalars: charged about their size, as before (a room holds as much of them).
LARGE_SHAPES: dict[str, Callable[[int], object]] = {
    "ASCII string": lambda i: "x" * (1 << 18) + str(i),
    "non-ASCII string": lambda i: "é" * (1 << 17) + str(i),
    "emoji string": lambda i: "\U0001f600" * (1 << 16) + str(i),
    "byte string": lambda i: b"x" * (1 << 18) + bytes([i]),
}


#: What a room costs whatever it holds (its dict of streams...): not charged.
ROOM = 1024


def _nested(depth: int) -> object:
    value: object = []
    for _ in range(depth):
        value = [value]
    return value


def retain(make: Callable[[int], object], codec: str) -> tuple[int, int]:
    """Decode VALUES_PER_ROOM values as the server does, retain them in a room and
    encode each once per codec (as a broadcast does); return (traced bytes, charged)."""
    messages: list[str | bytes] = []
    for i in range(VALUES_PER_ROOM):
        message = {"type": "push", "key": "k", "action": {"type": "replace"}, "value": make(i)}
        messages.append(cbor2.dumps(message) if codec == "cbor" else orjson.dumps(message).decode())
    state = RoomState(limits=RoomLimits(max_room_bytes=1 << 40))
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for i, raw in enumerate(messages):
            # Shapes past max_message_nodes too: what a user who raises it pays.
            push = decode_client_message(raw, DecodeLimits(max_nodes=1 << 30))
            assert isinstance(push, Push)
            outcome = state.push(f"k{i}", push.value, Replace())
            assert outcome.broadcast is not None
            event = PushEvent(f"k{i}", outcome.broadcast.value, outcome.broadcast.seq)
            CBOR.encode(event)
            JSON.encode(event)
            del push, outcome, event
        gc.collect()
        traced = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    return traced, state.bytes


@pytest.mark.parametrize("codec", ["cbor", "json"])
def test_a_room_holds_at_most_what_it_is_charged_for_small_item_values(codec: str) -> None:
    over = {}
    for name, make in SMALL_ITEM_SHAPES.items():
        if codec == "json" and name == "short byte strings":
            continue  # JSON has no byte strings
        traced, charged = retain(make, codec)
        # The charge is an upper bound (the stream's own entries aside) ...
        if traced > charged * 1.05:
            over[name] = f"holds {traced} bytes, charged {charged} ({traced / charged:.1f}x)"
    assert not over, over


def test_large_values_are_charged_about_their_memory_and_no_less() -> None:
    for name, make in LARGE_SHAPES.items():
        traced, charged = retain(make, "cbor")
        assert traced <= charged + ROOM, f"{name}: holds {traced} bytes, charged {charged}"
        # A non-ASCII string caches its UTF-8 copy when encoded: about 3x its characters
        # for 1-byte ones, at most; ASCII strings and byte strings cost their length.
        assert charged <= 3.1 * traced, f"{name}: charged {charged} for {traced} bytes"
    # A large ASCII or byte string costs its length plus its entry, as it did in CBOR.
    text = "x" * 100_000
    assert value_size(text) <= len(text) + value_size(None) + 64
    assert value_size(text.encode()) <= len(text) + value_size(None) + 64


def test_shared_objects_cost_only_their_slot() -> None:
    entry = value_size(None)  # what any entry costs, its value aside
    assert entry == value_size(True) == value_size(0) == value_size(256) > 0
    assert value_size(257) - entry == value_size(-6) - entry == value_size(1.5) - entry == 32
    assert value_size([0] * 1000) == value_size([None] * 1000) == value_size([False] * 1000)
    assert value_size([0] * 1000) < value_size([1000] * 1000)


# -- the real server ---------------------------------------------------------------------


async def test_the_server_refuses_a_million_empty_maps_that_would_take_72_mb() -> None:
    """The push of issue 15, on the defaults: 1 MiB of CBOR, 72 MB in memory; the
    64 MiB room cap (or a decode limit) refuses it, and the room keeps nothing."""
    value = [{}] * 1_000_000
    message = cbor2.dumps(
        {"type": "push", "key": "k", "action": {"type": "replace"}, "value": value}
    )
    assert len(message) <= Config().max_message_bytes
    async with (
        open_server(Config()) as server,
        httpx.AsyncClient(base_url=server.url, trust_env=False, timeout=TIMEOUT) as client,
    ):
        room = (await client.post("/new")).json()["room"]
        ws = await RawWebSocket.connect(server.host, server.port)
        try:
            await ws.handshake(f"/room/{room}/connect")
            await ws.send(frame(BINARY, message))
            with trio.fail_after(TIMEOUT):
                answer = await ws.recv()
            assert answer["type"] == "error", "a million empty maps were retained"
            await ws.send(frame(BINARY, cbor2.dumps({"type": "get", "key": "k", "seq": 0})))
            with trio.fail_after(TIMEOUT):
                init = await ws.recv()
            assert init == {"type": "init", "key": "k", "data": []}
        finally:
            await ws.aclose()


# -- the server-wide budget ----------------------------------------------------------------

BLOB = "x" * 40_000
#: What pushing BLOB to a new key "k" costs.
COST = key_size("k") + value_size(BLOB)


def evictions(hub: Hub) -> float:
    return hub.metrics.registry.get_sample_value("drifttrio_rooms_evicted_total") or 0.0


async def test_the_budget_unloads_idle_rooms_least_recently_used_first() -> None:
    config = Config(max_retained_bytes=3 * COST + COST // 2, room_idle_seconds=3600)
    async with open_hub(config) as hub:
        a, b, c, d = [await hub.create_room() for _ in range(4)]
        for room in (a, b, c):
            await hub.push(room, "k", BLOB)
        await hub.get(b, "k")  # b used after c: a is the least recently used
        assert hub.budget.used == 3 * COST
        await hub.push(d, "k", BLOB)  # one room's worth over: a is unloaded, no refusal
        assert set(hub.rooms) == {b, c, d}
        assert hub.budget.used == 3 * COST
        assert evictions(hub) == 1
        # Its data stayed in the store: it loads again, and c (now the least recently
        # used idle room) makes room for it.
        assert [e.value for e in await hub.get(a, "k")] == [BLOB]
        assert set(hub.rooms) == {a, b, d}
        assert hub.budget.used == 3 * COST
        assert evictions(hub) == 2


async def test_past_the_budget_growing_pushes_are_refused_and_others_pass() -> None:
    config = Config(max_retained_bytes=2 * COST + COST // 2, room_idle_seconds=3600)
    async with open_hub(config) as hub:
        a, b = await hub.create_room(), await hub.create_room()
        async with hub.subscribe(a), hub.subscribe(b):  # members: not idle, never unloaded
            await hub.push(a, "k", BLOB)
            await hub.push(b, "k", BLOB)
            with pytest.raises(DriftError, match=r"^server memory budget reached: "):
                await hub.push(b, "k2", BLOB)
            with pytest.raises(DriftError, match="server memory budget reached"):
                await hub.push(a, "k", BLOB)  # an append grows too
            assert [e.seq for e in await hub.get(a, "k")] == [1], "a refused push was kept"
            # Pushes that do not grow retained memory still pass.
            await hub.push(a, "r", BLOB, Relay())
            await hub.push(a, "k", BLOB.replace("x", "y"), Replace())
            await hub.push(b, "k", "small", Replace())
            # ... and what the smaller replace freed can be used again.
            await hub.push(b, "k2", BLOB[: len(BLOB) // 2])
            assert hub.budget.used <= config.max_retained_bytes
            assert evictions(hub) == 0


async def test_the_budget_refuses_with_503_over_http_and_an_error_over_websocket() -> None:
    config = Config(max_retained_bytes=COST + COST // 2, room_idle_seconds=3600)
    async with (
        open_server(config) as server,
        httpx.AsyncClient(base_url=server.url, trust_env=False, timeout=TIMEOUT) as client,
    ):
        attacker = (await client.post("/new")).json()["room"]
        honest = (await client.post("/new")).json()["room"]
        members = [await RawWebSocket.connect(server.host, server.port) for _ in range(2)]
        try:
            for ws, room in zip(members, (attacker, honest), strict=True):
                await ws.handshake(f"/room/{room}/connect")
                await ws.send_json({"type": "ping", "nonce": 1})  # answered once joined
                assert await ws.recv() == {"type": "pong", "nonce": 1}
            full = {"type": "push", "key": "k", "value": BLOB, "action": {"type": "append"}}
            sent = await client.post(f"/room/{attacker}/send", json=full)
            assert sent.status_code == 200
            refused = await client.post(f"/room/{honest}/send", json=full)
            assert refused.status_code == 503
            assert refused.json()["message"].startswith("server memory budget reached: ")
            # The honest room's member: a growing push gets an error, a relay passes.
            ws = members[1]
            await ws.send_json({**full, "value": BLOB[: COST // 2]})
            error = await ws.recv()
            assert error["type"] == "error"
            assert error["message"].startswith("server memory budget reached: ")
            await ws.send_json({**full, "action": {"type": "relay"}})
            assert (await ws.recv())["type"] == "push"
        finally:
            for ws in members:
                await ws.aclose()


# -- the Redis script charges the same --------------------------------------------------

VALUES = st.one_of(
    st.integers(-10, 10**6),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=40),
    st.binary(max_size=40),
    st.lists(st.just({}), max_size=12),
    st.lists(st.integers(0, 300), max_size=12),
)
OPS = st.lists(
    st.tuples(
        st.sampled_from(["replace", "append", "compact"]),
        st.sampled_from(["a", "b", "c"]),
        VALUES,
        st.integers(0, 3),
    ),
    max_size=25,
)
LIMIT = 700


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(ops=OPS)
def test_the_redis_script_refuses_the_same_pushes_as_the_room_state(
    redis_server: RedisServer, ops: list[tuple[str, str, Any, int]]
) -> None:
    trio.run(_compare_with_redis, redis_server.url, ops)


async def _compare_with_redis(url: str, ops: list[tuple[str, str, Any, int]]) -> None:
    state = RoomState(limits=RoomLimits(max_room_bytes=LIMIT))
    storage = RedisStorage(f"{url}?prefix=t{secrets.token_hex(6)}")
    async with trio.open_nursery() as nursery:
        await nursery.start(storage.run)
        try:
            await storage.create_room("r")
            for name, key, value, back in ops:
                seq = state.seq - back
                action: Action = Compact(seq) if name == "compact" else ACTIONS[name]
                try:
                    outcome = state.push(key, Value(value), action)
                except DriftError:
                    expected = "error"
                else:
                    expected = "noop" if outcome.change is None else "ok"
                item = PushItem(
                    name,  # type: ignore[arg-type]
                    key,
                    encode_value(Value(value)),
                    seq if name == "compact" else 0,
                    value_size(value),
                    key_size(key),
                )
                [result] = await storage.push_batch("r", [item], seen_ev=0, max_bytes=LIMIT)
                assert result.status == expected, (name, key, value, result)
            stored = await storage.client.hget(storage._meta("r"), "bytes")
            assert int(stored) == state.bytes
            snapshot = await storage.load_room("r")
            assert snapshot is not None
            reloaded = RoomState(snapshot.seq, snapshot.streams, limits=state.limits)
            assert reloaded.bytes == state.bytes
        finally:
            await storage.aclose()


ACTIONS: dict[str, Action] = {"replace": Replace(), "append": Append()}


async def test_redis_entries_stored_without_a_charge_count_their_cbor_size(
    redis_server: RedisServer,
) -> None:
    storage = RedisStorage(f"{redis_server.url}?prefix=t{secrets.token_hex(6)}")
    async with trio.open_nursery() as nursery:
        await nursery.start(storage.run)
        try:
            await storage.create_room("r")
            old = cbor2.dumps([{}] * 10)  # as an older version stored it: "SEQ|" + CBOR
            meta = storage._meta("r")
            await storage.client.rpush(storage._stream_prefix("r") + "k", [b"1|" + old])
            await storage.client.hset(meta + ":keys", {"k": "0"})
            await storage.client.hset(meta, {"seq": "1", "bytes": str(len(old))})
            snapshot = await storage.load_room("r")
            assert snapshot is not None
            assert [(e.value, e.seq) for e in snapshot.streams["k"].entries] == [([{}] * 10, 1)]
            new = [{}] * 10
            item = PushItem("replace", "k", encode_value(Value(new)), 0, value_size(new), 1)
            [result] = await storage.push_batch("r", [item], seen_ev=0, max_bytes=10**6)
            assert result.status == "ok"
            # The old entry's CBOR size was taken off, the new entry's charge added.
            assert int(await storage.client.hget(meta, "bytes")) == value_size(new)
        finally:
            await storage.aclose()


async def test_on_redis_each_node_keeps_its_own_budget(redis_server: RedisServer) -> None:
    url = f"{redis_server.url}?prefix=t{secrets.token_hex(6)}"
    small = Config(max_retained_bytes=COST + COST // 2, room_idle_seconds=3600)
    async with open_hub(small, RedisStorage(url)) as a, open_hub(Config(), RedisStorage(url)) as b:
        first, second = await a.create_room(), await a.create_room()
        async with a.subscribe(first), a.subscribe(second):
            await a.push(first, "k", BLOB)
            assert a.budget.used == COST  # the node's mirror of the room is charged
            with pytest.raises(DriftError, match="server memory budget reached"):
                await a.push(second, "k", BLOB)
            await a.push(second, "k", BLOB, Relay())  # not retained: passes
            # The refused push never reached Redis: another node sees nothing retained.
            assert await b.get(second, "k") == []
            await b.push(second, "k", BLOB)  # b's own budget has room
