"""Durability, storage faults, retention and caps, with the real server.

- restarts and crashes (``drifttrio serve`` killed with SIGKILL mid-stream) lose
  nothing that a client saw acknowledged, and never reuse a seq;
- storage failures (disk full, locked database, I/O errors) reject the affected
  pushes, consume no seq, broadcast nothing, leave reads working, and heal by
  themselves;
- rooms idle longer than the TTL are deleted, idle live rooms are evicted from
  memory and reloaded on demand (both in virtual time, on every backend);
- retention caps reject a push instead of truncating anything.

No fixed ports, no sleeping to wait for something: every wait is on a message,
an event or a log line, under a ``fail_after`` guard. Time passes (``trio.sleep``)
only under pytest-trio's ``autojump_clock``.
"""

from __future__ import annotations

import errno
import inspect
import itertools
import json
import signal
import sqlite3
import ssl
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager, suppress
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import hypercorn.trio
import pytest
import trio
import trio.testing
from trio_websocket import (
    ConnectionClosed,
    WebSocketConnection,
    open_websocket_url,
)

from _procs import ChildProcess, drifttrio_command, start_child
from drifttrio import (
    CloseCode,
    Config,
    DriftApp,
    Hub,
    RoomNotFound,
    StorageError,
    open_hub,
    open_server,
)
from drifttrio.core.room_state import StreamChange, key_size, value_size
from drifttrio.protocol import Relay, SeqValue
from drifttrio.server import TRANSPORTS, hypercorn_config
from drifttrio.storage import MemoryStorage, RoomSnapshot, SqliteStorage, Storage
from drifttrio.web.transport import serve_tcp

TIMEOUT = 10  # a guard against hangs, never a way to wait for something

STORAGE_UNAVAILABLE = "storage unavailable: push not applied"


# -- clients ------------------------------------------------------------------------------------


def push(key: str, value: object, action: str = "append", **extra: Any) -> dict[str, Any]:
    return {"type": "push", "key": key, "value": value, "action": {"type": action, **extra}}


def get(key: str, seq: int | None = 0) -> dict[str, Any]:
    return {"type": "get", "key": key, "seq": seq}


@asynccontextmanager
async def connect(
    url: str, ssl_context: ssl.SSLContext | None = None
) -> AsyncIterator[WebSocketConnection]:
    """``open_websocket_url``, then close the TCP stream in any case: trio-websocket
    0.12 leaves it open when the server ends the connection first (a server-chosen
    close code, a killed server), to a ResourceWarning at garbage collection."""
    opened: WebSocketConnection | None = None
    try:
        async with open_websocket_url(url, ssl_context=ssl_context) as ws:
            opened = ws
            yield ws
    finally:
        if opened is not None:
            with trio.CancelScope(shield=True):
                await opened._stream.aclose()


async def send(ws: WebSocketConnection, message: object) -> None:
    await ws.send_message(json.dumps(message))


async def recv(ws: WebSocketConnection) -> Any:
    with trio.fail_after(TIMEOUT):
        return json.loads(await ws.get_message())


async def request(ws: WebSocketConnection, message: object) -> Any:
    """Send ``message``; return the next message (the echo, error or init)."""
    await send(ws, message)
    return await recv(ws)


async def push_seq(ws: WebSocketConnection, key: str, value: object, action: str = "append") -> int:
    """Push on a connection that is the only pusher; return the echoed seq.
    A ``stream_size`` that may follow the echo is left for the caller to read."""
    echo = await request(ws, push(key, value, action))
    assert echo["type"] == "push", echo
    assert (echo["key"], echo["value"]) == (key, value)
    seq: int = echo["seq"]
    return seq


async def replay(ws: WebSocketConnection, key: str) -> list[tuple[Any, int]]:
    init = await request(ws, get(key))
    stream: list[tuple[Any, int]] = []
    while True:
        assert (init["type"], init["key"]) == ("init", key), init
        stream += [(d["value"], d["seq"]) for d in init["data"]]
        if not init.get("more"):  # a long stream comes as several inits
            return stream
        init = json.loads(await ws.get_message())


