"""Running the server: embedded in a trio program, or from the command line.

    async with open_server(Config(store="memory")) as server:
        print(server.url)          # http://127.0.0.1:PORT

or, with ``task_status``::

    server = await nursery.start(serve, config)
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from functools import partial
from typing import Any, cast
from urllib.parse import urlsplit

import attrs
import hypercorn.trio
import trio
from hypercorn.config import Config as HypercornConfig

from .runtime.config import Config
from .runtime.hub import Hub
from .web.app import DriftApp

__all__ = ["RunningServer", "hypercorn_config", "open_server", "serve"]

log = logging.getLogger("drifttrio")


@attrs.frozen
class RunningServer:
    """A server that is listening. ``url`` is its HTTP base URL."""

    url: str
    host: str
    port: int
    hub: Hub

    @property
    def ws_url(self) -> str:
        return "ws" + self.url[len("http") :]


def hypercorn_config(config: Config, host: str, port: int) -> HypercornConfig:
    """The hypercorn settings drifttrio runs with."""
    hc = HypercornConfig()
    hc.bind = [f"[{host}]:{port}" if ":" in host else f"{host}:{port}"]
    hc.websocket_max_message_size = config.max_message_bytes
    hc.graceful_timeout = config.write_timeout
    hc.accesslog = None
    hc.errorlog = logging.getLogger("hypercorn.error")
    return hc


async def serve(
    config: Config | None = None,
    *,
    host: str = "127.0.0.1",
    port: int = 8080,
    shutdown_trigger: Callable[[], Awaitable[None]] | None = None,
    task_status: trio.TaskStatus[RunningServer] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve until ``shutdown_trigger`` returns (or until cancelled).

    On shutdown every member is closed with 1001 before the listener stops.
    ``task_status`` reports a :class:`RunningServer` once the socket is bound.
    """
    config = config or Config()
    hub = Hub(config)  # opens the store: a bad --store fails here, plainly
    async with trio.open_nursery() as nursery:
        await nursery.start(hub.run)

        async def trigger() -> None:
            if shutdown_trigger is None:
                await trio.sleep_forever()
            else:
                await shutdown_trigger()
            log.info("shutting down: closing %d live room(s)", len(hub.rooms))
            hub.close_all()
            # Members get write_timeout to see their close frame; then everything stops.
            nursery.cancel_scope.deadline = trio.current_time() + config.write_timeout

        try:
            async with trio.open_nursery() as web:
                binds: list[str] = await web.start(
                    partial(
                        hypercorn.trio.serve,
                        cast(Any, DriftApp(config, hub=hub)),
                        hypercorn_config(config, host, port),
                        shutdown_trigger=trigger,
                    )
                )
                bound = urlsplit(binds[0])
                server = RunningServer(binds[0], bound.hostname or host, bound.port or port, hub)
                log.info("drifttrio listening on %s (store: %s)", server.url, config.store)
                task_status.started(server)
        finally:
            nursery.cancel_scope.cancel()  # hypercorn has finished: stop the rooms


@asynccontextmanager
async def open_server(
    config: Config | None = None, *, host: str = "127.0.0.1", port: int = 0
) -> AsyncIterator[RunningServer]:
    """Run a server for the duration of the block; port 0 picks a free port."""
    stop = trio.Event()
    async with trio.open_nursery() as nursery:
        server: RunningServer = await nursery.start(
            partial(serve, config, host=host, port=port, shutdown_trigger=stop.wait)
        )
        try:
            yield server
        finally:
            stop.set()
