"""The Redis store in-process: two hubs ("nodes") on one real redis-server.

Faults are injected where they would happen: a node missing events on its feed, a
log trimmed past what it missed, Redis losing writes, persistence settings that
cannot keep seqs, Redis unreachable.
"""

from __future__ import annotations

import gc
import json
import secrets
import subprocess
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trio

from _procs import child_env, drifttrio_command
from _redis import RedisServer
from drifttrio import CloseCode, Config, ConfigError, StorageError
from drifttrio.protocol import Append, PushEvent
from drifttrio.runtime.hub import Hub, open_hub
from drifttrio.storage.redis import RedisStorage

TIMEOUT = 20


@asynccontextmanager
async def two_nodes(redis: RedisServer) -> AsyncIterator[tuple[Hub, Hub]]:
    url = f"{redis.url}?prefix=t{secrets.token_hex(6)}"
    async with (
        open_hub(Config(), RedisStorage(url)) as a,
        open_hub(Config(), RedisStorage(url)) as b,
    ):
        yield a, b


async def receive_pushes(events: AsyncIterator[object], count: int) -> list[tuple[int, object]]:
    seen: list[tuple[int, object]] = []
    with trio.fail_after(TIMEOUT):
        async for message in events:
            if isinstance(message, PushEvent):
                seen.append((message.seq, message.value))
                if len(seen) == count:
                    return seen
    raise AssertionError(f"the subscription ended after {seen}")


class LostMessages:
    """Swallows the room's published events on ``hub`` (lost messages) until closed."""

    def __init__(self, hub: Hub, room: str) -> None:
        storage = hub.storage
        assert isinstance(storage, RedisStorage)
        self._followers = storage._followers
        self._channel = storage.channel(room)
        self._callback = self._followers[self._channel]
        self._followers[self._channel] = self._swallow
        self.swallowed = trio.Event()

    def _swallow(self, records: bytes | None) -> None:
        self.swallowed.set()

    async def close(self) -> None:
        """Once a message was swallowed, deliver again."""
        with trio.fail_after(TIMEOUT):
            await self.swallowed.wait()
        self._followers[self._channel] = self._callback


async def miss_event_2(a: Hub, b: Hub, room: str, events: AsyncIterator[object]) -> None:
    """b pushes 1 (a's member sees it) and 2, which a never gets from the feed."""
    await b.push(room, "k", 1)
    assert await receive_pushes(events, 1) == [(1, 1)]
    lost = LostMessages(a, room)
    await b.push(room, "k", 2)
    await lost.close()


async def test_a_node_that_missed_events_reads_them_back_from_the_log(
    redis_server: RedisServer,
) -> None:
    async with two_nodes(redis_server) as (a, b):
        room = await a.create_room()
        async with a.subscribe(room) as events:
            await miss_event_2(a, b, room, events)
            await b.push(room, "k", 3)
            # a sees event 3, notices the jump, fills 2 in from the log first.
            assert await receive_pushes(events, 2) == [(2, 2), (3, 3)]
        assert a.metrics.shared_resyncs._value.get() == 1
        assert await a.get(room, "k") == await b.get(room, "k")


async def test_a_node_that_missed_trimmed_events_closes_its_members_with_1013(
    redis_server: RedisServer,
) -> None:
    async with two_nodes(redis_server) as (a, b):
        room = await a.create_room()
        async with a.subscribe(room) as events:
            await miss_event_2(a, b, room, events)
            storage = b.storage
            assert isinstance(storage, RedisStorage)
            redis_server.cli("xtrim", storage._keys(room)[2], "maxlen", "0")
            await b.push(room, "k", 3)
            with trio.fail_after(TIMEOUT):
                async for message in events:
                    assert not isinstance(message, PushEvent), "nothing after the gap"
            assert events.connection.close_code == CloseCode.TRY_AGAIN_LATER
        # Reloaded, the room is whole again.
        assert [e.seq for e in await a.get(room, "k")] == [1, 2, 3]


