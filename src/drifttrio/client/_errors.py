"""The client's exceptions.

The tree (all under :class:`drifttrio.DriftError`)::

    ClientError             root of what the client raises
    ├── ConnectFailed       the first connection could not be opened (remote)
    ├── ConnectionClosed    the connection is closed: you closed it, or it gave up
    ├── QueueFull           too many pushes queued while disconnected (local)
    ├── UnsentPushes        the connection closed with pushes still queued
    └── HttpError           an HTTP request answered with a non-2xx status (remote)
"""

from __future__ import annotations

from typing import Any

from .._errors import DriftError

__all__ = [
    "ClientError",
    "ConnectFailed",
    "ConnectionClosed",
    "HttpError",
    "QueueFull",
    "UnsentPushes",
]


class ClientError(DriftError):
    """Root of every exception the client raises on purpose."""


class ConnectFailed(ClientError):
    """The connection could not be opened; ``status`` is the HTTP status of a refused upgrade."""

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class ConnectionClosed(ClientError):
    """The connection is closed (by you, or because reconnecting was given up)."""


class QueueFull(ClientError):
    """A push was refused: ``max_queued`` pushes already wait for the connection."""


class UnsentPushes(ClientError):
    """The connection closed while pushes were still queued; ``pushes`` lists them."""

    def __init__(self, pushes: list[dict[str, Any]]) -> None:
        super().__init__(f"{len(pushes)} queued push(es) were never sent")
        self.pushes = pushes


class HttpError(ClientError):
    """A non-2xx answer; ``status`` and the decoded ``body`` (or the raw text)."""

    def __init__(self, status: int, body: Any) -> None:
        super().__init__(f"HTTP {status}: {body!r}")
        self.status = status
        self.body = body
