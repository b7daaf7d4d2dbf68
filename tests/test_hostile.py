"""Hostile and broken clients against the real server on 127.0.0.1:0, byte by byte.

Each test speaks raw WebSocket frames (tests/_rawws.py), so it can send what no
client library would: huge declared lengths, fragment floods, unmasked frames,
fragmented control frames, invalid UTF-8, ping floods.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from typing import Any

import httpx
import pytest
import trio

from _rawws import (
    BINARY,
    CONTINUATION,
    PING,
    PONG,
    TEXT,
    TIMEOUT,
    RawWebSocket,
    frame,
)
from drifttrio import CloseCode, Config, RunningServer, open_server
from drifttrio.runtime.redact import room_tag
from drifttrio.server import TRANSPORTS
from drifttrio.web.transport import FRAGMENT_COST


@asynccontextmanager
async def serving(
    transport: str = "drifttrio", **settings: Any
) -> AsyncIterator[tuple[RunningServer, httpx.AsyncClient]]:
    async with (
        open_server(Config(**settings), transport=transport) as server,
        httpx.AsyncClient(base_url=server.url, trust_env=False, timeout=TIMEOUT) as client,
    ):
        yield server, client


async def new_room(client: httpx.AsyncClient) -> str:
    response = await client.post("/new")
    assert response.status_code == 200
    room: str = response.json()["room"]
    return room


@asynccontextmanager
async def raw_member(
    server: RunningServer, room: str, query: str = ""
) -> AsyncIterator[RawWebSocket]:
    """A raw connection that is a member of ``room`` (a protocol ping answered)."""
    ws = await RawWebSocket.connect(server.host, server.port)
    try:
        await ws.handshake(f"/room/{room}/connect{query}")
        await ws.send_json({"type": "ping", "nonce": 0})
        assert await ws.recv() == {"type": "pong", "nonce": 0}
        yield ws
    finally:
        await ws.aclose()


async def still_served(server: RunningServer, room: str) -> None:
    """Another member of the room is served normally."""
    async with raw_member(server, room) as other:
        await other.send_json({"type": "push", "key": "k", "value": 1, "action": {"type": "relay"}})
        assert (await other.recv())["type"] == "push"


# -- oversized frames -------------------------------------------------------------------


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize("opcode", [TEXT, BINARY])
async def test_huge_declared_frame_is_closed_with_1009_before_it_is_complete(
    transport: str, opcode: int
) -> None:
    limit = 64 * 1024
    async with serving(transport, max_message_bytes=limit) as (server, client):
        room = await new_room(client)
        async with raw_member(server, room) as ws:
            # A header declaring 1 TiB, then just over the limit of payload: a server
            # that waited for the whole frame would never answer.
            await ws.send(frame(opcode, b"a" * (limit + 1), declared=2**40))
            code = await ws.close_code()
            if transport == "hypercorn":
                # hypercorn closes without lingering: its close frame may be lost to
                # the TCP reset caused by the payload it left unread.
                assert code in (CloseCode.MESSAGE_TOO_BIG, None)
            else:
                assert code == CloseCode.MESSAGE_TOO_BIG == 1009
        await still_served(server, room)


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
async def test_huge_http_body_gets_413_before_it_is_all_sent(transport: str, chunked: bool) -> None:
    limit = 64 * 1024
    async with serving(transport, max_message_bytes=limit) as (server, client):
        room = await new_room(client)
        stream = await trio.open_tcp_stream(server.host, server.port)
        async with stream:
            framing = "Transfer-Encoding: chunked" if chunked else f"Content-Length: {2**40}"
            head = f"POST /room/{room}/send HTTP/1.1\r\nHost: h\r\n{framing}\r\n\r\n"
            body = b"a" * (limit + 1)
            if chunked:
                body = b"%x\r\n%s\r\n" % (len(body), body)
            # Just over the limit of a body declared (or streamed) far larger: a server
            # that buffered the whole body first would never answer.
            await stream.send_all(head.encode() + body)
            received = b""
            with trio.fail_after(TIMEOUT):
                while b"\r\n\r\n" not in received:
                    data = await stream.receive_some(65536)
                    assert data, received
                    received += data
        assert received.startswith(b"HTTP/1.1 413 "), received[:200]
        await still_served(server, room)


async def test_fragment_flood_is_closed_with_1009_and_bounded() -> None:
    limit = 64 * 1024
    async with serving(max_message_bytes=limit) as (server, client):
        room = await new_room(client)
        async with raw_member(server, room) as ws:
            # Empty continuation frames carry nothing, but each counts FRAGMENT_COST
            # bytes: the flood ends after limit / FRAGMENT_COST frames.
            flood = frame(TEXT, b"{", fin=False) + frame(CONTINUATION, b"", fin=False) * (
                2 * limit // FRAGMENT_COST
            )
            await ws.send(flood)
            assert await ws.close_code() == CloseCode.MESSAGE_TOO_BIG
        await still_served(server, room)


async def test_fragmented_message_within_the_limit_is_accepted() -> None:
    async with serving() as (server, client):
        room = await new_room(client)
        async with raw_member(server, room) as ws:
            text = json.dumps({"type": "ping", "nonce": 5}).encode()
            await ws.send(
                frame(TEXT, text[:3], fin=False)
                + frame(CONTINUATION, b"", fin=False)
                + frame(PING, b"between fragments")  # control frames may interleave
                + frame(CONTINUATION, text[3:9], fin=False)
                + frame(CONTINUATION, text[9:])
            )
            assert await ws.recv() == {"type": "pong", "nonce": 5}


# -- frames wsproto refuses: RFC 6455 close codes ---------------------------------------------


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize(
    ("frames", "code"),
    [
        pytest.param(frame(TEXT, b'{"type":"ping"}', mask=False), 1002, id="unmasked"),
        pytest.param(frame(PING, b"x", fin=False), 1002, id="fragmented-ping"),
        pytest.param(frame(0x8, b"\x03\xe8", fin=False), 1002, id="fragmented-close"),
        pytest.param(frame(TEXT, b'"\xff\xfe"'), 1007, id="invalid-utf8"),
        pytest.param(
            frame(TEXT, b'"\xe2\x82', fin=False) + frame(CONTINUATION, b'\x28"'),
            1007,
            id="invalid-utf8-across-fragments",
        ),
        pytest.param(frame(CONTINUATION, b"x"), 1002, id="continuation-without-start"),
        pytest.param(frame(0x3, b"x"), 1002, id="reserved-opcode"),
        pytest.param(frame(TEXT, b"x", rsv1=True), 1002, id="rsv1-without-extension"),
        pytest.param(frame(PING, b"x" * 126), 1002, id="control-frame-over-125-bytes"),
    ],
)
async def test_protocol_violations_close_with_the_rfc_code(
    transport: str, frames: bytes, code: int
) -> None:
    async with serving(transport) as (server, client):
        room = await new_room(client)
        async with raw_member(server, room) as ws:
            await ws.send(frames)
            if transport == "hypercorn":
                # hypercorn ends the connection, without a close frame.
                assert await ws.close_code() in (code, None)
            else:
                assert await ws.close_code() == code
        await still_served(server, room)


# -- control frames never stall the reader ----------------------------------------------------


async def test_ping_flood_and_pongs_do_not_stall_the_reader() -> None:
    # drifttrio transport only: hypercorn writes each pong from its reader, so a
    # flooder that reads nothing stalls its own connection there. Without a rate
    # limit (control frames are charged to it: see test_transport_limits.py).
    async with serving(rate_limit_per_second=0, address_messages_per_second=0) as (
        server,
        client,
    ):
        room = await new_room(client)
        async with raw_member(server, room) as flooder, raw_member(server, room) as other:
            # Unsolicited pongs are ignored; a flood of pings from a client that reads
            # none of the answers; then a push, which must reach the room at once.
            pongs = frame(PONG, b"unsolicited") * 1000
            pings = frame(PING, b"p" * 125) * 20_000  # 2.6 MB of pings
            push = {"type": "push", "key": "k", "value": "after", "action": {"type": "relay"}}
            await flooder.send(pongs + pings + frame(TEXT, json.dumps(push).encode()))
            assert await other.recv() == {"type": "push", "key": "k", "value": "after", "seq": 1}
            # The flooder is still served: its echo is there, behind at most a few pongs.
            assert await flooder.recv() == {"type": "push", "key": "k", "value": "after", "seq": 1}


async def test_a_ping_gets_a_pong_with_its_payload() -> None:
    async with serving() as (server, client):
        room = await new_room(client)
        async with raw_member(server, room) as ws:
            await ws.send(frame(PING, b"hello"))
            assert await ws.recv_frame() == (PONG, b"hello")


# -- slowloris, header size, compression -------------------------------------------------------


async def test_slowloris_request_head_gets_408_within_the_handshake_deadline() -> None:
    async with serving(handshake_timeout=0.5) as (server, _):
        stream = await trio.open_tcp_stream(server.host, server.port)
        received = b""
        async with stream, trio.open_nursery() as nursery:

            async def trickle() -> None:
                # A header line every 0.1 s never extends the deadline.
                await stream.send_all(b"GET /room/x/connect HTTP/1.1\r\nHost: h\r\n")
                with suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                    while True:
                        await trio.sleep(0.1)
                        await stream.send_all(b"X-Slow: 1\r\n")

            start = trio.current_time()
            nursery.start_soon(trickle)
            with trio.fail_after(TIMEOUT):
                while data := await stream.receive_some(65536):
                    received += data
            elapsed = trio.current_time() - start
            nursery.cancel_scope.cancel()
        assert received.startswith(b"HTTP/1.1 408 "), received
        assert 0.5 <= elapsed < 0.5 + 2


async def test_idle_connection_is_dropped_after_the_handshake_deadline() -> None:
    async with serving(handshake_timeout=0.3) as (server, _):
        stream = await trio.open_tcp_stream(server.host, server.port)
        async with stream:
            with trio.fail_after(TIMEOUT):
                assert await stream.receive_some(100) == b""  # closed, nothing said


async def test_oversized_request_head_gets_431() -> None:
    big = "a" * 8192
    async with serving(max_header_bytes=4096) as (server, client):
        room = await new_room(client)
        stream = await trio.open_tcp_stream(server.host, server.port)
        async with stream:
            await stream.send_all(
                f"GET /room/{room}/connect HTTP/1.1\r\nHost: h\r\nX-Big: {big}\r\n\r\n".encode()
            )
            received = b""
            with trio.fail_after(TIMEOUT):
                while data := await stream.receive_some(65536):
                    received += data
        assert received.startswith(b"HTTP/1.1 431 "), received[:100]


async def test_permessage_deflate_is_never_negotiated() -> None:
    async with serving() as (server, client):
        room = await new_room(client)
        ws = await RawWebSocket.connect(server.host, server.port)
        try:
            headers = await ws.handshake(
                f"/room/{room}/connect",
                {"Sec-WebSocket-Extensions": "permessage-deflate; client_max_window_bits"},
            )
            assert "sec-websocket-extensions" not in headers
            # A compressed frame (RSV1) is then a protocol error, never inflated.
            await ws.send(frame(TEXT, b"\xf3H\xcd\xc9\xc9\x07\x00", rsv1=True))
            assert await ws.close_code() == 1002
        finally:
            await ws.aclose()


# -- a client that stops reading ----------------------------------------------------------------


async def test_client_that_never_reads_is_cut_off_within_the_write_deadline() -> None:
    value = "x" * 64 * 1024
    write_timeout = 1.0
    async with serving(outbox_messages=8, write_timeout=write_timeout) as (server, client):
        room = await new_room(client)
        async with raw_member(server, room), raw_member(server, room) as fast:
            # The first member never reads again: its socket buffers fill, a write
            # blocks, its outbox fills, and the slow-client policy closes it (4008).
            members = server.hub.rooms[room].members
            assert len(members) == 2
            seq = 0
            with trio.fail_after(30):
                while not any(m.close_code for m in members):
                    seq += 1
                    await fast.send_json(
                        {"type": "push", "key": "k", "value": value, "action": {"type": "relay"}}
                    )
                    assert (await fast.recv())["seq"] == seq, "the fast member misses nothing"
            kicked_at = trio.current_time()
            [silent] = [m for m in members if m.close_code]
            assert silent.close_code == CloseCode.SLOW_CLIENT == 4008
            # Its blocked write cannot outlive the write deadline: then the socket is
            # cut and the member leaves the room.
            with trio.fail_after(write_timeout + 2):
                while silent in members:  # noqa: ASYNC110 (the room has no event for it)
                    await trio.sleep(0.01)
            assert trio.current_time() - kicked_at < write_timeout + 2
            # The room went on at full speed for the other member meanwhile.
            await fast.send_json({"type": "ping", "nonce": 9})
            assert await fast.recv() == {"type": "pong", "nonce": 9}


# -- room-id guessing ---------------------------------------------------------------------------


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_unknown_and_expired_rooms_answer_the_same_404(transport: str) -> None:
    async with serving(transport) as (server, client):
        expired = await new_room(client)
        assert await server.hub.storage.expire(-1.0, keep=[]) == [expired]
        unknown = "A" * 22
        answers = []
        for room in (expired, unknown):
            get = await client.get(f"/room/{room}")
            send = await client.post(f"/room/{room}/send", json={"type": "ping"})
            ws = await RawWebSocket.connect(server.host, server.port)
            try:
                await ws.handshake(f"/room/{room}/connect", expect=404)
            finally:
                await ws.aclose()
            answers.append((get.status_code, get.json(), send.status_code, send.json()))
        assert answers[0] == answers[1] == (404, {"type": "error", "message": "room not found"}) * 2


async def test_logs_never_contain_room_ids(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    rooms: list[str] = []
    async with serving(max_message_bytes=1024) as (server, client):
        for _ in range(3):
            rooms.append(await new_room(client))
        for room in rooms:
            async with raw_member(server, room) as ws:
                await ws.send_json(
                    {"type": "push", "key": "k", "value": 1, "action": {"type": "append"}}
                )
                await ws.recv()
                await ws.send(frame(TEXT, b"not json"))
                await ws.recv()
                await ws.send(frame(BINARY, b"x" * 2000))
                assert await ws.close_code() == 1009
            await client.post(f"/room/{room}/send", json={"type": "ping"})
            await client.get(f"/room/{room}")
        # A room that fails loudly logs its tag, never its id.
        logging.getLogger("drifttrio.test").warning("tag %s", room_tag(rooms[0]))
    # The server's own records (the test's HTTP client logs its URLs itself).
    records = [r for r in caplog.records if r.name.startswith(("drifttrio", "hypercorn"))]
    text = "\n".join(f"{r.getMessage()} {r.exc_text or ''} {r.args!r}" for r in records)
    assert records, "the run logged something"
    for room in rooms:
        assert room not in text
        assert room[:8] not in text
    assert re.fullmatch(r"r-[0-9a-f]{8}", room_tag(rooms[0]))
    assert room_tag(rooms[0]) == room_tag(rooms[0]) != room_tag(rooms[1])
