"""Storage backends behind one small interface."""

from __future__ import annotations

from urllib.parse import parse_qs, urlsplit

from .._errors import ConfigError
from .base import RoomInfo as RoomInfo
from .base import RoomSnapshot as RoomSnapshot
from .base import Storage as Storage
from .base import StoreAccess as StoreAccess
from .base import shown_url
from .memory import MemoryStorage as MemoryStorage
from .sqlite import SqliteStorage as SqliteStorage

__all__ = [
    "MemoryStorage",
    "RoomInfo",
    "RoomSnapshot",
    "SqliteStorage",
    "Storage",
    "StoreAccess",
    "open_storage",
]


def open_storage(
    url: str, access: StoreAccess = "create", *, lock_held_by_parent: bool = False
) -> Storage:
    """Build the backend named by a ``--store`` URL.

    ``access`` says whether a missing store may be created (see :data:`StoreAccess`).
    Every way this can fail is a :class:`~drifttrio.ConfigError` (the URL or what it
    points at is wrong) or a :class:`~drifttrio.StorageError` (the store is there but
    cannot be used now), with one sentence naming the store and what to do.

    ``lock_held_by_parent``: a SQLite store's lock is held by this process's parent
    (the supervisor of ``drifttrio serve --workers``), for all its workers.
    """
    if url == "memory" or url.startswith("memory:"):
        return MemoryStorage()
    if url.startswith("sqlite:"):
        return _open_sqlite(url, access, lock_held_by_parent)
    if url.startswith(("redis:", "rediss:", "redis+cluster:", "rediss+cluster:")):
        from .redis import RedisStorage

        return RedisStorage(url)
    raise ConfigError(
        f"unknown store {shown_url(url)!r}: expected memory, sqlite:///PATH, redis://HOST:PORT/DB"
        " or redis+cluster://HOST:PORT[,HOST:PORT...]"
    )


def _open_sqlite(url: str, access: StoreAccess, lock_held_by_parent: bool) -> SqliteStorage:
    """``sqlite:///relative.db``, ``sqlite:////absolute/path.db``, ``sqlite:///:memory:``;
    ``?synchronous=full`` for power-loss durability (default ``normal``)."""
    parts = urlsplit(url)
    if parts.netloc:
        raise ConfigError(f"store {url!r}: use sqlite:///PATH (three slashes)")
    path = parts.path[1:] if parts.path.startswith("/") else parts.path
    if not path:
        raise ConfigError(f"store {url!r}: no database path (sqlite:///PATH)")
    query = parse_qs(parts.query)
    synchronous = query.get("synchronous", ["normal"])[-1]
    return SqliteStorage(
        path, synchronous=synchronous, access=access, lock_held_by_parent=lock_held_by_parent
    )
