"""drifttrio's transport under attack: bounded HTTP connections and deadlines, HTTP by
the RFCs, liveness, descriptors, no tracebacks, budgeted control frames.

Each test is a row of an attack run against ``drifttrio serve`` on its defaults;
all run against the real server on 127.0.0.1:0, a subprocess where a
process-wide limit is needed, or the transport on trio's mock clock.
"""

from __future__ import annotations

import base64
import errno
import json
import logging
import os
import re
import resource
import socket
import struct
import subprocess
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
import trio.testing

import drifttrio
from _procs import ChildProcess, child_env, drifttrio_command
from _rawws import CLOSE, PING, PONG, TEXT, TIMEOUT, RawWebSocket, close_code, frame
from drifttrio import CloseCode, Config, RunningServer, open_server
from drifttrio._logging import ThrottledLog
from drifttrio.runtime.hub import Hub
from drifttrio.server import TRANSPORTS, fit_descriptors
from drifttrio.web import http11, transport, wire
from drifttrio.web.app import DriftApp
from drifttrio.web.limits import ClientBudgets
from drifttrio.web.liveness import Liveness

# -- helpers ------------------------------------------------------------------------------


@asynccontextmanager
async def serving(
    transport_name: str = "drifttrio", **settings: Any
) -> AsyncIterator[tuple[RunningServer, str]]:
    """A real server and a room in it."""
    async with (
        open_server(Config(**settings), transport=transport_name) as server,
        httpx.AsyncClient(base_url=server.url, trust_env=False, timeout=TIMEOUT) as client,
    ):
        response = await client.post("/new")
        assert response.status_code == 200
        yield server, response.json()["room"]


