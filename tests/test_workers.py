"""``drifttrio serve --workers N``: rooms sharded across worker processes.

The end-to-end tests run the real command line (a supervisor and its worker
processes) on 127.0.0.1 and a free port, on a real SQLite file; rooms whose
owner must be known are put in the store before the server starts, under ids
picked with :func:`owner_of`.
"""

from __future__ import annotations

import array
import itertools
import os
import signal
import socket
import subprocess
import sys
from contextlib import suppress
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing
from trio_websocket import ConnectionClosed

from _procs import TIMEOUT, ChildProcess, child_env, drifttrio_command, workers_process
from drifttrio import Config, ConfigError, supervisor
from drifttrio.runtime.hub import new_room_id, open_hub
from drifttrio.storage import MemoryStorage, SqliteStorage, Storage
from drifttrio.supervisor import merge_metrics, parse_workers
from drifttrio.web.app import DriftApp
from drifttrio.web.transport import serve_stream
from drifttrio.workers import HANDOFF_SUPPORTED, Shard, WorkerUnavailable, owner_of, room_in_path
from test_durability import (
    connect,
    http_client,
    push,
    push_seq,
    recv,
    replay,
    request,
    send,
    wait_closed,
)

pytestmark = pytest.mark.skipif(not HANDOFF_SUPPORTED, reason="workers need Linux")

# -- which worker owns a room ---------------------------------------------------------------


def test_a_room_has_one_owner_the_same_in_every_process() -> None:
    # Fixed values: a salted hash (Python's hash()) would differ between processes,
    # and a change of hash would move every stored room to another worker.
    assert [owner_of(f"room{i}", 2) for i in range(8)] == [0, 1, 0, 1, 0, 1, 1, 0]
    assert [owner_of(f"room{i}", 3) for i in range(8)] == [2, 0, 0, 0, 1, 2, 0, 2]
    probe = subprocess.run(
        [
            sys.executable,
            "-c",
            "from drifttrio.workers import owner_of;"
            "print([owner_of(f'room{i}', 3) for i in range(32)])",
        ],
        capture_output=True,
        text=True,
        check=True,
        env={**child_env(), "PYTHONHASHSEED": "12345"},
    )
    assert probe.stdout.strip() == str([owner_of(f"room{i}", 3) for i in range(32)])
    assert owner_of("anything", 1) == 0
    ids = [new_room_id() for _ in range(4000)]
    for workers in (2, 3, 4):
        shares = [sum(owner_of(i, workers) == w for i in ids) / len(ids) for w in range(workers)]
        assert all(abs(share - 1 / workers) < 0.05 for share in shares), shares


def test_the_room_of_a_request_path() -> None:
    assert room_in_path("/room/abc") == "abc"
    assert room_in_path("/room/abc/connect") == "abc"
    assert room_in_path("/room/abc/send") == "abc"
    assert room_in_path("/room/") is None
    assert room_in_path("/new") is None
    assert room_in_path("/") is None
    shard = Shard(0, 2, Path("/nonexistent"))
    mine = next(i for i in (f"r{n}" for n in itertools.count()) if owner_of(i, 2) == 0)
    theirs = next(i for i in (f"r{n}" for n in itertools.count()) if owner_of(i, 2) == 1)
    assert shard.owner(f"/room/{mine}/connect".encode()) is None
    assert shard.owner(f"/room/{theirs}/connect?token=x".encode()) == 1
    assert shard.owner(b"/new") is None


@pytest.mark.parametrize(
    ("raw", "count"), [("1", 1), ("2", 2), ("auto", len(os.sched_getaffinity(0)))]
)
def test_workers_flag_values(raw: str, count: int) -> None:
    assert parse_workers(raw) == count


