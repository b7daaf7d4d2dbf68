"""One store, one server; and ``/readyz`` that tells whether the store can commit.

- a second ``drifttrio serve`` on the same SQLite file (an overlapping deploy)
  refuses to start with one line on stderr and exit code 1, instead of handing out
  the same seqs as the first; the lock dies with its process, even by SIGKILL;
- ``drifttrio rooms`` commands that write are refused while a server holds the
  store, the read-only ones still work;
- ``/readyz`` answers 503 "storage cannot commit" while SQLite writes fail (a
  full disk), and 200 again once they work, with or without a push.

Real processes and a real SQLite file; no fixed ports, no sleeping to wait for
something (time passes only on the mock clock).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
import trio.testing

from _procs import TIMEOUT, ChildProcess, child_env, drifttrio_command, start_child
from drifttrio import Config, Hub, open_hub, open_server
from drifttrio.runtime import hub as hub_module
from drifttrio.storage import MemoryStorage, SqliteStorage
from drifttrio.storage.lock import StoreInUse, StoreLock, lock_path

ROOT = Path(__file__).resolve().parents[1]
#: The children import this checkout's drifttrio, wherever they run.
ENV = {"PYTHONPATH": str(ROOT / "src")}
LISTENING = r"drifttrio listening on (http://127\.0\.0\.1:\d+)"
SERVER_IN_USE = (
    r"^drifttrio: another drifttrio server is using x\.db "
    r"\(lock x\.db\.lock held by pid {pid}\): stop it before starting another server"
)


# -- the lock itself ------------------------------------------------------------------------


def test_the_lock_is_exclusive_and_names_its_holder(tmp_path: Path) -> None:
    database = tmp_path / "a.db"
    first = StoreLock(database)
    first.acquire()
    assert first.held
    assert lock_path(database) == tmp_path / "a.db.lock"
    assert lock_path(database).read_text() == f"{os.getpid()} serve\n"
    # flock is per open file: a second lock in the same process is refused too.
    second = StoreLock(database, "admin")
    with pytest.raises(StoreInUse) as refused:
        second.acquire()
    assert refused.value.holder == "serve"
    assert str(refused.value).startswith(
        f"another drifttrio server is using {database} (lock {database}.lock held by pid "
    )
    assert str(refused.value).endswith(
        "stop the server first (rooms list, inspect and export work while it runs)"
    )
    assert not second.held
    first.release()
    second.acquire()
    assert lock_path(database).read_text() == f"{os.getpid()} admin\n"
    with pytest.raises(
        StoreInUse, match=r"another drifttrio rooms command .*: wait for it to finish$"
    ):
        StoreLock(database).acquire()
    second.release()


def test_every_name_of_a_database_finds_the_same_lock(tmp_path: Path) -> None:
    real = tmp_path / "data" / "x.db"
    real.parent.mkdir()
    real.touch()
    (tmp_path / "link.db").symlink_to(real)
    (tmp_path / "dir").symlink_to(real.parent)
    first = StoreLock(real)
    first.acquire()
    try:
        for name in (
            tmp_path / "link.db",
            tmp_path / "dir" / "x.db",
            tmp_path / "data/../data/x.db",
        ):
            with pytest.raises(StoreInUse):
                StoreLock(name).acquire()
    finally:
        first.release()


async def test_a_second_hub_on_one_file_refuses_to_start(tmp_path: Path) -> None:
    config = Config(store=f"sqlite:///{tmp_path / 'x.db'}")
    async with open_server(config) as first:
        with pytest.raises(ExceptionGroup) as refused:
            async with open_hub(config):
                pytest.fail("a second hub on the same file must not start")
        assert refused.group_contains(
            StoreInUse, match=r"another drifttrio server is using .*x\.db", depth=1
        )
        assert (await _http(first.url, "POST", "/new"))[0] == 200
    # Closing the first server released the lock.
    async with open_hub(config) as hub:
        assert isinstance(hub.storage, SqliteStorage)


async def test_a_lock_held_by_the_parent_is_not_taken_again(tmp_path: Path) -> None:
    """A parent takes the lock once; its workers' stores are told it is held for them."""
    database = tmp_path / "x.db"
    parent = StoreLock(database)
    parent.acquire()
    try:
        with pytest.raises(ExceptionGroup) as refused:
            async with open_hub(Config(), SqliteStorage(database)):
                pass
        assert refused.group_contains(StoreInUse, depth=1)
        async with open_hub(Config(), SqliteStorage(database, lock_held_by_parent=True)) as hub:
            room = await hub.create_room()
            assert await hub.push(room, "k", 1) is None
    finally:
        parent.release()


