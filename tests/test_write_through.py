"""The room writes a member's frames itself, at the end of its batch, when the
member's writer is idle (runtime/member.py ``Member.flush``), and the wire keeps
the bytes in order when a socket takes only part of them (web/wire.py)."""

from __future__ import annotations

import os
from contextlib import suppress

import pytest
import trio
import trio.testing

from drifttrio import Config, open_hub
from drifttrio.protocol import JSON, PushEvent, Relay
from drifttrio.protocol.messages import Value
from drifttrio.runtime import Member
from drifttrio.runtime.room import Join, PushCommand
from drifttrio.web.frames import FRAME_ENCODERS
from drifttrio.web.wire import Wire, WireClosed

TIMEOUT = 10  # a guard against hangs, never a way to wait for something


async def park_writer(nursery: trio.Nursery, member: Member) -> list[object]:
    """Start ``member``'s writer and return once it is parked on the outbox: the
    list it fills with the frames it takes (if it is ever woken)."""
    taken: list[object] = []

    async def writer() -> None:
        taken.extend(await member.outbox.receive_batch())

    nursery.start_soon(writer)
    await trio.testing.wait_all_tasks_blocked()
    return taken


async def test_a_batch_reaches_an_idle_member_in_one_write_and_its_writer_sleeps_on() -> None:
    written: list[bytes] = []

    def write_now(data: bytes) -> bool:
        written.append(data)
        return True

    async with open_hub(Config()) as hub:
        room_id = await hub.create_room()
        member = hub.new_member(encoder=FRAME_ENCODERS[JSON], write_now=write_now)
        room = await hub.submit(room_id, Join(member))
        async with trio.open_nursery() as nursery:
            woken = await park_writer(nursery, member)
            origin = hub.new_member()
            for n in range(3):  # one batch: nothing yields between them
                room.inbox.send_nowait(PushCommand("k", Value(n), Relay(), origin))
            await trio.testing.wait_all_tasks_blocked()
            assert woken == []
            frames = [FRAME_ENCODERS[JSON].encode(PushEvent("k", n, n + 1)) for n in range(3)]
            assert written == [b"".join(frames)]
            assert len(member.outbox) == 0
            assert member.outbox.queued_bytes == 0
            assert (member.messages_out, member.bytes_out) == (3, len(written[0]))
            nursery.cancel_scope.cancel()


async def test_with_its_writer_busy_a_member_gets_its_frames_from_the_writer_in_order() -> None:
    calls: list[bytes] = []

    def write_now(data: bytes) -> bool:
        calls.append(data)
        return True

    async with open_hub(Config()) as hub:
        room_id = await hub.create_room()
        member = hub.new_member(encoder=FRAME_ENCODERS[JSON], write_now=write_now)
        room = await hub.submit(room_id, Join(member))
        origin = hub.new_member()
        # No writer parked (it would be writing a batch it took): nothing is written
        # past it, the frames wait for it.
        room.inbox.send_nowait(PushCommand("k", Value(1), Relay(), origin))
        room.inbox.send_nowait(PushCommand("k", Value(2), Relay(), origin))
        await trio.testing.wait_all_tasks_blocked()
        assert calls == []
        with trio.fail_after(TIMEOUT):
            batch = await member.outbox.receive_batch()
        assert batch == [FRAME_ENCODERS[JSON].encode(PushEvent("k", n, n)) for n in (1, 2)]


@pytest.mark.parametrize(
    ("written", "taken_by_the_writer"),
    [
        (None, [FRAME_ENCODERS[JSON].encode(PushEvent("k", 1, 1))]),  # nothing: the frame
        (False, [b""]),  # in part: the wire owes the rest, the writer's next write sends it
    ],
)
async def test_a_member_that_cannot_write_now_gets_its_writer_woken(
    written: bool | None, taken_by_the_writer: list[bytes]
) -> None:
    """Also for a lone push, which the room tries to write during its delivery."""
    async with open_hub(Config()) as hub:
        room_id = await hub.create_room()
        member = hub.new_member(encoder=FRAME_ENCODERS[JSON], write_now=lambda data: written)
        room = await hub.submit(room_id, Join(member))
        with trio.fail_after(TIMEOUT):
            async with trio.open_nursery() as nursery:
                taken = await park_writer(nursery, member)
                origin: Member = hub.new_member()
                await room.inbox.send(PushCommand("k", Value(1), Relay(), origin))
        assert taken == taken_by_the_writer


