"""The SQLite backend: the embedded default. One file, WAL, commits off the event loop.

A room batch's stream changes and the room's new high-water seq are committed
together, so a seq that any client has seen is never reused after a restart; the
batches of rooms waiting at the same time share one transaction (a group commit,
see :meth:`SqliteStorage.commit`). All database work runs in a worker thread
(``trio.to_thread.run_sync``) behind a capacity limiter of one, on one
connection, so the event loop never waits on the disk.

Durability (``synchronous``): ``NORMAL`` (default) survives a crash of the
process, ``FULL`` also survives power loss / an OS crash, at the cost of an
fsync per commit.

One process writes a database at a time: a server (or a ``drifttrio rooms``
command that writes) takes the store lock with :meth:`SqliteStorage.take_store_lock`
(``storage/lock.py`` says why). The store also remembers whether its latest write
failed (:attr:`SqliteStorage.write_failure`), so readiness can say "cannot
commit" while reads still work, and :meth:`SqliteStorage.probe_write` tells when
writes work again.

With :meth:`SqliteStorage.enable_journal` (a server whose hooks want
``on_committed``), each room batch also writes its changes to the ``journal``
table, in the batch's savepoint: committed together or not at all.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable, Container, Sequence
from functools import partial
from pathlib import Path
from typing import Any, Final, TypeVar

import cbor2
import trio

from .._errors import ConfigError, DriftError, RoomNotFound, StorageError
from ..core.room_state import Stream, StreamChange
from ..protocol.messages import SeqValue, Value
from .base import JournalEntry, RoomInfo, RoomSnapshot, StoreAccess
from .lock import LockPurpose, StoreLock

__all__ = ["SqliteStorage"]

T = TypeVar("T")

_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS rooms (
    id          TEXT PRIMARY KEY,
    seq         INTEGER NOT NULL DEFAULT 0,
    created     REAL NOT NULL,
    last_active REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS rooms_last_active ON rooms (last_active);
CREATE TABLE IF NOT EXISTS streams (
    room      TEXT NOT NULL REFERENCES rooms (id) ON DELETE CASCADE,
    key       TEXT NOT NULL,
    compacted INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (room, key)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS entries (
    room  TEXT NOT NULL,
    key   TEXT NOT NULL,
    seq   INTEGER NOT NULL,
    value BLOB NOT NULL,
    PRIMARY KEY (room, key, seq),
    FOREIGN KEY (room, key) REFERENCES streams (room, key) ON DELETE CASCADE
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS write_probe (data BLOB NOT NULL);
-- The committed-push journal (see SqliteStorage.enable_journal): not tied to rooms,
-- so a deleted or expired room's committed pushes are still delivered.
-- AUTOINCREMENT: an id is never given twice, even once the journal was emptied.
CREATE TABLE IF NOT EXISTS journal (
    id     INTEGER PRIMARY KEY AUTOINCREMENT,
    room   TEXT NOT NULL,
    seq    INTEGER NOT NULL,
    action TEXT NOT NULL,
    key    TEXT NOT NULL,
    value  BLOB NOT NULL
);
"""

_SYNCHRONOUS: Final = ("OFF", "NORMAL", "FULL", "EXTRA")


def _encode(value: Value) -> bytes:
    return cbor2.dumps(value)


def _decode(blob: bytes) -> Value:
    return Value(cbor2.loads(blob))


def _wal_path(path: Path) -> Path:
    return path.with_name(path.name + "-wal")


def _make_directory(path: Path) -> None:
    """Create the directory a new database goes in, or say in one sentence why not."""
    directory = path.parent
    existing = next(p for p in (directory, *directory.parents) if p.exists())
    if not existing.is_dir():
        raise ConfigError(
            f"cannot create the SQLite store {path}: {existing} is a file, not a directory"
            " (check the store path)"
        )
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(
            f"cannot create the SQLite store {path}: cannot make the directory {directory}"
            f" ({exc.strerror}); create it or pick another path"
        ) from None


