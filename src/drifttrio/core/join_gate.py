"""Who receives a push, and when: the delivery gate of one connection.

A WebSocket client opens its socket, then asks for each key it follows with a
``get`` (answered by an ``init``). If a ``push`` of key K reached it before K's
``init``, a client that tracks seqs (the npm client's ``Reducer``) would take
that push as the newest state it has confirmed and skip the older values the
``init`` then replays: its state would be truncated for good. The gate keeps a
connection's broadcasts back until it has asked for their key, so an ``init``
always comes first and no push it already covers follows it.

The gate is a pure state machine (no trio, no I/O): the room offers it each
broadcast and tells it what the connection did; it answers what to deliver.

``HOLDING`` (a new connection in the default delivery mode)
    A broadcast of a key the connection has asked for flows; any other one is
    held, in order. ``asked(K)`` (the connection's ``get K`` was answered)
    lets K flow and gives back the held pushes of K the ``init`` does not cover
    (relays: they are not retained). ``spoke()`` (its first ``ping`` or
    ``push``), ``open()`` once ``expired()`` (the hold time is over) and a held
    backlog as large as the outbox budget open the gate: everything held is
    given back in order and every broadcast flows. A client that never asks
    (the npm client after a reconnect, which pushes its presence every second)
    thus still receives everything, a little later.
``EXPLICIT`` (``?subscribe=explicit``, in-process subscriptions with keys)
    Only keys asked for flow, from their ``init`` on; nothing is held.
``OPEN``
    Every broadcast flows.
"""

from __future__ import annotations

import enum
import math
from typing import Generic, TypeVar

import attrs

__all__ = ["GateMode", "Held", "JoinGate", "Offer"]

T = TypeVar("T")


class GateMode(enum.Enum):
    """What a connection receives of the broadcasts for keys it has not asked for."""

    HOLDING = "holding"
    EXPLICIT = "explicit"
    OPEN = "open"


class Offer(enum.Enum):
    """The gate's answer to a broadcast."""

    #: Deliver it now.
    DELIVER = "deliver"
    #: The gate keeps it (it is given back by :meth:`JoinGate.asked` or on opening).
    HELD = "held"
    #: Not for this connection (an explicit connection has not asked for the key).
    SKIP = "skip"
    #: Held, it spent the budget: the gate opened; deliver what
    #: :meth:`JoinGate.open` returns (this broadcast last).
    FULL = "full"


@attrs.frozen
class Held(Generic[T]):
    """A broadcast kept back by the gate."""

    key: str
    item: T
    seq: int
    #: Whether the broadcast changed the retained stream (an ``init`` of the
    #: key then covers it); relays do not.
    retained: bool
    size: int


class JoinGate(Generic[T]):
    """The delivery gate of one connection; see the module docstring.

    ``opens_at`` is when a ``HOLDING`` gate opens by itself; ``max_items`` and
    ``max_bytes`` bound what it holds together with what ``queued`` says is
    already in the connection's outbox (one budget for both).
    """

    __slots__ = ("_held", "_held_bytes", "asked_keys", "max_bytes", "max_items", "mode", "opens_at")

    def __init__(
        self,
        mode: GateMode,
        *,
        opens_at: float = math.inf,
        max_items: int = 1024,
        max_bytes: int = 8 * 1024 * 1024,
    ) -> None:
        self.mode = mode
        self.opens_at = opens_at
        self.max_items = max_items
        self.max_bytes = max_bytes
        #: Keys whose ``get`` has been answered: they flow.
        self.asked_keys: set[str] = set()
        self._held: list[Held[T]] = []
        self._held_bytes = 0

    @property
    def held(self) -> int:
        """How many broadcasts are held."""
        return len(self._held)

    @property
    def held_bytes(self) -> int:
        return self._held_bytes

    def lets_through(self, key: str) -> bool:
        """Whether a broadcast of ``key`` goes straight to the connection now (what
        :meth:`offer` answers with ``DELIVER``, without offering it)."""
        return self.mode is GateMode.OPEN or key in self.asked_keys

    def offer(
        self,
        key: str,
        item: T,
        seq: int,
        *,
        retained: bool,
        size: int,
        queued: tuple[int, int] = (0, 0),
    ) -> Offer:
        """A broadcast for this connection; ``queued`` is the outbox's (frames, bytes)."""
        if self.mode is GateMode.OPEN or key in self.asked_keys:
            return Offer.DELIVER
        if self.mode is GateMode.EXPLICIT:
            return Offer.SKIP
        self._held.append(Held(key, item, seq, retained, size))
        self._held_bytes += size
        frames, queued_bytes = queued
        if frames + len(self._held) >= self.max_items or (
            queued_bytes + self._held_bytes >= self.max_bytes
        ):
            # Once in the outbox, the held frames just fill it (by count).
            self.mode = GateMode.OPEN
            return Offer.FULL
        return Offer.HELD

    def asked(self, key: str, *, init_sent: bool = True) -> list[Held[T]]:
        """The connection's ``get`` for ``key`` was answered (with an ``init`` when
        ``init_sent``): ``key`` flows from now on. Returns the held broadcasts of
        ``key`` to deliver now, in order: those the ``init`` does not cover (all of
        them when no ``init`` was sent). The rest of ``key``'s held ones are dropped.
        """
        if self.mode is GateMode.OPEN:
            return []
        self.asked_keys.add(key)
        if not self._held:
            return []
        mine = [h for h in self._held if h.key == key]
        if not mine:
            return []
        self._held = [h for h in self._held if h.key != key]
        self._held_bytes -= sum(h.size for h in mine)
        return mine if not init_sent else [h for h in mine if not h.retained]

    def spoke(self) -> list[Held[T]]:
        """The connection sent a ``ping`` or a ``push``: a ``HOLDING`` gate opens (see
        :meth:`open`). A client sends its ``get``s first, right after opening."""
        return self.open() if self.mode is GateMode.HOLDING else []

    def expired(self, now: float) -> bool:
        """Whether a ``HOLDING`` gate's time is over at ``now``."""
        return self.mode is GateMode.HOLDING and now >= self.opens_at

    def open(self) -> list[Held[T]]:
        """Every broadcast flows from now on; returns everything held, in order."""
        if self.mode is GateMode.EXPLICIT:
            return []
        self.mode = GateMode.OPEN
        held, self._held, self._held_bytes = self._held, [], 0
        return held