async def wait_closed(ws: WebSocketConnection) -> int | None:
    """Read until the server closes the connection; return the close code."""
    with trio.fail_after(TIMEOUT):
        while True:
            try:
                await ws.get_message()
            except ConnectionClosed as closed:
                return closed.reason.code


async def upgrade_status(client: httpx.AsyncClient, socket_url: str) -> int:
    """The HTTP status the server answers a WebSocket upgrade request with (101: accepted).
    Sent with httpx: trio-websocket leaks the socket of a refused handshake."""
    response = await client.get(
        "http" + socket_url.removeprefix("ws"),
        headers={
            "connection": "upgrade",
            "upgrade": "websocket",
            "sec-websocket-version": "13",
            "sec-websocket-key": "dGhlIHNhbXBsZSBub25jZQ==",
        },
    )
    return response.status_code


@asynccontextmanager
async def http_client(base_url: str = "") -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=base_url, trust_env=False, timeout=TIMEOUT) as client:
        yield client


async def new_room(client: httpx.AsyncClient) -> dict[str, str]:
    response = await client.post("/new")
    assert response.status_code == 200, response.text
    info: dict[str, str] = response.json()
    return info


async def http_send(client: httpx.AsyncClient, info: dict[str, str], message: object) -> Any:
    """POST /send; return ``(status, json)``."""
    response = await client.post(info["http_url"], json=message)
    return response.status_code, response.json()


@pytest.fixture(params=TRANSPORTS)
def transport(request: pytest.FixtureRequest) -> str:
    """Both transports the server runs on: its own (the default) and hypercorn."""
    name: str = request.param
    return name


@asynccontextmanager
async def serve_storage(
    storage: Storage, transport: str, config: Config | None = None
) -> AsyncIterator[tuple[str, Hub]]:
    """The real app on 127.0.0.1:0 over ``transport``, its hub on ``storage``."""
    config = config or Config()
    async with open_hub(config, storage) as hub, trio.open_nursery() as nursery:
        app = DriftApp(config, hub=hub)
        stop = trio.Event()
        if transport == "hypercorn":
            binds: list[str] = await nursery.start(
                partial(
                    hypercorn.trio.serve,
                    app,  # type: ignore[arg-type]
                    hypercorn_config(config, "127.0.0.1", 0),
                    shutdown_trigger=stop.wait,
                )
            )
            url = binds[0]
        else:
            _, port = await nursery.start(partial(serve_tcp, app, config, host="127.0.0.1", port=0))
            url = f"http://127.0.0.1:{port}"
        try:
            yield url, hub
        finally:
            hub.close_all()
            stop.set()
            if transport != "hypercorn":
                nursery.cancel_scope.cancel()


class FaultyStorage:
    """A storage whose commits and loads fail on demand, room by room."""

    def __init__(self, inner: Storage) -> None:
        self.inner = inner
        self.commit_errors: dict[str, BaseException] = {}
        self.load_errors: dict[str, BaseException] = {}

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    async def commit(self, room_id: str, seq: int, changes: Sequence[StreamChange]) -> None:
        if room_id in self.commit_errors:
            raise self.commit_errors[room_id]
        await self.inner.commit(room_id, seq, changes)

    async def load_room(self, room_id: str) -> RoomSnapshot | None:
        if room_id in self.load_errors:
            raise self.load_errors[room_id]
        return await self.inner.load_room(room_id)


# -- restarts -----------------------------------------------------------------------------------


