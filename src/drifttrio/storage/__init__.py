"""Storage backends behind one small interface."""

from __future__ import annotations

from .._errors import ConfigError
from .base import RoomSnapshot as RoomSnapshot
from .base import Storage as Storage
from .memory import MemoryStorage as MemoryStorage

__all__ = ["MemoryStorage", "RoomSnapshot", "Storage", "open_storage"]


def open_storage(url: str) -> Storage:
    """Build the backend named by a ``--store`` URL."""
    if url == "memory" or url.startswith("memory:"):
        return MemoryStorage()
    if url.startswith("sqlite:") or url.startswith("redis"):
        raise ConfigError(f"store {url!r} is not available in this version; use 'memory'")
    raise ConfigError(f"unknown store {url!r}: expected memory, sqlite:///PATH or redis://...")
