"""Abuse limits at the edge: token buckets and connection counters.

All timing follows ``trio.current_time()``, so the limits behave the same under
trio's mock clock as in production.
"""

from __future__ import annotations

import enum
from collections import OrderedDict
from collections.abc import Callable

import trio

__all__ = [
    "ClientBudgets",
    "ConnectionCounter",
    "ConnectionLimit",
    "KeyedRateLimiter",
    "TokenBucket",
]


class TokenBucket:
    """``burst`` tokens, refilled at ``rate`` per second; ``rate <= 0`` never limits."""

    __slots__ = ("_clock", "_stamp", "burst", "rate", "tokens")

    def __init__(
        self, rate: float, burst: float, clock: Callable[[], float] = trio.current_time
    ) -> None:
        self.rate = rate
        self.burst = max(burst, 1.0)
        self.tokens = self.burst
        self._clock = clock
        self._stamp = clock()

    def take(self) -> bool:
        """Take one token if there is one."""
        if self.rate <= 0:
            return True
        if self._refill() >= 1.0:
            self.tokens -= 1.0
            return True
        return False

    def debit(self) -> float:
        """Take one token whatever the balance (the message was received: its cost is
        incurred): the seconds until the bucket is out of debt (0.0: it is not)."""
        if self.rate <= 0:
            return 0.0
        self.tokens = tokens = self._refill() - 1.0
        return -tokens / self.rate if tokens < 0.0 else 0.0

    def _refill(self) -> float:
        """Add what the rate gave since the last call (up to ``burst``): the tokens."""
        now = self._clock()
        self.tokens = min(self.burst, self.tokens + (now - self._stamp) * self.rate)
        self._stamp = now
        return self.tokens


class KeyedRateLimiter:
    """One token bucket per key (a client address), for at most ``max_keys`` keys.

    The least recently used keys are forgotten first, so memory stays bounded
    whatever the number of addresses.
    """

    def __init__(self, rate: float, burst: float, max_keys: int = 100_000) -> None:
        self.rate = rate
        self.burst = burst
        self.max_keys = max_keys
        self._buckets: OrderedDict[str, TokenBucket] = OrderedDict()

    def take(self, key: str) -> bool:
        if self.rate <= 0:
            return True
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._buckets[key] = TokenBucket(self.rate, self.burst)
            while len(self._buckets) > self.max_keys:
                self._buckets.popitem(last=False)
        else:
            self._buckets.move_to_end(key)
        return bucket.take()


class _Budget:
    """The three buckets of one client address (see :class:`ClientBudgets`)."""

    __slots__ = ("bytes", "messages", "stamp", "work")

    def __init__(self, messages: float, nbytes: float, work: float, now: float) -> None:
        self.messages = messages
        self.bytes = nbytes
        self.work = work
        self.stamp = now