async def test_restart_keeps_rooms_streams_and_seqs(tmp_path: Path) -> None:
    config = Config(store=f"sqlite:///{tmp_path}/d.db")
    async with open_server(config) as server, http_client(server.url) as client:
        info = await new_room(client)
        room = info["room"]
        async with connect(info["socket_url"]) as ws:
            assert await push_seq(ws, "log", {"n": 1}) == 1
            assert await push_seq(ws, "presence", "here", "relay") == 2
            assert await push_seq(ws, "state", "a", "replace") == 3
            assert await push_seq(ws, "log", "é 漢字") == 4
            assert await recv(ws) == {"type": "stream_size", "key": "log", "size": 2}
            # Over HTTP (the socket sees the broadcast).
            assert await http_send(client, info, push("log", [3.5, None])) == (
                200,
                {"type": "stream_size", "key": "log", "size": 3},
            )
            assert (await recv(ws))["seq"] == 5
            assert await http_send(client, info, push("state", {"b": True}, "replace")) == (
                200,
                None,
            )
            assert (await recv(ws))["seq"] == 6
            # The last batch before the restart is relay only: seq 7 must not come back.
            assert await push_seq(ws, "presence", "bye", "relay") == 7

    async with open_server(config) as server, http_client(server.url) as client:
        response = await client.get(f"/room/{room}")
        assert response.status_code == 200
        assert response.json()["socket_url"] == f"ws://127.0.0.1:{server.port}/room/{room}/connect"
        assert (await client.get("/room/unknownroomid")).status_code == 404
        async with connect(f"{server.ws_url}/room/{room}/connect") as ws:
            assert await replay(ws, "log") == [({"n": 1}, 1), ("é 漢字", 4), ([3.5, None], 5)]
            assert await replay(ws, "state") == [({"b": True}, 6)]
            assert await replay(ws, "presence") == []
            assert await push_seq(ws, "log", "after restart") == 8
            assert await recv(ws) == {"type": "stream_size", "key": "log", "size": 4}
            assert await push_seq(ws, "presence", "relay only", "relay") == 9

    async with open_server(config) as server, http_client(server.url) as client:
        # Only relay traffic since the last restart: its seqs are not reused either.
        assert await http_send(
            client, {"http_url": f"/room/{room}/send"}, push("x", 0, "relay")
        ) == (
            200,
            None,
        )
        async with connect(f"{server.ws_url}/room/{room}/connect") as ws:
            assert await push_seq(ws, "log", "third run") == 11
            assert await recv(ws) == {"type": "stream_size", "key": "log", "size": 5}
            assert [seq for _, seq in await replay(ws, "log")] == [1, 4, 5, 8, 11]


# -- the real command line: default store, crash --------------------------------------------------


@asynccontextmanager
async def server_process(cwd: Path, *args: str) -> AsyncIterator[tuple[ChildProcess, str]]:
    """Start ``drifttrio serve --port 0 ARGS`` in ``cwd``; yield it and its base URL.
    Killed on exit if still running."""
    async with trio.open_nursery() as nursery:
        child = await start_child(
            nursery, [*drifttrio_command(), "serve", "--port", "0", *args], cwd
        )
        process = child.process
        try:
            match = await child.wait_for_line(r"drifttrio listening on (http://127\.0\.0\.1:\d+)")
            yield child, match.group(1)
        finally:
            if process.poll() is None:
                process.kill()
            with trio.fail_after(TIMEOUT):
                await process.wait()


async def test_serve_stores_rooms_in_drifttrio_db_by_default(tmp_path: Path) -> None:
    async with server_process(tmp_path) as (child, url):
        assert f"(store: sqlite:///{tmp_path / 'drifttrio.db'})" in child.log  # absolute
        async with http_client(url) as client:
            info = await new_room(client)
            assert await http_send(client, info, push("k", "kept")) == (200, None)
        child.process.send_signal(signal.SIGTERM)
        with trio.fail_after(TIMEOUT):
            assert await child.process.wait() == 0, child.log
    db = tmp_path / "drifttrio.db"
    assert db.is_file()
    storage = SqliteStorage(db)
    try:
        snapshot = await storage.load_room(info["room"])
    finally:
        await storage.aclose()
    assert snapshot is not None
    assert snapshot.seq == 1
    assert snapshot.streams["k"].entries == [SeqValue("kept", 1)]


#: Echoes the WebSocket client waits for before the server is killed.
KILL_AFTER = 300
#: Pushes the WebSocket client keeps in flight (sent, not yet echoed).
WINDOW = 64