def test_metrics_of_the_workers_are_one_exposition_with_a_worker_label() -> None:
    text = (
        b"# HELP drifttrio_rooms_live Rooms\n# TYPE drifttrio_rooms_live gauge\n"
        b"drifttrio_rooms_live 3.0\n"
        b"# HELP drifttrio_x_total X\n# TYPE drifttrio_x_total counter\n"
        b'drifttrio_x_total{kind="a"} 1.0\n'
    )
    merged = merge_metrics([text, text.replace(b"3.0", b"4.0")]).decode().splitlines()
    assert merged == [
        "# HELP drifttrio_rooms_live Rooms",
        "# TYPE drifttrio_rooms_live gauge",
        'drifttrio_rooms_live{worker="0"} 3.0',
        'drifttrio_rooms_live{worker="1"} 4.0',
        "# HELP drifttrio_x_total X",
        "# TYPE drifttrio_x_total counter",
        'drifttrio_x_total{worker="0",kind="a"} 1.0',
        'drifttrio_x_total{worker="1",kind="a"} 1.0',
    ]


# -- a worker's hub: only its own rooms -----------------------------------------------------

TTL = 100.0


def room_of(worker: int, workers: int = 2) -> str:
    """A fresh room id that ``worker`` of ``workers`` owns."""
    while True:
        room_id = new_room_id()
        if owner_of(room_id, workers) == worker:
            return room_id


@pytest.fixture(params=["memory", "sqlite"])
def virtual_storage(request: pytest.FixtureRequest, tmp_path: Path) -> Storage:
    if request.param == "memory":
        return MemoryStorage(clock=trio.current_time)
    return SqliteStorage(tmp_path / "shared.db", clock=trio.current_time, threads=False)


async def test_a_worker_expires_only_its_own_rooms(
    virtual_storage: Storage, autojump_clock: trio.testing.MockClock
) -> None:
    """On a store shared by workers, another worker's room looks idle from here (its
    members are over there): expiry must leave it alone."""
    shard = Shard(0, 2, Path("/nonexistent"))
    config = Config(room_ttl_seconds=TTL, room_idle_seconds=1.0)
    async with open_hub(config, virtual_storage) as hub:
        hub.owns = shard.owns
        mine = await hub.create_room()
        theirs = room_of(1)
        await virtual_storage.create_room(theirs)
        await trio.sleep(3 * TTL)
        assert not await virtual_storage.room_exists(mine)
        assert await virtual_storage.room_exists(theirs)


async def test_a_worker_creates_only_rooms_it_owns() -> None:
    shard = Shard(1, 3, Path("/nonexistent"))
    async with open_hub(Config(), MemoryStorage()) as hub:
        hub.owns = shard.owns
        created = [await hub.create_room() for _ in range(30)]
    assert all(owner_of(room_id, 3) == 1 for room_id in created)


# -- the real command line ------------------------------------------------------------------


async def stored_rooms(db: Path, owners: list[int], workers: int = 2) -> list[str]:
    """Rooms put in the SQLite store ``db`` before a server starts, the i-th one
    owned by worker ``owners[i]``."""
    storage = SqliteStorage(db)
    try:
        rooms = [room_of(owner, workers) for owner in owners]
        for room_id in rooms:
            await storage.create_room(room_id)
    finally:
        await storage.aclose()
    return rooms


def handoffs(metrics: str, direction: str) -> float:
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in metrics.splitlines()
        if line.startswith("drifttrio_worker_handoffs_total{")
        and f'direction="{direction}"' in line
    )


async def test_every_room_is_reached_through_any_worker(tmp_path: Path) -> None:
    rooms = await stored_rooms(tmp_path / "drifttrio.db", [0, 1, 0, 1])
    async with workers_process(tmp_path, 2) as server:
        # One keep-alive connection, requests for both workers' rooms in turn: it
        # moves to the owner of each room it names.
        async with http_client(server.url) as client:
            for round_ in range(2):
                for room_id in rooms:
                    response = await client.post(
                        f"/room/{room_id}/send", json=push("k", f"http-{round_}")
                    )
                    assert response.status_code == 200, response.text
        # WebSockets to every room, several each: whichever worker accepts them, each
        # room's members share one order.
        for room_id in rooms:
            url = f"{server.ws_url}/room/{room_id}/connect"
            async with connect(url) as a, connect(url) as b:
                assert await replay(a, "k") == [("http-0", 1), ("http-1", 2)]
                seq = await push_seq(b, "k", "ws")
                assert seq == 3
                assert await recv(a) == {"type": "push", "key": "k", "value": "ws", "seq": 3}
        metrics = await server.metrics()
        # The keep-alive connection alone crossed between the workers at least 3 times.
        assert handoffs(metrics, "out") >= 3
        assert handoffs(metrics, "in") == handoffs(metrics, "out")
        live = {
            line.split("}")[0] + "}": float(line.rsplit(" ", 1)[1])
            for line in metrics.splitlines()
            if line.startswith("drifttrio_rooms_live{")
        }
        assert live == {
            'drifttrio_rooms_live{worker="0"}': 2.0,
            'drifttrio_rooms_live{worker="1"}': 2.0,
        }


