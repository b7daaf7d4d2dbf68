"""drifttrio.client against the real server (sockets on 127.0.0.1:0), and its
reconnect logic against drifttrio.testing's in-process server on the mock clock."""

from __future__ import annotations

import random
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
import trio.testing

from drifttrio import Config, RoomNotFound, RunningServer, open_server
from drifttrio.client import (
    Api,
    Backoff,
    Connected,
    ConnectionClosed,
    GaveUp,
    HttpConnection,
    HttpError,
    Presence,
    QueueFull,
    Reconnecting,
    Reducer,
    ServerError,
    SharedState,
    Subscription,
    UnsentPushes,
    Update,
    connect,
)
from drifttrio.testing import DriftTestServer, Endpoint, open_test_server


@pytest.fixture
async def server() -> AsyncIterator[RunningServer]:
    async with open_server(Config()) as running:
        yield running


async def new_room(server: RunningServer) -> str:
    async with Api(server.url) as api:
        return (await api.new_room()).socket_url


async def take(sub: Subscription, n: int) -> list[tuple[int, Any]]:
    with trio.fail_after(10):
        return [tuple(await sub.__anext__()) for _ in range(n)]  # type: ignore[misc]


# -- against the real server -------------------------------------------------------------


async def test_room_api(server: RunningServer) -> None:
    async with Api(server.url + "/") as api:
        room = await api.new_room()
        assert room.socket_url == f"{server.ws_url}/room/{room.room}/connect"
        assert room.http_url == f"{server.url}/room/{room.room}/send"
        assert await api.get_room(room.room) == room
        with pytest.raises(RoomNotFound):
            await api.get_room("no-such-room")


@pytest.mark.parametrize("cbor", [False, True], ids=["json", "cbor"])
async def test_push_subscribe_get_ping(server: RunningServer, cbor: bool) -> None:
    value = b"\x00\xff" if cbor else [0, 255]  # JSON carries byte strings as int arrays
    async with connect(await new_room(server), cbor=cbor) as conn:
        await conn.push("chat", value)
        await conn.push("chat", {"text": "two"})
        sub = conn.subscribe("chat")
        assert await take(sub, 2) == [(1, value), (2, {"text": "two"})]
        await conn.push("chat", "live", "relay")
        await conn.push("chat", "last", "replace")
        assert await take(sub, 2) == [(3, "live"), (4, "last")]
        assert await conn.get("chat") == [(4, "last")]
        assert await conn.get("chat", since=4) == []
        assert await conn.get("nothing") == []
        latency = await conn.ping()
        assert latency >= 0
        assert conn.latency == latency
        assert conn.stream_sizes == {"chat": 2}
        assert conn.room_seq == 4
        # Compact: the broadcast reuses seq 2 (already seen), the stream shrinks.
        await conn.push("chat", "tail")
        await conn.push("chat", {"reset": "x"}, "compact", seq=4)
        assert await conn.get("chat") == [(4, {"reset": "x"}), (5, "tail")]
        assert await take(sub, 1) == [(5, "tail")]
        sub.close()
        assert [e for e in conn.event_history if not isinstance(e, Connected)] == []


async def test_two_subscriptions_of_one_key_and_since(server: RunningServer) -> None:
    async with connect(await new_room(server)) as conn:
        for n in range(1, 4):
            await conn.push("k", n)
        async with conn.subscribe("k") as a, conn.subscribe("k", since=2) as b:
            assert await take(a, 3) == [(1, 1), (2, 2), (3, 3)]
            assert await take(b, 1) == [(3, 3)]
            await conn.push("k", 4)
            assert await take(a, 1) == await take(b, 1) == [(4, 4)]
        with pytest.raises(StopAsyncIteration):
            await a.__anext__()


