"""Rooms shared by several ``drifttrio serve`` processes through a real Redis.

Every test runs real node processes (``drifttrio serve --store redis://...``) on
ports the OS picked, against a real ``redis-server`` (or a three-primary Redis
Cluster) started by the test. Clients are raw WebSocket connections spread over
the nodes.
"""

from __future__ import annotations

import gc
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
from trio_websocket import ConnectionClosed, WebSocketConnection, open_websocket_url

from _procs import ChildProcess, drifttrio_command, start_child
from _redis import RedisCluster, RedisServer

TIMEOUT = 60  # a guard against hangs, never a way to wait for something
NODE_ENV = {"DRIFTTRIO_RATE_LIMIT_PER_SECOND": "0", "DRIFTTRIO_MAX_CONNECTIONS_PER_IP": "0"}


@asynccontextmanager
async def nodes(
    store: str, tmp_path: Path, count: int, children: list[ChildProcess] | None = None
) -> AsyncIterator[list[str]]:
    """``count`` drifttrio node processes on one store; yields their base URLs (and
    appends the processes to ``children``, to wait for their log lines)."""
    children = [] if children is None else children
    async with trio.open_nursery() as nursery:
        try:
            urls = []
            for _ in range(count):
                child = await start_child(
                    nursery,
                    [*drifttrio_command(), "serve", "--port", "0", "--store", store],
                    tmp_path,
                    NODE_ENV,
                )
                children.append(child)
                match = await child.wait_for_line(r"listening on (http://127\.0\.0\.1:\d+)")
                urls.append(match.group(1))
            yield urls
        finally:
            for child in children:
                if child.process.returncode is None:
                    child.process.kill()
            for child in children:
                await child.process.wait()


async def new_room(base: str) -> str:
    async with httpx.AsyncClient() as http:
        response = await http.post(f"{base}/new")
        response.raise_for_status()
        room = response.json()["room"]
        assert isinstance(room, str)
        return room


def ws_url(base: str, room: str) -> str:
    return f"{base.replace('http', 'ws', 1)}/room/{room}/connect"


async def joined(ws: WebSocketConnection) -> None:
    """Wait until the room has processed our join: it answers a ping after it."""
    await ws.send_message(json.dumps({"type": "ping", "nonce": 7}))
    while True:
        message = json.loads(await ws.get_message())
        if message["type"] == "pong":
            return