async def test_memory_and_in_memory_sqlite_stores_take_no_lock() -> None:
    async with (
        open_hub(Config(), SqliteStorage(":memory:")) as first,
        open_hub(Config(), SqliteStorage(":memory:")) as second,
        open_hub(Config(), MemoryStorage()) as third,
        open_hub(Config(), MemoryStorage()) as fourth,
    ):
        for hub in (first, second, third, fourth):
            assert await hub.push(await hub.create_room(), "k", 1) is None


# -- the real command line --------------------------------------------------------------------


@asynccontextmanager
async def serving(nursery: trio.Nursery, cwd: Path) -> AsyncIterator[tuple[ChildProcess, str]]:
    """``drifttrio serve --port 0 --store sqlite:///x.db`` in ``cwd``, and its URL; killed
    on exit if it still runs."""
    child = await start_child(
        nursery,
        [*drifttrio_command(), "serve", "--port", "0", "--store", "sqlite:///x.db"],
        cwd,
        ENV,
    )
    try:
        match = await child.wait_for_line(LISTENING)
        yield child, match.group(1)
    finally:
        if child.process.poll() is None:
            child.process.kill()
        with trio.fail_after(TIMEOUT):
            await child.process.wait()


async def drifttrio(cwd: Path, *args: str) -> tuple[int, str, str]:
    """Run ``drifttrio ARGS`` to completion: exit code, stdout, stderr."""
    with trio.fail_after(TIMEOUT):
        done = await trio.run_process(
            [*drifttrio_command(), *args],
            cwd=cwd,
            env={**child_env(), **ENV},
            stdin=subprocess.DEVNULL,
            capture_stdout=True,
            capture_stderr=True,
            check=False,
        )
    return done.returncode, done.stdout.decode(), done.stderr.decode()


async def _http(url: str, method: str, path: str, **kwargs: Any) -> tuple[int, Any]:
    async with httpx.AsyncClient(base_url=url, trust_env=False, timeout=TIMEOUT) as client:
        response = await client.request(method, path, **kwargs)
    return response.status_code, response.json() if response.content else None


async def test_one_store_one_server(tmp_path: Path) -> None:
    rooms = ["rooms", "--store", "sqlite:///x.db"]
    async with trio.open_nursery() as nursery, serving(nursery, tmp_path) as (first, url):
        status, created = await _http(url, "POST", "/new")
        assert status == 200
        room = created["room"]
        ping = {"type": "push", "key": "k", "value": 1, "action": {"type": "append"}}
        assert (await _http(url, "POST", f"/room/{room}/send", json=ping))[0] == 200

        # An overlapping deploy: the second server refuses, with one line and exit code 1.
        code, _, stderr = await drifttrio(
            tmp_path, "serve", "--port", "0", "--store", "sqlite:///x.db"
        )
        assert code == 1, stderr
        assert len(stderr.splitlines()) == 1, stderr
        assert re.match(SERVER_IN_USE.format(pid=first.process.pid), stderr), stderr

        # Writing rooms commands are refused; reading ones work (WAL).
        code, _, stderr = await drifttrio(tmp_path, *rooms, "delete", room)
        assert code == 1
        assert stderr == (
            f"drifttrio: another drifttrio server is using x.db (lock x.db.lock held by pid "
            f"{first.process.pid}): stop the server first (rooms list, inspect and export work "
            "while it runs)\n"
        )
        export = tmp_path / "room.jsonl"
        assert (await drifttrio(tmp_path, *rooms, "export", room, "-o", str(export)))[0] == 0
        code, _, stderr = await drifttrio(tmp_path, *rooms, "import", str(export), "--room", "copy")
        assert (code, len(stderr.splitlines())) == (1, 1), stderr
        code, listed, _ = await drifttrio(tmp_path, *rooms, "list")
        assert code == 0
        assert [line for line in listed.splitlines() if room in line]
        assert "copy" not in listed
        # The refused commands changed nothing: the room still takes pushes, after seq 1.
        status, pushed = await _http(url, "POST", f"/room/{room}/send", json=ping)
        assert (status, pushed) == (200, {"type": "stream_size", "key": "k", "size": 2})

        # A crash (SIGKILL) leaves no stale lock: the next server starts at once.
        first.process.kill()
        with trio.fail_after(TIMEOUT):
            assert await first.process.wait() == -signal.SIGKILL
        async with serving(nursery, tmp_path) as (second, url):
            status, got = await _http(
                url, "POST", f"/room/{room}/send", json={"type": "get", "key": "k"}
            )
            assert (status, [entry["seq"] for entry in got["data"]]) == (200, [1, 2])
            second.process.send_signal(signal.SIGTERM)
            with trio.fail_after(TIMEOUT):
                assert await second.process.wait() == 0, second.log
    # With no server running, the rooms commands may write again.
    assert (await drifttrio(tmp_path, *rooms, "delete", room))[0] == 0


