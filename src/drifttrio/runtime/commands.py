"""What a room's inbox carries: commands from members and outside callers, and
notices from a shared store's event feed.

Everything that reads or changes a room arrives as one of these, through the
room's bounded inbox, and is handled by the room task in order.
"""

from __future__ import annotations

import enum
from typing import TYPE_CHECKING, Final, Literal, TypeAlias

import attrs
import trio

from .._errors import ProtocolError
from ..core.refusals import PushRefusal, PushRefused
from ..protocol.messages import Action, Error, ServerMessage, Value
from .member import Member

if TYPE_CHECKING:
    from ..storage.redis import Event

__all__ = [
    "GATES_DUE",
    "Command",
    "FeedEvents",
    "FeedLost",
    "GatesDue",
    "GetCommand",
    "Join",
    "Leave",
    "Ordered",
    "Origin",
    "Outcome",
    "PingCommand",
    "PushCommand",
    "Reply",
    "Request",
]


class Outcome(enum.Enum):
    """How a command from outside the room ended (web/ answers each with its
    HTTP status, :meth:`~drifttrio.Hub.push` with its exception)."""

    #: Answered (a push applied, a ``get``'s values).
    DONE = "done"
    #: Refused by a room rule (an ``error``): nothing changed.
    REFUSED = "refused"
    #: A conditional push refused because its key changed: nothing changed.
    CONFLICT = "conflict"
    #: Not applied for now: the store failed, or the server's memory budget is spent.
    TRY_LATER = "try_later"
    #: The room was deleted meanwhile.
    ROOM_GONE = "room_gone"


class Reply:
    """The direct answer to a command from outside the room (HTTP, in-process)."""

    def __init__(self, source: Literal["http", "in_process"] = "in_process") -> None:
        self.message: ServerMessage | None = None
        #: How it ended (any ``Error`` reply is not :attr:`Outcome.DONE`).
        self.outcome = Outcome.DONE
        #: Why a room rule or the room logic refused it (raised by the in-process API).
        self.refusal: ProtocolError | None = None
        #: Who asked: an HTTP request or the in-process API (hooks are told).
        self.source = source
        self.done = trio.Event()

    def send_message(self, message: ServerMessage) -> None:
        self.message = message
        if isinstance(message, Error) and self.outcome is Outcome.DONE:
            self.outcome = Outcome.REFUSED

    def refused(self, exc: ProtocolError) -> None:
        """The room refused the command with ``exc`` (answered next, as an ``error``)."""
        reason = exc.reason if isinstance(exc, PushRefused) else None
        self.outcome = _REFUSAL_OUTCOMES.get(reason, Outcome.REFUSED)
        self.refusal = exc

    @property
    def refused_status(self) -> int:
        """The HTTP status of a :attr:`Outcome.REFUSED` answer: the refusal's own (a
        room rule's 400, the application's room logic's choice), else 400."""
        return 400 if self.refusal is None else self.refusal.status

    def fail(self, message: str, outcome: Outcome = Outcome.TRY_LATER) -> None:
        """Answer with an error (if not answered yet) and wake the waiter."""
        if not self.done.is_set():
            self.message = Error(message)
            self.outcome = outcome
            self.done.set()


#: The refusals that end a command otherwise than :attr:`Outcome.REFUSED`.
_REFUSAL_OUTCOMES: Final[dict[PushRefusal | None, Outcome]] = {
    PushRefusal.BUDGET: Outcome.TRY_LATER,
    PushRefusal.CONFLICT: Outcome.CONFLICT,
}

Origin: TypeAlias = Member | Reply


@attrs.frozen(eq=False)
class Join:
    conn: Member


@attrs.frozen(eq=False)
class Leave:
    conn: Member


# The commands made for every client message are not frozen: a frozen attrs
# class costs twice as much to build (one ``object.__setattr__`` per field), and
# nothing changes a command once made (a hook's replaced value is a new one).
@attrs.define(eq=False)
class PushCommand:
    key: str
    value: Value
    action: Action
    origin: Origin
    #: Who pushed it, as the authorize hook admitted them (see ``drifttrio.hooks``).
    identity: object = None
    #: Apply only if the key's last retained seq is this one (0: the key holds
    #: nothing); otherwise refuse it as a conflict. ``None``: unconditional.
    expect_seq: int | None = None


@attrs.define(eq=False)
class GetCommand:
    key: str
    since: int | None
    origin: Origin


@attrs.define(eq=False)
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


@attrs.frozen(eq=False)
class GatesDue:
    """A nudge from the room's own timer: the first held join gate's time is up.
    Never ordered: the room opens the expired gates and goes on waiting."""


#: The one instance a room's timer sends.
GATES_DUE: Final = GatesDue()


#: A command a room answers from its state (membership and feed notices aside).
Request: TypeAlias = PushCommand | GetCommand | PingCommand

#: What a room hands its orderer: everything but membership changes.
Ordered: TypeAlias = Request | FeedEvents | FeedLost

Command: TypeAlias = Join | Leave | Ordered
