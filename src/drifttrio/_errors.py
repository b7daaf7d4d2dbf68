"""drifttrio's exceptions.

The tree::

    DriftError                  root of everything drifttrio raises on purpose
    ├── ConfigError             a configuration value is invalid (local mistake)
    ├── ProtocolError           the peer sent something we cannot accept (remote);
    │   │                       carries the HTTP status to answer with
    │   └── PushConflict        a conditional push's key changed (HTTP 409)
    ├── RoomNotFound            the room id is unknown
    ├── CapacityError           a server-wide cap is reached (HTTP 503)
    ├── ShuttingDown            the server is shutting down: no room is loaded or joined
    └── StorageError            the storage backend failed; nothing was committed
"""

from __future__ import annotations

__all__ = [
    "CapacityError",
    "CloseCode",
    "ConfigError",
    "DriftError",
    "ProtocolError",
    "PushConflict",
    "RoomNotFound",
    "ShuttingDown",
    "StorageError",
    "unwrap_group",
]


class CloseCode:
    """WebSocket close codes drifttrio sends (documented in docs/protocol.md)."""

    NORMAL = 1000
    GOING_AWAY = 1001  # the server is shutting down
    POLICY_VIOLATION = 1008  # upgrade refused on an ASGI server without HTTP rejections
    MESSAGE_TOO_BIG = 1009  # a frame above max_message_bytes
    INTERNAL_ERROR = 1011
    TRY_AGAIN_LATER = 1013  # a shared store (Redis) became unreachable or lost events
    TOO_MANY_ERRORS = 4000  # max_consecutive_errors undecodable/invalid messages in a row
    ROOM_DELETED = 4004  # the room was deleted (Hub.delete_room) while connected
    PING_TIMEOUT = 4001  # no answer to a server ping within ping_timeout (drifttrio transport)
    SLOW_CLIENT = 4008  # the connection's outbox filled up (slow-client policy "disconnect")
    RATE_LIMITED = 4029  # 100 messages in a row refused by the connection's rate limit


class DriftError(Exception):
    """Root of every exception drifttrio raises on purpose."""


class ConfigError(DriftError):
    """A configuration value is invalid."""


class ProtocolError(DriftError):
    """The peer sent something that cannot be accepted.

    ``status`` is the HTTP status to answer with (a WebSocket gets an ``error``
    message with the same text).
    """

    def __init__(self, message: str, *, status: int = 400) -> None:
        super().__init__(message)
        self.message = message
        self.status = status


class PushConflict(ProtocolError):
    """A conditional push (``expect_seq``) was refused: the key's last retained seq
    was another, so the key changed since it was read. Nothing changed and no seq
    was used: read the key again and decide anew."""

    def __init__(self, message: str) -> None:
        super().__init__(message, status=409)


class RoomNotFound(DriftError):
    """The room id is unknown (or expired)."""


class CapacityError(DriftError):
    """A server-wide cap (such as ``max_rooms``) is reached."""


class ShuttingDown(DriftError):
    """The server is shutting down (its hub is closing): the room was not loaded,
    or the command not taken; the storage itself is fine."""


class StorageError(DriftError):
    """The storage backend failed; the operation was not committed."""


def unwrap_group(exc: BaseException) -> BaseException:
    """The one exception inside (nested) single-member exception groups, as trio's
    nurseries wrap it; a group of several is returned as it is."""
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc
