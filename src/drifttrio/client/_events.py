"""What happens to a connection, as events (frozen classes), and a bounded log of them."""

from __future__ import annotations

from collections import deque
from typing import Any, NamedTuple

import attrs
import trio

__all__ = [
    "Connected",
    "ConnectionEvent",
    "Disconnected",
    "Gap",
    "GaveUp",
    "Reconnecting",
    "ServerError",
    "Update",
]


class Update(NamedTuple):
    """One message of a subscribed key: ``seq, value = update``."""

    seq: int
    value: Any


@attrs.frozen
class Gap:
    """Relays on ``key`` sent while the connection was down are lost (by design).

    Retained values after ``after_seq`` were replayed; anything relayed (or
    replaced and replaced again) between ``since`` and ``until`` (trio time)
    may never have reached this client.
    """

    key: str
    after_seq: int
    since: float
    until: float


@attrs.frozen
class Connected:
    """The socket is open. ``gaps`` is empty on the first connection; after a
    reconnect it has one :class:`Gap` per subscribed key."""

    at: float
    reconnect: bool
    gaps: tuple[Gap, ...] = ()


@attrs.frozen
class Disconnected:
    """The socket was lost; ``code`` is the close code, if there was one."""

    at: float
    reason: str
    code: int | None = None


@attrs.frozen
class Reconnecting:
    """Attempt ``attempt`` (1-based) will start after ``delay`` seconds."""

    at: float
    attempt: int
    delay: float


@attrs.frozen
class GaveUp:
    """The connection stopped reconnecting (``max_attempts``, or the room is gone)."""

    at: float
    reason: str


@attrs.frozen
class ServerError:
    """An ``error`` message from the server (or a frame the client could not decode)."""

    at: float
    message: str


ConnectionEvent = Connected | Disconnected | Reconnecting | GaveUp | ServerError


class EventLog:
    """The last ``size`` events; readers that fall behind skip what was trimmed
    (``skipped`` counts it), so the connection never waits for a reader."""

    def __init__(self, size: int) -> None:
        self._events: deque[ConnectionEvent] = deque(maxlen=size)
        self._first = 0  # index of _events[0] since the start
        self._lot = trio.lowlevel.ParkingLot()
        self._closed = False
        self.skipped = 0

    def add(self, event: ConnectionEvent) -> None:
        if len(self._events) == self._events.maxlen:
            self._first += 1
        self._events.append(event)
        self._lot.unpark_all()

    def close(self) -> None:
        self._closed = True
        self._lot.unpark_all()

    @property
    def history(self) -> list[ConnectionEvent]:
        return list(self._events)

    def follow(self, *, history: bool = False) -> EventCursor:
        return EventCursor(self, self._first if history else self._first + len(self._events))


class EventCursor:
    """An async iterator over an :class:`EventLog` (a class, not a generator, so
    breaking out of ``async for`` needs no clean-up)."""

    def __init__(self, log: EventLog, position: int) -> None:
        self._log = log
        self._position = position

    def __aiter__(self) -> EventCursor:
        return self

    async def __anext__(self) -> ConnectionEvent:
        log = self._log
        while True:
            if self._position < log._first:
                log.skipped += log._first - self._position
                self._position = log._first
            if self._position < log._first + len(log._events):
                event = log._events[self._position - log._first]
                self._position += 1
                return event
            if log._closed:
                raise StopAsyncIteration
            await log._lot.park()
