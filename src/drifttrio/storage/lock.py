"""The store lock: one drifttrio process writes a SQLite database at a time.

A room's order lives in its server's memory (the room task hands out the seqs),
so two servers on one database would each number the same room from its stored
high-water mark and both commit: one room, two orders. SQLite's own locking only
serialises the transactions; it cannot see that.

The lock is ``fcntl.flock(LOCK_EX | LOCK_NB)`` on a file beside the database
(``drifttrio.db.lock``), held for as long as the store is open. The kernel
releases it when its holder's process ends, even by SIGKILL, so a crash never
leaves a stale lock behind; the file itself stays (it holds no state: never
delete it while a server runs, or a new process locks a new file). The holder
writes its pid and purpose into it, for the message of whoever is refused.

Reads (``drifttrio rooms list``, ``inspect``, ``export``) take no lock: in WAL
mode they are safe next to a running server.
"""

from __future__ import annotations

import errno
import fcntl
import os
from pathlib import Path
from typing import Final, Literal, TypeAlias

from .._errors import StorageError

__all__ = ["LockPurpose", "StoreInUse", "StoreLock", "lock_path"]

#: What a lock is held for: serving rooms, or a ``drifttrio rooms`` command that writes.
LockPurpose: TypeAlias = Literal["serve", "admin"]

_HOLDER: Final[dict[str, str]] = {
    "serve": "drifttrio server",
    "admin": "drifttrio rooms command",
}
#: What the refused process can do about it.
_ADVICE: Final[dict[str, str]] = {
    "serve": "stop it before starting another server on the same file "
    "(or give each server a store of its own; Redis for several nodes)",
    "admin": "stop the server first (rooms list, inspect and export work while it runs)",
}


def lock_path(database: str | Path) -> Path:
    """The lock file of ``database``: beside it, named ``<database>.lock``.

    Beside the file itself if ``database`` is a symlink, so that every name of one
    database finds the same lock (through a symlinked directory it does anyway).
    """
    path = Path(database)
    if path.is_symlink():
        path = Path(os.path.realpath(path))
    return path.with_name(path.name + ".lock")


class StoreInUse(StorageError):
    """Another process holds the store lock (the message names it and what to do)."""

    def __init__(self, message: str, *, pid: int | None, holder: str | None) -> None:
        super().__init__(message)
        #: The holder's pid and purpose as it wrote them (``None`` if unreadable).
        self.pid = pid
        self.holder = holder


class StoreLock:
    """The exclusive lock of one SQLite database, held from :meth:`acquire` until
    :meth:`release` or the end of the process.

    A process that starts workers can acquire it once for all of them and tell
    each worker's store that its parent holds it (``SqliteStorage(...,
    lock_held_by_parent=True)``).
    """

    def __init__(self, database: str | Path, purpose: LockPurpose = "serve") -> None:
        self.database = str(database)
        self.path = lock_path(database)
        self.purpose: LockPurpose = purpose
        self._fd: int | None = None

    def fileno(self) -> int | None:
        """The descriptor the lock is held through (``None`` if not held). Passed to a
        child process, it keeps the lock held until that child ends too: a worker
        still draining after its supervisor died keeps a new server out."""
        return self._fd

    @property
    def held(self) -> bool:
        """Whether this object holds the lock."""
        return self._fd is not None

    def acquire(self) -> None:
        """Take the lock now, without waiting; :class:`StoreInUse` if another holds it.

        Raises :class:`~drifttrio.StorageError` if the lock file cannot be opened.
        """
        if self._fd is not None:
            return
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            raise StorageError(f"cannot open the store lock {self.path}: {exc.strerror}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            pid, holder = _read_holder(fd)
            os.close(fd)
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise StorageError(f"cannot lock {self.path}: {exc.strerror}") from None
            raise StoreInUse(self._refusal(pid, holder), pid=pid, holder=holder) from None
        # Truncate only once locked: the file of a refused process keeps its holder's pid.
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()} {self.purpose}\n".encode(), 0)
        self._fd = fd

    def release(self) -> None:
        """Let go of the lock (closing the file releases it); a no-op if not held."""
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)

    def _refusal(self, pid: int | None, holder: str | None) -> str:
        manager = _shared_manager(pid) if holder == "serve" else None
        if manager is not None:
            # Two workers of one process manager (hypercorn -w 2).
            return (
                f"another {manager} worker of the same parent process (pid {os.getppid()}) is"
                f" using {self.database}: workers of one process manager ({manager} -w N) would"
                " each number the same rooms; run one worker (-w 1), or drifttrio serve"
                " --workers N, whose workers share one store safely"
            )
        who = f"another {_HOLDER.get(holder or '', 'drifttrio process')}"
        by = f"pid {pid}" if pid is not None else "another process"
        # A rooms command ends by itself; a server has to be stopped.
        advice = "wait for it to finish" if holder == "admin" else _ADVICE[self.purpose]
        return f"{who} is using {self.database} (lock {self.path} held by {by}): {advice}"


def _read_holder(fd: int) -> tuple[int | None, str | None]:
    """The pid and purpose the holder wrote (``None``s if it has not written yet)."""
    try:
        text = os.pread(fd, 100, 0).decode("ascii", "replace")
    except OSError:
        return None, None
    pid_text, _, holder = text.strip().partition(" ")
    return (int(pid_text) if pid_text.isascii() and pid_text.isdigit() else None), holder or None


#: Process managers whose workers are siblings running the same app.
_MANAGERS: Final = ("hypercorn", "gunicorn", "uvicorn")


def _shared_manager(pid: int | None) -> str | None:
    """The process manager (hypercorn, ...) that is the parent of both this process
    and ``pid``, if it is one (Linux's ``/proc``; elsewhere ``None``)."""
    parent = os.getppid()
    if pid is None or parent <= 1 or _parent_of(pid) != parent:
        return None
    try:
        with open(f"/proc/{parent}/cmdline", "rb") as cmdline:
            words = cmdline.read().split(b"\0")[:3]
    except OSError:
        return None
    for manager in _MANAGERS:
        if any(Path(word.decode(errors="replace")).name == manager for word in words):
            return manager
    return None


def _parent_of(pid: int) -> int | None:
    """The parent pid of process ``pid`` (Linux's ``/proc``), if it can be read."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            # pid (comm) state ppid ...: comm may hold spaces and parentheses.
            fields = stat.read().rpartition(b")")[2].split()
        return int(fields[1])
    except (OSError, IndexError, ValueError):
        return None
