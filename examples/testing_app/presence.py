"""Who is online: a small presence service built on drifttrio.

Browsers announce themselves about once a second by relaying
``{"client": ID, "value": ...}`` on the key ``__presence`` (what the npm
client's ``usePresence`` does). This service runs next to the server, in the
same trio program, and keeps the room's ``online`` key up to date: a
``replace`` with everyone heard from in the last ``timeout`` seconds. Because
``online`` is retained, a client that joins late gets the list from its ``get``.

Its tests, in ``test_app.py``, run it against a real drifttrio with
``drifttrio.testing``.
"""

from __future__ import annotations

import logging
from typing import Any

import trio

from drifttrio import Hub, StorageError
from drifttrio.protocol import PushEvent, Replace

PRESENCE_KEY = "__presence"
ONLINE_KEY = "online"

log = logging.getLogger("presence")


class PresenceTracker:
    """Tracks who is present in one room and publishes it on ``online``."""

    def __init__(
        self, hub: Hub, room: str, *, timeout: float = 5.0, sweep_every: float = 1.0
    ) -> None:
        self.hub = hub
        self.room = room
        self.timeout = timeout
        self.sweep_every = sweep_every
        self.last_seen: dict[str, float] = {}
        self.values: dict[str, Any] = {}
        #: The list last published (the room starts with nobody online).
        self.published: list[dict[str, Any]] | None = []

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Track the room until cancelled (start it with ``nursery.start``)."""
        async with self.hub.subscribe(self.room, [PRESENCE_KEY]) as events:
            task_status.started()
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._sweep)
                async for event in events:
                    if isinstance(event, PushEvent) and isinstance(event.value, dict):
                        await self._heard(event.value)

    async def _heard(self, announcement: dict[str, Any]) -> None:
        client = announcement.get("client")
        if not isinstance(client, str):
            return
        self.last_seen[client] = trio.current_time()
        self.values[client] = announcement.get("value")
        await self._publish()

    async def _sweep(self) -> None:
        while True:
            await trio.sleep(self.sweep_every)
            now = trio.current_time()
            for client, seen in list(self.last_seen.items()):
                if now - seen > self.timeout:
                    del self.last_seen[client], self.values[client]
            await self._publish()

    async def _publish(self) -> None:
        online = [{"client": c, "value": self.values[c]} for c in sorted(self.last_seen)]
        if online == self.published:
            return
        try:
            await self.hub.push(self.room, ONLINE_KEY, online, Replace())
        except StorageError as exc:
            log.warning("could not publish presence, retrying at the next sweep: %s", exc)
            self.published = None
        else:
            self.published = online
