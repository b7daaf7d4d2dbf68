"""The server-wide budget of queued bytes (``max_queued_bytes``): readers that do not
read cannot each hold a full outbox, and readers that keep up are never refused."""

from __future__ import annotations

import json
import socket

import pytest
import trio

from _rawws import CLOSE, TEXT, TIMEOUT, RawWebSocket, close_code, frame
from drifttrio import CloseCode
from drifttrio.runtime.member import Outbox, QueueBudget
from test_hostile import new_room, raw_member, serving


def test_past_the_budget_only_the_heaviest_outbox_refuses() -> None:
    budget = QueueBudget(limit=1000, fair_bytes=300)
    hog, lagging, light = (Outbox(100, 10_000, budget) for _ in range(3))
    for _ in range(6):
        hog.send_nowait(b"x" * 100)
    for _ in range(4):
        lagging.send_nowait(b"x" * 100)
    assert budget.used == 1000
    assert budget.heavy == {hog, lagging}
    with pytest.raises(trio.WouldBlock):
        hog.send_nowait(b"x" * 100)  # over the budget, and the heaviest
    lagging.send_nowait(b"y" * 100)  # over the budget and its share, but not the heaviest
    light.send_nowait(b"z" * 100)  # over the budget, within its share
    assert budget.used == 1200
    hog.discard()  # the connection ended: what it held is released at once
    assert budget.used == 600
    assert budget.heavy == {lagging}
    assert len(hog) == 0


async def test_taken_frames_give_their_bytes_back() -> None:
    budget = QueueBudget(limit=1000, fair_bytes=300)
    outbox = Outbox(100, 10_000, budget)
    for _ in range(5):
        outbox.send_nowait(b"z" * 100)
    assert len(await outbox.receive_batch(max_frames=2)) == 2
    assert budget.used == 300
    await outbox.receive_batch()
    assert budget.used == 0


async def test_readers_that_do_not_read_are_cut_off_before_each_fills_its_outbox() -> None:
    pushes = 30  # 3 MB to every member: far below each outbox's 8 MiB
    push = frame(  # masked once: the pusher sends the same bytes every time
        TEXT,
        json.dumps(
            {"type": "push", "key": "k", "value": "v" * 100_000, "action": {"type": "relay"}}
        ).encode(),
    )
    async with serving(max_queued_bytes=2 * 1024 * 1024) as (server, client):
        room = await new_room(client)
        stalled: list[RawWebSocket] = []
        for _ in range(6):
            # A tiny receive window: the server's writes block at once, so what it
            # sends this member piles up in the member's outbox.
            sock = trio.socket.socket()
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            await sock.connect((server.host, server.port))
            ws = RawWebSocket(trio.SocketStream(sock))
            await ws.handshake(f"/room/{room}/connect")
            await ws.send_json({"type": "ping", "nonce": 0})
            stalled.append(ws)
        try:
            async with raw_member(server, room) as reader, raw_member(server, room) as pusher:
                # Readers that keep up: each push is read by both before the next
                # is sent, so neither ever holds more than one frame (100 KB).
                for _ in range(pushes):
                    await pusher.send(push)
                    for name, ws in (("reader", reader), ("pusher", pusher)):
                        opcode, payload = await ws.recv_frame()
                        assert opcode != CLOSE, f"{name} closed: {close_code(payload)}"
                        assert b'"type":"push"' in payload
            for ws in stalled:
                # What the server had written, then its close: 4008 (slow client).
                with trio.fail_after(TIMEOUT):
                    assert await ws.close_code() == CloseCode.SLOW_CLIENT
        finally:
            for ws in stalled:
                await ws.aclose()