def _check_tables(db: sqlite3.Connection, path: Path) -> None:
    """Refuse a SQLite file that is not a drifttrio store (and a file that is not SQLite)."""
    found = db.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'rooms'")
    if found.fetchone() is None:
        raise ConfigError(f"{path} is not a drifttrio store: it has no rooms table (check --store)")


def _open_failure(path: Path, access: StoreAccess, exc: sqlite3.Error) -> DriftError:
    """The one sentence for a SQLite file that could not be opened: a ConfigError when
    the path or its permissions are wrong, a StorageError when it is busy."""
    reason = str(exc)
    if "file is not a database" in reason:
        return ConfigError(f"{path} is not a SQLite database (check the store path)")
    if "unable to open database file" in reason and access == "create":
        return ConfigError(
            f"cannot create the SQLite store {path}: its directory {path.parent} is not"
            " writable (fix its permissions or pick another path)"
        )
    if "unable to open database file" in reason or "readonly" in reason:
        return ConfigError(
            f"cannot open the SQLite store {path} ({reason}): check the permissions of the"
            " file and its directory"
        )
    if "locked" in reason or "busy" in reason:
        return StorageError(
            f"the SQLite store {path} is locked by another process ({reason}): stop it and retry"
        )
    return StorageError(f"cannot open the SQLite store {path}: {reason}")


