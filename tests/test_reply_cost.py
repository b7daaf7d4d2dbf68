"""Replies, inits and debug views cost what they are; per-connection state is bounded.

Against the real server on 127.0.0.1:0 with a real SQLite file (issue 15): an
``init`` is encoded a chunk at a time as its reader takes it, over WebSocket and
HTTP alike, so a reader that never reads holds one chunk, not the stream; a debug
member gets O(1) frames per push; every outbox item is charged at its size; and
the keys one connection subscribes to are capped.
"""

from __future__ import annotations

import json
import logging
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from _rawws import TEXT, TIMEOUT, RawWebSocket
from drifttrio import CloseCode, Config, RunningServer, open_server
from drifttrio.client import connect
from drifttrio.core import StreamChange
from drifttrio.protocol.messages import PushEvent, SeqValue, Value
from drifttrio.server import TRANSPORTS

MiB = 1024 * 1024


@asynccontextmanager
async def serving(
    tmp_path: Path, transport: str = "drifttrio", **settings: Any
) -> AsyncIterator[tuple[RunningServer, httpx.AsyncClient]]:
    config = Config(store=f"sqlite:///{tmp_path / 'rooms.db'}", **settings)
    async with (
        open_server(config, transport=transport) as server,
        httpx.AsyncClient(base_url=server.url, trust_env=False, timeout=TIMEOUT) as client,
    ):
        yield server, client


async def room_with_stream(server: RunningServer, key: str, values: list[object]) -> str:
    """A stored room whose ``key`` retains ``values`` (seqs 1..n), written in one commit."""
    hub = server.hub
    room = await hub.create_room()
    changes = [
        StreamChange("append", key, SeqValue(Value(v), seq)) for seq, v in enumerate(values, 1)
    ]
    await hub.storage.commit(room, len(values), changes)
    return room


@asynccontextmanager
async def member(
    server: RunningServer, room: str, query: str = "", early: list[bytes] | None = None
) -> AsyncIterator[RawWebSocket]:
    """A raw WebSocket member of ``room`` (its first ping answered); the frames that
    came before the pong (a debug member's inits) go to ``early``."""
    ws = await RawWebSocket.connect(server.host, server.port)
    try:
        await ws.handshake(f"/room/{room}/connect{query}")
        await ws.send_json({"type": "ping", "nonce": 0})
        while True:
            opcode, payload = await ws.recv_frame()
            assert opcode == TEXT
            if json.loads(payload) == {"type": "pong", "nonce": 0}:
                break
            assert early is not None, payload[:200]
            early.append(payload)
        yield ws
    finally:
        await ws.aclose()


class _CutCounter(logging.Handler):
    """Sets ``all_cut`` once the transport has cut ``expected`` connections at the
    write deadline (its log line is the event)."""

    def __init__(self, expected: int) -> None:
        super().__init__(logging.DEBUG)
        self.left = expected
        self.all_cut = trio.Event()

    def emit(self, record: logging.LogRecord) -> None:
        if record.getMessage().startswith("write deadline passed"):
            self.left -= 1
            if self.left <= 0:
                self.all_cut.set()


