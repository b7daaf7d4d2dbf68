"""Why a room refuses a push, and the one text each refusal is answered with.

The push rules run in two places: :class:`~drifttrio.core.RoomState` for a room this
node orders, and the Redis push script (:mod:`drifttrio.storage._redis_scripts`) for
a room a Redis store orders. Both name the cause with a :class:`PushRefusal` (the
script returns its value, such as ``'keys'``, and the numbers that go in the text),
and :class:`PushRefused` renders the text from the one table here, so a client reads
the same ``error`` whichever store holds the room.
``tests/test_push_rules_differential.py`` feeds both the same pushes and checks that
they agree.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from typing import Final

from .._errors import ProtocolError

__all__ = ["PushRefusal", "PushRefused", "refusal_text"]


class PushRefusal(enum.Enum):
    """Why a push was refused. The value is the name the Redis push script returns."""

    #: It would create a stream beyond ``max_keys_per_room``. Numbers: the cap.
    KEYS = "keys"
    #: An ``append`` to a stream holding ``max_stream_values``. Numbers: the cap.
    VALUES = "values"
    #: It would grow the room past ``max_room_bytes``. Numbers: the cap.
    BYTES = "bytes"
    #: A ``compact`` with a seq below 1. Numbers: that seq.
    COMPACT_LOW = "compact_low"
    #: A ``compact`` with a seq beyond the room's. Numbers: that seq, the room's seq.
    COMPACT_HIGH = "compact_high"
    #: It would grow the rooms in memory past ``max_retained_bytes``. Numbers: that
    #: limit. Never from the Redis script: the budget is each node's memory, so the
    #: node checks it before sending the push.
    BUDGET = "budget"
    #: A conditional push (``expect_seq``) whose key's last retained seq is another:
    #: the key changed since the pusher read it. Checked before any other rule.
    #: Numbers: the key's last retained seq (0: it retains nothing), the expected one.
    CONFLICT = "conflict"


#: The text of each refusal: ``{0}``, ``{1}`` are its numbers, ``{key}`` the pushed key.
_TEXTS: Final[Mapping[PushRefusal, str]] = {
    PushRefusal.KEYS: "room has reached its limit of {0} keys",
    PushRefusal.VALUES: (
        "stream {key!r} has reached its limit of {0} retained values: compact or replace it"
    ),
    PushRefusal.BYTES: "room has reached its limit of {0} retained bytes",
    PushRefusal.COMPACT_LOW: "compact seq must be at least 1, got {0}",
    PushRefusal.COMPACT_HIGH: "compact seq {0} is beyond the room's current seq {1}",
    PushRefusal.BUDGET: (
        "server memory budget reached: live rooms retain the server's limit of {0} bytes;"
        " pushes that do not grow a room still pass, try again later"
    ),
    PushRefusal.CONFLICT: "conflict: key {key!r} changed (last seq {0}, expected {1})",
}

#: The HTTP status of a refusal other than ``400``: a full server budget is worth a
#: retry later; a conflict, a fresh read of the key and a new decision.
_STATUS: Final[Mapping[PushRefusal, int]] = {PushRefusal.BUDGET: 503, PushRefusal.CONFLICT: 409}


def refusal_text(reason: PushRefusal, key: str, numbers: tuple[int, ...]) -> str:
    """The message a client gets for a push to ``key`` refused for ``reason``."""
    return _TEXTS[reason].format(*numbers, key=key)


class PushRefused(ProtocolError):
    """A push the room refused: nothing changed and no seq was consumed.

    Carries its :class:`PushRefusal` so no one has to read the cause back out of the
    text. A full server budget is answered ``503`` (retry later), a conflict ``409``,
    any other refusal ``400``.
    """

    def __init__(self, reason: PushRefusal, key: str, *numbers: int) -> None:
        status = _STATUS.get(reason, 400)
        super().__init__(refusal_text(reason, key, numbers), status=status)
        self.reason = reason
        self.key = key
        self.numbers = numbers
