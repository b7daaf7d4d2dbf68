"""pytest fixtures for testing an application against a real drifttrio.

Opt in with ``pytest -p drifttrio.testing.pytest_plugin`` or, in the root
``conftest.py``, ``pytest_plugins = ["drifttrio.testing.pytest_plugin"]``.
Installing drifttrio also registers this module as a pytest plugin under the
same name; it only defines fixtures (no hooks), so nothing happens unless a test
asks for one, and ``-p no:drifttrio.testing.pytest_plugin`` turns it off.

The async fixtures need pytest-trio (``trio_mode = true``, or ``@pytest.mark.trio``)
and a mock clock: request ``autojump_clock`` (or ``mock_clock``) in the test.

Fixtures:

``drift_config``
    the :class:`~drifttrio.Config` of the server (override it to change limits);
``drift_store``
    ``"memory"`` (override, or parametrize, with ``"sqlite"``);
``drift_transport``
    ``"drifttrio"`` (or ``"hypercorn"``);
``drift_server``
    a running :class:`~drifttrio.testing.DriftTestServer`;
``drift_room``
    a new room's id (created with ``POST /new``);
``drift_client``
    a :class:`~drifttrio.testing.DriftClient` connected to ``drift_room``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from drifttrio.runtime.config import Config

    from ._client import DriftClient
    from ._server import DriftTestServer, TransportName
    from ._storage import StoreName

__all__ = [
    "drift_client",
    "drift_config",
    "drift_room",
    "drift_server",
    "drift_store",
    "drift_transport",
]

# Imports of drifttrio, trio and the transports are inside the fixtures: this
# module is loaded by every pytest run in an environment where drifttrio is
# installed, and must cost nothing there.


@pytest.fixture
def drift_config() -> Config:
    """The server's configuration (defaults). Override this fixture to change it."""
    from drifttrio.runtime.config import Config

    return Config()


@pytest.fixture
def drift_store() -> StoreName:
    """The storage backend: ``memory`` (or ``sqlite``, in ``tmp_path``)."""
    return "memory"


@pytest.fixture
def drift_transport() -> TransportName:
    """The connection handler: ``drifttrio`` (as ``drifttrio serve``) or ``hypercorn``."""
    return "drifttrio"


@pytest.fixture
async def drift_server(
    drift_config: Config,
    drift_store: StoreName,
    drift_transport: TransportName,
    tmp_path: Path,
) -> AsyncIterator[DriftTestServer]:
    """A drifttrio server running in the test, reached over in-memory connections."""
    import trio
    import trio.testing

    from ._server import open_test_server

    if not isinstance(trio.lowlevel.current_clock(), trio.testing.MockClock):
        pytest.fail(
            "drift_server runs on trio's mock clock: add `autojump_clock` (or `mock_clock`) "
            "to the test function's arguments"
        )
    async with open_test_server(
        drift_config, store=drift_store, transport=drift_transport, tmp_path=tmp_path
    ) as server:
        yield server


@pytest.fixture
async def drift_room(drift_server: DriftTestServer) -> str:
    """A new room on ``drift_server``."""
    return await drift_server.new_room()


@pytest.fixture
async def drift_client(
    drift_server: DriftTestServer, drift_room: str
) -> AsyncIterator[DriftClient]:
    """A WebSocket client in ``drift_room`` (JSON frames); closed after the test."""
    async with await drift_server.connect(drift_room) as client:
        yield client