# -- readiness follows the store's writes ----------------------------------------------------


@pytest.mark.parametrize("transport", ["drifttrio", "hypercorn"])
async def test_readyz_is_false_while_sqlite_cannot_commit(
    tmp_path: Path, transport: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(hub_module, "WRITE_PROBE_INTERVAL", 0.0)  # probe on every /readyz
    config = Config(store=f"sqlite:///{tmp_path / 'full.db'}")
    async with open_server(config, transport=transport) as server:
        storage = server.hub.storage
        assert isinstance(storage, SqliteStorage)
        created = (await _http(server.url, "POST", "/new"))[1]
        room = created["room"]
        send = f"/room/{room}/send"

        def push(value: object) -> dict[str, Any]:
            return {"type": "push", "key": "k", "value": value, "action": {"type": "append"}}

        assert (await _http(server.url, "POST", send, json=push("small")))[0] == 200
        assert await _http(server.url, "GET", "/readyz") == (200, {"ready": True})

        # The disk is full: the file may not grow by a single page.
        (pages,) = storage.execute_for_tests("PRAGMA page_count")[0]
        storage.execute_for_tests(f"PRAGMA max_page_count={pages}")
        refused = await _http(server.url, "POST", send, json=push("x" * 50_000))
        assert refused == (
            503,
            {"type": "error", "message": "storage unavailable: push not applied"},
        )
        not_ready = (
            503,
            {"ready": False, "reason": "storage cannot commit: database or disk is full"},
        )
        assert await _http(server.url, "GET", "/readyz") == not_ready
        # The probe that ran for this /readyz could not write either.
        assert await _http(server.url, "GET", "/readyz") == not_ready
        # Reads still work.
        got = await _http(server.url, "POST", send, json={"type": "get", "key": "k"})
        assert got == (200, {"type": "init", "key": "k", "data": [{"value": "small", "seq": 1}]})

        # Space comes back: ready again before any push (the probe wrote), then pushes work.
        storage.execute_for_tests("PRAGMA max_page_count=1073741823")
        assert await _http(server.url, "GET", "/readyz") == (200, {"ready": True})
        assert (await _http(server.url, "POST", send, json=push("x" * 50_000)))[0] == 200


async def test_a_successful_commit_makes_the_store_ready_again(tmp_path: Path) -> None:
    config = Config(store=f"sqlite:///{tmp_path / 'c.db'}", new_rooms_per_minute=0)
    async with open_server(config) as server:
        storage = server.hub.storage
        assert isinstance(storage, SqliteStorage)
        (pages,) = storage.execute_for_tests("PRAGMA page_count")[0]
        storage.execute_for_tests(f"PRAGMA max_page_count={pages}")
        # Creating rooms until one needs a page: a create is a write too.
        async with httpx.AsyncClient(base_url=server.url, trust_env=False) as client:
            for _ in range(500):
                created = await client.post("/new")
                if created.status_code != 200:
                    break
        assert created.status_code == 503
        status, body = await _http(server.url, "GET", "/readyz")
        assert (status, body["reason"]) == (503, "storage cannot commit: database or disk is full")
        storage.execute_for_tests("PRAGMA max_page_count=1073741823")
        assert (await _http(server.url, "POST", "/new"))[0] == 200
        assert storage.write_failure is None
        assert await _http(server.url, "GET", "/readyz") == (200, {"ready": True})


async def test_write_probes_are_rate_limited(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    """Without pushes, the store heals by itself, but a flood of /readyz makes at most
    one probe (one small write) per WRITE_PROBE_INTERVAL."""
    storage = SqliteStorage(tmp_path / "p.db", clock=trio.current_time, threads=False)
    hub = Hub(Config(), storage)
    async with trio.open_nursery() as nursery:
        await nursery.start(hub.run)
        room = await hub.create_room()
        assert await hub.write_problem() is None
        (pages,) = storage.execute_for_tests("PRAGMA page_count")[0]
        storage.execute_for_tests(f"PRAGMA max_page_count={pages}")
        with pytest.raises(Exception, match="storage unavailable"):
            await hub.push(room, "k", "x" * 50_000)
        assert await hub.write_problem() == "database or disk is full"
        storage.execute_for_tests("PRAGMA max_page_count=1073741823")
        # Healed, but the last probe ran less than WRITE_PROBE_INTERVAL ago: no new one yet.
        for _ in range(100):
            assert await hub.write_problem() == "database or disk is full"
        await trio.sleep(hub_module.WRITE_PROBE_INTERVAL)
        assert await hub.write_problem() is None
        assert await hub.push(room, "k", "after") is None
        nursery.cancel_scope.cancel()