class RawHttp:
    """One raw HTTP/1.1 connection: send bytes, read responses as they come."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.buffer = b""

    @classmethod
    async def connect(cls, server: RunningServer) -> RawHttp:
        return cls(await trio.open_tcp_stream(server.host, server.port))

    async def send(self, data: bytes) -> None:
        await self.stream.send_all(data)

    async def _fill(self) -> bool:
        try:
            data = await self.stream.receive_some(65536)
        except trio.BrokenResourceError:  # reset by the server after its answer
            data = b""
        self.buffer += data
        return bool(data)

    async def response(self, *, head: bool = False) -> tuple[int, dict[str, str], bytes]:
        """The next response: status, headers (lower-case names), body (none for HEAD)."""
        with trio.fail_after(TIMEOUT):
            while b"\r\n\r\n" not in self.buffer:
                assert await self._fill(), f"closed before a response: {self.buffer!r}"
            raw, _, self.buffer = self.buffer.partition(b"\r\n\r\n")
            status_line, *lines = raw.decode("latin-1").split("\r\n")
            headers = {
                name.strip().lower(): value.strip()
                for name, _, value in (line.partition(":") for line in lines)
            }
            length = 0 if head else int(headers.get("content-length", "0"))
            while len(self.buffer) < length:
                assert await self._fill(), "closed in the middle of a body"
            body, self.buffer = self.buffer[:length], self.buffer[length:]
        return int(status_line.split()[1]), headers, body

    async def closed(self) -> bytes:
        """Everything the server still sends until it closes the connection."""
        with trio.fail_after(TIMEOUT):
            while await self._fill():
                pass
        rest, self.buffer = self.buffer, b""
        return rest

    async def aclose(self) -> None:
        await self.stream.aclose()


def server_frames(data: bytearray) -> list[tuple[int, bytes]]:
    """Complete unmasked (server) frames taken off the front of ``data``."""
    frames = []
    while len(data) >= 2:
        length, offset = data[1] & 0x7F, 2
        if length == 126:
            if len(data) < 4:
                break
            (length,), offset = struct.unpack("!H", data[2:4]), 4
        if len(data) < offset + length:
            break
        frames.append((data[0] & 0x0F, bytes(data[offset : offset + length])))
        del data[: offset + length]
    return frames


def upgrade_request(path: str, **headers: str) -> bytes:
    lines = [f"GET {path} HTTP/1.1", "Host: t", "Upgrade: websocket", "Connection: Upgrade"]
    lines += [f"{name.replace('_', '-')}: {value}" for name, value in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def valid_key() -> str:
    return base64.b64encode(os.urandom(16)).decode()


# -- a whole-request deadline, keep-alive idle timeout, HTTP caps --------------------------


async def test_a_body_trickled_a_byte_at_a_time_gets_408_at_the_request_deadline() -> None:
    # The attack: a byte every few seconds kept each /send open forever, because the
    # deadline applied to each chunk. Here a byte every 0.1 s, a 1 s request deadline.
    async with serving(request_timeout=1.0, handshake_timeout=10.0) as (server, room):
        conn = await RawHttp.connect(server)
        async with conn.stream, trio.open_nursery() as nursery:
            head = f"POST /room/{room}/send HTTP/1.1\r\nHost: t\r\nContent-Length: 1000\r\n\r\n"
            await conn.send(head.encode())

            async def trickle() -> None:
                with suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                    while True:
                        await conn.send(b" ")
                        await trio.sleep(0.1)

            nursery.start_soon(trickle)
            start = trio.current_time()
            status, headers, _ = await conn.response()
            elapsed = trio.current_time() - start
            nursery.cancel_scope.cancel()
        assert status == 408
        assert headers["connection"] == "close"
        assert 1.0 <= elapsed < 1.0 + 3


async def test_an_idle_keep_alive_connection_is_closed_after_the_keepalive_timeout() -> None:
    async with serving(keepalive_timeout=0.3, handshake_timeout=30.0) as (server, _):
        conn = await RawHttp.connect(server)
        async with conn.stream:
            await conn.send(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n")
            status, _, _ = await conn.response()
            assert status == 200
            start = trio.current_time()
            with trio.fail_after(5):  # handshake_timeout (30 s) must not be what applies
                assert await conn.closed() == b""
            assert trio.current_time() - start >= 0.3


@pytest.mark.parametrize(
    "cap", ["max_http_connections", "max_http_connections_per_ip"], ids=["total", "per-ip"]
)
async def test_http_connections_beyond_a_cap_get_503_but_health_is_still_answered(
    cap: str,
) -> None:
    # The attack: 1,100 slow requests from one address, all held open, no cap at all.
    async with serving(**{cap: 4}) as (server, room):
        holders = [await RawHttp.connect(server) for _ in range(4)]
        try:
            for holder in holders:  # each a request head in progress
                await holder.send(b"POST /new HTTP/1.1\r\nHost: t\r\n")
            # The holders are counted once accepted; a request on a fifth connection
            # waits for that with its answer, whichever it is.
            over = await RawHttp.connect(server)
            async with over.stream:
                await over.send(f"GET /room/{room} HTTP/1.1\r\nHost: t\r\n\r\n".encode())
                status, headers, body = await over.response()
                assert (status, headers["connection"]) == (503, "close"), body
                assert headers["retry-after"] == "1"
                assert await over.closed() == b""
            for path in ("/healthz", "/readyz"):
                health = await RawHttp.connect(server)
                async with health.stream:
                    await health.send(f"GET {path} HTTP/1.1\r\nHost: t\r\n\r\n".encode())
                    status, headers, body = await health.response()
                    assert status == 200, body
                    assert headers["connection"] == "close"
            # A slot freed is a slot for the next client.
            await holders.pop().aclose()
            with trio.fail_after(TIMEOUT):
                while True:
                    again = await RawHttp.connect(server)
                    async with again.stream:
                        await again.send(f"GET /room/{room} HTTP/1.1\r\nHost: t\r\n\r\n".encode())
                        status, _, _ = await again.response()
                    if status == 200:
                        break
                    await trio.sleep(0.01)  # the server has not seen the close yet
        finally:
            for holder in holders:
                await holder.aclose()


async def test_upgraded_connections_leave_the_http_phase() -> None:
    # Two HTTP slots, four WebSockets: once upgraded, only the WebSocket caps count them.
    async with serving(max_http_connections=2) as (server, room):
        members = []
        try:
            for _ in range(4):
                ws = await RawWebSocket.connect(server.host, server.port)
                members.append(ws)
                await ws.handshake(f"/room/{room}/connect")
                await ws.send_json({"type": "ping", "nonce": 1})
                assert await ws.recv() == {"type": "pong", "nonce": 1}
        finally:
            for ws in members:
                await ws.aclose()


# -- HTTP by the RFCs ------------------------------------------------------------------------


async def test_content_length_with_transfer_encoding_gets_400_and_nothing_after_it() -> None:
    async with serving() as (server, room):
        conn = await RawHttp.connect(server)
        async with conn.stream:
            smuggled = (
                f"POST /room/{room}/send HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n"
                "Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
                "GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n"
            )
            await conn.send(smuggled.encode())
            status, headers, _ = await conn.response()
            assert (status, headers["connection"]) == (400, "close")
            # RFC 9112 6.1: the connection is closed; the hidden request is never served.
            assert await conn.closed() == b""


@pytest.mark.parametrize("transport_name", TRANSPORTS)
async def test_head_gets_the_headers_of_get_and_no_body(transport_name: str) -> None:
    async with serving(transport_name) as (server, room):
        conn = await RawHttp.connect(server)
        async with conn.stream:
            for path in ("/", "/healthz", f"/room/{room}", "/nowhere"):
                await conn.send(f"GET {path} HTTP/1.1\r\nHost: t\r\n\r\n".encode())
                get_status, get_headers, get_body = await conn.response()
                await conn.send(f"HEAD {path} HTTP/1.1\r\nHost: t\r\n\r\n".encode())
                status, headers, _ = await conn.response(head=True)
                assert status == get_status, path
                for name in ("content-type", "content-length"):
                    assert headers.get(name) == get_headers.get(name), (path, name)
                assert int(headers["content-length"]) == len(get_body)
            # No body came after the HEAD answers, and the connection still serves.
            await conn.send(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n")
            status, _, body = await conn.response()
            assert (status, json.loads(body)) == (200, {"status": "ok"})


@pytest.mark.parametrize(
    ("headers", "status", "version_header"),
    [
        pytest.param({"Sec-WebSocket-Version": "13"}, 400, None, id="no-key"),
        pytest.param({"Sec-WebSocket-Key": "KEY"}, 400, "13", id="no-version"),
        pytest.param(
            {"Sec-WebSocket-Key": "KEY", "Sec-WebSocket-Version": "8"}, 426, "13", id="v8"
        ),
    ],
)
async def test_a_bad_upgrade_gets_an_http_answer(
    headers: dict[str, str], status: int, version_header: str | None
) -> None:
    async with serving() as (server, room):
        conn = await RawHttp.connect(server)
        async with conn.stream:
            filled = {k: valid_key() if v == "KEY" else v for k, v in headers.items()}
            await conn.send(upgrade_request(f"/room/{room}/connect", **filled))
            got, answer, _ = await conn.response()
            assert got == status
            assert answer.get("sec-websocket-version") == version_header
            assert answer["connection"] == "close"


async def test_client_mistakes_never_log_a_traceback_and_log_lines_are_bounded(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    caplog.set_level(logging.DEBUG)
    monkeypatch.setattr(http11, "client_errors", ThrottledLog(wire.log, per_interval=3))
    rounds = 20
    async with serving() as (server, room):
        mistakes = [
            b"HEAD / HTTP/1.1\r\nHost: t\r\n\r\n",
            b"GARBAGE\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: t\r\nBad Header\r\n\r\n",
            upgrade_request(f"/room/{room}/connect", Sec_WebSocket_Version="13"),
            upgrade_request(
                f"/room/{room}/connect", Sec_WebSocket_Key=valid_key(), Sec_WebSocket_Version="8"
            ),
            f"POST /room/{room}/send HTTP/1.1\r\nHost: t\r\nContent-Length: 1\r\n"
            "Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n".encode(),
            upgrade_request("/room/x/connect").replace(b"HTTP/1.1", b"HTTP/1.0"),
        ]
        for _ in range(rounds):
            for mistake in mistakes:
                conn = await RawHttp.connect(server)
                async with conn.stream:
                    await conn.send(mistake)
                    status, _, _ = await conn.response(head=mistake.startswith(b"HEAD"))
                    assert status < 500, mistake
    records = [r for r in caplog.records if r.name.startswith("drifttrio")]
    assert not [r for r in records if r.exc_info], "a client caused a traceback"
    refusals = [r for r in records if r.name == "drifttrio.transport"]
    assert refusals, "client errors are logged"
    # Five kinds of refusal (400, 426 ...), three lines each at most: not one per request.
    assert len(refusals) <= 5 * 3 < rounds


# -- liveness: server pings, on the mock clock ----------------------------------------------

VIRTUAL_TIMEOUT = 3600


@asynccontextmanager
async def memory_member(
    config: Config, nursery: trio.Nursery
) -> AsyncIterator[tuple[trio.testing.MemoryReceiveStream | Any, Hub, str]]:
    """A WebSocket member served over a memory stream (the transport, the real app)."""
    hub = Hub(config)
    await nursery.start(hub.run)
    app = DriftApp(config, hub=hub)
    room = await hub.create_room()
    client, server = trio.testing.memory_stream_pair()
    # One timer for the transport, as serve_tcp runs it.
    liveness = Liveness(config.ping_interval, config.ping_timeout)
    await nursery.start(liveness.run)
    nursery.start_soon(
        lambda: transport.serve_stream(
            app, config, server, client=("10.0.0.1", 5000), liveness=liveness
        )
    )
    await client.send_all(
        upgrade_request(
            f"/room/{room}/connect", Sec_WebSocket_Key=valid_key(), Sec_WebSocket_Version="13"
        )
    )
    received = b""
    while b"\r\n\r\n" not in received:
        received += await client.receive_some()
    assert received.startswith(b"HTTP/1.1 101 "), received
    yield client, hub, room


async def next_frames(stream: Any, buffer: bytearray) -> list[tuple[int, bytes]]:
    """Server frames, waiting for at least one (``[]``: the stream ended)."""
    while not (frames := server_frames(buffer)):
        data = await stream.receive_some()
        if not data:
            return []
        buffer += data
    return frames


async def test_a_silent_peer_is_pinged_then_closed_with_4001_and_counted_out(
    autojump_clock: trio.testing.MockClock,
) -> None:
    config = Config(ping_interval=30.0, ping_timeout=20.0)
    with trio.fail_after(VIRTUAL_TIMEOUT):  # virtual time: a guard against hangs
        async with trio.open_nursery() as nursery:
            async with memory_member(config, nursery) as (client, hub, room):
                assert len(hub.rooms[room].members) == 1
                start = trio.current_time()
                buffer = bytearray()
                assert await next_frames(client, buffer) == [(PING, b"")]
                pinged = trio.current_time() - start
                assert 30.0 <= pinged <= 60.0
                # The peer is gone (no FIN, no pong): closed with 4001 a timeout later.
                frames = await next_frames(client, buffer)
                assert [op for op, _ in frames] == [CLOSE]
                assert close_code(frames[0][1]) == CloseCode.PING_TIMEOUT == 4001
                assert trio.current_time() - start == pytest.approx(pinged + 20.0)
                assert await next_frames(client, buffer) == []  # and cut off
                # Its slot is freed: the room counts it out.
                with trio.fail_after(5):
                    while hub.rooms.get(room) is not None and hub.rooms[room].members:  # noqa: ASYNC110
                        await trio.sleep(0.1)
            nursery.cancel_scope.cancel()


async def test_a_peer_that_answers_pings_stays_connected(
    autojump_clock: trio.testing.MockClock,
) -> None:
    config = Config(ping_interval=30.0, ping_timeout=20.0)
    with trio.fail_after(VIRTUAL_TIMEOUT):  # virtual time: a guard against hangs
        async with trio.open_nursery() as nursery:
            async with memory_member(config, nursery) as (client, hub, room):
                buffer = bytearray()
                pings = 0
                start = trio.current_time()
                while trio.current_time() - start < 600:  # ten minutes of silence but pongs
                    frames = await next_frames(client, buffer)
                    assert [op for op, _ in frames] == [PING]
                    pings += 1
                    await client.send_all(frame(PONG, frames[0][1]))
                assert pings >= 600 / 60  # pinged at least every 2 intervals
                await client.send_all(frame(TEXT, b'{"type": "ping", "nonce": 7}'))
                frames = await next_frames(client, buffer)
                assert json.loads(frames[0][1]) == {"type": "pong", "nonce": 7}
                assert len(hub.rooms[room].members) == 1
            nursery.cancel_scope.cancel()


async def test_the_real_server_closes_a_silent_member_and_frees_its_slot() -> None:
    # Through serve_tcp and its one shared timer, on real sockets and short settings.
    async with serving(ping_interval=0.2, ping_timeout=0.3, max_connections_per_ip=1) as (
        server,
        room,
    ):
        ws = await RawWebSocket.connect(server.host, server.port)
        try:
            await ws.handshake(f"/room/{room}/connect")
            assert await ws.recv_frame() == (PING, b"")  # and it never answers
            assert await ws.close_code() == CloseCode.PING_TIMEOUT
        finally:
            await ws.aclose()
        # Counted out: the one slot of this address takes a new member.
        again = await RawWebSocket.connect(server.host, server.port)
        try:
            with trio.fail_after(TIMEOUT):
                await again.handshake(f"/room/{room}/connect")
        finally:
            await again.aclose()


async def test_accepted_sockets_have_tcp_keepalive() -> None:
    async with serving() as (server, _):
        client = await trio.open_tcp_stream(server.host, server.port)
        async with client:
            await client.send_all(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n")
            await client.receive_some(65536)  # accepted and served
            mine = client.socket.getsockname()
            # The server's end of this connection, found among this process's descriptors.
            found = []
            for name in os.listdir("/proc/self/fd"):
                try:
                    fd = os.dup(int(name))
                except OSError:  # the listing's own descriptor, closed since
                    continue
                try:
                    sock = socket.socket(fileno=fd)
                except OSError:
                    os.close(fd)  # not a socket
                    continue
                with sock:
                    try:
                        if sock.getpeername() != mine:
                            continue
                    except OSError:
                        continue
                    found.append(
                        (
                            sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE),
                            sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE),
                            sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL),
                            sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT),
                        )
                    )
    assert found == [(1, 60, 15, 4)]


# -- control frames are charged like messages ------------------------------------------------


async def test_pings_over_the_address_budget_get_no_pong_then_close_4029(
    autojump_clock: trio.testing.MockClock,
) -> None:
    config = Config(ping_interval=0)
    budgets = ClientBudgets(messages=(0.001, 5.0))  # five, then (almost) nothing
    with trio.fail_after(VIRTUAL_TIMEOUT):  # virtual time: a guard against hangs
        async with trio.open_nursery() as nursery:
            hub = Hub(config)
            await nursery.start(hub.run)
            app = DriftApp(config, hub=hub)
            room = await hub.create_room()
            client, server = trio.testing.memory_stream_pair()
            nursery.start_soon(
                lambda: transport.serve_stream(
                    app, config, server, client=("10.0.0.2", 1), budgets=budgets
                )
            )
            await client.send_all(
                upgrade_request(
                    f"/room/{room}/connect",
                    Sec_WebSocket_Key=valid_key(),
                    Sec_WebSocket_Version="13",
                )
            )
            received = b""
            while b"\r\n\r\n" not in received:
                received += await client.receive_some()
            buffer = bytearray(received.partition(b"\r\n\r\n")[2])
            for i in range(5):
                await client.send_all(frame(PING, b"%d" % i))
                assert await next_frames(client, buffer) == [(PONG, b"%d" % i)]
            await client.send_all(frame(PING, b"over"))
            with trio.move_on_after(10) as quiet:
                await next_frames(client, buffer)
            assert quiet.cancelled_caught, "a ping over the budget got a pong"
            await client.send_all(frame(PONG, b"") * 99)  # the 100th refused in a row
            frames = await next_frames(client, buffer)
            assert [(op, close_code(payload)) for op, payload in frames] == [
                (CLOSE, CloseCode.RATE_LIMITED)
            ]
            nursery.cancel_scope.cancel()


async def test_a_pong_flood_is_closed_with_4029_and_others_keep_their_latency() -> None:
    # The attack: three connections sending unsolicited pongs as fast as they can put
    # an honest member's round trip at 219-616 ms (p50).
    async with serving(rate_limit_per_second=200.0, rate_limit_burst=1000) as (server, room):
        async with httpx.AsyncClient(base_url=server.url, trust_env=False) as http:
            other_room = (await http.post("/new")).json()["room"]
        honest = await RawWebSocket.connect(server.host, server.port)
        await honest.handshake(f"/room/{other_room}/connect")
        codes: list[int | None] = []
        round_trips: list[float] = []

        async def flood_until_closed() -> None:
            async with trio.open_nursery() as reading:
                ws = await RawWebSocket.connect(server.host, server.port)
                await ws.handshake(f"/room/{room}/connect")

                async def read() -> None:
                    codes.append(await ws.close_code())
                    reading.cancel_scope.cancel()

                reading.start_soon(read)
                burst = frame(PONG, b"x" * 16) * 2000
                with suppress(trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                    while True:
                        await ws.send(burst)
            await ws.aclose()

        try:
            with trio.fail_after(30):
                async with trio.open_nursery() as nursery:
                    for _ in range(3):
                        nursery.start_soon(flood_until_closed)
                    for nonce in range(200):
                        sent = trio.current_time()
                        await honest.send_json({"type": "ping", "nonce": nonce})
                        assert await honest.recv() == {"type": "pong", "nonce": nonce}
                        round_trips.append(trio.current_time() - sent)
        finally:
            await honest.aclose()
    assert codes == [CloseCode.RATE_LIMITED] * 3
    round_trips.sort()
    p50, p99 = round_trips[len(round_trips) // 2], round_trips[int(len(round_trips) * 0.99)]
    print(f"honest round trip under a pong flood: p50 {p50 * 1e3:.1f} ms, p99 {p99 * 1e3:.1f} ms")
    assert p99 < 0.2


# -- descriptors --------------------------------------------------------------------------


def test_connection_caps_fit_the_descriptor_limit() -> None:
    fitted = fit_descriptors(Config(), (1024, 1024))
    assert fitted.max_connections + fitted.max_http_connections <= 1024 - 96
    assert fitted.max_http_connections >= 100
    assert fitted.max_connections >= 600
    assert fitted.max_connections_per_ip <= fitted.max_connections
    assert fitted.max_http_connections_per_ip <= fitted.max_http_connections
    # Unlimited caps get a limit; a roomy limit changes nothing.
    assert fit_descriptors(Config(max_connections=0), (256, 256)).max_connections > 0
    assert fit_descriptors(Config(), (20000, 20000)) == Config()


class _FullListener(trio.abc.Listener[trio.SocketStream]):
    """accept() fails with EMFILE ``failures`` times, then hands out one stream."""

    def __init__(self, failures: int, stream: Any) -> None:
        self.failures = failures
        self.stream = stream

    async def accept(self) -> trio.SocketStream:
        await trio.lowlevel.checkpoint()
        if self.failures:
            self.failures -= 1
            raise OSError(errno.EMFILE, os.strerror(errno.EMFILE))
        stream, self.stream = self.stream, None
        if stream is None:
            await trio.sleep_forever()
        return stream  # type: ignore[no-any-return]

    async def aclose(self) -> None:
        pass


async def test_accept_out_of_descriptors_is_one_log_line_per_episode(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    handled: list[object] = []
    token = object()
    async with trio.open_nursery() as nursery:
        listener = _FullListener(500, token)
        nursery.start_soon(transport.accept_connections, listener, handled.append)
        with trio.fail_after(600):
            while not handled:  # noqa: ASYNC110 (virtual time)
                await trio.sleep(1)
        nursery.cancel_scope.cancel()
    assert handled == [token]  # it kept accepting, and got the connection in the end
    records = [r for r in caplog.records if r.name.startswith("drifttrio")]
    assert not [r for r in records if r.exc_info]
    assert len([r for r in records if "EMFILE" in r.getMessage()]) == 1
    assert len(records) == 2  # the episode's start and its end


async def test_a_server_at_its_descriptor_limit_answers_503_and_stays_healthy(
    tmp_path: Path,
) -> None:
    # The attack: 1,012 idle WebSockets under RLIMIT_NOFILE=1024; accept() failed with
    # EMFILE, logged a traceback each time, and /healthz timed out for everyone.
    limit = 256

    def low_limit() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit))

    process = await trio.lowlevel.open_process(
        [*drifttrio_command(), "serve", "--port", "0", "--store", "memory"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        # The drifttrio under test, wherever it is imported from (PYTHONPATH=src).
        env={**child_env(), "PYTHONPATH": str(Path(drifttrio.__file__).parents[1])},
        cwd=tmp_path,
        preexec_fn=low_limit,
    )
    child = ChildProcess(process)
    members: list[RawWebSocket] = []
    statuses: list[int] = []
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(child.pump)
            port = int((await child.wait_for_line(r"listening on http://[^:]+:(\d+)"))[1])
            await child.wait_for_line(r"open-file limit 256")
            async with httpx.AsyncClient(
                base_url=f"http://127.0.0.1:{port}", trust_env=False, timeout=TIMEOUT
            ) as http:
                room = (await http.post("/new")).json()["room"]
                for _ in range(limit + 50):
                    ws = await RawWebSocket.connect("127.0.0.1", port)
                    members.append(ws)
                    with trio.fail_after(TIMEOUT):
                        await ws.stream.send_all(
                            upgrade_request(
                                f"/room/{room}/connect",
                                Sec_WebSocket_Key=valid_key(),
                                Sec_WebSocket_Version="13",
                            )
                        )
                        while b"\r\n\r\n" not in ws.buffer:
                            assert await ws._fill(), "closed without an answer"
                    statuses.append(int(bytes(ws.buffer).split(b" ", 2)[1]))
                # Every one was answered: the ones that fit are members, the rest 503.
                assert statuses.count(101) >= 50
                assert statuses.count(503) >= 50
                assert set(statuses) == {101, 503}
                assert (await http.get("/healthz")).status_code == 200
                assert (await http.post("/new")).status_code == 200
            process.terminate()
    finally:
        for ws in members:
            await ws.aclose()
        with trio.CancelScope(shield=True):
            if process.returncode is None:
                process.kill()
            await process.wait()
    assert "Traceback" not in child.log, child.log
    assert len(re.findall("EMFILE", child.log)) <= 1, child.log
