"""Server pings for idle WebSockets: one timer task for a whole transport.

A peer that vanishes without a FIN (a cable pulled, a laptop lid shut, a NAT
that forgot the flow) would otherwise hold its connection, and its share of
the connection caps, forever. Every ``interval`` the timer looks at each
member: one that sent anything since the last look is alive; one that sent
nothing gets a ping, and if it still has sent nothing ``timeout`` later it is
closed (:attr:`~drifttrio.CloseCode.PING_TIMEOUT`). So a silent peer is pinged
after ``interval`` to ``2 * interval`` of silence (then once an interval while
it stays silent but answers), and a vanished one is closed ``timeout`` after
its ping.

A member costs one set entry and a flag its reader sets on every read: no task
and no timer per connection. Pings and closes are written by short-lived tasks,
so one peer whose socket blocks never delays the timer or the others.
"""

from __future__ import annotations

from typing import Protocol

import trio

__all__ = ["Liveness", "Pingable"]


class Pingable(Protocol):
    """What the timer needs of a connection."""

    #: Set by the connection's reader whenever bytes arrive; cleared by the timer.
    heard: bool

    async def ping(self) -> None:
        """Send a ping (a write bounded by the write deadline)."""

    async def expire(self) -> None:
        """Close the connection: the peer did not answer."""


class Liveness:
    """The live WebSockets of a transport, and the task that pings them."""

    def __init__(self, interval: float, timeout: float) -> None:
        self.interval = interval
        self.timeout = timeout
        self._members: set[Pingable] = set()

    def __len__(self) -> int:
        return len(self._members)

    def add(self, member: Pingable) -> None:
        self._members.add(member)

    def discard(self, member: Pingable) -> None:
        self._members.discard(member)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Ping silent members and close the unresponsive, until cancelled."""
        async with trio.open_nursery() as writes:
            task_status.started()
            next_look = trio.current_time() + self.interval
            while True:
                await trio.sleep_until(next_look)
                pinged = self._ping_silent(writes)
                next_look += self.interval
                if not pinged:
                    continue
                await trio.sleep(self.timeout)
                for member in pinged:
                    if member not in self._members:
                        continue  # ended meanwhile
                    if member.heard:
                        member.heard = False  # it answered: its silence counts from now
                    else:
                        self._members.discard(member)
                        writes.start_soon(member.expire)
                next_look = max(next_look, trio.current_time())

    def _ping_silent(self, writes: trio.Nursery) -> list[Pingable]:
        """Ping every member not heard from since the last look; clear the others'
        flags. Returns the pinged."""
        pinged = []
        for member in self._members:
            if member.heard:
                member.heard = False
            else:
                pinged.append(member)
                writes.start_soon(member.ping)
        return pinged