class ClientBudgets:
    """What one client address may spend, across all its connections (WebSocket
    messages and control frames, HTTP requests): messages, bytes and decode work
    (value nodes), each a token bucket of ``(rate, burst)``; a rate of 0 never limits.

    A charge larger than a burst passes only when that bucket is full, and leaves
    it in debt: one big message is allowed, a stream of them is paced. At most
    ``max_addresses`` addresses are tracked (least recently used forgotten first).
    """

    def __init__(
        self,
        *,
        messages: tuple[float, float] = (0.0, 1.0),
        nbytes: tuple[float, float] = (0.0, 1.0),
        work: tuple[float, float] = (0.0, 1.0),
        max_addresses: int = 100_000,
        clock: Callable[[], float] = trio.current_time,
    ) -> None:
        self.messages = messages
        self.nbytes = nbytes
        self.work = work
        self.max_addresses = max_addresses
        self._clock = clock
        self._budgets: OrderedDict[str, _Budget] = OrderedDict()

    def _budget(self, ip: str) -> _Budget:
        """``ip``'s buckets, refilled up to now (new ones start full)."""
        now = self._clock()
        budget = self._budgets.get(ip)
        if budget is None:
            budget = self._budgets[ip] = _Budget(
                self.messages[1], self.nbytes[1], self.work[1], now
            )
            while len(self._budgets) > self.max_addresses:
                self._budgets.popitem(last=False)
            return budget
        self._budgets.move_to_end(ip)
        elapsed = now - budget.stamp
        budget.stamp = now
        (m_rate, m_burst), (b_rate, b_burst), (w_rate, w_burst) = (
            self.messages,
            self.nbytes,
            self.work,
        )
        budget.messages = min(m_burst, budget.messages + elapsed * m_rate)
        budget.bytes = min(b_burst, budget.bytes + elapsed * b_rate)
        budget.work = min(w_burst, budget.work + elapsed * w_rate)
        return budget

    def charge(self, ip: str, *, messages: int = 1, nbytes: int = 0, work: int = 0) -> float:
        """Charge ``ip`` if its budget allows: ``0.0`` if charged, else the seconds
        until it would be (nothing is charged then; a ``Retry-After``)."""
        (m_rate, m_burst), (b_rate, b_burst), (w_rate, w_burst) = (
            self.messages,
            self.nbytes,
            self.work,
        )
        budget = self._budget(ip)
        wait = max(
            _wait(budget.messages, messages, m_rate, m_burst),
            _wait(budget.bytes, nbytes, b_rate, b_burst),
            _wait(budget.work, work, w_rate, w_burst),
        )
        if wait > 0.0:
            return wait
        if m_rate > 0:
            budget.messages -= messages
        if b_rate > 0:
            budget.bytes -= nbytes
        if w_rate > 0:
            budget.work -= work
        return 0.0

    def charge_message(self, ip: str, nbytes: int, count: Callable[[], int]) -> tuple[float, int]:
        """Charge one client message of ``nbytes`` to ``ip``, then its nodes as
        ``count()`` gives them: ``(seconds to wait or 0.0, nodes)``.

        Counting has a (bounded) cost of its own, so it is done only once the
        message and its bytes are paid for: a flood over the budget is refused
        without it (``nodes`` is then 0). A refused message was received all the
        same, so its message and bytes are taken anyway, as debt: an address
        flooding from many connections waits for all it sent, not one message.
        """
        (m_rate, m_burst), (b_rate, b_burst), (w_rate, w_burst) = (
            self.messages,
            self.nbytes,
            self.work,
        )
        if m_rate <= 0 and b_rate <= 0 and w_rate <= 0:
            return 0.0, count()  # no budgets: the push path pays only the count
        budget = self._budget(ip)
        wait = max(
            _wait(budget.messages, 1, m_rate, m_burst),
            _wait(budget.bytes, nbytes, b_rate, b_burst),
        )
        if m_rate > 0:
            budget.messages -= 1
        if b_rate > 0:
            budget.bytes -= nbytes
        if wait > 0.0:
            return wait, 0
        nodes = count()
        wait = _wait(budget.work, nodes, w_rate, w_burst)
        if wait == 0.0 and w_rate > 0:
            budget.work -= nodes
        return wait, nodes

    def debit_message(self, ip: str, nbytes: int, count: Callable[[], int]) -> tuple[float, int]:
        """Charge one WebSocket message of ``nbytes`` to ``ip`` whatever its balance
        (it was received: its cost is incurred), then its nodes as ``count()`` gives
        them: ``(seconds to wait, nodes)``.

        Pacing, not refusing: the reader waits that long before it decodes the
        message, so an address is served no faster than its budget, its other
        connections wait their turn behind the debt, and nothing it sent is lost
        (the npm client ignores ``error``: a dropped append is a silent data loss).
        While the address owes messages or bytes, nothing is counted (``nodes`` is
        -1): the caller counts after the wait and calls :meth:`debit_work`.
        """
        (m_rate, _), (b_rate, _), (w_rate, _) = self.messages, self.nbytes, self.work
        if m_rate <= 0 and b_rate <= 0 and w_rate <= 0:
            return 0.0, count()  # no budgets: the push path pays only the count
        budget = self._budget(ip)
        wait = 0.0
        if m_rate > 0:
            budget.messages -= 1
            if budget.messages < 0:
                wait = -budget.messages / m_rate
        if b_rate > 0:
            budget.bytes -= nbytes
            if budget.bytes < 0:
                wait = max(wait, -budget.bytes / b_rate)
        if wait > 0.0:
            return wait, -1
        nodes = count()
        return self.debit_work(ip, nodes), nodes

    def debit_work(self, ip: str, nodes: int) -> float:
        """Charge ``nodes`` of decode work to ``ip`` whatever its balance: the
        seconds until it is out of debt (0.0: it is not)."""
        rate = self.work[0]
        if rate <= 0:
            return 0.0
        budget = self._budget(ip)
        budget.work -= nodes
        return -budget.work / rate if budget.work < 0 else 0.0


def _wait(tokens: float, cost: float, rate: float, burst: float) -> float:
    """Seconds until a bucket holding ``tokens`` can pay ``cost`` (0: now)."""
    if rate <= 0 or cost <= 0:
        return 0.0
    need = min(cost, burst)  # a charge beyond the burst needs a full bucket
    if tokens >= need:
        return 0.0
    return (need - tokens) / rate


class ConnectionLimit(enum.Enum):
    """A WebSocket connection cap; the value is the setting (and the ``rejected``
    metric's label) that sets it."""

    TOTAL = "max_connections"
    PER_ADDRESS = "max_connections_per_ip"
    PER_ROOM = "max_connections_per_room"

    def refusal(self, cap: int) -> str:
        """What a client refused by this cap of ``cap`` connections is told."""
        if self is ConnectionLimit.PER_ADDRESS:
            return f"the limit of {cap} connections per client address is reached"
        if self is ConnectionLimit.PER_ROOM:
            return f"the room's limit of {cap} connections is reached"
        return f"the server's limit of {cap} connections is reached"


class ConnectionCounter:
    """Live WebSocket connections: in total, per client address and per room."""

    def __init__(self, total: int, per_ip: int, per_room: int) -> None:
        self.limits = (total, per_ip, per_room)
        self.total = 0
        self.by_ip: dict[str, int] = {}
        self.by_room: dict[str, int] = {}

    def exceeded(self, ip: str, room_id: str) -> tuple[ConnectionLimit, int] | None:
        """The cap (and its value) a new connection would exceed, or ``None`` if it fits."""
        total, per_ip, per_room = self.limits
        if total and self.total >= total:
            return ConnectionLimit.TOTAL, total
        if per_ip and self.by_ip.get(ip, 0) >= per_ip:
            return ConnectionLimit.PER_ADDRESS, per_ip
        if per_room and self.by_room.get(room_id, 0) >= per_room:
            return ConnectionLimit.PER_ROOM, per_room
        return None

    def add(self, ip: str, room_id: str) -> None:
        self.total += 1
        self.by_ip[ip] = self.by_ip.get(ip, 0) + 1
        self.by_room[room_id] = self.by_room.get(room_id, 0) + 1

    def remove(self, ip: str, room_id: str) -> None:
        self.total -= 1
        for table, key in ((self.by_ip, ip), (self.by_room, room_id)):
            left = table[key] - 1
            if left:
                table[key] = left
            else:
                del table[key]
