"""Storage capabilities are declared (storage/base.py) and checked with isinstance:
each backend offers exactly the ones the hub relies on."""

from __future__ import annotations

import pytest

from drifttrio.storage import MemoryStorage, SqliteStorage
from drifttrio.storage.base import ExclusiveStorage, ServedStorage, SharedStorage


def test_local_backends_are_neither_shared_nor_served() -> None:
    storage = SqliteStorage(":memory:")
    for local in (MemoryStorage(), storage):
        assert not isinstance(local, SharedStorage)
        assert not isinstance(local, ServedStorage)
    assert isinstance(storage, ExclusiveStorage)


def test_redis_is_shared_and_served() -> None:
    pytest.importorskip("coredis")
    from drifttrio.storage.redis import RedisStorage

    storage = RedisStorage("redis://127.0.0.1:6379/0")  # no connection until run
    assert isinstance(storage, SharedStorage)
    assert isinstance(storage, ServedStorage)