async def test_redis_losing_writes_is_detected_and_no_seq_is_reused(
    redis_server: RedisServer,
) -> None:
    async with two_nodes(redis_server) as (a, _b):
        room = await a.create_room()
        async with a.subscribe(room) as events:
            for n in range(3):
                await a.push(room, "k", n)
            assert [seq for seq, _ in await receive_pushes(events, 3)] == [1, 2, 3]
            storage = a.storage
            assert isinstance(storage, RedisStorage)
            # What a restart from an old append-only file looks like: Redis is behind.
            redis_server.cli("hset", storage._meta(room), "seq", "1", "ev", "1")
            with pytest.raises(StorageError, match="lost data"):
                await a.push(room, "k", "after the loss")
            with trio.fail_after(TIMEOUT):
                async for message in events:
                    assert not isinstance(message, PushEvent)
            assert events.connection.close_code == CloseCode.TRY_AGAIN_LATER


async def test_refused_pushes_consume_no_seq_and_limits_hold_across_nodes(
    redis_server: RedisServer,
) -> None:
    url = f"{redis_server.url}?prefix=t{secrets.token_hex(6)}"
    config = Config(max_stream_values=2)
    async with open_hub(config, RedisStorage(url)) as a, open_hub(config, RedisStorage(url)) as b:
        room = await a.create_room()
        await a.push(room, "k", 1)
        await b.push(room, "k", 2)
        with pytest.raises(Exception, match="limit of 2 retained values"):
            await a.push(room, "k", 3, Append())
        await b.push(room, "other", 4)  # the refused push consumed no seq
        other = [(e.seq, e.value) for e in await b.get(room, "other")]
        assert other == [(3, 4)]


async def test_appendonly_no_refuses_to_start(tmp_path: Path) -> None:
    redis = RedisServer(tmp_path / "redis", "--appendonly", "no")
    redis.start()
    try:
        with pytest.RaisesGroup(
            pytest.RaisesExc(ConfigError, match="appendonly"), flatten_subgroups=True
        ):
            async with open_hub(Config(), RedisStorage(redis.url)):
                pass  # pragma: no cover - never reached
        # ?persistence=unsafe accepts it (with a warning).
        async with open_hub(Config(), RedisStorage(f"{redis.url}?persistence=unsafe")) as hub:
            room = await hub.create_room()
            await hub.push(room, "k", 1)
    finally:
        redis.kill()


# coredis 6.9 leaves the memory streams of a connection that failed to connect
# unclosed: collected here, where their ResourceWarning is ignored.
@pytest.mark.filterwarnings("ignore::ResourceWarning")
async def test_redis_unreachable_at_start_is_a_clear_error() -> None:
    with pytest.RaisesGroup(
        pytest.RaisesExc(StorageError, match="cannot use Redis at 127.0.0.1:1"),
        flatten_subgroups=True,
    ):
        async with open_hub(Config(), RedisStorage("redis://127.0.0.1:1/0")):
            pass  # pragma: no cover - never reached
    gc.collect()


def test_bad_urls_are_config_errors() -> None:
    for url in (
        "redis://h:1,h:2/0",
        "redis://h:port/0",
        "redis://h:1/zero",
        "redis://h:1/0?persistence=maybe",
    ):
        with pytest.raises(ConfigError):
            RedisStorage(url)


async def test_a_room_nobody_uses_on_a_node_is_unloaded_there_despite_traffic(
    redis_server: RedisServer,
) -> None:
    url = f"{redis_server.url}?prefix=t{secrets.token_hex(6)}"
    quick = Config(room_idle_seconds=0.2)
    async with open_hub(quick, RedisStorage(url)) as a, open_hub(Config(), RedisStorage(url)) as b:
        room = await a.create_room()
        await a.push(room, "k", "once")  # loads the room on a, which then follows it
        loaded = a.rooms[room]
        ended = trio.Event()
        on_exit = loaded._on_exit
        loaded._on_exit = lambda r: (on_exit(r), ended.set())  # type: ignore[method-assign]
        with trio.fail_after(TIMEOUT):
            async with trio.open_nursery() as nursery:

                async def traffic() -> None:
                    while True:
                        await b.push(room, "k", "busy")

                nursery.start_soon(traffic)
                await ended.wait()
                nursery.cancel_scope.cancel()
        assert room not in a.rooms
        assert loaded.closed