def rss() -> int:
    """This process's resident memory, in bytes (the server runs in it)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


async def stalled_http_get(server: RunningServer, room: str, key: str) -> trio.SocketStream:
    """POST a ``get`` for ``key``, read the first bytes of the answer, then stop
    reading (a tiny receive buffer, so the server's writes block at once)."""
    sock = trio.socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    await sock.connect((server.host, server.port))
    stream = trio.SocketStream(sock)
    body = json.dumps({"type": "get", "key": key, "seq": 0}).encode()
    await stream.send_all(
        f"POST /room/{room}/send HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n".encode()
        + body
    )
    with trio.fail_after(TIMEOUT):
        assert (await stream.receive_some(12)).startswith(b"HTTP/1.1 200")
    return stream


async def read_to_end(stream: trio.SocketStream) -> int:
    """Read until the server ends the connection; how many bytes came."""
    total = 0
    with trio.fail_after(TIMEOUT):
        while True:
            try:
                data = await stream.receive_some(256 * 1024)
            except trio.BrokenResourceError:  # reset by the server
                return total
            if not data:
                return total
            total += len(data)


# -- replies cost what they are -----------------------------------------------------------


async def test_http_gets_that_are_never_read_hold_one_chunk_and_are_cut(tmp_path: Path) -> None:
    """Issue 15: a 16 MB stream, clients that send a ``get`` and never read. Each
    request holds about one chunk (``init_chunk_bytes``) plus a reference per value,
    not the 16 MB reply, and its connection is cut at ``write_timeout``."""
    values = [f"{i:06d}" + "x" * 4090 for i in range(4096)]  # 4096 values of 4 KiB
    clients = 12
    cuts = _CutCounter(clients)
    transport_log = logging.getLogger("drifttrio.transport")
    transport_log.addHandler(cuts)
    level = transport_log.level
    transport_log.setLevel(logging.DEBUG)
    try:
        await _stalled_http_readers(tmp_path, values, clients, cuts)
    finally:
        transport_log.removeHandler(cuts)
        transport_log.setLevel(level)


async def _stalled_http_readers(
    tmp_path: Path, values: list[str], clients: int, cuts: _CutCounter
) -> None:
    async with serving(tmp_path, write_timeout=1.0) as (server, client):
        room = await room_with_stream(server, "big", values)
        assert (await client.post(f"/room/{room}/send", json={"type": "ping"})).status_code == 200
        before = rss()
        stalled = [await stalled_http_get(server, room, "big") for _ in range(clients)]
        grown = rss() - before
        # Documented bound: one chunk (64 KiB) and 8 B per value per request, plus
        # allocator slack; the reply itself (16 MiB of JSON each) is never built.
        assert grown < 24 * MiB, f"RSS grew by {grown / MiB:.1f} MiB for {clients} readers"
        # An honest client is served meanwhile.
        answer = await client.post(f"/room/{room}/send", json={"type": "ping", "nonce": 1})
        assert answer.json() == {"type": "pong", "nonce": 1}
        # Each stalled reader is cut off at the write deadline, its reply unfinished.
        with trio.fail_after(TIMEOUT):
            await cuts.all_cut.wait()
        for stream in stalled:
            assert await read_to_end(stream) < len(values) * 4096 // 2
            await stream.aclose()


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_http_get_of_a_long_stream_is_complete_when_read(
    tmp_path: Path, transport: str
) -> None:
    values = [{"n": i, "pad": "y" * 100} for i in range(2000)] + [b"\x00\xff"]
    async with serving(tmp_path, transport) as (server, client):  # 260 KB: 64 KiB chunks
        room = await room_with_stream(server, "k", values)
        reply = await client.post(f"/room/{room}/send", json={"type": "get", "key": "k", "seq": 5})
        assert reply.status_code == 200
        assert "content-length" not in reply.headers  # sent in chunks
        body = reply.json()
        assert body["type"] == "init"
        assert body["key"] == "k"
        assert [e["seq"] for e in body["data"]] == list(range(6, len(values) + 1))
        assert body["data"][0]["value"] == {"n": 5, "pad": "y" * 100}
        assert body["data"][-1]["value"] == [0, 255]  # bytes as integers, as everywhere
        # Values larger than a chunk go out in pieces, and arrive whole.
        large = [c * 200_000 for c in "abc"]
        for value in large:
            await client.post(
                f"/room/{room}/send",
                json={"type": "push", "key": "large", "value": value, "action": {"type": "append"}},
            )
        reply = await client.post(f"/room/{room}/send", json={"type": "get", "key": "large"})
        assert [e["value"] for e in reply.json()["data"]] == large
        small = await client.post(f"/room/{room}/send", json={"type": "get", "key": "none"})
        assert small.headers["content-length"] == str(len(small.content))
        assert small.json() == {"type": "init", "key": "none", "data": []}


async def test_ws_init_larger_than_the_outbox_arrives_in_chunks(tmp_path: Path) -> None:
    """An ``init`` is never one frame of any size: a stream four times the outbox
    arrives as several ``init``s of the key, seqs ascending, to a reading client."""
    values = [f"{i:05d}" + "z" * 995 for i in range(512)]  # 512 KB
    async with serving(tmp_path, outbox_bytes=128 * 1024) as (server, _client):
        room = await room_with_stream(server, "k", values)
        async with member(server, room) as ws:
            await ws.send_json({"type": "get", "key": "k", "seq": 0})
            seqs: list[int] = []
            frames = 0
            while len(seqs) < len(values):
                opcode, payload = await ws.recv_frame()
                assert opcode == TEXT
                assert len(payload) < 80 * 1024, "one chunk (init_chunk_bytes) per frame"
                message = json.loads(payload)
                assert message["type"] == "init"
                assert message["key"] == "k"
                seqs += [e["seq"] for e in message["data"]]
                frames += 1
                # Every chunk but the last says more of the same answer follows.
                assert message.get("more", False) is (len(seqs) < len(values))
            assert seqs == list(range(1, len(values) + 1))
            assert frames >= 4
            await ws.send_json({"type": "ping", "nonce": 2})
            assert await ws.recv() == {"type": "pong", "nonce": 2}


async def test_oversized_frame_does_not_slip_into_an_empty_outbox(tmp_path: Path) -> None:
    async with serving(tmp_path, outbox_bytes=128 * 1024) as (server, client):
        room = (await client.post("/new")).json()["room"]
        async with member(server, room) as listener, member(server, room) as small:
            await small.send_json(
                {"type": "push", "key": "k", "value": "ok", "action": {"type": "relay"}}
            )
            assert (await listener.recv())["value"] == "ok"
            assert (await small.recv())["value"] == "ok"
            # 200 KB into an empty 128 KiB outbox: refused, the slow-client policy applies.
            reply = await client.post(
                f"/room/{room}/send",
                json={
                    "type": "push",
                    "key": "k",
                    "value": "x" * 200_000,
                    "action": {"type": "relay"},
                },
            )
            assert reply.status_code == 200
            assert await listener.close_code() == CloseCode.SLOW_CLIENT == 4008
            assert await small.close_code() == CloseCode.SLOW_CLIENT


async def test_in_process_subscriber_is_charged_real_size(tmp_path: Path) -> None:
    async with serving(tmp_path, outbox_bytes=128 * 1024) as (server, client):
        hub = server.hub
        room = (await client.post("/new")).json()["room"]
        async with hub.subscribe(room) as events:
            conn = events.connection
            await hub.push(room, "k", "x" * 50_000)
            assert conn.outbox.queued_bytes > 50_000, "charged its size, not 64 bytes"
            await hub.push(room, "k", "y" * 50_000)
            assert conn.close_code is None
            await hub.push(room, "k", "z" * 50_000)  # 150 KB queued > 128 KiB
            assert conn.close_code == CloseCode.SLOW_CLIENT
            got = [m async for m in events]
            assert [m.value for m in got if isinstance(m, PushEvent)] == [
                "x" * 50_000,
                "y" * 50_000,
            ]


# -- debug views ----------------------------------------------------------------------------


async def test_debug_member_gets_constant_size_frames_per_push(tmp_path: Path) -> None:
    """A debug member of a room with a 10,000-value stream: the join inits come in
    chunks, then each append costs it two small frames (the push and the stream's
    length), never the stream again."""
    values = [{"n": i} for i in range(10_000)]
    async with serving(tmp_path, max_stream_values=20_000) as (server, _client):
        room = await room_with_stream(server, "s", values)
        joined: list[bytes] = []
        async with (
            member(server, room, "?debug=true", joined) as debug,
            member(server, room) as pusher,
        ):
            seqs: list[int] = []
            for payload in joined:
                assert len(payload) < 128 * 1024, "the join inits come in chunks"
                message = json.loads(payload)
                assert (message["type"], message["key"]) == ("init", "s")
                seqs += [e["seq"] for e in message["data"]]
            assert seqs == list(range(1, 10_001))
            assert len(joined) > 1
            for i in range(20):
                await pusher.send_json(
                    {"type": "push", "key": "s", "value": {"m": i}, "action": {"type": "append"}}
                )
                assert (await pusher.recv())["type"] == "push"
                assert (await pusher.recv())["type"] == "stream_size"
                frames = [await debug.recv_frame() for _ in range(2)]
                assert all(len(payload) < 100 for _, payload in frames), frames
                push, size = (json.loads(payload) for _, payload in frames)
                assert push == {"type": "push", "key": "s", "value": {"m": i}, "seq": 10_001 + i}
                assert size == {"type": "stream_size", "key": "s", "size": 10_001 + i}
            # The room answers at once: nothing was queued behind a whole stream.
            await pusher.send_json({"type": "ping", "nonce": 3})
            assert await pusher.recv() == {"type": "pong", "nonce": 3}


async def test_debug_member_sees_a_quiet_compact(tmp_path: Path) -> None:
    async with serving(tmp_path, broadcast_compact=False) as (server, client):
        room = await room_with_stream(server, "k", [1, 2, 3])
        joined: list[bytes] = []
        async with (
            member(server, room, "?debug=true", joined) as debug,
            member(server, room) as plain,
        ):
            assert [json.loads(p)["type"] for p in joined] == ["init"]
            await client.post(
                f"/room/{room}/send",
                json={
                    "type": "push",
                    "key": "k",
                    "value": "r",
                    "action": {"type": "compact", "seq": 2},
                },
            )
            assert await debug.recv() == {"type": "push", "key": "k", "value": "r", "seq": 2}
            assert await debug.recv() == {"type": "stream_size", "key": "k", "size": 2}
            await plain.send_json({"type": "ping", "nonce": 4})
            assert await plain.recv() == {"type": "pong", "nonce": 4}, "no push for the others"


# -- per-connection state is bounded ------------------------------------------------------


async def test_subscriptions_per_connection_are_capped(tmp_path: Path) -> None:
    """Issue 15: ``get`` with ``seq: null`` for ever new keys grew a connection's
    subscription set without bound; past ``max_subscriptions_per_connection``
    (1,000) a ``get`` for a new key is refused with ``error``."""
    async with serving(tmp_path, rate_limit_burst=5000) as (server, client):
        room = await room_with_stream(server, "k0", ["v"])
        async with member(server, room, "?subscribe=explicit") as ws:
            for i in range(1000):
                await ws.send_json({"type": "get", "key": f"k{i}", "seq": None})
            await ws.send_json({"type": "get", "key": "k1000", "seq": 0})
            error = await ws.recv()
            assert error["type"] == "error"
            assert "limit of 1000 subscribed keys" in error["message"]
            # A key already subscribed is still answered; the refused one is not delivered.
            await ws.send_json({"type": "get", "key": "k0", "seq": 0})
            assert await ws.recv() == {
                "type": "init",
                "key": "k0",
                "data": [{"value": "v", "seq": 1}],
            }
            for key in ("k1000", "k1"):
                await client.post(
                    f"/room/{room}/send",
                    json={"type": "push", "key": key, "value": 1, "action": {"type": "relay"}},
                )
            assert (await ws.recv())["key"] == "k1"
            [conn] = server.hub.rooms[room].members
            assert len(conn.subscriptions) == 1000
            assert "k1000" not in conn.subscriptions


async def test_python_client_takes_a_stream_sent_as_several_inits(tmp_path: Path) -> None:
    """drifttrio's own client joins the chunks of one answer (``"more": true``) for a
    subscription and for a one-shot ``get``."""
    values = [{"n": i, "pad": "q" * 100} for i in range(3000)]
    async with serving(tmp_path) as (server, _client):
        room = await room_with_stream(server, "k", values)
        async with connect(f"{server.ws_url}/room/{room}/connect") as conn:
            got = await conn.get("k", since=10)
            assert [seq for seq, _ in got] == list(range(11, 3001))
            assert got[-1][1] == values[-1]
            sub = conn.subscribe("k", buffer=4000)
            await conn.push("k", {"n": "live"})
            updates = [await anext(sub) for _ in range(3001)]
            assert [u.seq for u in updates] == list(range(1, 3002))
            assert updates[-1].value == {"n": "live"}
