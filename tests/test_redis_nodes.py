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
async def nodes(store: str, tmp_path: Path, count: int) -> AsyncIterator[list[str]]:
    """``count`` drifttrio node processes on one store; yields their base URLs."""
    children: list[ChildProcess] = []
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
    async with open_websocket_url(url) as ws:
        await ws.send_message(json.dumps({"type": "get", "key": key, "seq": 0}))
        while True:
            message = json.loads(await ws.get_message())
            if message["type"] == "init":
                return [(item["seq"], item["value"]) for item in message["data"]]


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
                            self._fail()
            except (ConnectionClosed, OSError, trio_websocket_errors()):
                self._fail()
                # Reconnect pacing (the server answers 503 until Redis is back).
                await trio.sleep(0.05)

    def _fail(self) -> None:
        self.failures += 1
        self.failed.set()

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
        async with nodes(redis.url, tmp_path, 2) as urls:
            room = await new_room(urls[0])
            writers = [AckingWriter(f"node{i}", ws_url(url, room)) for i, url in enumerate(urls)]
            with trio.fail_after(TIMEOUT):
                async with trio.open_nursery() as nursery:
                    for writer in writers:
                        nursery.start_soon(writer.run)
                    for writer in writers:
                        await writer.wait_acks(30)
                    redis.kill()
                    for writer in writers:
                        await writer.failed.wait()  # pushes fail: error, or 1013 close
                    redis.start()  # same port, same append-only file
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


@pytest.fixture
def redis_cluster(tmp_path: Path) -> Any:
    cluster = RedisCluster(tmp_path / "cluster")
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.kill()


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
