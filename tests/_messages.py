"""Reading a drifttrio client's messages in tests."""

from __future__ import annotations

from typing import Any

import trio

__all__ = ["next_of"]


async def next_of(client: Any, kind: str) -> dict[str, Any]:
    """The next message of type ``kind`` a client (``drifttrio.testing.DriftClient``)
    receives, skipping the others (within a minute: a guard against hangs)."""
    with trio.fail_after(60):
        while True:
            message: dict[str, Any] = await client.receive()
            if message["type"] == kind:
                return message
