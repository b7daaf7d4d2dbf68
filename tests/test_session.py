"""A member's session over plain ASGI callables: what a kick does, and the outbox
its reader and writer share."""

from __future__ import annotations

import json
from typing import Any

import pytest
import trio

from drifttrio import CloseCode, Config, open_hub
from drifttrio.protocol import JSON
from drifttrio.runtime import Outbox
from drifttrio.runtime.room import Join
from drifttrio.web.peer import AsgiPeer
from drifttrio.web.session import Session

TIMEOUT = 10  # a guard against hangs, never a way to wait for something


async def test_a_kick_stops_the_reader_at_once_even_while_a_write_is_stuck() -> None:
    config = Config(rate_limit_per_second=0)
    async with open_hub(config) as hub:
        room_id = await hub.create_room()
        conn = hub.new_member(encoder=JSON, transport="asgi")
        room = await hub.submit(room_id, Join(conn))
        to_server, from_client = trio.open_memory_channel[dict[str, Any]](10)
        write_stuck, release, reader_cancelled = trio.Event(), trio.Event(), trio.Event()
        sent: list[dict[str, Any]] = []

        async def receive() -> dict[str, Any]:
            try:
                return await from_client.receive()
            except trio.Cancelled:
                reader_cancelled.set()
                raise

        async def send(message: dict[str, Any]) -> None:
            sent.append(message)
            if message["type"] == "websocket.send":
                write_stuck.set()
                with trio.CancelScope(shield=True):  # a client that reads nothing
                    await release.wait()

        push = {"type": "push", "key": "k", "value": 1, "action": {"type": "relay"}}
        outcome: list[Any] = []

        async def run() -> None:
            peer = AsgiPeer({"type": "websocket"}, receive, send)
            outcome.append(await Session(config, conn, room, peer).run())

        async with trio.open_nursery() as nursery:
            nursery.start_soon(run)
            await to_server.send({"type": "websocket.receive", "text": json.dumps(push)})
            with trio.fail_after(TIMEOUT):
                await write_stuck.wait()  # the writer is inside send(), shielded
            conn.kick(CloseCode.SLOW_CLIENT, "slow client: outbox full")
            with trio.move_on_after(TIMEOUT):
                await reader_cancelled.wait()  # at once, not when the write ends
            cancelled_while_stuck = reader_cancelled.is_set()
            release.set()
        assert cancelled_while_stuck
        assert outcome == [(CloseCode.SLOW_CLIENT, "slow client: outbox full", False)]
        assert sent[-1] == {
            "type": "websocket.close",
            "code": CloseCode.SLOW_CLIENT,
            "reason": "slow client: outbox full",
        }


async def test_an_outbox_hands_over_batches_then_ends_once_closed() -> None:
    outbox = Outbox(max_messages=3, max_bytes=1 << 20)
    for frame in ("a", "b", "c"):
        outbox.send_nowait(frame)
    with pytest.raises(trio.WouldBlock):
        outbox.send_nowait("d")  # bounded by count
    assert len(outbox) == 3
    assert await outbox.receive_batch(max_frames=2) == ["a", "b"]
    assert outbox.queued_bytes == 1
    assert await outbox.receive_batch() == ["c"]
    assert outbox.queued_bytes == 0
    async with trio.open_nursery() as nursery:

        async def wait() -> None:
            assert await outbox.receive_batch() == ["e"]

        nursery.start_soon(wait)
        await trio.testing.wait_all_tasks_blocked()
        outbox.send_nowait("e")  # wakes the waiting receiver
    outbox.send_nowait("f")
    outbox.close()
    with pytest.raises(trio.ClosedResourceError):
        outbox.send_nowait("g")
    assert await outbox.receive_batch() == ["f"]  # what was queued is still handed over
    with pytest.raises(trio.EndOfChannel):
        await outbox.receive_batch()


async def test_a_waiting_outbox_receiver_can_be_cancelled_and_woken_by_close() -> None:
    outbox = Outbox(max_messages=8, max_bytes=1024)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(outbox.receive_batch)
        await trio.testing.wait_all_tasks_blocked()
        nursery.cancel_scope.cancel()
    async with trio.open_nursery() as nursery:  # the cancelled wait left no trace

        async def wait() -> None:
            with pytest.raises(trio.EndOfChannel):
                await outbox.receive_batch()

        nursery.start_soon(wait)
        await trio.testing.wait_all_tasks_blocked()
        outbox.close()


async def test_a_frame_larger_than_the_byte_bound_never_fits() -> None:
    outbox = Outbox(max_messages=8, max_bytes=10)
    with pytest.raises(trio.WouldBlock):
        outbox.send_nowait("x" * 100)  # not even into an empty outbox
    outbox.send_nowait("x" * 10)
    with pytest.raises(trio.WouldBlock):
        outbox.send_nowait("y")  # bounded by bytes
    assert await outbox.receive_batch() == ["x" * 10]
    outbox.send_nowait("y")


async def test_wait_taken_returns_once_the_receiver_takes_a_batch() -> None:
    outbox = Outbox(max_messages=8, max_bytes=1024)
    await outbox.wait_taken()  # nothing queued: at once
    outbox.send_nowait("a")
    taken: list[object] = []
    async with trio.open_nursery() as nursery:

        async def wait() -> None:
            await outbox.wait_taken()
            taken.append(len(outbox))

        nursery.start_soon(wait)
        await trio.testing.wait_all_tasks_blocked()
        assert taken == []
        outbox.send_nowait("b")
        await trio.testing.wait_all_tasks_blocked()
        assert taken == []  # more frames do not wake it, a receiver does
        assert await outbox.receive_batch() == ["a", "b"]
    assert taken == [0]
    outbox.send_nowait("c")
    async with trio.open_nursery() as nursery:
        nursery.start_soon(outbox.wait_taken)
        await trio.testing.wait_all_tasks_blocked()
        outbox.close()  # closing wakes it too
