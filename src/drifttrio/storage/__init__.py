"""Storage backends behind one small interface."""

from __future__ import annotations

from urllib.parse import parse_qs, urlsplit

from .._errors import ConfigError
from .base import RoomInfo as RoomInfo
from .base import RoomSnapshot as RoomSnapshot
from .base import Storage as Storage
from .memory import MemoryStorage as MemoryStorage
from .sqlite import SqliteStorage as SqliteStorage

__all__ = ["MemoryStorage", "RoomInfo", "RoomSnapshot", "SqliteStorage", "Storage", "open_storage"]


def open_storage(url: str) -> Storage:
    """Build the backend named by a ``--store`` URL."""
    if url == "memory" or url.startswith("memory:"):
        return MemoryStorage()
    if url.startswith("sqlite:"):
        return _open_sqlite(url)
    if url.startswith(("redis:", "rediss:", "redis+cluster:", "rediss+cluster:")):
        from .redis import RedisStorage

        return RedisStorage(url)
    raise ConfigError(
        f"unknown store {url!r}: expected memory, sqlite:///PATH, redis://HOST:PORT/DB"
        " or redis+cluster://HOST:PORT[,HOST:PORT...]"
    )


def _open_sqlite(url: str) -> SqliteStorage:
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
    return SqliteStorage(path, synchronous=synchronous)