class SqliteStorage:
    """Rooms in one SQLite file (``:memory:`` works too, for tests)."""

    def __init__(
        self,
        path: str | Path,
        *,
        synchronous: str = "NORMAL",
        clock: Callable[[], float] = time.time,
        threads: bool = True,
        lock_held_by_parent: bool = False,
        access: StoreAccess = "create",
    ) -> None:
        """``threads=False`` runs queries on the event loop instead: for tests under
        trio's MockClock, whose autojump does not wait for worker threads.

        ``lock_held_by_parent``: a parent process holds the store lock for this one
        (a :class:`StoreLock` it acquired before starting its workers), so
        :meth:`take_store_lock` takes nothing.

        ``access``: whether a missing file is created (:data:`~.base.StoreAccess`);
        ``"read"`` opens a read-only connection, so nothing is written.
        """
        synchronous = synchronous.upper()
        if synchronous not in _SYNCHRONOUS:
            raise ConfigError(
                f"sqlite synchronous must be one of {_SYNCHRONOUS}, got {synchronous!r}"
            )
        self.path = str(path)
        self.synchronous = synchronous
        self._clock = clock
        self._threads = threads
        self._limiter = trio.CapacityLimiter(1)
        #: Room batches waiting to be committed, and the lock whose holder commits
        #: them all in one transaction (see :meth:`commit`).
        self._queued: list[_PendingCommit] = []
        self._committing = trio.Lock()
        self._lock_held_by_parent = lock_held_by_parent
        self._lock: StoreLock | None = None
        self._write_failure: str | None = None
        self.access: StoreAccess = access
        self._db: sqlite3.Connection | None = None
        #: A read-only connection to a database no server has open reads the file
        #: as immutable, which creates no -wal and -shm files beside it.
        self._immutable = False
        #: Whether commits journal their changes (:meth:`enable_journal`), and the
        #: event set after a commit that journaled something (then replaced).
        self._journaling = False
        self._journal_grew = trio.Event()
        self._db = self._open()

    # -- opening ------------------------------------------------------------------------

    def _open(self) -> sqlite3.Connection:
        """Connect as :attr:`access` allows; every failure is one sentence naming the file."""
        if self.path == ":memory:":
            return self._connect_for_writing(":memory:", existing=False)
        path = Path(self.path).absolute()
        if path.is_dir():
            raise ConfigError(f"{path} is a directory, not a SQLite file (check the store path)")
        if not path.exists():
            if self.access != "create":
                raise ConfigError(f"no store at {path} (check --store)")
            _make_directory(path)
        try:
            if self.access == "read":
                return self._connect_read_only(path)
            return self._connect_for_writing(str(path), existing=self.access == "write")
        except sqlite3.Error as exc:
            raise _open_failure(path, self.access, exc) from None

    def _connect_for_writing(self, path: str, *, existing: bool) -> sqlite3.Connection:
        """The read-write connection; ``existing``: refuse a file that is not a store."""
        db = sqlite3.connect(path, check_same_thread=False, isolation_level=None, timeout=5.0)
        try:
            if existing:
                _check_tables(db, Path(path))  # before the schema is added to any file
            db.execute("PRAGMA journal_mode=WAL")
            db.execute(f"PRAGMA synchronous={self.synchronous}")
            db.execute("PRAGMA foreign_keys=ON")
            db.executescript(_SCHEMA)
        except BaseException:
            db.close()
            raise
        return db

    def _connect_read_only(self, path: Path) -> sqlite3.Connection:
        """A connection that cannot write: ``mode=ro``. Opened that way, SQLite still
        creates the -wal and -shm files of a WAL database that has none (nobody has it
        open); such a database is read as immutable instead, and :meth:`_run` reads it
        again the usual way if a server opened it meanwhile (its -wal appeared)."""
        self._immutable = not _wal_path(path).exists()
        mode = "mode=ro&immutable=1" if self._immutable else "mode=ro"
        db = sqlite3.connect(
            f"{path.as_uri()}?{mode}", uri=True, check_same_thread=False, isolation_level=None
        )
        try:
            _check_tables(db, path)
        except BaseException:
            db.close()
            raise
        return db

    async def _run(self, fn: Callable[[sqlite3.Connection], T], *, write: bool = False) -> T:
        """Run ``fn`` on the connection; a ``write`` records its outcome (``write_failure``)."""
        if self._db is None:
            raise StorageError("the SQLite storage is closed")
        db: sqlite3.Connection = self._db

        def work() -> T:
            nonlocal db
            try:
                result = fn(db)
                if self._immutable and _wal_path(Path(self.path).absolute()).exists():
                    # A server opened the file while it was read as immutable: what
                    # was read may be torn by its checkpoint. Read it the usual way.
                    db.close()
                    db = self._db = self._connect_read_only(Path(self.path).absolute())
                    result = fn(db)
            except sqlite3.Error as exc:
                if db.in_transaction:
                    db.execute("ROLLBACK")
                if write:
                    self._write_failure = str(exc)
                raise StorageError(f"SQLite: {exc}") from exc
            if write:
                self._write_failure = None
            return result

        if not self._threads:
            await trio.lowlevel.checkpoint()
            return work()
        return await trio.to_thread.run_sync(work, limiter=self._limiter)

    # -- one writer, write health -----------------------------------------------------

    def take_store_lock(self, purpose: LockPurpose = "serve") -> None:
        """Take the store lock until :meth:`aclose`; :class:`~drifttrio.storage.lock.StoreInUse`
        if another process holds it. A no-op for ``:memory:``, when already held, and
        when a parent process holds it for this one."""
        if self.path == ":memory:" or self._lock_held_by_parent or self._lock is not None:
            return
        lock = StoreLock(self.path, purpose)
        lock.acquire()
        self._lock = lock

    @property
    def write_failure(self) -> str | None:
        """Why the latest write failed (``database or disk is full``); ``None`` once a
        write (a commit, a create, a probe...) succeeds again."""
        return self._write_failure

    async def probe_write(self) -> None:
        """Commit a write that needs one new page, and free it again: whether a commit
        can be made now. Updates :attr:`write_failure`; raises StorageError if not.

        A page, not a row: a row fits in a page already there even when the file may
        not grow (a full disk, ``max_page_count``), where every real push would fail.
        """

        def probe(db: sqlite3.Connection) -> None:
            (page_size,) = db.execute("PRAGMA page_size").fetchone()
            db.execute("BEGIN IMMEDIATE")
            db.execute("INSERT INTO write_probe (data) VALUES (zeroblob(?))", (page_size,))
            db.execute("DELETE FROM write_probe")
            db.execute("COMMIT")

        await self._run(probe, write=True)

    # -- the Storage interface ------------------------------------------------------

    async def create_room(self, room_id: str) -> None:
        now = self._clock()
        await self._run(
            lambda db: db.execute(
                "INSERT OR IGNORE INTO rooms (id, seq, created, last_active) VALUES (?, 0, ?, ?)",
                (room_id, now, now),
            ),
            write=True,
        )

    async def room_exists(self, room_id: str) -> bool:
        row = await self._run(
            lambda db: db.execute("SELECT 1 FROM rooms WHERE id = ?", (room_id,)).fetchone()
        )
        return row is not None

    async def load_room(self, room_id: str) -> RoomSnapshot | None:
        def load(db: sqlite3.Connection) -> RoomSnapshot | None:
            db.execute("BEGIN")
            try:
                row = db.execute("SELECT seq FROM rooms WHERE id = ?", (room_id,)).fetchone()
                if row is None:
                    return None
                streams: dict[str, Stream] = {}
                for key, compacted in db.execute(
                    "SELECT key, compacted FROM streams WHERE room = ?", (room_id,)
                ):
                    streams[key] = Stream([], compacted)
                for key, seq, blob in db.execute(
                    "SELECT key, seq, value FROM entries WHERE room = ? ORDER BY key, seq",
                    (room_id,),
                ):
                    streams[key].entries.append(SeqValue(_decode(blob), seq))
                return RoomSnapshot(row[0], streams)
            finally:
                db.execute("COMMIT")

        return await self._run(load)

    async def commit(self, room_id: str, seq: int, changes: Sequence[StreamChange]) -> None:
        """Commit one room batch: in a transaction shared with the batches of the other
        rooms that are waiting for the disk at the same time (a group commit).

        Many small rooms commit a push or two each, hundreds of times a second: one
        transaction, one WAL append and one worker-thread hand-off for each was most
        of the store's cost. Here the first room to arrive commits everything queued
        meanwhile; each room's part is a savepoint of its own, so a room that is gone
        fails alone; a failure of the transaction itself fails every room in it, and
        nothing of it is committed. Each room still learns of its commit only once it
        is durable, and a room has at most one batch in flight.
        """
        entry = _PendingCommit(room_id, seq, self._clock(), _rows(changes), self._journaling)
        self._queued.append(entry)
        try:
            async with self._committing:  # FIFO: the rooms of a group pass at once
                if not entry.finished:
                    group, self._queued = self._queued, []
                    try:
                        # Shielded: the group's other rooms wait on it (a worker thread
                        # is not cancellable anyway; this covers threads=False too).
                        with trio.CancelScope(shield=True):
                            await self._run(partial(_commit_group, group), write=True)
                    except Exception as exc:
                        for other in group:
                            other.finish(exc)
                        raise
                    for other in group:
                        other.finish(None)
                    if any(other.journal and other.rows for other in group):
                        self._journal_grew.set()
                        self._journal_grew = trio.Event()
        except BaseException:
            if entry in self._queued:  # cancelled while waiting: never committed
                self._queued.remove(entry)
            raise
        error = entry.error
        if isinstance(error, DriftError):
            # Each room gets an error of its own (a shared one would collect tracebacks).
            raise type(error)(*error.args) from error
        if error is not None:
            raise error

    async def touch(self, room_id: str) -> None:
        """Mark the room as active now (it is in use without writing)."""
        now = self._clock()
        await self._run(
            lambda db: db.execute("UPDATE rooms SET last_active = ? WHERE id = ?", (now, room_id)),
            write=True,
        )

    async def expire(self, idle_seconds: float, keep: Container[str] = ()) -> list[str]:
        """Delete rooms idle for longer than ``idle_seconds`` (except ``keep``)."""
        cutoff = self._clock() - idle_seconds

        def expire(db: sqlite3.Connection) -> list[str]:
            db.execute("BEGIN IMMEDIATE")
            ids = [
                room_id
                for (room_id,) in db.execute(
                    "SELECT id FROM rooms WHERE last_active < ?", (cutoff,)
                ).fetchall()
                if room_id not in keep
            ]
            for room_id in ids:
                db.execute("DELETE FROM rooms WHERE id = ?", (room_id,))
            db.execute("COMMIT")
            return ids

        return await self._run(expire, write=True)

    async def delete_room(self, room_id: str) -> None:
        await self._run(
            lambda db: db.execute("DELETE FROM rooms WHERE id = ?", (room_id,)), write=True
        )

    async def count_rooms(self) -> int:
        row = await self._run(lambda db: db.execute("SELECT count(*) FROM rooms").fetchone())
        return int(row[0])

    async def list_rooms(self) -> list[RoomInfo]:
        rows = await self._run(
            lambda db: db.execute("SELECT id, seq, last_active FROM rooms ORDER BY id").fetchall()
        )
        return [RoomInfo(room_id, seq, last_active) for room_id, seq, last_active in rows]

    async def import_room(self, room_id: str, snapshot: RoomSnapshot) -> None:
        now = self._clock()
        streams = [(key, stream.compacted) for key, stream in snapshot.streams.items()]
        entries = [
            (key, entry.seq, _encode(entry.value))
            for key, stream in snapshot.streams.items()
            for entry in stream.entries
        ]

        def replace(db: sqlite3.Connection) -> None:
            db.execute("BEGIN IMMEDIATE")
            db.execute("DELETE FROM rooms WHERE id = ?", (room_id,))
            db.execute(
                "INSERT INTO rooms (id, seq, created, last_active) VALUES (?, ?, ?, ?)",
                (room_id, snapshot.seq, now, now),
            )
            db.executemany(
                "INSERT INTO streams (room, key, compacted) VALUES (?, ?, ?)",
                [(room_id, key, compacted) for key, compacted in streams],
            )
            db.executemany(
                "INSERT INTO entries (room, key, seq, value) VALUES (?, ?, ?, ?)",
                [(room_id, *entry) for entry in entries],
            )
            db.execute("COMMIT")

        await self._run(replace, write=True)

    # -- the committed-push journal ----------------------------------------------------

    def enable_journal(self) -> None:
        """From now on each commit also writes its changes to the ``journal`` table,
        in the room's savepoint: a batch and its journal entries commit together."""
        self._journaling = True

    async def read_journal(self, limit: int) -> list[JournalEntry]:
        rows = await self._run(
            lambda db: db.execute(
                "SELECT id, room, seq, action, key, value FROM journal ORDER BY id LIMIT ?",
                (limit,),
            ).fetchall()
        )
        return [
            JournalEntry(id_, room, seq, action, key, _decode(blob))
            for id_, room, seq, action, key, blob in rows
        ]

    async def trim_journal(self, entries: Sequence[JournalEntry]) -> None:
        ids = [(entry.id,) for entry in entries]

        def trim(db: sqlite3.Connection) -> None:
            db.execute("BEGIN IMMEDIATE")
            db.executemany("DELETE FROM journal WHERE id = ?", ids)
            db.execute("COMMIT")

        await self._run(trim, write=True)

    async def wait_journal(self) -> None:
        while True:
            grew = self._journal_grew  # taken first: a commit during the query sets it
            found = await self._run(
                lambda db: db.execute("SELECT 1 FROM journal LIMIT 1").fetchone()
            )
            if found is not None:
                return
            await grew.wait()

    async def aclose(self) -> None:
        db, self._db = self._db, None
        try:
            if db is not None and not self._threads:
                db.close()
            elif db is not None:
                await trio.to_thread.run_sync(db.close, limiter=self._limiter)
        finally:
            # Only once the connection is closed: the next holder may write at once.
            lock, self._lock = self._lock, None
            if lock is not None:
                lock.release()

    def execute_for_tests(self, sql: str, *args: Any) -> Any:
        """Run raw SQL on the connection (tests inject faults with PRAGMAs)."""
        assert self._db is not None
        return self._db.execute(sql, args).fetchall()


