"""``drifttrio rooms``, ``check`` and ``bench``: every mistake a user can fix is one
line on stderr, ``drifttrio: <what is wrong and how to fix it>``, and a non-zero exit.

- a room id may start with ``-`` (1 in 64 stored before 977d3ce did, and other
  servers' ids do), and ``--store`` may come after the action;
- the read-only actions (list, inspect, export) never create a store nor write to
  one: a mistyped path is "no store at PATH", and an existing database is left
  byte for byte as it was, without -wal/-shm files beside it;
- every store that cannot be opened is one sentence naming it (never a password);
- ``check`` and ``bench`` given a URL without its scheme, or a server that does not
  answer, say so in one line (exit 2) instead of failing every check.

Each runs the real command line in a subprocess, in ``tmp_path``.
"""

from __future__ import annotations

import contextlib
import json
import socket
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from _procs import child_env
from drifttrio.storage import SqliteStorage

ROOT = Path(__file__).resolve().parents[1]
#: ``python -m drifttrio.cli``, importing this checkout's drifttrio.
COMMAND = [sys.executable, "-m", "drifttrio.cli"]
TIMEOUT = 30  # a guard against a hang, never a way to wait for something
#: A room id as 1 in 64 stored ids are: argparse took it for an option.
DASH_ID = "-Kdjhaa7nZ-8fA3u6O6lFg"
#: Exit status of a store that is fine but cannot be used now (a StorageError):
#: cli._startup_failure's rule.
STORE_UNAVAILABLE = 1


def drifttrio(cwd: Path, *args: str, stdin: str = "") -> tuple[int, str, str]:
    """Run ``drifttrio ARGS`` in ``cwd`` to completion: exit status, stdout, stderr."""
    done = subprocess.run(
        [*COMMAND, *args],
        cwd=cwd,
        env={**child_env(), "PYTHONPATH": str(ROOT / "src")},
        input=stdin,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )
    return done.returncode, done.stdout, done.stderr


def export_of(room: str, seq: int = 3) -> str:
    return (
        json.dumps({"type": "room", "room": room, "seq": seq})
        + "\n"
        + json.dumps({"type": "entry", "key": "k", "seq": seq, "value": "v"})
        + "\n"
    )