async def test_errors_are_events(server: RunningServer) -> None:
    async with connect(await new_room(server)) as conn:
        await conn.push("k", "v", "compact", seq=99)  # a compact from the future
        await conn.ping()  # answered after the error
        errors = [e for e in conn.event_history if isinstance(e, ServerError)]
        assert len(errors) == 1
        assert "99" in errors[0].message


async def test_unknown_room(server: RunningServer) -> None:
    with pytest.raises(RoomNotFound):
        async with connect(f"{server.ws_url}/room/nope/connect"):
            pass  # pragma: no cover


async def test_http_connection(server: RunningServer) -> None:
    async with Api(server.url) as api:
        room = await api.new_room()
    async with HttpConnection(room.http_url) as http:
        assert await http.push("k", "a") is None
        assert await http.push("k", "b") == 2
        assert await http.get("k") == [(1, "a"), (2, "b")]
        assert await http.get("k", since=1) == [(2, "b")]
        assert await http.ping(7) == {"type": "pong", "nonce": 7}
        with pytest.raises(HttpError) as info:
            await http.send({"type": "bogus"})
        assert info.value.status == 400
    async with HttpConnection(room.http_url.replace(room.room, "nope")) as http:
        with pytest.raises(HttpError) as info:
            await http.get("k")
        assert info.value.status == 404


async def test_helpers_between_two_connections(server: RunningServer) -> None:
    url = await new_room(server)

    def add(state: list[int], action: int) -> list[int]:
        return [*state, action]

    async with (
        connect(url) as a,
        connect(url, cbor=True) as b,
        SharedState(a, "state", 0) as sa,
        SharedState(b, "state", 0) as sb,
        Reducer(a, "log", add, [], size_threshold=5) as ra,
        Reducer(b, "log", add, [], size_threshold=5) as rb,
        Presence(a, {"name": "A"}, client_id="a", interval=0.05) as pa,
        Presence(b, {"name": "B"}, client_id="b", interval=0.05) as pb,
    ):
        with trio.fail_after(10):
            await sa.set(5)
            await sb.wait_for(lambda: sb.value == 5)
            for n in range(12):
                await (ra if n % 2 else rb).dispatch(n)
            await ra.wait_for(lambda: ra.confirmed_seq > 0 and len(ra.state) == 12)
            await rb.wait_for(lambda: len(rb.confirmed_state) == 12)
            assert ra.state == rb.state == ra.confirmed_state == rb.confirmed_state
            assert sorted(ra.state) == list(range(12))
            await pa.wait_for(lambda: pa.peers == {"b": {"name": "B"}})
            await pb.update({"name": "B2"})
            await pa.wait_for(lambda: pa.peers == {"b": {"name": "B2"}})
            await pb.wait_for(lambda: pb.peers == {"a": {"name": "A"}})
        assert ra.compactions + rb.compactions > 0
        retained = await a.get("log")
        assert len(retained) < 12
        assert "reset" in retained[0][1]


# -- reconnects, on the mock clock -----------------------------------------------------


class Link:
    """Opens in-memory connections to whichever server is current; can fail them."""

    def __init__(self) -> None:
        self.server: DriftTestServer | None = None
        self.attempts: list[float] = []
        self.streams: list[Endpoint] = []
        self.down = False
        self._attempted = trio.Event()

    async def wait_attempts(self, n: int) -> None:
        while len(self.attempts) < n:
            await self._attempted.wait()

    async def open(self, host: str, port: int, tls: bool) -> trio.abc.Stream:
        self.attempts.append(trio.current_time())
        self._attempted.set()
        self._attempted = trio.Event()
        if self.down or self.server is None:
            raise ConnectionRefusedError("server is down")
        stream = await self.server.open_stream()
        self.streams.append(stream)
        return stream

    def drop(self) -> None:
        self.streams[-1].reset()