#: One stream change as a row: (kind, key, seq, encoded value).
_Row = tuple[str, str, int, bytes]


def _rows(changes: Sequence[StreamChange]) -> list[_Row]:
    return [(c.kind, c.key, c.entry.seq, _encode(c.entry.value)) for c in changes]


class _PendingCommit:
    """One room batch waiting in a group commit (see :meth:`SqliteStorage.commit`)."""

    __slots__ = ("error", "finished", "journal", "now", "room_id", "rows", "seq")

    def __init__(self, room_id: str, seq: int, now: float, rows: list[_Row], journal: bool) -> None:
        self.room_id = room_id
        self.seq = seq
        self.now = now
        self.rows = rows
        #: Whether the rows also go to the journal table.
        self.journal = journal
        self.finished = False
        #: Why this batch was not committed (``None``: it was).
        self.error: Exception | None = None

    def finish(self, error: Exception | None) -> None:
        """Done: committed (``error`` is ``None``) or not; the first outcome counts."""
        if not self.finished:
            self.finished = True
            self.error = error


def _commit_group(group: list[_PendingCommit], db: sqlite3.Connection) -> None:
    """Commit the batches of ``group`` in one transaction: a room that no longer
    exists writes nothing and fails alone (its batch gets :class:`RoomNotFound`).
    (No savepoint per room: the room's row is written first, and nothing else is
    written when it is missing. Any other error fails the whole transaction.)"""
    db.execute("BEGIN IMMEDIATE")
    for entry in group:
        if not _commit_room(db, entry):
            entry.finish(RoomNotFound(entry.room_id))
    db.execute("COMMIT")