async def test_sigkill_mid_stream_loses_nothing_acknowledged(tmp_path: Path) -> None:
    store = f"sqlite:///{tmp_path / 'crash.db'}"
    sent: list[Any] = []  # appended values on "log", in the order sent
    acked: list[tuple[Any, int]] = []  # ... and those echoed back with their seq
    http_sent: list[Any] = []
    http_acked: list[Any] = []  # appends on "http-log" answered 200
    seen: list[int] = []  # every seq any client saw

    async with server_process(tmp_path, "--store", store) as (child, url):
        async with http_client(url) as client:
            info = await new_room(client)
        async with (
            connect(info["socket_url"]) as sender,
            connect(info["socket_url"]) as observer,
            trio.open_nursery() as clients,
        ):
            credit = trio.Semaphore(WINDOW)

            async def send_until_killed() -> None:
                with suppress(ConnectionClosed):
                    for i in itertools.count():
                        await credit.acquire()
                        if i % 4 == 3:
                            await send(sender, push("presence", {"r": i}, "relay"))
                        else:
                            sent.append({"n": i})
                            await send(sender, push("log", {"n": i}))

            async def observe() -> None:
                with suppress(ConnectionClosed):
                    while True:
                        message = json.loads(await observer.get_message())
                        if message["type"] == "push":
                            seen.append(message["seq"])

            stop_http, http_stopped = trio.Event(), trio.Event()

            async def http_until_told() -> None:
                # Stops before the kill: httpx leaves an async generator behind (a
                # ResourceWarning) when the server dies in the middle of a request.
                async with http_client() as http:
                    for i in itertools.count():
                        if stop_http.is_set():
                            break
                        http_sent.append({"h": i})
                        response = await http.post(
                            info["http_url"], json=push("http-log", {"h": i})
                        )
                        assert response.status_code == 200, response.text
                        http_acked.append({"h": i})
                http_stopped.set()

            clients.start_soon(send_until_killed)
            clients.start_soon(observe)
            clients.start_soon(http_until_told)
            killed = False
            with trio.fail_after(TIMEOUT), suppress(ConnectionClosed):
                while True:
                    message = json.loads(await sender.get_message())
                    if message["type"] != "push":
                        continue
                    seen.append(message["seq"])
                    if message["key"] == "http-log":
                        continue
                    credit.release()
                    if message["key"] == "log":
                        acked.append((message["value"], message["seq"]))
                        if len(acked) == KILL_AFTER // 2:
                            stop_http.set()
                        if len(acked) >= KILL_AFTER and http_stopped.is_set() and not killed:
                            # SIGKILL while the sender keeps pushing: no shutdown, no flush.
                            child.process.kill()
                            killed = True
            assert killed, "the connection ended before the kill:\n" + child.log
            with trio.fail_after(TIMEOUT):
                assert await child.process.wait() == -signal.SIGKILL
            clients.cancel_scope.cancel()  # the sender may be waiting for credit

    assert len(acked) >= KILL_AFTER
    assert http_acked, "the HTTP client got no answer before the kill"

    async with server_process(tmp_path, "--store", store) as (_, url):
        async with http_client(url) as client:
            assert (await client.get(f"/room/{info['room']}")).status_code == 200
        async with connect(f"ws{url[4:]}/room/{info['room']}/connect") as ws:
            log = await replay(ws, "log")
            http_log = await replay(ws, "http-log")
            # Every acknowledged append is there, with the seq its sender saw.
            for entry in acked:
                assert entry in log
            # The stream is exactly what was sent, in order: nothing lost in between.
            assert [value for value, _ in log] == sent[: len(log)]
            assert [seq for _, seq in log] == sorted({seq for _, seq in log})
            # Every HTTP push was answered before the kill: all of them are there.
            assert [value for value, _ in http_log] == http_acked == http_sent
            # No seq any client saw (appends, relays, HTTP pushes) is handed out again.
            echo = await request(ws, push("presence", "back", "relay"))
            assert echo["type"] == "push"
            highest = max([*seen, *(seq for _, seq in log), *(seq for _, seq in http_log)])
            assert echo["seq"] > highest


# -- storage faults -----------------------------------------------------------------------------


