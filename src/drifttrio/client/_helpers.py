"""The npm client's patterns, so Python and browser peers share one room.

- :class:`SharedState` is ``StateListener``: ``replace`` with ``{"v": value, "i": id}``.
- :class:`Reducer` is ``Reducer``/``Compactor``: ``append`` ``{"apply": action, "i": id}``;
  on a ``stream_size`` above the threshold, ``compact`` ``{"reset": state}`` at the last
  confirmed seq.
- :class:`Presence` is ``PresenceListener``: ``relay`` on ``__presence`` with
  ``{"client": id, "value": value}`` every ``interval`` seconds; peers not heard
  from for ``expire_after`` seconds are dropped.

Each is an async context manager that runs a task in the connection's nursery
while the block lasts.
"""

from __future__ import annotations

import copy
import json
import secrets
from collections.abc import Callable
from types import TracebackType
from typing import Any, Generic, TypeVar, cast

import trio

from ._connection import Connection, Subscription

__all__ = ["Presence", "Reducer", "SharedState"]

S = TypeVar("S")


def _rand_id() -> str:
    return secrets.token_hex(4)


class _Helper:
    """Runs ``_consume`` in a nursery of its own for the duration of the block."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self._changed = trio.Event()
        self._cm: Any = None
        self._nursery: trio.Nursery | None = None

    async def _consume(self, sub: Subscription) -> None:
        raise NotImplementedError

    def _notify(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    async def wait_changed(self) -> None:
        """Wait for the next change of the value."""
        await self._changed.wait()

    async def wait_for(self, predicate: Callable[[], bool]) -> None:
        """Wait until ``predicate()`` is true (checked after every change)."""
        while not predicate():
            await self.wait_changed()

    async def _start(self, key: str) -> None:
        self._cm = trio.open_nursery()
        self._nursery = await self._cm.__aenter__()
        self._sub = self.conn.subscribe(key)
        self._nursery.start_soon(self._consume, self._sub)

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._sub.close()
        assert self._nursery is not None
        self._nursery.cancel_scope.cancel()
        await self._cm.__aexit__(exc_type, exc, tb)


class SharedState(_Helper, Generic[S]):
    """One value shared by everyone in the room (the npm ``StateListener``)."""

    def __init__(self, conn: Connection, key: str, initial: S) -> None:
        super().__init__(conn)
        self.key = key
        self.value: S = initial
        self.rand_id = _rand_id()

    async def __aenter__(self) -> SharedState[S]:
        await self._start(self.key)
        return self

    async def set(self, value: S) -> None:
        """Set the value for everyone (optimistically here at once)."""
        self.value = value
        self._notify()
        await self.conn.push(self.key, {"v": value, "i": self.rand_id}, "replace")

    async def _consume(self, sub: Subscription) -> None:
        async for _, message in sub:
            if isinstance(message, dict) and message.get("i") != self.rand_id:
                self.value = cast(S, message.get("v"))
                self._notify()


class Reducer(_Helper, Generic[S]):
    """State built by applying actions in the room's order (the npm ``Reducer``)."""

    def __init__(
        self,
        conn: Connection,
        key: str,
        reducer: Callable[[S, Any], S],
        initial: S,
        *,
        size_threshold: int = 30,
    ) -> None:
        super().__init__(conn)
        self.key = key
        self.reducer = reducer
        self.size_threshold = size_threshold
        self.rand_id = _rand_id()
        #: The state with every confirmed action applied, and optimistic ones on top.
        self.state: S = initial
        self.confirmed_state: S = copy.deepcopy(initial)
        self.confirmed_seq = 0
        self._unconfirmed: list[Any] = []  # own actions sent, echo not seen yet
        #: Compactions this client sent.
        self.compactions = 0

    async def __aenter__(self) -> Reducer[S]:
        self.conn.on_stream_size(self.key, self._on_size)
        await self._start(self.key)
        return self

    async def dispatch(self, action: Any) -> None:
        """Apply ``action`` here at once and send it to the room."""
        self._unconfirmed.append(action)
        try:
            await self.conn.push(self.key, {"apply": action, "i": self.rand_id}, "append")
        except BaseException:
            self._unconfirmed.pop()
            raise
        self.state = self.reducer(self.state, action)
        self._notify()

    async def _consume(self, sub: Subscription) -> None:
        async for seq, value in sub:
            if seq <= self.confirmed_seq or not isinstance(value, dict):
                continue
            if "reset" in value:
                self.confirmed_state = value["reset"]
            elif "apply" in value:
                self.confirmed_state = self.reducer(self.confirmed_state, value["apply"])
                if value.get("i") == self.rand_id and self._unconfirmed:
                    self._unconfirmed.pop(0)
            else:
                continue
            self.confirmed_seq = seq
            # Unlike the npm client, own actions still in flight stay applied on top.
            state = copy.deepcopy(self.confirmed_state)
            for action in self._unconfirmed:
                state = self.reducer(state, action)
            self.state = state
            self._notify()

    def _on_size(self, size: int) -> None:
        if size > self.size_threshold and self.confirmed_seq != 0 and self._nursery is not None:
            self.compactions += 1
            self._nursery.start_soon(
                self._compact, self.confirmed_seq, copy.deepcopy(self.confirmed_state)
            )

    async def _compact(self, seq: int, state: S) -> None:
        await self.conn.push(self.key, {"reset": state}, "compact", seq=seq)


class Presence(_Helper):
    """Who is here, and their values (the npm ``PresenceListener``).

    ``peers`` maps each other client's id to its last value.
    """

    def __init__(
        self,
        conn: Connection,
        value: Any,
        *,
        client_id: str | None = None,
        key: str = "__presence",
        interval: float = 1.0,
        expire_after: float | None = None,
    ) -> None:
        super().__init__(conn)
        self.key = key
        self.value = value
        self.client_id = client_id or _rand_id()
        self.interval = interval
        #: Seconds without a message before a peer is dropped (npm peers announce
        #: every second, so at least 2 s).
        self.expire_after = max(2 * interval, 2.0) if expire_after is None else expire_after
        self.peers: dict[str, Any] = {}
        self._last_seen: dict[str, float] = {}
        self._wake = trio.Event()

    async def __aenter__(self) -> Presence:
        await self._start(self.key)
        assert self._nursery is not None
        self._nursery.start_soon(self._announce)
        return self

    async def update(self, value: Any) -> None:
        """Change this client's value; it is sent at once."""
        if json.dumps(value, sort_keys=True, default=str) == json.dumps(
            self.value, sort_keys=True, default=str
        ):
            return
        self.value = value
        self._wake.set()

    async def _announce(self) -> None:
        while True:
            self._wake = trio.Event()
            await self.conn.push(self.key, {"client": self.client_id, "value": self.value}, "relay")
            with trio.move_on_after(self.interval):
                await self._wake.wait()
            self._expire()

    def _expire(self) -> None:
        now = trio.current_time()
        gone = [c for c, t in self._last_seen.items() if now - t > self.expire_after]
        for client in gone:
            del self._last_seen[client], self.peers[client]
        if gone:
            self._notify()

    async def _consume(self, sub: Subscription) -> None:
        async for _, message in sub:
            if not isinstance(message, dict) or message.get("client") == self.client_id:
                continue
            client = str(message.get("client"))
            self.peers[client] = message.get("value")
            self._last_seen[client] = trio.current_time()
            self._notify()