async def test_reconnect_backoff_in_virtual_time(autojump_clock: trio.testing.MockClock) -> None:
    link = Link()
    backoff = Backoff(initial=1.0, factor=2.0, maximum=5.0, jitter=0.0)
    async with open_test_server() as server:
        link.server = server
        room = await server.new_room()
        url = f"ws://{server.host}/room/{room}/connect"
        async with (
            connect(url, backoff=backoff, open_stream=link.open) as conn,
            await server.connect(room) as writer,
        ):
            sub = conn.subscribe("k")
            await writer.push("k", 1)
            assert await take(sub, 1) == [(1, 1)]

            start = trio.current_time()
            link.down = True
            link.drop()
            await writer.push("k", 2)  # retained: replayed after the reconnect
            await writer.push("k", "gone", "relay")  # relayed while down: lost
            await conn.push("k", "queued")  # queued while down, sent after
            await link.wait_attempts(5)  # the first connection and 4 refused attempts
            link.down = False
            assert await take(sub, 2) == [(2, 2), (4, "queued")]

            delays = [round(t - start, 6) for t in link.attempts[1:]]
            # waits of 1, 2, 4, 5 (capped), 5: four refused attempts, then success
            assert delays == [1.0, 3.0, 7.0, 12.0, 17.0]
            history = conn.event_history
            planned = [e.delay for e in history if isinstance(e, Reconnecting)]
            assert planned == [1.0, 2.0, 4.0, 5.0, 5.0]
            resumed = [e for e in history if isinstance(e, Connected) and e.reconnect]
            assert len(resumed) == 1
            (gap,) = resumed[0].gaps
            assert (gap.key, gap.after_seq) == ("k", 1)
            assert gap.until - gap.since == pytest.approx(17.0)
            assert sub.gaps == [gap]
            assert conn.reconnects == 1
            await writer.push("k", 5)
            assert await take(sub, 1) == [(5, 5)]


def test_jitter_stays_within_its_bounds() -> None:
    backoff = Backoff(initial=1.0, factor=3.0, maximum=20.0, jitter=0.5, rng=random.Random(7))
    delays = list(zip(range(6), backoff.delays(), strict=False))
    for attempt, delay in delays:
        base = backoff.base(attempt)
        assert base / 2 <= delay <= base
    assert len({round(d / backoff.base(a), 6) for a, d in delays}) > 1  # really jittered
    assert list(Backoff(max_attempts=3, jitter=0).delays()) == [0.5, 1.0, 2.0]
    with pytest.raises(ValueError, match="jitter"):
        Backoff(jitter=1.5)


async def test_push_queue_is_bounded_and_flushed_in_order(
    autojump_clock: trio.testing.MockClock,
) -> None:
    link = Link()
    async with open_test_server() as server:
        link.server = server
        room = await server.new_room()
        url = f"ws://{server.host}/room/{room}/connect"

        async def scenario() -> None:
            async with connect(url, max_queued=3, open_stream=link.open) as conn:
                link.down = True
                link.drop()
                for n in range(3):
                    await conn.push("q", n)
                with pytest.raises(QueueFull):
                    await conn.push("q", 3)
                assert conn.queued == 3
                link.down = False
                async for event in conn.events():
                    if isinstance(event, Connected):
                        break  # queued pushes are flushed before Connected
                assert conn.queued == 0
                assert await conn.get("q") == [(1, 0), (2, 1), (3, 2)]
                link.down = True
                link.drop()
                await conn.push("q", "never sent")

        with pytest.raises(UnsentPushes) as unsent:
            await scenario()
        assert [m["value"] for m in unsent.value.pushes] == ["never sent"]


async def test_gives_up_after_max_attempts(autojump_clock: trio.testing.MockClock) -> None:
    link = Link()
    async with open_test_server() as server:
        link.server = server
        room = await server.new_room()
        url = f"ws://{server.host}/room/{room}/connect"
        backoff = Backoff(initial=1, jitter=0, max_attempts=2)
        async with connect(url, backoff=backoff, open_stream=link.open) as conn:
            sub = conn.subscribe("k")
            link.down = True
            link.drop()
            with pytest.raises(ConnectionClosed, match="2 attempts"):
                async for _ in sub:
                    pass  # pragma: no cover
            assert isinstance(conn.event_history[-1], GaveUp)
            with pytest.raises(ConnectionClosed):
                await conn.push("k", 1)


