"""docs/single-machine.md: the backup command of the page, run as written (paths
substituted) against a live server's SQLite store, gives a copy holding every
committed push, the ones still in the WAL included; its systemd unit verifies."""

from __future__ import annotations

import os
import re
import shutil
import sqlite3
import subprocess
from pathlib import Path

import httpx
import pytest
import trio

from _procs import drifttrio_command
from drifttrio import Config, open_server
from drifttrio.storage import open_storage

ROOT = Path(__file__).resolve().parent.parent
TIMEOUT = 30.0  # a guard against hangs, never a way to wait for something


def docs_backup_command() -> tuple[str, str]:
    """The ``sqlite3 DB ".backup COPY"`` command of the page: (DB, COPY)."""
    page = (ROOT / "docs" / "single-machine.md").read_text()
    found = re.findall(r'sqlite3 (\S+) \\\n\s+"\.backup ([^"]+)"', page)
    assert len(found) == 1, "docs/single-machine.md should show one sqlite3 .backup command"
    database, copy = found[0]
    return str(database), str(copy)


async def test_backup_of_a_live_store_holds_every_commit(tmp_path: Path) -> None:
    sqlite = shutil.which("sqlite3")
    if sqlite is None:
        if os.environ.get("DRIFTTRIO_REQUIRE_NGINX") == "1":
            pytest.fail("sqlite3 is required (DRIFTTRIO_REQUIRE_NGINX=1) but not installed")
        pytest.skip("sqlite3 is not installed (apt-get install sqlite3)")
    database, copy = docs_backup_command()
    assert database == "/var/lib/drifttrio/rooms.db"
    assert copy.startswith("/var/lib/drifttrio/backup-")
    store, backup = tmp_path / "rooms.db", tmp_path / "backup.db"
    async with (
        open_server(Config(store=f"sqlite:///{store}")) as server,
        httpx.AsyncClient(base_url=server.url, trust_env=False, timeout=TIMEOUT) as client,
    ):
        room = (await client.post("/new")).json()["room"]
        for n in range(1, 51):
            push = {"type": "push", "action": {"type": "append"}, "key": "k", "value": n}
            assert (await client.post(f"/room/{room}/send", json=push)).status_code == 200
        # The commits are in the WAL, not yet in rooms.db: a plain copy could miss them.
        assert (await trio.Path(f"{store}-wal").stat()).st_size > 0
        with trio.fail_after(TIMEOUT):
            await trio.run_process([sqlite, str(store), f".backup {backup}"], capture_stdout=True)
        assert not await trio.Path(f"{backup}-wal").exists()  # one self-contained file
        push = {"type": "push", "action": {"type": "append"}, "key": "k", "value": 51}
        assert (await client.post(f"/room/{room}/send", json=push)).status_code == 200
    # The copy is consistent and holds the 50 pushes made before it.
    db = sqlite3.connect(backup)
    try:
        assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    finally:
        db.close()
    storage = open_storage(f"sqlite:///{backup}")
    try:
        snapshot = await storage.load_room(room)
    finally:
        await storage.aclose()
    assert snapshot is not None
    assert snapshot.seq == 50


def test_systemd_unit_is_valid(tmp_path: Path) -> None:
    """``systemd-analyze verify`` accepts the page's unit (the installed
    ``drifttrio`` script in place of /opt/drifttrio's). Skips without systemd."""
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed")
    page = (ROOT / "docs" / "single-machine.md").read_text()
    units = re.findall(r"^```ini\n(.*?)^```$", page, re.M | re.S)
    assert len(units) == 1, "docs/single-machine.md should hold one systemd unit"
    unit = str(units[0])
    assert "ExecStart=/opt/drifttrio/bin/drifttrio serve " in unit
    assert "TimeoutStopSec=20" in unit
    assert Config().shutdown_timeout < 20  # systemd waits longer than the drain
    service = tmp_path / "drifttrio.service"
    service.write_text(unit.replace("/opt/drifttrio/bin/drifttrio", drifttrio_command()[0]))
    result = subprocess.run(
        [analyze, "verify", "--man=no", str(service)],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "drifttrio.service" not in result.stderr, result.stderr  # no warning about it
