"""Abuse limits at the edge: token buckets and connection counters.

All timing follows ``trio.current_time()``, so the limits behave the same under
trio's mock clock as in production.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable

import trio

__all__ = ["ConnectionCounter", "KeyedRateLimiter", "TokenBucket"]


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
        now = self._clock()
        self.tokens = min(self.burst, self.tokens + (now - self._stamp) * self.rate)
        self._stamp = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False


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


class ConnectionCounter:
    """Live WebSocket connections: in total, per client address and per room."""

    def __init__(self, total: int, per_ip: int, per_room: int) -> None:
        self.limits = (total, per_ip, per_room)
        self.total = 0
        self.by_ip: dict[str, int] = {}
        self.by_room: dict[str, int] = {}

    def refusal(self, ip: str, room_id: str) -> str | None:
        """Why a new connection would exceed a cap, or ``None`` if it fits."""
        total, per_ip, per_room = self.limits
        if total and self.total >= total:
            return f"the server's limit of {total} connections is reached"
        if per_ip and self.by_ip.get(ip, 0) >= per_ip:
            return f"the limit of {per_ip} connections per client address is reached"
        if per_room and self.by_room.get(room_id, 0) >= per_room:
            return f"the room's limit of {per_room} connections is reached"
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