async def test_disk_full_rejects_pushes_and_recovers(tmp_path: Path, transport: str) -> None:
    storage = SqliteStorage(tmp_path / "full.db")
    async with (
        serve_storage(storage, transport) as (url, hub),
        http_client(url) as client,
    ):
        info = await new_room(client)
        async with (
            connect(info["socket_url"]) as ws,
            connect(info["socket_url"]) as observer,
        ):
            assert await push_seq(ws, "k", "small") == 1
            assert (await recv(observer))["seq"] == 1
            # The disk is full: the file may not grow by a single page.
            (pages,) = storage.execute_for_tests("PRAGMA page_count")[0]
            storage.execute_for_tests(f"PRAGMA max_page_count={pages}")
            big = "x" * 50_000

            assert await request(ws, push("k", big)) == {
                "type": "error",
                "message": STORAGE_UNAVAILABLE,
            }
            assert await http_send(client, info, push("k", big, "replace")) == (
                503,
                {"type": "error", "message": STORAGE_UNAVAILABLE},
            )
            with pytest.raises(StorageError):
                await hub.push(info["room"], "k", big)
            # Reads keep working, and show nothing of the rejected pushes.
            assert await replay(ws, "k") == [("small", 1)]
            assert await http_send(client, info, get("k")) == (
                200,
                {"type": "init", "key": "k", "data": [{"value": "small", "seq": 1}]},
            )
            assert (await client.get(f"/room/{info['room']}")).status_code == 200

            # Space comes back: pushes succeed again, no restart, no seq was consumed.
            storage.execute_for_tests("PRAGMA max_page_count=1073741823")
            assert await push_seq(ws, "k", big) == 2
            assert await recv(ws) == {"type": "stream_size", "key": "k", "size": 2}
            # The other member saw nothing of the failed pushes: its next message is seq 2.
            assert await recv(observer) == {"type": "push", "key": "k", "value": big, "seq": 2}
            assert await replay(ws, "k") == [("small", 1), (big, 2)]
    reopened = SqliteStorage(tmp_path / "full.db")
    try:
        snapshot = await reopened.load_room(info["room"])
    finally:
        await reopened.aclose()
    assert snapshot is not None
    assert snapshot.seq == 2
    assert [e.seq for e in snapshot.streams["k"].entries] == [1, 2]


async def test_locked_database_rejects_pushes_and_recovers(tmp_path: Path, transport: str) -> None:
    path = tmp_path / "locked.db"
    storage = SqliteStorage(path)
    storage.execute_for_tests("PRAGMA busy_timeout=50")  # fail fast instead of after 5 s
    async with serve_storage(storage, transport) as (url, _), http_client(url) as client:
        info = await new_room(client)
        async with (
            connect(info["socket_url"]) as ws,
            connect(info["socket_url"]) as observer,
        ):
            assert await push_seq(ws, "k", "before") == 1
            assert (await recv(observer))["seq"] == 1
            other = sqlite3.connect(path, isolation_level=None)
            try:
                other.execute("BEGIN EXCLUSIVE")
                # Even a relay (whose commit only raises the high-water seq) is refused.
                assert await request(ws, push("p", "r", "relay")) == {
                    "type": "error",
                    "message": STORAGE_UNAVAILABLE,
                }
                assert await http_send(client, info, push("k", "locked")) == (
                    503,
                    {"type": "error", "message": STORAGE_UNAVAILABLE},
                )
                assert await replay(ws, "k") == [("before", 1)]
                other.execute("ROLLBACK")
            finally:
                other.close()
            assert await push_seq(ws, "p", "r", "relay") == 2
            assert await recv(observer) == {"type": "push", "key": "p", "value": "r", "seq": 2}
            assert await push_seq(ws, "k", "after") == 3


@pytest.mark.parametrize(
    "error",
    [StorageError("SQLite: disk I/O error"), OSError(errno.EIO, "Input/output error")],
    ids=["StorageError", "OSError"],
)
async def test_failed_commit_is_contained(error: Exception, transport: str) -> None:
    storage = FaultyStorage(MemoryStorage())
    async with serve_storage(storage, transport) as (url, hub), http_client(url) as client:
        info = await new_room(client)
        room = info["room"]
        async with (
            connect(info["socket_url"]) as ws,
            connect(info["socket_url"]) as observer,
        ):
            assert await push_seq(ws, "k", 1) == 1
            assert (await recv(observer))["seq"] == 1
            storage.commit_errors[room] = error
            for action in ("append", "replace", "relay"):
                assert (await request(ws, push("k", action, action)))["type"] == "error"
                status, body = await http_send(client, info, push("k", action, action))
                assert (status, body["type"]) == (503, "error")
            assert await replay(ws, "k") == [(1, 1)]
            assert room in hub.rooms, "the room stays up"
            assert not hub.rooms[room].closed
            del storage.commit_errors[room]
            assert await push_seq(ws, "k", 2) == 2
            assert await recv(observer) == {"type": "push", "key": "k", "value": 2, "seq": 2}