async def test_new_rooms_are_created_by_their_owner_and_reached_from_anywhere(
    tmp_path: Path,
) -> None:
    async with workers_process(tmp_path, 2, "--store", "memory") as server:
        infos = []
        for _ in range(6):
            async with http_client(server.url) as client:  # a new connection each
                response = await client.post("/new")
                assert response.status_code == 200, response.text
                infos.append(response.json())
        for n, info in enumerate(infos):
            async with connect(info["socket_url"]) as ws:
                assert await push_seq(ws, "k", n) == 1
            async with http_client() as client:
                response = await client.post(info["http_url"], json=push("k", "again"))
                assert response.status_code == 200
            async with connect(info["socket_url"]) as ws:
                assert await replay(ws, "k") == [(n, 1), ("again", 2)]


async def test_a_restart_with_another_worker_count_keeps_every_room(tmp_path: Path) -> None:
    store = f"sqlite:///{tmp_path / 'rooms.db'}"
    async with workers_process(tmp_path, 2, "--store", store) as server:
        infos = []
        async with http_client(server.url) as client:
            for n in range(8):
                info = (await client.post("/new")).json()
                response = await client.post(info["http_url"], json=push("k", n))
                assert response.status_code == 200
                infos.append(info)
    assert server.child.process.returncode == 0, server.child.log
    async with workers_process(tmp_path, 3, "--store", store) as server:
        for n, info in enumerate(infos):
            async with connect(f"{server.ws_url}/room/{info['room']}/connect") as ws:
                assert await replay(ws, "k") == [(n, 1)]
                assert await push_seq(ws, "k", "after") == 2
    process = await trio.run_process(
        [*drifttrio_command(), "rooms", "--store", store, "list"],
        capture_stdout=True,
        env=child_env(),
        cwd=tmp_path,
    )
    assert len(process.stdout.decode().splitlines()) == len(infos)


async def test_sigterm_drains_every_worker(tmp_path: Path) -> None:
    rooms = await stored_rooms(tmp_path / "drifttrio.db", [0, 1])
    async with workers_process(tmp_path, 2) as server:
        pids = await server.pids()
        async with (
            connect(f"{server.ws_url}/room/{rooms[0]}/connect") as first,
            connect(f"{server.ws_url}/room/{rooms[1]}/connect") as second,
        ):
            await push_seq(first, "k", "one")
            await push_seq(second, "k", "two")
            server.child.process.send_signal(signal.SIGTERM)
            assert await wait_closed(first) == 1001
            assert await wait_closed(second) == 1001
        with trio.fail_after(TIMEOUT):
            assert await server.child.process.wait() == 0, server.child.log
        assert "draining 2 worker(s)" in server.child.log
        assert "Traceback" not in server.child.log
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    storage = SqliteStorage(tmp_path / "drifttrio.db")
    try:
        for room_id, value in zip(rooms, ["one", "two"], strict=True):
            snapshot = await storage.load_room(room_id)
            assert snapshot is not None
            assert [entry.value for entry in snapshot.streams["k"].entries] == [value]
    finally:
        await storage.aclose()


async def test_health_readiness_and_metrics_cover_every_worker(tmp_path: Path) -> None:
    async with workers_process(tmp_path, 2) as server:
        status, body = await server.health("/healthz")
        assert status == 200
        assert [w["worker"] for w in body["workers"]] == [0, 1]
        status, body = await server.health("/readyz")
        assert (status, body["ready"]) == (200, True)
        metrics = await server.metrics()
        for worker in ("0", "1"):
            assert f'drifttrio_rooms_live{{worker="{worker}"}} 0.0' in metrics
            assert f'drifttrio_worker_restarts_total{{worker="{worker}"}} 0' in metrics
        assert metrics.count("# TYPE drifttrio_rooms_live gauge") == 1