@pytest.fixture
def closed_port() -> Iterator[int]:
    """A port on 127.0.0.1 that refuses connections (bound, never listening)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield sock.getsockname()[1]


# -- room ids and --store ------------------------------------------------------------------


def test_every_action_takes_a_room_id_that_starts_with_a_dash(tmp_path: Path) -> None:
    store = "sqlite:///rooms.db"
    code, _, err = drifttrio(
        tmp_path, "rooms", "--store", store, "import", "--room", DASH_ID, stdin=export_of("x")
    )
    assert (code, err) == (0, f"imported room {DASH_ID} (seq 3)\n")
    code, out, err = drifttrio(tmp_path, "rooms", "--store", store, "inspect", DASH_ID)
    assert (code, err) == (0, "")
    assert json.loads(out)["room"] == DASH_ID
    code, out, err = drifttrio(tmp_path, "rooms", "--store", store, "export", DASH_ID)
    assert (code, err) == (0, "")
    assert [json.loads(line) for line in out.splitlines()] == [
        {"type": "room", "room": DASH_ID, "seq": 3},
        {"type": "stream", "key": "k", "compacted": 0},
        {"type": "entry", "key": "k", "seq": 3, "value": "v"},
    ]
    code, _, err = drifttrio(tmp_path, "rooms", "--store", store, "delete", DASH_ID)
    assert (code, err) == (0, f"deleted room {DASH_ID}\n")
    assert drifttrio(tmp_path, "rooms", "--store", store, "list")[:2] == (0, "")


def test_store_is_accepted_after_the_action(tmp_path: Path) -> None:
    assert drifttrio(tmp_path, "rooms", "list", "--store", "memory") == (0, "", "")
    # After the action it wins over the one before it.
    code, _, err = drifttrio(
        tmp_path, "rooms", "--store", "sqlite:///nowhere.db", "inspect", "r", "--store", "memory"
    )
    assert (code, err) == (
        1,
        "drifttrio: no room 'r' in memory (drifttrio rooms list shows the stored ones)\n",
    )


# -- read-only actions do not create or write stores -------------------------------------


@pytest.mark.parametrize("action", [["list"], ["inspect", "r"], ["export", "r"], ["delete", "r"]])
def test_a_missing_store_is_one_line_and_not_created(tmp_path: Path, action: list[str]) -> None:
    code, out, err = drifttrio(
        tmp_path, "rooms", "--store", f"sqlite:///{tmp_path}/typo/x.db", *action
    )
    assert (code, out, err) == (
        2,
        "",
        f"drifttrio: no store at {tmp_path}/typo/x.db (check --store)\n",
    )
    assert list(tmp_path.iterdir()) == []
    # A relative path is named absolute: the reader sees which directory was meant.
    code, _, err = drifttrio(tmp_path, "rooms", "--store", "sqlite:///x.db", *action)
    assert (code, err) == (2, f"drifttrio: no store at {tmp_path}/x.db (check --store)\n")
    assert list(tmp_path.iterdir()) == []


def test_reading_leaves_the_store_as_it_was(tmp_path: Path) -> None:
    store = "sqlite:///rooms.db"
    assert drifttrio(tmp_path, "rooms", "--store", store, "import", stdin=export_of("r"))[0] == 0
    database = tmp_path / "rooms.db"
    # As a store written by an older drifttrio: opening it for writing would add the
    # table (a write), reading it must not.
    with contextlib.closing(sqlite3.connect(database)) as db:
        db.execute("DROP TABLE write_probe")
        db.commit()
    before = {path.name: path.read_bytes() for path in tmp_path.iterdir()}
    assert set(before) == {"rooms.db", "rooms.db.lock"}
    stamp = database.stat().st_mtime_ns
    for action in (["list"], ["inspect", "r"], ["export", "r"]):
        code, out, err = drifttrio(tmp_path, "rooms", "--store", store, *action)
        assert (code, err) == (0, ""), action
        assert '"r"' in out
    # Not a byte written, and no -wal or -shm file left beside the database.
    assert {path.name: path.read_bytes() for path in tmp_path.iterdir()} == before
    assert database.stat().st_mtime_ns == stamp


# -- stores that cannot be opened: one sentence each -------------------------------------


def test_store_opening_errors_are_one_line(tmp_path: Path, closed_port: int) -> None:
    (tmp_path / "file").write_text("not a directory\n")
    (tmp_path / "text.db").write_text("not SQLite\n")
    (tmp_path / "dir.db").mkdir()
    other = tmp_path / "other.db"
    subprocess.run(
        [
            sys.executable,
            "-c",
            f"import sqlite3; sqlite3.connect({str(other)!r}).execute('create table t(x)')",
        ],
        check=True,
        timeout=TIMEOUT,
    )
    cases = [
        # (store URL, action, exit status, the line)
        (
            f"sqlite:///{tmp_path}/file/x.db",
            "import",
            2,
            f"cannot create the SQLite store {tmp_path}/file/x.db: {tmp_path}/file is a file,"
            " not a directory (check the store path)",
        ),
        (
            f"sqlite:///{tmp_path}/text.db",
            "list",
            2,
            f"{tmp_path}/text.db is not a SQLite database (check the store path)",
        ),
        (
            f"sqlite:///{tmp_path}/text.db",
            "import",
            2,
            f"{tmp_path}/text.db is not a SQLite database (check the store path)",
        ),
        (
            f"sqlite:///{tmp_path}/dir.db",
            "list",
            2,
            f"{tmp_path}/dir.db is a directory, not a SQLite file (check the store path)",
        ),
        (
            f"sqlite:///{other}",
            "list",
            2,
            f"{other} is not a drifttrio store: it has no rooms table (check --store)",
        ),
        (
            "sqlite:////proc/x.db",  # a directory no one may create files in, root included
            "import",
            2,
            "cannot create the SQLite store /proc/x.db: its directory /proc is not writable"
            " (fix its permissions or pick another path)",
        ),
        (
            "sqlite:////proc/x/y.db",
            "import",
            2,
            "cannot create the SQLite store /proc/x/y.db: cannot make the directory /proc/x"
            " (No such file or directory); create it or pick another path",
        ),
        (
            "postgres://admin:secret@db/rooms",
            "list",
            2,
            "unknown store 'postgres://admin:***@db/rooms': expected memory, sqlite:///PATH,"
            " redis://HOST:PORT/DB or redis+cluster://HOST:PORT[,HOST:PORT...]",
        ),
        (
            "redis://:secret@127.0.0.1:6379/0?log=many",
            "list",
            2,
            "store 'redis://:***@127.0.0.1:6379/0?log=many': log must be a whole number,"
            " got 'many'",
        ),
        (
            f"redis://:secret@127.0.0.1:{closed_port}/0",
            "list",
            STORE_UNAVAILABLE,
            f"cannot use Redis at 127.0.0.1:{closed_port}: Unable to establish a connection to"
            f" 127.0.0.1:{closed_port} (check that Redis runs there and the store URL)",
        ),
    ]
    for store, action, status, line in cases:
        code, out, err = drifttrio(
            tmp_path, "rooms", "--store", store, action, stdin=export_of("r")
        )
        assert (code, out, err) == (status, "", f"drifttrio: {line}\n"), store
        assert "secret" not in err
    # None of them created anything.
    assert sorted(path.name for path in tmp_path.iterdir()) == [
        "dir.db",
        "file",
        "other.db",
        "text.db",
    ]
    assert not Path("/proc/x").exists()


def test_an_unknown_room_is_one_line(tmp_path: Path) -> None:
    assert (
        drifttrio(tmp_path, "rooms", "--store", "sqlite:///r.db", "import", stdin=export_of("a"))[0]
        == 0
    )
    code, out, err = drifttrio(tmp_path, "rooms", "--store", "sqlite:///r.db", "export", "b")
    assert (code, out, err) == (
        1,
        "",
        "drifttrio: no room 'b' in sqlite:///r.db (drifttrio rooms list shows the stored ones)\n",
    )


# -- check and bench: the server's URL ------------------------------------------------


@pytest.mark.parametrize("command", ["check", "bench"])
def test_a_url_without_scheme_or_server_is_one_line(
    tmp_path: Path, closed_port: int, command: str
) -> None:
    prefix = "drifttrio bench" if command == "bench" else "drifttrio"
    address = f"127.0.0.1:{closed_port}"
    code, out, err = drifttrio(tmp_path, command, address)
    assert (code, out, err) == (
        2,
        "",
        f"{prefix}: not a server URL: '{address}' (give its scheme: http://{address})\n",
    )
    code, out, err = drifttrio(tmp_path, command, f"ws://{address}")
    assert (code, out, err) == (
        2,
        "",
        f"{prefix}: not a server URL: 'ws://{address}' (the base URL is http://{address})\n",
    )
    code, out, err = drifttrio(tmp_path, command, f"http://{address}", "--timeout", "5")
    assert (code, out) == (2, "")
    assert err.splitlines() == [
        f"{prefix}: cannot reach http://{address}: all attempts to connect to {address} failed"
        " (is the server running, and is this its address?)"
    ]


def files(directory: Path) -> list[str]:
    return sorted(path.name for path in directory.iterdir())


async def test_a_read_sees_what_a_server_that_started_meanwhile_wrote(tmp_path: Path) -> None:
    """A database no server has open is read as immutable (no -wal appears); once a
    server opens it, its writes are in the -wal, which an immutable read would miss."""
    database = tmp_path / "rooms.db"
    writer = SqliteStorage(database)
    await writer.create_room("before")
    await writer.aclose()
    assert files(tmp_path) == ["rooms.db"]
    reader = SqliteStorage(database, access="read", threads=False)
    try:
        assert [info.room_id for info in await reader.list_rooms()] == ["before"]
        assert files(tmp_path) == ["rooms.db"]
        server = SqliteStorage(database)  # a server starts: the -wal appears
        try:
            await server.create_room("meanwhile")
            assert [info.room_id for info in await reader.list_rooms()] == ["before", "meanwhile"]
        finally:
            await server.aclose()
    finally:
        await reader.aclose()
