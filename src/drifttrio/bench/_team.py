"""The load processes of one bench run, and what they agree on.

A scenario runs in :func:`team.size <Team>` processes (``--procs``), each driving
its :func:`share` of the connections. They meet at a few points, each a *gather*:
every process sends a value, the process that started them (``_parallel.py``)
combines the values and sends the result back to all.

==========  ===================================  =====================================
gather      each process sends                   all get back
==========  ===================================  =====================================
``begin``   nothing (the scenario is next)       nothing; the server is sampled
``rooms``   the rooms it created (process 0)     those socket URLs
``start``   nothing (its connections are ready)  the shared time the load starts
``bounds``  per room, the first and last seq     per room, the lowest first and the
            its members saw (publishers idle)    highest last: what all must reach
==========  ===================================  =====================================

:class:`Alone` is the one process of ``--procs 1``: it meets nobody. :class:`Crew`
is one of several, talking to the starter over a :class:`Channel`.
"""

from __future__ import annotations

import pickle
import time
from collections.abc import Awaitable, Callable
from typing import Any, Protocol, cast

import attrs
import trio

from ._errors import BenchError
from ._model import BenchOptions, ScenarioResult

__all__ = [
    "Alone",
    "Assignment",
    "Bounds",
    "Channel",
    "Crew",
    "Done",
    "Failed",
    "Gather",
    "Team",
    "Tick",
    "merge_bounds",
    "share",
]

#: Per room: the first and the last seq seen (None: nothing seen).
Bounds = tuple[int | None, int | None]

#: Bytes of the length before each pickled message.
_LENGTH = 4
_MAX_MESSAGE = 2**31


class Team(Protocol):
    """The process a scenario runs in, among ``size`` (numbered from 0: ``index``)."""

    @property
    def index(self) -> int: ...

    @property
    def size(self) -> int: ...

    async def begin(self) -> None:
        """The next scenario is about to set up."""

    async def rooms(self, count: int, create: Callable[[], Awaitable[str]]) -> list[str]:
        """``count`` rooms all processes share (made by process 0 with ``create``)."""

    async def start(self) -> float:
        """Connections are ready: wait for the others; the ``time.perf_counter()``
        at which the load starts (now) and the warm-up begins."""

    async def tick(self, number: int, result: ScenarioResult, elapsed: float) -> None:
        """Progress: ``result`` so far, ``elapsed`` seconds into the window."""

    async def bounds(self, local: list[Bounds]) -> list[Bounds]:
        """Each room's seqs as seen here; as seen by every process (see the table)."""

    async def done(self, result: ScenarioResult) -> None:
        """The scenario is over: this process's share of it."""


def share(team: Team, total: int) -> range:
    """Which of ``total`` things (members, loops) this process drives: a contiguous
    slice, so that rooms stay together where they can."""
    return range(total * team.index // team.size, total * (team.index + 1) // team.size)


def merge_bounds(parts: list[list[Bounds]]) -> list[Bounds]:
    """Each room's lowest first seq and highest last seq over all processes."""

    def lowest(values: list[int | None]) -> int | None:
        return min((v for v in values if v is not None), default=None)

    def highest(values: list[int | None]) -> int | None:
        return max((v for v in values if v is not None), default=None)

    return [
        (lowest([first for first, _ in room]), highest([last for _, last in room]))
        for room in zip(*parts, strict=True)
    ]


class Alone:
    """``--procs 1``: this process is the whole load; nobody to wait for."""

    index = 0
    size = 1

    async def begin(self) -> None:
        pass

    async def rooms(self, count: int, create: Callable[[], Awaitable[str]]) -> list[str]:
        return [await create() for _ in range(count)]

    async def start(self) -> float:
        return time.perf_counter()

    async def tick(self, number: int, result: ScenarioResult, elapsed: float) -> None:
        pass  # the progress line is printed here, by the context

    async def bounds(self, local: list[Bounds]) -> list[Bounds]:
        return local

    async def done(self, result: ScenarioResult) -> None:
        pass


# -- messages between the starter and its load processes ------------------------------


@attrs.frozen
class Assignment:
    """Starter -> process, first: what to run, and which of ``size`` processes it is."""

    options: BenchOptions
    index: int
    size: int


@attrs.frozen
class Gather:
    """Process -> starter: its value for the gather ``kind``; waits for the answer."""

    kind: str
    value: Any


@attrs.frozen
class Tick:
    """Process -> starter: progress, once a second of the window (``number``)."""

    number: int
    elapsed: float
    result: ScenarioResult


@attrs.frozen
class Done:
    """Process -> starter: its share of the scenario, once over."""

    result: ScenarioResult


@attrs.frozen
class Failed:
    """Process -> starter: it could not run (a :class:`BenchError`); it exits."""

    message: str


class Channel:
    """Pickled messages, each after its length, over a pair of byte streams.

    Only between the bench and the processes it started, over their private pipes:
    pickle is safe there, and carries results (histograms included) whole.
    """

    def __init__(self, send: trio.abc.SendStream, receive: trio.abc.ReceiveStream) -> None:
        self._send = send
        self._receive = receive
        self._send_lock = trio.StrictFIFOLock()
        self._buffer = bytearray()

    async def send(self, message: object) -> None:
        data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
        async with self._send_lock:
            await self._send.send_all(len(data).to_bytes(_LENGTH) + data)

    async def receive(self) -> Any:
        """The next message; :class:`trio.EndOfChannel` when the other side is gone."""
        length = int.from_bytes(await self._read(_LENGTH))
        if length >= _MAX_MESSAGE:
            raise BenchError(f"a message of {length} bytes between load processes")
        data = await self._read(length)
        try:
            return pickle.loads(data)
        except Exception as exc:  # whatever a corrupt pickle raises
            raise BenchError(f"an undecodable message between load processes: {exc!r}") from None

    async def _read(self, size: int) -> bytes:
        while len(self._buffer) < size:
            try:
                data = await self._receive.receive_some()
            except trio.BrokenResourceError:
                data = b""
            if not data:
                raise trio.EndOfChannel
            self._buffer += data
        chunk = bytes(self._buffer[:size])
        del self._buffer[:size]
        return chunk


class Crew:
    """One of several load processes: meets the others through the starter."""

    def __init__(self, channel: Channel, index: int, size: int) -> None:
        self._channel = channel
        self.index = index
        self.size = size

    async def _gather(self, kind: str, value: object) -> Any:
        await self._channel.send(Gather(kind, value))
        try:
            return await self._channel.receive()
        except trio.EndOfChannel:
            raise BenchError("the bench that started this load process went away") from None

    async def begin(self) -> None:
        await self._gather("begin", None)

    async def rooms(self, count: int, create: Callable[[], Awaitable[str]]) -> list[str]:
        made = [await create() for _ in range(count)] if self.index == 0 else None
        return cast(list[str], await self._gather("rooms", made))

    async def start(self) -> float:
        start = cast(float, await self._gather("start", None))
        await trio.sleep(max(0.0, start - time.perf_counter()))
        return start

    async def tick(self, number: int, result: ScenarioResult, elapsed: float) -> None:
        await self._channel.send(Tick(number, elapsed, result))

    async def bounds(self, local: list[Bounds]) -> list[Bounds]:
        return cast(list[Bounds], await self._gather("bounds", local))

    async def done(self, result: ScenarioResult) -> None:
        await self._channel.send(Done(result))