#: Echoes the sender waits for before its room's worker is killed.
KILL_AFTER = 200
WINDOW = 32


async def test_sigkill_of_one_worker_loses_nothing_and_spares_the_other(tmp_path: Path) -> None:
    """kill -9 of the worker that owns one room, under load: nothing acknowledged is
    lost, no seq is handed out twice, a room of the other worker is not disturbed,
    and the supervisor starts the dead worker again."""
    victim_room, other_room = await stored_rooms(tmp_path / "drifttrio.db", [0, 1])
    sent: list[Any] = []
    acked: list[tuple[Any, int]] = []
    seen: list[int] = []
    async with workers_process(tmp_path, 2) as server:
        victim_pid = (await server.pids())[0]
        victim_url = f"{server.ws_url}/room/{victim_room}/connect"
        async with (
            connect(victim_url) as sender,
            connect(f"{server.ws_url}/room/{other_room}/connect") as bystander,
        ):
            before = await push_seq(bystander, "k", "before", "relay")
            credit = trio.Semaphore(WINDOW)

            async def send_until_killed() -> None:
                with suppress(ConnectionClosed):
                    for i in itertools.count():
                        await credit.acquire()
                        sent.append({"n": i})
                        await send(sender, push("log", {"n": i}))

            async with trio.open_nursery() as clients:
                clients.start_soon(send_until_killed)
                with trio.fail_after(TIMEOUT), suppress(ConnectionClosed):
                    while True:
                        message = await recv(sender)
                        if message["type"] != "push":
                            continue
                        seen.append(message["seq"])
                        acked.append((message["value"], message["seq"]))
                        credit.release()
                        if len(acked) == KILL_AFTER:
                            os.kill(victim_pid, signal.SIGKILL)
                clients.cancel_scope.cancel()  # the sender may be waiting for credit
            # The other worker's room never noticed.
            assert await push_seq(bystander, "k", "after", "relay") == before + 1
            await server.child.wait_for_line(r"worker 0 \(pid \d+\) ended with status -9")
            await server.child.wait_for_line(r"worker 0 serving again")
            assert await push_seq(bystander, "k", "still", "relay") == before + 2
        assert len(acked) >= KILL_AFTER
        async with connect(victim_url) as ws:
            log = await replay(ws, "log")
            for entry in acked:
                assert entry in log
            assert [value for value, _ in log] == sent[: len(log)]
            echo = await request(ws, push("log", "back"))
            assert echo["seq"] > max(seen + [seq for _, seq in log])
        assert (await server.health("/readyz"))[0] == 200
        assert 'drifttrio_worker_restarts_total{worker="0"} 1' in await server.metrics()
        assert "Traceback" not in server.child.log


# -- what cannot run with workers: one line, exit 2 -----------------------------------------


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--workers", "2", "--transport", "hypercorn"], "needs drifttrio's own transport"),
        (
            ["--workers", "2", "--certfile", "c.pem", "--keyfile", "k.pem"],
            "cannot terminate TLS itself",
        ),
        (["--workers", "0"], "--workers must be 1 to 256 or auto, got '0'"),
        (["--workers", "many"], "--workers must be 1 to 256 or auto, got 'many'"),
        # Checked once by the supervisor, before any worker starts.
        (["--workers", "2", "--hooks", "nosuch:Hooks"], "nosuch"),
    ],
)
async def test_combinations_workers_cannot_serve_are_refused_in_one_line(
    tmp_path: Path, args: list[str], says: str
) -> None:
    process = await trio.run_process(
        [*drifttrio_command(), "serve", "--port", "0", *args],
        capture_stderr=True,
        check=False,
        env=child_env(),
        cwd=tmp_path,
    )
    lines = process.stderr.decode().splitlines()
    assert process.returncode == 2, lines
    assert len(lines) == 1, lines
    assert says in lines[0]
    assert not (tmp_path / "drifttrio.db").exists()


async def test_a_second_server_on_the_workers_store_is_refused(tmp_path: Path) -> None:
    async with workers_process(tmp_path, 2):
        process = await trio.run_process(
            [*drifttrio_command(), "serve", "--port", "0"],
            capture_stderr=True,
            check=False,
            env=child_env(),
            cwd=tmp_path,
        )
    assert process.returncode == 1
    assert "another drifttrio server is using drifttrio.db" in process.stderr.decode()


