"""What applying a room's commands produces: the effects a room delivers, in order,
once the batch is ordered (committed locally, or assigned seqs by a shared store)."""

from __future__ import annotations

from typing import TypeAlias

import attrs

from ..protocol.messages import SeqValue, ServerMessage
from .commands import Origin, Reply
from .member import InitStream, Member

__all__ = ["Broadcast", "Direct", "Done", "Effect", "InitReply", "Release"]

#: A reply to one origin.
Direct: TypeAlias = tuple[Origin, ServerMessage]


# One per push, delivered once and dropped: not frozen (see ``PushOutcome``).
@attrs.define
class Broadcast:
    """A push for the room's members."""

    key: str
    entry: SeqValue
    #: Whether members other than debug ones get it (not a compact that
    #: ``broadcast_compact`` keeps quiet).
    public: bool = True
    #: The stream's new length after a change, sent to debug members as a
    #: ``stream_size`` right after the push; ``None`` for a relay.
    debug_size: int | None = None
    #: Whether the push changed a retained stream (an ``init`` of the key covers
    #: it), rather than a relay (which a member's join gate sends after the init).
    retained: bool = False


@attrs.frozen
class InitReply:
    """An ``init`` for one member, snapshotted when its ``get`` was applied."""

    conn: Member
    init: InitStream


@attrs.frozen
class Done:
    """An outside caller's command is answered: wake it."""

    origin: Reply


@attrs.frozen(eq=False)
class Release:
    """A member's ``get`` of ``key`` was answered (``key=None``: it pinged or pushed):
    its gate lets the key (or everything) flow. Delivered in order with the other
    effects, so no push of the batch overtakes the ``init``."""

    conn: Member
    key: str | None
    init_sent: bool = True


Effect: TypeAlias = Direct | Broadcast | InitReply | Done | Release