async def test_a_room_that_cannot_reload_ends_alone(tmp_path: Path, transport: str) -> None:
    storage = FaultyStorage(SqliteStorage(tmp_path / "r.db"))
    async with serve_storage(storage, transport) as (url, hub), http_client(url) as client:
        broken, healthy = await new_room(client), await new_room(client)
        async with (
            connect(broken["socket_url"]) as ws,
            connect(healthy["socket_url"]) as other,
        ):
            assert await push_seq(ws, "k", "kept") == 1
            storage.commit_errors[broken["room"]] = StorageError("disk gone")
            storage.load_errors[broken["room"]] = StorageError("disk gone")
            status, body = await http_send(client, broken, push("k", "lost"))
            assert (status, body["type"]) == (503, "error")
            assert await wait_closed(ws) == CloseCode.INTERNAL_ERROR
            # The other room does not notice.
            assert await push_seq(other, "k", "fine") == 1
            # While the storage cannot load the room, requests for it fail with 503.
            status, body = await http_send(client, broken, push("k", "still down"))
            assert (status, body["type"]) == (503, "error")
            assert await upgrade_status(client, broken["socket_url"]) == 503
            # The cause goes away: the room loads again with everything committed.
            storage.commit_errors.clear()
            storage.load_errors.clear()
        async with connect(broken["socket_url"]) as ws:
            assert await replay(ws, "k") == [("kept", 1)]
            assert await push_seq(ws, "k", "back") == 2
        assert broken["room"] in hub.rooms


# -- retention in virtual time ------------------------------------------------------------------

TTL = 10 * 3600.0
#: The hub's expiry loop runs every min(TTL / 4, 300) seconds.
PERIOD = 300.0
#: Slack around the TTL: an expiry period, and the idle time before the touch on eviction.
MARGIN = 2 * PERIOD
IDLE = 60.0


class PausesTheClock:
    """A storage wrapper that stops the autojump clock while any call is in flight.

    SQLite work runs in worker threads, which the autojump clock cannot see: while
    one runs, every task looks blocked, so the clock would jump to the next deadline
    (hours ahead, if that is the test's own sleep) or, with no deadline, spin the
    event loop and starve the thread of the GIL. While the storage is busy the
    clock waits for real (up to :data:`REAL_WAIT` seconds, a guard against hangs);
    virtual time moves only while it is idle, so every timer fires on time.
    """

    def __init__(self, inner: Storage, clock: trio.testing.MockClock) -> None:
        self.inner = inner
        self.clock = clock
        self._busy = 0

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self.inner, name)
        if not inspect.iscoroutinefunction(attr):
            return attr

        async def call(*args: Any, **kwargs: Any) -> Any:
            self._busy += 1
            self.clock.autojump_threshold = REAL_WAIT
            try:
                return await attr(*args, **kwargs)
            finally:
                self._busy -= 1
                if not self._busy:
                    self.clock.autojump_threshold = 0

        return call


#: Real seconds the clock waits for the storage before jumping anyway.
REAL_WAIT = 5.0