async def test_what_a_socket_does_not_take_at_once_goes_out_first_with_the_next_write() -> None:
    left, right = trio.socket.socketpair()
    async with trio.SocketStream(left) as ours, trio.SocketStream(right) as peer:
        await _owed_bytes_go_first(Wire(ours, write_timeout=TIMEOUT), peer)


async def _owed_bytes_go_first(wire: Wire, peer: trio.SocketStream) -> None:
    big = bytes(range(256)) * 64 * 1024  # 16 MiB: more than socket buffers hold
    assert wire.write_now(big) is False  # in part
    assert 0 < len(wire.owed) < len(big)
    assert wire.write_now(b"never") is None  # nothing is written past what is owed
    received = bytearray()
    with trio.fail_after(TIMEOUT):
        async with trio.open_nursery() as nursery:

            async def read() -> None:
                while len(received) < len(big) + 4:
                    received.extend(await peer.receive_some(1 << 20))

            nursery.start_soon(read)
            await wire.send(b"next")
    assert wire.owed == b""
    assert bytes(received) == big + b"next"
    assert wire.write_now(b"now") is True
    with trio.fail_after(TIMEOUT):
        assert await peer.receive_some() == b"now"


async def test_a_one_push_batch_goes_out_at_once_after_what_the_join_gate_held() -> None:
    """A batch of one push writes each idle member's frame during delivery, never
    past frames delivered before it in the batch: here what the pusher's own join
    gate held, let flow by its push."""
    written: list[bytes] = []

    def write_now(data: bytes) -> bool:
        written.append(data)
        return True

    encode = FRAME_ENCODERS[JSON].encode
    async with open_hub(Config(join_hold_seconds=60)) as hub:
        room_id = await hub.create_room()
        member = hub.new_member(
            encoder=FRAME_ENCODERS[JSON], write_now=write_now, asks_after_join=True
        )
        room = await hub.submit(room_id, Join(member))
        async with trio.open_nursery() as nursery:
            woken = await park_writer(nursery, member)
            other = hub.new_member()
            room.inbox.send_nowait(PushCommand("a", Value(1), Relay(), other))
            await trio.testing.wait_all_tasks_blocked()
            assert written == []  # held: the member has not asked for "a"
            room.inbox.send_nowait(PushCommand("b", Value(2), Relay(), member))
            await trio.testing.wait_all_tasks_blocked()
            assert b"".join(written) == encode(PushEvent("a", 1, 1)) + encode(PushEvent("b", 2, 2))
            room.inbox.send_nowait(PushCommand("c", Value(3), Relay(), other))
            await trio.testing.wait_all_tasks_blocked()
            assert written[-1] == encode(PushEvent("c", 3, 3))  # alone, at once
            assert woken == []
            assert len(member.outbox) == 0
            assert member.outbox.queued_bytes == 0
            assert member.messages_out == 3
            assert member.bytes_out == len(b"".join(written))
            nursery.cancel_scope.cancel()


async def test_a_write_the_socket_refuses_is_declined_and_a_gone_peer_closes_the_wire() -> None:
    """``write_now`` writes nothing into a full socket (the frame is queued instead),
    and a peer that is gone closes the wire: the next ``send`` says so."""
    left, right = trio.socket.socketpair()
    async with trio.SocketStream(left) as ours, trio.SocketStream(right) as peer:
        wire = Wire(ours, write_timeout=TIMEOUT)
        with suppress(BlockingIOError):
            while True:  # fill the socket's buffers
                os.write(left.fileno(), b"x" * 65536)
        assert wire.write_now(b"frame") is None
        assert (wire.owed, wire.closed) == (b"", False)
        await peer.aclose()
        assert wire.write_now(b"frame") is None
        assert wire.closed
        with pytest.raises(WireClosed):
            await wire.send(b"frame")