async def test_room_deleted_while_away_gives_up(autojump_clock: trio.testing.MockClock) -> None:
    link = Link()
    async with open_test_server() as server:
        link.server = server
        room = await server.new_room()
        url = f"ws://{server.host}/room/{room}/connect"
        async with connect(url, open_stream=link.open) as conn:
            sub = conn.subscribe("k")
            link.down = True
            link.drop()
            await trio.sleep(server.config.room_idle_seconds + 1)  # the room task ends
            await server.storage.delete_room(room)  # as when its TTL expires
            link.down = False
            with pytest.raises(ConnectionClosed) as info:
                async for _ in sub:
                    pass  # pragma: no cover
            assert isinstance(info.value.__cause__, RoomNotFound)


async def test_server_restart_mid_stream_sqlite(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    """The consumer sees every retained message once, in order, across a restart."""
    link = Link()
    total = 60
    received: list[Update] = []
    async with open_test_server(store="sqlite", tmp_path=tmp_path) as first:
        link.server = first
        room = await first.new_room()
    url = f"ws://drift.test/room/{room}/connect"

    async def produce(server: DriftTestServer, numbers: range) -> None:
        async with await server.connect(room) as producer:
            for n in numbers:
                await producer.push("feed", n)
                await trio.sleep(0.1)
            await producer.ping()
            await producer.receive()

    async def consume(sub: Subscription) -> None:
        async for update in sub:
            received.append(update)
            await trio.sleep(0.3)  # a consumer slower than the producer
            if len(received) == total:
                all_received.set()
                return

    async def client(*, task_status: trio.TaskStatus[None]) -> None:
        async with connect(url, open_stream=link.open, backoff=Backoff(jitter=0)) as conn:
            # Two updates wait for the consumer; then the client stops reading and
            # the rest stays on the server until the consumer catches up.
            sub = conn.subscribe("feed", buffer=2)
            task_status.started()
            await consume(sub)
            reconnects.append(conn.reconnects)

    reconnects: list[int] = []
    all_received = trio.Event()
    async with trio.open_nursery() as nursery:
        async with open_test_server(store="sqlite", tmp_path=tmp_path) as server:
            link.server = server
            await nursery.start(client)
            await produce(server, range(1, 31))
            link.server = None
        assert len(received) < 30  # the restart is mid-stream for the consumer
        # Down for a while: the client retries; the old process is gone.
        await trio.sleep(3)
        async with open_test_server(store="sqlite", tmp_path=tmp_path) as server:
            link.server = server
            await produce(server, range(31, total + 1))
            with trio.fail_after(120):
                await all_received.wait()
    assert [u.value for u in received] == list(range(1, total + 1))
    assert [u.seq for u in received] == list(range(1, total + 1))
    assert reconnects[0] >= 1


async def test_real_server_wrong_host_fails_loudly() -> None:
    with pytest.raises(Exception) as info:  # noqa: PT011 - ConnectFailed, checked below
        async with connect("ws://127.0.0.1:1/room/x/connect", connect_timeout=5):
            pass  # pragma: no cover
    assert type(info.value).__name__ == "ConnectFailed"


async def test_api_with_a_given_httpx_client(autojump_clock: trio.testing.MockClock) -> None:
    async with open_test_server() as server:
        transport = server.httpx_transport()
        async with httpx.AsyncClient(transport=transport) as client:
            api = Api("http://drift.test", http_client=client)
            room = await api.new_room()
            http = HttpConnection(room.http_url, http_client=client)
            await http.push("k", 1)
            assert await http.get("k") == [(1, 1)]
            await api.aclose()  # does not close a client it was given
            assert not client.is_closed