@pytest.fixture(params=["memory", "sqlite"])
async def virtual_storage(
    request: pytest.FixtureRequest, tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> Storage:
    """A backend that stamps activity with trio's (mock) clock."""
    if request.param == "memory":
        return MemoryStorage(clock=trio.current_time)
    sqlite = SqliteStorage(tmp_path / "ttl.db", clock=trio.current_time)
    return PausesTheClock(sqlite, autojump_clock)  # type: ignore[return-value]


def retention_config() -> Config:
    return Config(room_ttl_seconds=TTL, room_idle_seconds=IDLE)


async def test_a_room_without_activity_is_deleted_after_the_ttl(
    virtual_storage: Storage, autojump_clock: trio.testing.MockClock
) -> None:
    async with open_hub(retention_config(), virtual_storage) as hub:
        room = await hub.create_room()
        kept = await hub.create_room()
        await hub.push(room, "k", "data")
        await trio.sleep(IDLE + 1)
        assert room not in hub.rooms  # evicted from memory, still stored
        await trio.sleep(TTL - MARGIN)
        assert await hub.room_exists(room)
        await hub.push(kept, "k", "activity")  # keeps the other one
        await trio.sleep(2 * MARGIN)
        assert not await hub.room_exists(room)
        assert await virtual_storage.load_room(room) is None
        with pytest.raises(RoomNotFound):
            await hub.push(room, "k", "too late")
        with pytest.raises(RoomNotFound):
            await hub.get(room, "k")
        assert await hub.room_exists(kept)
        assert await hub.get(kept, "k") == [SeqValue("activity", 1)]


async def test_a_room_with_a_member_never_expires(
    virtual_storage: Storage, autojump_clock: trio.testing.MockClock
) -> None:
    async with open_hub(retention_config(), virtual_storage) as hub:
        room = await hub.create_room()
        async with hub.subscribe(room):
            await trio.sleep(3 * TTL)
            assert room in hub.rooms, "a room with a member is never evicted"
            assert await hub.room_exists(room)
        # The member left: the TTL counts from then (the room touched on eviction),
        # not from the last push or the creation three TTLs ago.
        await trio.sleep(IDLE + 1)
        assert room not in hub.rooms
        await trio.sleep(TTL - MARGIN)
        assert await hub.room_exists(room)
        await trio.sleep(2 * MARGIN)
        assert not await hub.room_exists(room)


async def test_activity_pushes_expiry_back(
    virtual_storage: Storage, autojump_clock: trio.testing.MockClock
) -> None:
    async with open_hub(retention_config(), virtual_storage) as hub:
        room = await hub.create_room()
        for _ in range(4):  # four TTLs in all, never idle for one
            await trio.sleep(TTL - MARGIN)
            assert await hub.room_exists(room)
            await hub.push(room, "k", "still here", Relay())
        await trio.sleep(TTL - MARGIN)
        assert await hub.room_exists(room)
        assert (await virtual_storage.load_room(room)) == RoomSnapshot(4, {})
        await trio.sleep(2 * MARGIN)
        assert not await hub.room_exists(room)


async def test_idle_rooms_are_evicted_and_reloaded(
    virtual_storage: Storage, autojump_clock: trio.testing.MockClock
) -> None:
    async with open_hub(retention_config(), virtual_storage) as hub:
        room = await hub.create_room()
        await hub.push(room, "k", 1)
        await hub.push(room, "presence", "x", Relay())
        live = hub.rooms[room]
        await trio.sleep(IDLE - 1)
        assert hub.rooms.get(room) is live
        await trio.sleep(2)
        assert room not in hub.rooms
        assert live.closed
        # A get loads it again, with its data and its seq.
        assert await hub.get(room, "k") == [SeqValue(1, 1)]
        reloaded = hub.rooms[room]
        assert reloaded is not live
        assert await hub.push(room, "k", 2) == 2  # stream size
        assert await hub.get(room, "k") == [SeqValue(1, 1), SeqValue(2, 3)]
        # Evicted again, then a push loads it.
        await trio.sleep(IDLE + 1)
        assert room not in hub.rooms
        await hub.push(room, "k", 3)
        assert hub.rooms[room] is not reloaded
        assert await hub.get(room, "k", since=2) == [SeqValue(2, 3), SeqValue(3, 4)]


# -- caps ---------------------------------------------------------------------------------------


async def test_stream_values_cap(tmp_path: Path) -> None:
    config = Config(store=f"sqlite:///{tmp_path}/caps.db", max_stream_values=3)
    async with open_server(config) as server, http_client(server.url) as client:
        info = await new_room(client)
        async with connect(info["socket_url"]) as ws:
            for i in (1, 2, 3):
                assert await push_seq(ws, "k", i) == i
                if i > 1:
                    assert (await recv(ws))["type"] == "stream_size"
            error = await request(ws, push("k", 4))
            assert error["type"] == "error"
            assert "3 retained values" in error["message"]
            status, body = await http_send(client, info, push("k", 4))
            assert (status, body["type"]) == (400, "error")
            assert await replay(ws, "k") == [(1, 1), (2, 2), (3, 3)], "never truncated"
            # No seq was consumed; other keys and other actions are still fine.
            assert await push_seq(ws, "other", "x") == 4
            echo = await request(ws, push("k", "reset", "compact", seq=2))
            assert echo == {"type": "push", "key": "k", "value": "reset", "seq": 2}
            assert (await recv(ws))["type"] == "stream_size"
            assert await push_seq(ws, "k", 5) == 5
            assert (await recv(ws))["type"] == "stream_size"
            assert await replay(ws, "k") == [("reset", 2), (3, 3), (5, 5)]
    async with open_server(config) as server, http_client(server.url) as client:
        info = {"http_url": f"{server.url}/room/{info['room']}/send"}
        # Enforced on the reloaded stream too.
        status, body = await http_send(client, info, push("k", 6))
        assert (status, body["type"]) == (400, "error")
        assert await http_send(client, info, push("k", "one", "replace")) == (200, None)
        assert await http_send(client, info, get("k")) == (
            200,
            {"type": "init", "key": "k", "data": [{"value": "one", "seq": 6}]},
        )


async def test_keys_cap() -> None:
    async with (
        open_server(Config(max_keys_per_room=2)) as server,
        http_client(server.url) as client,
    ):
        info = await new_room(client)
        async with connect(info["socket_url"]) as ws:
            assert await push_seq(ws, "a", 1) == 1
            assert await push_seq(ws, "b", 2, "replace") == 2
            error = await request(ws, push("c", 3))
            assert error["type"] == "error"
            assert "2 keys" in error["message"]
            status, body = await http_send(client, info, push("c", 3, "replace"))
            assert (status, body["type"]) == (400, "error")
            # A relay retains nothing, so a new key is fine; the existing keys too.
            assert await push_seq(ws, "c", 3, "relay") == 3
            assert await push_seq(ws, "a", 4) == 4
            assert await recv(ws) == {"type": "stream_size", "key": "a", "size": 2}
            assert await replay(ws, "c") == []


async def test_room_bytes_cap(tmp_path: Path) -> None:
    half = "x" * 1000
    per_key = key_size("a") + value_size(half)  # a new key holding half
    limit = 2 * per_key + value_size(half) - 1  # two such keys fit, not a third value
    config = Config(store=f"sqlite:///{tmp_path}/bytes.db", max_room_bytes=limit)
    async with open_server(config) as server, http_client(server.url) as client:
        info = await new_room(client)
        async with connect(info["socket_url"]) as ws:
            assert await push_seq(ws, "a", half) == 1
            assert await push_seq(ws, "b", half) == 2
            error = await request(ws, push("c", half))
            assert error["type"] == "error"
            assert f"{limit} retained bytes" in error["message"]
            status, body = await http_send(client, info, push("a", half))
            assert (status, body["type"]) == (400, "error")
            assert await replay(ws, "a") == [(half, 1)]
            # Replacing a value frees its bytes.
            assert await push_seq(ws, "a", 1, "replace") == 3
            assert await push_seq(ws, "c", half) == 4
    # What key "a" may hold with "b" and "c" stored: exactly that fits, a byte more does not.
    room_for_a = limit - 2 * per_key - key_size("a")
    fits = "y" * (room_for_a - value_size(""))  # an ASCII str costs its length more
    assert value_size(fits) == room_for_a
    async with open_server(config) as server, http_client(server.url) as client:
        info = {"http_url": f"{server.url}/room/{info['room']}/send"}
        # After a restart the room's bytes are counted again from what was stored.
        status, _ = await http_send(client, info, push("a", fits + "y", "replace"))
        assert status == 400, "the stored bytes were not counted after the restart"
        assert await http_send(client, info, push("a", fits, "replace")) == (200, None)
        status, body = await http_send(client, info, push("d", 1000))  # 0 is shared: free
        assert (status, body["type"]) == (400, "error")


async def test_max_rooms() -> None:
    async with open_server(Config(max_rooms=2)) as server, http_client(server.url) as client:
        first = await new_room(client)
        await new_room(client)
        response = await client.post("/new")
        assert response.status_code == 503
        assert response.json()["type"] == "error"
        assert "2 rooms" in response.json()["message"]
        # The existing rooms work as before.
        assert await http_send(client, first, push("k", 1)) == (200, None)
        await server.hub.storage.delete_room(first["room"])
        await new_room(client)