def _commit_room(db: sqlite3.Connection, entry: _PendingCommit) -> bool:
    """Write one room batch: its new seq, its stream changes and (when journaling)
    their journal entries. ``False`` if the room does not exist: then nothing was
    written (the room's row comes first)."""
    room_id = entry.room_id
    updated = db.execute(
        "UPDATE rooms SET seq = max(seq, ?), last_active = ? WHERE id = ?",
        (entry.seq, entry.now, room_id),
    ).rowcount
    if not updated:
        return False
    for kind, key, entry_seq, blob in entry.rows:
        db.execute(
            "INSERT OR IGNORE INTO streams (room, key, compacted) VALUES (?, ?, 0)",
            (room_id, key),
        )
        if kind == "replace":
            db.execute("DELETE FROM entries WHERE room = ? AND key = ?", (room_id, key))
        elif kind == "compact":
            db.execute(
                "DELETE FROM entries WHERE room = ? AND key = ? AND seq <= ?",
                (room_id, key, entry_seq),
            )
            db.execute(
                "UPDATE streams SET compacted = max(compacted, ?) WHERE room = ? AND key = ?",
                (entry_seq, room_id, key),
            )
        db.execute(
            "INSERT INTO entries (room, key, seq, value) VALUES (?, ?, ?, ?)",
            (room_id, key, entry_seq, blob),
        )
    if entry.journal:
        db.executemany(
            "INSERT INTO journal (room, seq, action, key, value) VALUES (?, ?, ?, ?, ?)",
            [(room_id, seq, kind, key, blob) for kind, key, seq, blob in entry.rows],
        )
    return True
