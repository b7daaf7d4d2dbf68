"""What a room's inbox carries: commands from members and outside callers, and
notices from a shared store's event feed.

Everything that reads or changes a room arrives as one of these, through the
room's bounded inbox, and is handled by the room task in order.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, TypeAlias

import attrs
import trio

from ..protocol.messages import Action, Error, ServerMessage, Value
from .connection import Connection

if TYPE_CHECKING:
    from ..storage.redis import Event

__all__ = [
    "Command",
    "FeedEvents",
    "FeedLost",
    "GetCommand",
    "Join",
    "Leave",
    "Ordered",
    "Origin",
    "PingCommand",
    "PushCommand",
    "Reply",
    "Request",
]


class Reply:
    """The direct answer to a command from outside the room (HTTP, in-process)."""

    def __init__(self) -> None:
        self.message: ServerMessage | None = None
        #: The HTTP status for an ``Error`` reply: 400 (refused) or 503 (storage failed).
        self.status = 200
        self.done = trio.Event()

    def send_message(self, message: ServerMessage) -> None:
        self.message = message
        if isinstance(message, Error) and self.status == 200:
            self.status = 400

    def fail(self, message: str, status: int = 503) -> None:
        """Answer with an error (if not answered yet) and wake the waiter."""
        if not self.done.is_set():
            self.message = Error(message)
            self.status = status
            self.done.set()


Origin: TypeAlias = Connection | Reply


@attrs.frozen(eq=False)
class Join:
    conn: Connection


@attrs.frozen(eq=False)
class Leave:
    conn: Connection


@attrs.frozen(eq=False)
class PushCommand:
    key: str
    value: Value
    action: Action
    origin: Origin


@attrs.frozen(eq=False)
class GetCommand:
    key: str
    since: int | None
    origin: Origin


@attrs.frozen(eq=False)
class PingCommand:
    nonce: int | None
    origin: Origin


@attrs.frozen(eq=False)
class FeedEvents:
    """Events a shared store published for the room (in order, maybe with a gap)."""

    events: list[Event]


@attrs.frozen(eq=False)
class FeedLost:
    """The shared store's event feed broke: the room cannot stay in order."""


#: A command a room answers from its state (membership and feed notices aside).
Request: TypeAlias = PushCommand | GetCommand | PingCommand

#: What a room hands its orderer: everything but membership changes.
Ordered: TypeAlias = Request | FeedEvents | FeedLost

Command: TypeAlias = Join | Leave | Ordered
