"""The room task and the hub, driven in-process: no network, stepped deterministically."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

import attrs
import cbor2
import pytest
import trio
import trio.testing

from drifttrio import (
    CloseCode,
    Config,
    ConfigError,
    ProtocolError,
    RoomNotFound,
    StorageError,
    open_hub,
)
from drifttrio.core import StreamChange
from drifttrio.protocol import (
    CBOR,
    JSON,
    Append,
    Compact,
    Error,
    Init,
    Pong,
    PushEvent,
    Relay,
    Replace,
    SeqValue,
    StreamSize,
)
from drifttrio.runtime import Hub, Member, Outbox, Room
from drifttrio.runtime.room import GetCommand, Join, Leave, PingCommand, PushCommand
from drifttrio.storage import MemoryStorage

# -- helpers ---------------------------------------------------------------------------------------


def make_conn(
    *,
    messages: int = 256,
    max_bytes: int = 1 << 20,
    policy: str = "disconnect",
    debug: bool = False,
    explicit: bool = False,
    codec: Any = None,
) -> Member:
    return Member(
        encoder=codec,
        outbox=Outbox(messages, max_bytes),
        policy=policy,
        debug=debug,
        explicit=explicit,
    )


async def drain(conn: Member) -> list[Any]:
    """Everything queued for ``conn`` right now (after the room went idle)."""
    await trio.testing.wait_all_tasks_blocked()
    frames: list[Any] = []
    while len(conn.outbox):
        frames.extend(await conn.outbox.receive_batch())
    return frames


async def join(room: Room, *conns: Member) -> None:
    for conn in conns:
        await room.inbox.send(Join(conn))
    await trio.testing.wait_all_tasks_blocked()


def pushes(frames: Sequence[Any]) -> list[tuple[str, Any, int]]:
    return [(f.key, f.value, f.seq) for f in frames if isinstance(f, PushEvent)]


@asynccontextmanager
async def hub_with_room(
    config: Config | None = None, **kw: Any
) -> AsyncIterator[tuple[Hub, str, Room]]:
    async with open_hub(config or Config(), **kw) as hub:
        room_id = await hub.create_room()
        room = await hub.room(room_id)
        yield hub, room_id, room


# -- configuration ---------------------------------------------------------------------------------


def test_config_validates() -> None:
    with pytest.raises(ConfigError, match="outbox_messages"):
        Config(outbox_messages=0)
    with pytest.raises(ConfigError, match="slow_client_policy"):
        Config(slow_client_policy="ignore")
    with pytest.raises(ConfigError, match="room_idle_seconds"):
        Config(room_idle_seconds=-1)
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        Config().outbox_messages = 3


def test_config_from_env() -> None:
    env = {
        "DRIFTTRIO_OUTBOX_MESSAGES": "5",
        "DRIFTTRIO_BROADCAST_COMPACT": "false",
        "DRIFTTRIO_ROOM_IDLE_SECONDS": "1.5",
        "DRIFTTRIO_SLOW_CLIENT_POLICY": "drop",
        "UNRELATED": "x",
    }
    config = Config.from_env(env, outbox_messages=7)
    assert config.outbox_messages == 7  # overrides win
    assert config.broadcast_compact is False
    assert config.room_idle_seconds == 1.5
    assert config.slow_client_policy == "drop"
    with pytest.raises(ConfigError, match="DRIFTTRIO_OUTBOX_BYTES"):
        Config.from_env({"DRIFTTRIO_OUTBOX_BYTES": "lots"})
    with pytest.raises(ConfigError, match="DRIFTTRIO_PUBLIC_METRICS"):
        Config.from_env({"DRIFTTRIO_PUBLIC_METRICS": "maybe"})
    assert Config.from_env({}) == Config()


# -- the hub ---------------------------------------------------------------------------------------


async def test_in_process_push_get_and_ping() -> None:
    async with hub_with_room() as (hub, room_id, _room):
        assert await hub.room_exists(room_id)
        assert await hub.push(room_id, "k", {"a": 1}) is None
        assert await hub.push(room_id, "k", [2]) == 2
        assert await hub.get(room_id, "k") == [SeqValue({"a": 1}, 1), SeqValue([2], 2)]
        assert await hub.get(room_id, "k", since=1) == [SeqValue([2], 2)]
        assert await hub.get(room_id, "nothing") == []
        reply = await hub.request(room_id, lambda r: PingCommand(9, r))
        assert reply.message == Pong(9)


async def test_unknown_rooms() -> None:
    async with open_hub() as hub:
        for bad in ("nope", "../etc", "", "x" * 500, "a b"):
            assert not await hub.room_exists(bad)
            with pytest.raises(RoomNotFound):
                await hub.push(bad, "k", 1)
            with pytest.raises(RoomNotFound):
                await hub.get(bad, "k")


async def test_room_ids_are_fresh_and_url_safe() -> None:
    async with open_hub() as hub:
        ids = {await hub.create_room() for _ in range(20)}
        assert len(ids) == 20
        for room_id in ids:
            assert len(room_id) >= 22  # 128 bits in URL-safe base64
            assert set(room_id) <= set(
                "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
            )


async def test_hub_push_validates_values() -> None:
    async with hub_with_room() as (hub, room_id, room):
        member = make_conn()
        await join(room, member)
        with pytest.raises(ProtocolError, match="NaN"):
            await hub.push(room_id, "k", float("nan"))
        with pytest.raises(ProtocolError, match="2\\^53"):
            await hub.push(room_id, "k", 2**60)
        assert await drain(member) == []
        assert room.state.seq == 0


# -- ordering and who gets what --------------------------------------------------------------------


async def test_total_order_with_many_concurrent_pushers() -> None:
    pushers, per_pusher = 8, 25
    total = pushers * per_pusher
    async with hub_with_room() as (hub, room_id, room):
        json_members = [make_conn(codec=JSON) for _ in range(2)]
        cbor_member = make_conn(codec=CBOR)
        await join(room, *json_members, cbor_member)
        seen: list[list[tuple[str, Any, int]]] = []

        async def collect(sub: Any) -> None:
            got = []
            async for message in sub:
                got.append((message.key, message.value, message.seq))
                if len(got) == total:
                    break
            seen.append(got)

        async def pusher(p: int) -> None:
            for n in range(per_pusher):
                await hub.push(
                    room_id, f"key{p % 3}", {"p": p, "n": n}, Relay() if n % 5 == 0 else Append()
                )

        with trio.fail_after(30):
            async with (
                hub.subscribe(room_id) as s1,
                hub.subscribe(room_id) as s2,
                trio.open_nursery() as nursery,
            ):
                nursery.start_soon(collect, s1)
                nursery.start_soon(collect, s2)
                async with trio.open_nursery() as push_nursery:
                    for p in range(pushers):
                        push_nursery.start_soon(pusher, p)

        for conn in json_members:
            seen.append(
                [(m["key"], m["value"], m["seq"]) for m in map(json.loads, await drain(conn))]
            )
        seen.append(
            [(m["key"], m["value"], m["seq"]) for m in map(cbor2.loads, await drain(cbor_member))]
        )

        assert len(seen) == 5
        for got in seen:
            assert [seq for _, _, seq in got] == list(range(1, total + 1))
            assert got == seen[0], "every member sees the same messages in the same order"
        for p in range(pushers):
            ns = [v["n"] for _, v, _ in seen[0] if v["p"] == p]
            assert ns == list(range(per_pusher)), "one sender's pushes keep their order"


async def test_sender_gets_echo_then_stream_size() -> None:
    async with hub_with_room() as (_hub, _room_id, room):
        sender, other = make_conn(), make_conn()
        await join(room, sender, other)
        await room.inbox.send(PushCommand("k", "v1", Append(), sender))
        await room.inbox.send(PushCommand("k", "v2", Append(), sender))
        assert await drain(sender) == [
            PushEvent("k", "v1", 1),
            PushEvent("k", "v2", 2),
            StreamSize("k", 2),
        ]
        assert await drain(other) == [PushEvent("k", "v1", 1), PushEvent("k", "v2", 2)]


async def test_encoded_frames_for_codec_members() -> None:
    async with hub_with_room() as (hub, room_id, room):
        as_json, as_cbor = make_conn(codec=JSON), make_conn(codec=CBOR)
        await join(room, as_json, as_cbor)
        await hub.push(room_id, "k", {"b": b"\x01\x02"})
        [text] = await drain(as_json)
        [binary] = await drain(as_cbor)
        assert json.loads(text) == {"type": "push", "key": "k", "value": {"b": [1, 2]}, "seq": 1}
        assert cbor2.loads(binary) == {
            "type": "push",
            "key": "k",
            "value": {"b": b"\x01\x02"},
            "seq": 1,
        }


async def test_member_that_left_receives_nothing() -> None:
    async with hub_with_room() as (hub, room_id, room):
        conn = make_conn()
        await join(room, conn)
        await room.inbox.send(Leave(conn))
        await hub.push(room_id, "k", 1)
        assert await drain(conn) == []
        assert conn not in room.members


# -- slow clients ----------------------------------------------------------------------------------


async def test_slow_client_disconnect_kicks_without_stalling_the_room() -> None:
    async with hub_with_room() as (hub, room_id, room):
        slow, fast = make_conn(messages=2), make_conn()
        await join(room, slow, fast)
        with trio.fail_after(10):
            for i in range(5):
                await hub.push(room_id, "k", i, Relay())  # nobody ever reads `slow`
        assert slow.kicked.is_set()
        assert slow.closed
        assert slow.close_code == CloseCode.SLOW_CLIENT == 4008
        assert "slow" in slow.close_reason
        assert [seq for *_, seq in pushes(await drain(fast))] == [1, 2, 3, 4, 5]
        # What was queued before the kick can still be read, then the outbox ends.
        assert [f.seq for f in await slow.outbox.receive_batch()] == [1, 2]
        with pytest.raises(trio.EndOfChannel):
            await slow.outbox.receive_batch()
        await hub.push(room_id, "k", 5, Relay())
        assert pushes(await drain(fast)) == [("k", 5, 6)]


async def test_slow_client_bounded_by_bytes() -> None:
    async with hub_with_room() as (hub, room_id, room):
        conn = make_conn(messages=100, max_bytes=200, codec=JSON)
        await join(room, conn)
        await hub.push(room_id, "k", "x" * 100)
        assert not conn.closed
        await hub.push(room_id, "k", "y" * 100)  # 100 more bytes do not fit in 200
        assert conn.close_code == CloseCode.SLOW_CLIENT


async def test_frame_larger_than_outbox_refused_even_when_empty() -> None:
    async with hub_with_room() as (hub, room_id, room):
        conn = make_conn(messages=100, max_bytes=200, codec=JSON)
        await join(room, conn)
        await hub.push(room_id, "k", "x" * 500)  # an empty outbox still bounds a frame
        assert conn.close_code == CloseCode.SLOW_CLIENT


async def test_slow_client_policy_from_config() -> None:
    config = Config(outbox_messages=1, slow_client_policy="disconnect")
    async with hub_with_room(config) as (hub, room_id, room):
        conn = hub.new_member()
        await join(room, conn)
        await hub.push(room_id, "k", 1)
        assert not conn.closed
        await hub.push(room_id, "k", 2)
        assert conn.close_code == CloseCode.SLOW_CLIENT


async def test_kicked_subscription_iteration_ends() -> None:
    async with hub_with_room(Config(outbox_messages=2)) as (hub, room_id, _room):
        async with hub.subscribe(room_id) as sub:
            for i in range(3):
                await hub.push(room_id, "k", i)
            got = [m async for m in sub]
        assert [m.seq for m in got] == [1, 2]
        assert sub.connection.close_code == CloseCode.SLOW_CLIENT


async def test_slow_client_drop_counts_and_reports_the_missed_range() -> None:
    async with hub_with_room(Config(slow_client_policy="drop")) as (hub, room_id, room):
        conn = make_conn(messages=2, policy="drop")
        await join(room, conn)
        for i in range(1, 6):
            await hub.push(room_id, "k", i, Relay())
        assert not conn.closed
        assert conn.dropped == 3
        assert [f.seq for f in await drain(conn)] == [1, 2]
        await hub.push(room_id, "k", 6, Relay())
        frames = await drain(conn)
        assert len(frames) == 2
        assert isinstance(frames[0], Error)
        assert "3 message(s) dropped" in frames[0].message
        assert "seq 3..5" in frames[0].message
        assert frames[1] == PushEvent("k", 6, 6)


async def test_drop_policy_when_the_outbox_is_still_nearly_full() -> None:
    async with hub_with_room() as (hub, room_id, room):
        conn = make_conn(messages=2, policy="drop")
        await join(room, conn)
        for i in range(1, 5):
            await hub.push(room_id, "k", i, Relay())  # 1, 2 queued; 3, 4 dropped
        assert [f.seq for f in await conn.outbox.receive_batch(max_frames=1)] == [1]
        await hub.push(room_id, "k", 5, Relay())  # the report takes the free slot; 5 dropped
        assert conn.dropped == 3
        frames = await drain(conn)
        assert frames[0] == PushEvent("k", 2, 2)
        assert isinstance(frames[1], Error)
        assert "seq 3..4" in frames[1].message
        await hub.push(room_id, "k", 6, Relay())
        frames = await drain(conn)
        assert isinstance(frames[0], Error)
        assert "seq 5" in frames[0].message
        assert frames[1] == PushEvent("k", 6, 6)


async def test_drop_policy_for_direct_replies() -> None:
    async with hub_with_room() as (_hub, _room_id, room):
        conn = make_conn(messages=2, policy="drop")
        await join(room, conn)
        for nonce in (1, 2, 3):
            await room.inbox.send(PingCommand(nonce, conn))
        assert await drain(conn) == [Pong(1), Pong(2)]
        assert conn.dropped == 1
        await room.inbox.send(PingCommand(4, conn))
        frames = await drain(conn)
        assert len(frames) == 2
        assert isinstance(frames[0], Error)
        assert "1 reply message(s) dropped" in frames[0].message
        assert frames[1] == Pong(4)
        await room.inbox.send(PingCommand(5, conn))
        assert await drain(conn) == [Pong(5)], "reported once"


# -- subscriptions, get, debug ---------------------------------------------------------------------


async def test_explicit_subscribe_mode_gets_only_its_keys_once() -> None:
    async with hub_with_room() as (hub, room_id, room):
        explicit, everything = make_conn(explicit=True), make_conn()
        await join(room, explicit, everything)
        await room.inbox.send(GetCommand("a", 0, explicit))
        assert await drain(explicit) == [Init("a", ())]
        await hub.push(room_id, "a", 1)
        await hub.push(room_id, "b", 2)
        assert pushes(await drain(explicit)) == [("a", 1, 1)]
        assert pushes(await drain(everything)) == [("a", 1, 1), ("b", 2, 2)]
        # A repeated get replays, but never duplicates later deliveries.
        await room.inbox.send(GetCommand("a", 0, explicit))
        await room.inbox.send(GetCommand("a", 1, explicit))
        assert await drain(explicit) == [Init("a", (SeqValue(1, 1),)), Init("a", ())]
        await hub.push(room_id, "a", 3)
        assert pushes(await drain(explicit)) == [("a", 3, 3)]


async def test_in_process_subscribe_with_keys() -> None:
    async with hub_with_room() as (hub, room_id, _room):
        await hub.push(room_id, "a", "old")
        async with hub.subscribe(room_id, ["a"], since=0) as sub:
            await hub.push(room_id, "b", "ignored")
            await hub.push(room_id, "a", "new")
            assert await anext(sub) == Init("a", (SeqValue("old", 1),))
            assert await anext(sub) == PushEvent("a", "new", 3)
            assert sub.connection.explicit


async def test_get_with_seq_null_gives_no_init() -> None:
    async with hub_with_room() as (hub, room_id, room):
        await hub.push(room_id, "k", 1)
        conn = make_conn(explicit=True)
        await join(room, conn)
        await room.inbox.send(GetCommand("k", None, conn))
        await room.inbox.send(PingCommand(1, conn))
        assert await drain(conn) == [Pong(1)]
        await hub.push(room_id, "k", 2)
        assert pushes(await drain(conn)) == [("k", 2, 2)], "seq null still subscribes"


async def test_get_filters_by_seq() -> None:
    async with hub_with_room() as (hub, room_id, room):
        for i in range(1, 5):
            await hub.push(room_id, "k", i)
        conn = make_conn()
        await join(room, conn)
        await room.inbox.send(GetCommand("k", 2, conn))
        assert await drain(conn) == [Init("k", (SeqValue(3, 3), SeqValue(4, 4)))]


async def test_debug_connection() -> None:
    async with hub_with_room() as (hub, room_id, room):
        await hub.push(room_id, "a", 1)
        await hub.push(room_id, "a", 2)
        await hub.push(room_id, "b", "x", Replace())
        await hub.push(room_id, "r", "gone", Relay())
        debug, plain = make_conn(debug=True, explicit=True), make_conn()
        await join(room, debug, plain)
        # On join: an init of every key that has a stream, and an empty one of
        # each key relayed lately (its values are not retained).
        joined = await drain(debug)
        assert sorted(joined, key=lambda m: m.key) == [
            Init("a", (SeqValue(1, 1), SeqValue(2, 2))),
            Init("b", (SeqValue("x", 3),)),
            Init("r", ()),
        ]
        # A stream change: the push and the stream's new length (never the stream).
        await hub.push(room_id, "a", 3)
        assert await drain(debug) == [PushEvent("a", 3, 5), StreamSize("a", 3)]
        assert pushes(await drain(plain)) == [("a", 3, 5)]
        # A relay: the push itself, whatever the debug connection subscribed to.
        await hub.push(room_id, "elsewhere", "hi", Relay())
        assert await drain(debug) == [PushEvent("elsewhere", "hi", 6)]
        assert pushes(await drain(plain)) == [("elsewhere", "hi", 6)]
        # A compact changes the stream: its new head and length again.
        await hub.push(room_id, "a", "c", Compact(5))
        assert await drain(debug) == [PushEvent("a", "c", 5), StreamSize("a", 1)]
        assert pushes(await drain(plain)) == [("a", "c", 5)]


async def test_debug_connection_lists_relay_keys_on_join() -> None:
    """Relay-only keys used before a debug member joined come as empty inits, after
    the streams, oldest first; the room remembers a bounded number of them."""
    async with hub_with_room() as (hub, room_id, room):
        await hub.push(room_id, "cursor", {"x": 1}, Relay())
        await hub.push(room_id, "chat", "hi")
        await hub.push(room_id, "chat", "relayed too", Relay())  # has a stream: once
        await hub.push(room_id, "typing", True, Relay())
        await hub.push(room_id, "cursor", {"x": 2}, Relay())  # used again: newest
        debug = make_conn(debug=True)
        await join(room, debug)
        assert await drain(debug) == [
            Init("chat", (SeqValue("hi", 2),)),
            Init("typing", ()),
            Init("cursor", ()),
        ]
        # An ordinary member is told nothing on join.
        plain = make_conn()
        await join(room, plain)
        assert await drain(plain) == []
        # Bounded: the 1,000 keys relayed last.
        for i in range(1500):
            await hub.push(room_id, f"k{i}", i, Relay())
        late = make_conn(debug=True)
        await join(room, late)
        inits = [m.key for m in await drain(late)]
        assert inits[0] == "chat"
        assert inits[1:] == [f"k{i}" for i in range(500, 1500)]


async def test_debug_connection_in_process() -> None:
    async with hub_with_room() as (hub, room_id, _room):
        await hub.push(room_id, "k", 1)
        async with hub.subscribe(room_id, debug=True) as sub:
            assert await anext(sub) == Init("k", (SeqValue(1, 1),))
            await hub.push(room_id, "k", 2, Replace())
            assert await anext(sub) == PushEvent("k", 2, 2)
            assert await anext(sub) == StreamSize("k", 1)


# -- compact ---------------------------------------------------------------------------------------


async def test_compact_is_broadcast_with_its_own_seq() -> None:
    async with hub_with_room() as (hub, room_id, room):
        member = make_conn()
        await join(room, member)
        for i in range(1, 4):
            await hub.push(room_id, "k", i)
        assert await hub.push(room_id, "k", "reset", Compact(2)) == 2
        assert pushes(await drain(member))[-1] == ("k", "reset", 2)
        assert await hub.push(room_id, "k", 4) == 3
        assert pushes(await drain(member)) == [("k", 4, 4)], "compact consumed no seq"
        assert await hub.get(room_id, "k") == [
            SeqValue("reset", 2),
            SeqValue(3, 3),
            SeqValue(4, 4),
        ]


async def test_compact_not_broadcast_when_switched_off() -> None:
    async with hub_with_room(Config(broadcast_compact=False)) as (hub, room_id, room):
        member = make_conn()
        await join(room, member)
        await hub.push(room_id, "k", 1)
        await hub.push(room_id, "k", 2)
        await drain(member)
        await hub.push(room_id, "k", "reset", Compact(2))
        await hub.push(room_id, "k", "after", Relay())
        assert pushes(await drain(member)) == [("k", "after", 3)]
        assert await hub.get(room_id, "k") == [SeqValue("reset", 2)]


async def test_compact_from_the_future_is_an_error_for_the_sender_only() -> None:
    async with hub_with_room() as (hub, room_id, room):
        sender, other = make_conn(), make_conn()
        await join(room, sender, other)
        await hub.push(room_id, "k", 1)
        await drain(sender)
        await drain(other)
        await room.inbox.send(PushCommand("k", "x", Compact(5), sender))
        [error] = await drain(sender)
        assert isinstance(error, Error)
        assert "beyond" in error.message
        assert await drain(other) == []
        with pytest.raises(ProtocolError, match="beyond"):
            await hub.push(room_id, "k", "x", Compact(9))
        assert room.state.seq == 1
        assert await hub.get(room_id, "k") == [SeqValue(1, 1)]


# -- storage failures ------------------------------------------------------------------------------


class FlakyStorage(MemoryStorage):
    """Memory storage whose commit can be made to fail."""

    def __init__(self) -> None:
        super().__init__()
        self.failing = False
        self.commits: list[tuple[int, list[StreamChange]]] = []

    async def commit(self, room_id: str, seq: int, changes: Sequence[StreamChange]) -> None:
        await trio.lowlevel.checkpoint()
        if self.failing:
            raise StorageError("disk on fire")
        self.commits.append((seq, list(changes)))
        await super().commit(room_id, seq, changes)


async def test_storage_commit_failure_rejects_the_push() -> None:
    storage = FlakyStorage()
    async with hub_with_room(storage=storage) as (hub, room_id, room):
        member = make_conn()
        await join(room, member)
        await hub.push(room_id, "k", "kept")
        await drain(member)
        storage.failing = True
        with pytest.raises(StorageError, match="storage"):
            await hub.push(room_id, "k", "lost")
        with pytest.raises(StorageError, match="storage"):
            await hub.push(room_id, "k", "lost relay", Relay())
        assert await drain(member) == [], "nothing is broadcast"
        assert room.state.seq == 1, "no seq consumed"
        storage.failing = False
        assert await hub.push(room_id, "k", "next") == 2
        assert pushes(await drain(member)) == [("k", "next", 2)]
        assert await hub.get(room_id, "k") == [SeqValue("kept", 1), SeqValue("next", 2)]
        assert [seq for seq, _ in storage.commits] == [1, 2]


async def test_storage_failure_in_a_batch_still_answers_reads() -> None:
    storage = FlakyStorage()
    async with hub_with_room(storage=storage) as (hub, room_id, room):
        await hub.push(room_id, "k", "kept")
        conn = make_conn()
        await join(room, conn)
        storage.failing = True
        # send_nowait: the three commands reach the room as one batch.
        room.inbox.send_nowait(PushCommand("k", "lost", Append(), conn))
        room.inbox.send_nowait(GetCommand("k", 0, conn))
        room.inbox.send_nowait(PingCommand(5, conn))
        frames = await drain(conn)
        assert len(frames) == 3
        assert isinstance(frames[0], Error)
        assert "storage" in frames[0].message
        assert frames[1:] == [Init("k", (SeqValue("kept", 1),)), Pong(5)]
        storage.failing = False
        await room.inbox.send(PushCommand("k", "next", Append(), conn))
        assert await drain(conn) == [PushEvent("k", "next", 2), StreamSize("k", 2)]


# -- lifecycle (virtual time) ----------------------------------------------------------------------


async def test_idle_room_is_evicted_and_reloaded(autojump_clock: trio.testing.MockClock) -> None:
    async with open_hub(Config(room_idle_seconds=30)) as hub:
        room_id = await hub.create_room()
        await hub.push(room_id, "k", 1)
        await hub.push(room_id, "k", 2)
        first = hub.rooms[room_id]
        start = trio.current_time()
        await trio.sleep(29)  # virtual time (autojump_clock)
        assert hub.rooms.get(room_id) is first
        await trio.sleep(2)  # virtual time (autojump_clock)
        assert room_id not in hub.rooms
        assert first.closed
        assert trio.current_time() - start == pytest.approx(31)
        # Next use loads it again with its data and its seq counter.
        assert await hub.get(room_id, "k") == [SeqValue(1, 1), SeqValue(2, 2)]
        assert hub.rooms[room_id] is not first
        assert await hub.push(room_id, "k", 3) == 3
        assert (await hub.get(room_id, "k", since=2)) == [SeqValue(3, 3)]


async def test_room_with_members_is_not_evicted(autojump_clock: trio.testing.MockClock) -> None:
    async with open_hub(Config(room_idle_seconds=30)) as hub:
        room_id = await hub.create_room()
        async with hub.subscribe(room_id):
            await trio.sleep(3600)  # virtual time (autojump_clock)
            assert room_id in hub.rooms
        # Once the last member left, the idle timer starts.
        await trio.sleep(29.5)  # virtual time (autojump_clock)
        assert room_id in hub.rooms
        await trio.sleep(1)  # virtual time (autojump_clock)
        assert room_id not in hub.rooms


async def test_idle_timer_restarts_with_activity(autojump_clock: trio.testing.MockClock) -> None:
    async with open_hub(Config(room_idle_seconds=30)) as hub:
        room_id = await hub.create_room()
        for i in range(5):
            await hub.push(room_id, "k", i)
            await trio.sleep(20)  # virtual time (autojump_clock)
            assert room_id in hub.rooms
        await trio.sleep(11)  # virtual time (autojump_clock)
        assert room_id not in hub.rooms


async def test_close_all_kicks_members_with_going_away() -> None:
    async with hub_with_room() as (hub, _room_id, room):
        conn = make_conn()
        await join(room, conn)
        hub.close_all()
        assert conn.close_code == CloseCode.GOING_AWAY
        assert conn.kicked.is_set()


async def test_a_drain_applies_what_the_inbox_holds_without_a_crash() -> None:
    """The inbox closed (server drain) with commands still in it: the room applies
    and commits them, then ends cleanly (it ran out of commands mid-batch and took
    the closed channel for a crash: a traceback per busy room on every drain)."""
    async with hub_with_room() as (hub, room_id, room):
        conn = make_conn()
        await join(room, conn)
        origin = make_conn()
        for n in range(3):
            room.inbox.send_nowait(PushCommand("k", f"v{n}", Append(), origin))
        hub.close_all()
        with trio.fail_after(5):
            await hub.wait_rooms_closed()
        assert hub.metrics.rooms_crashed._value.get() == 0
        snapshot = await hub.storage.load_room(room_id)
        assert snapshot is not None
        assert [e.value for e in snapshot.streams["k"].entries] == ["v0", "v1", "v2"]


class BrokenStorage(MemoryStorage):
    """A store that holds its next commit until released, then fails, and cannot reload."""

    def __init__(self) -> None:
        super().__init__()
        self.broken = False
        self.commit_started = trio.Event()
        self.release = trio.Event()

    async def commit(self, room_id: str, seq: int, changes: Sequence[StreamChange]) -> None:
        if not self.broken:
            await super().commit(room_id, seq, changes)
            return
        self.commit_started.set()
        await self.release.wait()
        raise StorageError("disk gone")

    async def load_room(self, room_id: str) -> Any:
        if self.broken and self.release.is_set():
            raise StorageError("disk gone")
        return await super().load_room(room_id)


async def test_a_room_that_stops_wakes_every_waiting_request() -> None:
    storage = BrokenStorage()
    async with open_hub(Config(), storage) as hub:
        room_id = await hub.create_room()
        await hub.push(room_id, "k", "kept")
        storage.broken = True
        outcomes: list[str] = []

        async def push(value: int) -> None:
            try:
                await hub.push(room_id, "k", value)
            except StorageError as exc:
                outcomes.append(str(exc))

        with trio.fail_after(5):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(push, 0)
                await storage.commit_started.wait()  # the first push's batch is committing
                for value in range(1, 6):
                    nursery.start_soon(push, value)  # these queue in the inbox
                await trio.testing.wait_all_tasks_blocked()
                storage.release.set()
        # The failed batch and everything queued behind it got an answer; none hangs.
        assert len(outcomes) == 6
        assert all("unavailable" in message for message in outcomes)


def test_room_ids_never_start_with_a_dash(monkeypatch: pytest.MonkeyPatch) -> None:
    """``drifttrio rooms export ID`` would take such an id for an option (1 id in 64)."""
    from drifttrio.runtime import hub

    drawn = iter(["-pnhW45wdDsL_fR3Af_ZKA", "pnhW45wdDsL_fR3Af_ZKA-"])
    monkeypatch.setattr(hub.secrets, "token_urlsafe", lambda _n: next(drawn))
    assert hub.new_room_id() == "pnhW45wdDsL_fR3Af_ZKA-"
