"""The composition root: how a server is put together, in one place.

:func:`~drifttrio.serve` (and ``drifttrio serve``) and
:func:`~drifttrio.testing.open_test_server` both check their transport and
build their hub and app here, so the tests run the production wiring; only the
connections differ (sockets, or in-memory streams). ``drifttrio.asgi``'s app,
under an ASGI server, runs the same hub (:func:`~drifttrio.runtime.hub.open_hub`)
from its lifespan.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Literal, TypeAlias

from ._errors import ConfigError
from .hooks import Hooks
from .runtime.config import Config
from .runtime.hub import Hub, open_hub
from .storage import Storage
from .web.app import DriftApp

__all__ = ["TRANSPORTS", "TransportName", "checked_transport", "open_app"]

#: The connection handler a server runs: ``drifttrio``, its own h11/wsproto
#: transport (frames built once, writes coalesced, deadlines), or ``hypercorn``,
#: hypercorn's trio worker. (Not the ``transport`` label of the connection
#: metrics, which says what a member came through.)
TransportName: TypeAlias = Literal["drifttrio", "hypercorn"]
TRANSPORTS: tuple[TransportName, ...] = ("drifttrio", "hypercorn")


def checked_transport(transport: str) -> TransportName:
    """``transport`` if it is one of :data:`TRANSPORTS`, else :class:`ConfigError`."""
    if transport not in TRANSPORTS:
        raise ConfigError(f"transport must be one of {TRANSPORTS}, got {transport!r}")
    return transport


@asynccontextmanager
async def open_app(
    config: Config, storage: Storage | None = None, hooks: Hooks | None = None
) -> AsyncIterator[tuple[Hub, DriftApp]]:
    """A running hub (on ``storage``, else the store ``config`` names: a store that
    cannot be opened fails here) and the app serving it, for the block; on exit the
    hub's rooms are cancelled (close them first for a graceful end)."""
    async with open_hub(config, storage, hooks=hooks) as hub:
        yield hub, DriftApp(config, hub=hub)