async def test_hypercorn_workers_on_one_sqlite_store_are_refused_plainly(tmp_path: Path) -> None:
    hypercorn = Path(sys.executable).with_name("hypercorn")
    argv = [str(hypercorn), "-w", "2", "-k", "trio", "-b", "127.0.0.1:0", "drifttrio.asgi:app"]
    async with trio.open_nursery() as nursery:
        # Its own process group: hypercorn's workers are killed with it (they hold
        # the stderr pipe the test reads).
        process = await trio.lowlevel.open_process(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            env=child_env(),
            cwd=tmp_path,
            start_new_session=True,
        )
        child = ChildProcess(process)
        nursery.start_soon(child.pump)
        try:
            await child.wait_for_line(
                r"^drifttrio: another hypercorn worker of the same parent process \(pid \d+\)"
                r" is using drifttrio\.db: .*hypercorn -w N.*drifttrio serve --workers N"
            )
        finally:
            os.killpg(process.pid, signal.SIGKILL)
            with trio.fail_after(TIMEOUT):
                await process.wait()


async def test_workers_hold_the_store_lock_and_end_with_their_supervisor(tmp_path: Path) -> None:
    """Each worker keeps the store lock held (its descriptor inherited): if the
    supervisor is killed, no new server gets the store while a worker still drains;
    and the workers end by themselves (they see the supervisor's end of a pipe close)."""
    async with workers_process(tmp_path, 2) as server:
        pids = await server.pids()
        for pid in pids:
            fds = os.listdir(f"/proc/{pid}/fd")
            held = [os.readlink(f"/proc/{pid}/fd/{fd}") for fd in fds]
            assert str(tmp_path / "drifttrio.db.lock") in held
        pidfds = [os.pidfd_open(pid) for pid in pids]
        try:
            server.child.process.kill()
            with trio.fail_after(TIMEOUT):
                for pidfd in pidfds:
                    await trio.lowlevel.wait_readable(pidfd)  # readable: the process ended
        finally:
            for pidfd in pidfds:
                os.close(pidfd)
    async with workers_process(tmp_path, 2) as again:
        assert (await again.health("/readyz"))[0] == 200


#: How long trio keeps an idle thread of its cache, the one that started a process.
TRIO_THREAD_IDLE_SECONDS = 10.0


async def test_workers_outlive_the_thread_that_started_them(tmp_path: Path) -> None:
    """trio starts a process from one of its cached threads, which ends after 10 s
    idle: a worker bound to that thread's life (PR_SET_PDEATHSIG) was terminated
    and restarted every 10 s. The wait is for time itself to pass."""
    async with workers_process(tmp_path, 2) as server:
        pids = await server.pids()
        await trio.sleep(TRIO_THREAD_IDLE_SECONDS + 2)
        assert await server.pids() == pids
        assert "ended with status" not in server.child.log
        assert 'drifttrio_worker_restarts_total{worker="0"} 0' in await server.metrics()


async def test_a_second_workers_server_on_the_port_is_refused(tmp_path: Path) -> None:
    """The workers' sockets share their port (SO_REUSEPORT), which would let another
    such group join without an error: a second supervisor is refused instead."""
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    async with workers_process(tmp_path / "a", 2, "--store", "memory") as server:
        port = server.url.rsplit(":", 1)[1]
        process = await trio.run_process(
            [*drifttrio_command(), "serve", "--port", port, "--workers", "2", "--store", "memory"],
            capture_stderr=True,
            check=False,
            env=child_env(),
            cwd=tmp_path / "b",
        )
        assert (await server.health("/readyz"))[0] == 200
    lines = process.stderr.decode().splitlines()
    assert process.returncode == 1, lines
    assert lines == [
        f"drifttrio: cannot listen on 127.0.0.1:{port}: address already in use"
        " (another drifttrio --workers? stop it or pick another --port)"
    ]