class Member:
    """A connection that records every broadcast it is sent."""

    def __init__(self) -> None:
        self.seen: list[tuple[int, Any]] = []

    async def run(
        self,
        url: str,
        expect: int,
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        async with open_websocket_url(url) as ws:
            await joined(ws)
            task_status.started()
            while len(self.seen) < expect:
                message = json.loads(await ws.get_message())
                if message["type"] == "push":
                    self.seen.append((message["seq"], message["value"]))


async def write(url: str, writer: str, count: int, key: str = "log") -> None:
    """Send ``count`` appends without waiting, then wait for the last one's echo."""
    async with open_websocket_url(url) as ws:
        await joined(ws)
        for n in range(count):
            value = {"w": writer, "n": n}
            await ws.send_message(
                json.dumps(
                    {"type": "push", "action": {"type": "append"}, "key": key, "value": value}
                )
            )
        while True:
            message = json.loads(await ws.get_message())
            assert message["type"] != "error", message
            if message["type"] == "push" and message["value"] == {"w": writer, "n": count - 1}:
                return


async def replay(url: str, key: str = "log") -> list[tuple[int, Any]]:
    """The retained stream, read with ``get`` from seq 0 on a fresh connection."""
    stream: list[tuple[int, Any]] = []
    async with open_websocket_url(url) as ws:
        await ws.send_message(json.dumps({"type": "get", "key": key, "seq": 0}))
        while True:
            message = json.loads(await ws.get_message())
            if message["type"] == "init":
                stream += [(item["seq"], item["value"]) for item in message["data"]]
                if not message.get("more"):  # a long stream comes in several inits
                    return stream


def assert_total_order(members: list[Member], total: int, writers: list[str]) -> None:
    """Every member saw seqs 1..total, the same values in the same order, and each
    writer's values in the order it sent them."""
    first = members[0].seen
    assert [seq for seq, _ in first] == list(range(1, total + 1)), "gap, duplicate or reorder"
    for member in members[1:]:
        assert member.seen == first, "two members saw different orders"
    for writer in writers:
        mine = [value["n"] for _, value in first if value["w"] == writer]
        assert mine == sorted(mine)
        assert len(mine) == len(set(mine))


async def run_room(urls: list[str], room: str, per_writer: int, members_per_node: int) -> None:
    """Members on every node, one writer on every node, all into one room."""
    writers = [f"node{i}" for i in range(len(urls))]
    total = per_writer * len(urls)
    members = [Member() for _ in range(members_per_node * len(urls))]
    with trio.fail_after(TIMEOUT):
        async with trio.open_nursery() as nursery:
            for i, member in enumerate(members):
                await nursery.start(member.run, ws_url(urls[i % len(urls)], room), total)
            async with trio.open_nursery() as writing:
                for url, writer in zip(urls, writers, strict=True):
                    writing.start_soon(write, ws_url(url, room), writer, per_writer)
        assert_total_order(members, total, writers)
        # A replay from any node equals the live stream.
        for url in urls:
            assert await replay(ws_url(url, room)) == members[0].seen


# -- one Redis, several nodes --------------------------------------------------------------


async def test_three_nodes_one_room_one_total_order(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    store = f"{redis_server.url}?prefix=three{id(tmp_path)}"
    async with nodes(store, tmp_path, 3) as urls:
        room = await new_room(urls[0])
        await run_room(urls, room, per_writer=300, members_per_node=2)


async def test_a_room_created_on_one_node_is_known_to_the_others(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    store = f"{redis_server.url}?prefix=known{id(tmp_path)}"
    async with nodes(store, tmp_path, 2) as urls, httpx.AsyncClient() as http:
        room = await new_room(urls[0])
        response = await http.get(f"{urls[1]}/room/{room}")
        assert response.status_code == 200
        # HTTP pushes through the second node are seen by a member of the first.
        member = Member()
        with trio.fail_after(TIMEOUT):
            async with trio.open_nursery() as nursery:
                await nursery.start(member.run, ws_url(urls[0], room), 2)
                for n in range(2):
                    # An empty script cache (what a Redis restart leaves): NOSCRIPT is
                    # answered by loading the script again.
                    redis_server.cli("script", "flush")
                    sent = await http.post(
                        f"{urls[1]}/room/{room}/send",
                        json={
                            "type": "push",
                            "action": {"type": "append"},
                            "key": "log",
                            "value": {"w": "http", "n": n},
                        },
                    )
                    assert sent.status_code == 200, sent.text
        assert member.seen == [(1, {"w": "http", "n": 0}), (2, {"w": "http", "n": 1})]
        assert (await http.get(f"{urls[0]}/room/not-a-room-{id(tmp_path)}")).status_code == 404


# -- Redis killed and restarted mid-load ---------------------------------------------------


class AckingWriter:
    """Pushes one append at a time and waits for its echo (the acknowledgement: it has
    a seq). Reconnects whenever the connection fails; records what was acknowledged."""

    def __init__(self, name: str, url: str) -> None:
        self.name = name
        self.url = url
        self.acked: dict[int, Any] = {}  # seq -> value
        self.failures = 0
        self.failed = trio.Event()
        self.progress = trio.Event()
        #: After a failure the writer waits for this before trying again (the test
        #: sets it once Redis and the nodes' event feeds are back).
        self.may_retry = trio.Event()
        self.may_retry.set()
        self.stop = False

    async def run(self) -> None:
        n = 0
        while not self.stop:
            try:
                async with open_websocket_url(self.url) as ws:
                    while not self.stop:
                        value = {"w": self.name, "n": n}
                        n += 1
                        await ws.send_message(
                            json.dumps(
                                {
                                    "type": "push",
                                    "action": {"type": "append"},
                                    "key": "log",
                                    "value": value,
                                }
                            )
                        )
                        if await self._wait_echo(ws, value):
                            self.progress.set()
                            self.progress = trio.Event()
                        else:
                            await self._fail()
            except (ConnectionClosed, OSError, trio_websocket_errors()):
                await self._fail()

    async def _fail(self) -> None:
        self.failures += 1
        self.failed.set()
        await self.may_retry.wait()

    async def _wait_echo(self, ws: WebSocketConnection, value: Any) -> bool:
        while True:
            message = json.loads(await ws.get_message())
            if message["type"] == "error":
                return False
            if message["type"] == "push" and message["value"] == value:
                self.acked[message["seq"]] = value
                return True

    async def wait_acks(self, count: int) -> None:
        target = len(self.acked) + count
        while len(self.acked) < target:
            await self.progress.wait()


def trio_websocket_errors() -> type[Exception]:
    from trio_websocket import HandshakeError

    return HandshakeError


# trio-websocket 0.12 does not close the socket of a rejected upgrade (503 while
# Redis is down) or of a connection the server closed first: collected below,
# where its ResourceWarning is ignored.
@pytest.mark.filterwarnings("ignore::ResourceWarning")
async def test_redis_killed_and_restarted_mid_load(tmp_path: Path) -> None:
    redis = RedisServer(tmp_path / "redis")
    redis.start()
    try:
        children: list[ChildProcess] = []
        async with nodes(redis.url, tmp_path, 2, children) as urls:
            room = await new_room(urls[0])
            writers = [AckingWriter(f"node{i}", ws_url(url, room)) for i, url in enumerate(urls)]
            with trio.fail_after(TIMEOUT):
                async with trio.open_nursery() as nursery:
                    for writer in writers:
                        nursery.start_soon(writer.run)
                    for writer in writers:
                        await writer.wait_acks(30)
                    for writer in writers:
                        writer.may_retry = trio.Event()
                    redis.kill()
                    for writer in writers:
                        await writer.failed.wait()  # pushes fail: error, or 1013 close
                    redis.start()  # same port, same append-only file
                    for child in children:
                        await child.wait_for_line("Redis event feed reconnected")
                    for writer in writers:
                        writer.may_retry.set()
                    for writer in writers:
                        await writer.wait_acks(30)  # clients recover
                    for writer in writers:
                        writer.stop = True
                stream = await replay(ws_url(urls[1], room))
        seqs = [seq for seq, _ in stream]
        assert seqs == sorted(set(seqs)), "a seq was reused or reordered"
        retained = dict(stream)
        for writer in writers:
            assert writer.failures >= 1
            for seq, value in writer.acked.items():
                assert retained.get(seq) == value, f"acknowledged push {seq} lost or moved"
    finally:
        redis.kill()
        gc.collect()


# -- Redis Cluster -----------------------------------------------------------------------------


async def test_redis_cluster_spreads_rooms_over_shards(
    redis_cluster: RedisCluster, tmp_path: Path
) -> None:
    async with nodes(redis_cluster.url, tmp_path, 2) as urls:
        rooms = [await new_room(urls[i % 2]) for i in range(6)]
        with trio.fail_after(TIMEOUT):
            async with trio.open_nursery() as nursery:
                for room in rooms:
                    nursery.start_soon(run_room, urls, room, 50, 1)
    # The rooms' keys live on more than one primary.
    holders = {
        server.port
        for server in redis_cluster.servers
        for line in server.cli("--scan", "--pattern", "drifttrio:{*}").split()
        if line.endswith("}")
    }
    assert len(holders) >= 2


# -- a node cut off from Redis -------------------------------------------------------------


class CuttableProxy:
    """A TCP proxy to Redis for one node; :meth:`cut` drops its connections and
    refuses new ones (the node is cut off), :meth:`restore` lets it back."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = 0
        self.cut_off = False
        self._scopes: set[trio.CancelScope] = set()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.port = listeners[0].socket.getsockname()[1]
        task_status.started()
        await trio.serve_listeners(self._handle, listeners)

    async def _handle(self, client: trio.SocketStream) -> None:
        async with client:
            if self.cut_off:
                return
            with trio.CancelScope() as scope:
                self._scopes.add(scope)
                try:
                    upstream = await trio.open_tcp_stream("127.0.0.1", self.target_port)
                    async with upstream, trio.open_nursery() as nursery:
                        nursery.start_soon(self._pipe, client, upstream, nursery.cancel_scope)
                        nursery.start_soon(self._pipe, upstream, client, nursery.cancel_scope)
                finally:
                    self._scopes.discard(scope)

    @staticmethod
    async def _pipe(
        source: trio.SocketStream, sink: trio.SocketStream, scope: trio.CancelScope
    ) -> None:
        try:
            async for data in source:
                await sink.send_all(data)
        except trio.BrokenResourceError:
            pass
        scope.cancel()

    def cut(self) -> None:
        self.cut_off = True
        for scope in list(self._scopes):
            scope.cancel()

    def restore(self) -> None:
        self.cut_off = False


class Closable(Member):
    """A member that records the close code the server ends it with."""

    def __init__(self) -> None:
        super().__init__()
        self.code: int | None = None

    async def run(
        self,
        url: str,
        expect: int,
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        async with open_websocket_url(url) as ws:
            await joined(ws)
            task_status.started()
            try:
                while True:
                    message = json.loads(await ws.get_message())
                    if message["type"] == "push":
                        self.seen.append((message["seq"], message["value"]))
            except ConnectionClosed as closed:
                self.code = closed.reason.code


@pytest.mark.filterwarnings("ignore::ResourceWarning")
async def test_a_node_cut_off_from_redis(redis_server: RedisServer, tmp_path: Path) -> None:
    """The cut-off node closes its members with 1013; the other node's members carry
    on without a gap; once the node is back, a replay through it is the full stream."""
    prefix = f"cut{id(tmp_path)}"
    async with trio.open_nursery() as nursery:
        proxy = CuttableProxy(redis_server.port)
        await nursery.start(proxy.run)
        cut_store = f"redis://127.0.0.1:{proxy.port}/0?prefix={prefix}"
        direct_store = f"{redis_server.url}?prefix={prefix}"
        cut_child: list[ChildProcess] = []
        async with (
            nodes(cut_store, tmp_path, 1, cut_child) as (cut_node,),
            nodes(direct_store, tmp_path, 1) as (direct_node,),
        ):
            room = await new_room(direct_node)
            on_cut, on_direct = Closable(), Member()
            with trio.fail_after(TIMEOUT):
                async with trio.open_nursery() as members:
                    await members.start(on_cut.run, ws_url(cut_node, room), 0)
                    await members.start(on_direct.run, ws_url(direct_node, room), 40)
                    await write(ws_url(direct_node, room), "before", 20)
                    proxy.cut()
                    await write(ws_url(direct_node, room), "during", 20)
                assert on_cut.code == 1013
                assert [seq for seq, _ in on_direct.seen] == list(range(1, 41))
                assert on_cut.seen == on_direct.seen[: len(on_cut.seen)]
                proxy.restore()
                # The cut-off node serves the room again once its feed reconnects.
                await cut_child[0].wait_for_line("Redis event feed reconnected")
                assert await replay(ws_url(cut_node, room)) == on_direct.seen
        nursery.cancel_scope.cancel()
    gc.collect()