def test_serve_explains_a_store_it_cannot_use_in_one_line(tmp_path: Path) -> None:
    redis = RedisServer(tmp_path / "redis", "--appendonly", "no")
    redis.start()
    try:
        for store, code, text in (
            (redis.url, 2, f"Redis at 127.0.0.1:{redis.port} runs with appendonly 'no'"),
            ("redis://127.0.0.1:1/0", 1, "cannot use Redis at 127.0.0.1:1"),
        ):
            done = subprocess.run(
                [*drifttrio_command(), "serve", "--port", "0", "--store", store],
                capture_output=True,
                text=True,
                timeout=60,
                env=child_env(),
                cwd=tmp_path,
            )
            assert done.returncode == code
            assert f"drifttrio: {text}" in done.stderr
            assert "Traceback" not in done.stderr
    finally:
        redis.kill()


async def test_rooms_admin_commands_work_on_redis(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    url = f"{redis_server.url}?prefix=t{secrets.token_hex(6)}"
    async with open_hub(Config(), RedisStorage(url)) as hub:
        room = await hub.create_room()
        await hub.push(room, "k", "kept")
    listed = await trio.run_process(
        [*drifttrio_command(), "rooms", "--store", url, "list"],
        capture_stdout=True,
        env=child_env(),
    )
    assert [json.loads(line)["room"] for line in listed.stdout.splitlines()] == [room]
    exported = await trio.run_process(
        [*drifttrio_command(), "rooms", "--store", url, "export", room],
        capture_stdout=True,
        env=child_env(),
    )
    assert b'"kept"' in exported.stdout


class ReplyDropper:
    """A TCP proxy to Redis that, once armed, forwards the next ``EVALSHA`` and cuts
    that connection instead of forwarding its reply (the script ran; the answer
    was lost)."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = 0
        self.armed = False
        self.dropped = trio.Event()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.port = listeners[0].socket.getsockname()[1]
        task_status.started()
        await trio.serve_listeners(self._handle, listeners)

    async def _handle(self, client: trio.SocketStream) -> None:
        upstream = await trio.open_tcp_stream("127.0.0.1", self.target_port)
        doomed = False
        async with client, upstream, trio.open_nursery() as nursery:

            async def requests() -> None:
                nonlocal doomed
                async for data in client:
                    if self.armed and b"EVALSHA" in data.upper():
                        self.armed = False
                        doomed = True
                    await upstream.send_all(data)
                nursery.cancel_scope.cancel()

            async def replies() -> None:
                async for data in upstream:
                    if doomed:
                        self.dropped.set()
                        nursery.cancel_scope.cancel()
                        return
                    await client.send_all(data)
                nursery.cancel_scope.cancel()

            nursery.start_soon(requests)
            nursery.start_soon(replies)


@pytest.mark.filterwarnings("ignore::ResourceWarning")
async def test_a_push_whose_answer_was_lost_is_not_applied_twice(
    redis_server: RedisServer,
) -> None:
    prefix = f"t{secrets.token_hex(6)}"
    async with trio.open_nursery() as nursery:
        proxy = ReplyDropper(redis_server.port)
        await nursery.start(proxy.run)
        url = f"redis://127.0.0.1:{proxy.port}/0?prefix={prefix}"
        async with open_hub(Config(), RedisStorage(url)) as hub:
            room = await hub.create_room()
            await hub.push(room, "k", "warm-up")
            proxy.armed = True
            with pytest.raises(StorageError):
                await hub.push(room, "k", "answer lost")
            assert proxy.dropped.is_set()
        nursery.cancel_scope.cancel()
    meta = RedisStorage(f"{redis_server.url}?prefix={prefix}")._meta(room)
    # Applied once (the script ran), not retried: events 1 and 2, seq 2.
    assert redis_server.cli("hget", meta, "ev").strip() == "2"
    assert redis_server.cli("hget", meta, "seq").strip() == "2"
    gc.collect()