def test_a_platform_that_cannot_pass_sockets_is_told_in_one_sentence(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(supervisor, "HANDOFF_SUPPORTED", False)
    with pytest.raises(ConfigError, match=r"^--workers 2: this platform cannot pass a connection"):
        supervisor.check_workers(Config(), "drifttrio", 2)
    supervisor.check_workers(Config(), "drifttrio", 1)  # one worker needs no passing


class _Handoff:
    """A stand-in for the other workers: every room is worker 1's."""

    def __init__(self, *, fails: bool) -> None:
        self.fails = fails
        self.handed: list[bytes] = []

    def owner(self, target: bytes) -> int | None:
        return 1 if target.startswith(b"/room/") else None

    async def hand_off(self, worker: int, sock: trio.socket.SocketType, data: bytes) -> None:
        await trio.lowlevel.checkpoint()
        if self.fails:
            raise WorkerUnavailable("worker 1: [Errno 111] Connection refused")
        self.handed.append(data)


UPGRADE = (
    b"GET /room/abc/connect HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
    b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
    b"Sec-WebSocket-Version: 13\r\n\r\n"
)
#: The same request, read by h11 (a keep-alive connection's second request is).
KEEPALIVE = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n" + UPGRADE


@pytest.mark.parametrize("request_bytes", [UPGRADE, KEEPALIVE], ids=["upgrade", "keep-alive"])
async def test_a_connection_for_another_workers_room_is_handed_over_with_what_was_read(
    request_bytes: bytes,
) -> None:
    ours, theirs = trio.socket.socketpair()
    handoff = _Handoff(fails=False)
    async with trio.open_nursery() as nursery, trio.SocketStream(theirs) as client:
        nursery.start_soon(
            partial(
                serve_stream, DriftApp(Config()), Config(), trio.SocketStream(ours), handoff=handoff
            )
        )
        await client.send_all(request_bytes)
        with trio.fail_after(TIMEOUT):
            answer = b""
            while chunk := await client.receive_some():
                answer += chunk
    # The owner gets the upgrade as sent (from h11, its parts put together again:
    # names lower-cased); nothing of it was answered here.
    assert len(handoff.handed) == 1
    if request_bytes == UPGRADE:
        assert handoff.handed == [UPGRADE]
        assert answer == b""
    else:
        assert handoff.handed[0].lower() == UPGRADE.lower()
        assert answer.startswith(b"HTTP/1.1 200 ")  # /healthz, answered here first
        assert b"101" not in answer


async def test_a_worker_that_cannot_take_a_connection_means_503_and_no_details() -> None:
    ours, theirs = trio.socket.socketpair()
    async with trio.open_nursery() as nursery, trio.SocketStream(theirs) as client:
        nursery.start_soon(
            partial(
                serve_stream,
                DriftApp(Config()),
                Config(),
                trio.SocketStream(ours),
                handoff=_Handoff(fails=True),
            )
        )
        await client.send_all(UPGRADE)
        with trio.fail_after(TIMEOUT):
            answer = b""
            while chunk := await client.receive_some():
                answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 503 ")
    assert b"retry-after: 1" in head.lower()
    assert body == b"this room's worker is restarting; try again"


async def test_a_malformed_hand_off_is_dropped_and_the_next_one_taken(tmp_path: Path) -> None:
    """Whatever arrives on a worker's hand-off socket without exactly one descriptor
    (another process of this user, a bug) is dropped with one warning, and the
    socket keeps taking hand-offs."""
    shard = Shard(0, 2, tmp_path)
    adopted: list[bytes] = []
    taken = trio.Event()

    def adopt(stream: trio.SocketStream, data: bytes) -> None:
        adopted.append(data)
        stream.socket.close()
        taken.set()

    async with trio.open_nursery() as nursery:
        await nursery.start(shard.take_connections, adopt)
        # Both on one connection: the bad message must not end it.
        peer = trio.socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        await peer.connect(str(tmp_path / "worker-0.sock"))
        a, b = socket.socketpair()
        with peer, a, b:
            await peer.send(b"no descriptor")
            fds = array.array("i", [a.fileno()])
            await peer.sendmsg(
                [b"GET / HTTP/1.1\r\n\r\n"], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, fds)]
            )
            with trio.fail_after(TIMEOUT):
                await taken.wait()
        nursery.cancel_scope.cancel()
    assert adopted == [b"GET / HTTP/1.1\r\n\r\n"]
