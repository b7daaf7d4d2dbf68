"""The storage seam between room tasks and a backend.

A room task loads its room once, then commits each batch (the stream changes plus
the new high-water seq) *before* anyone sees the batch's seqs. A backend either
commits the whole batch or raises :class:`~drifttrio.StorageError` and commits
nothing.

Optional capabilities, declared here so nobody probes for them by name:
:class:`ExclusiveStorage` (only one process may write it: SQLite),
:class:`WriteHealth` (it knows whether it can commit right now: SQLite),
:class:`ServedStorage` (it runs a task while in use: Redis),
:class:`SharedStorage` (it orders rooms shared by several nodes: Redis) and
:class:`JournaledStorage` (it keeps committed pushes for ``Hooks.on_committed``
until they are delivered: every built-in store).
"""

from __future__ import annotations

from collections.abc import Callable, Container, Sequence
from typing import TYPE_CHECKING, Literal, Protocol, TypeAlias, runtime_checkable
from urllib.parse import urlsplit

import attrs

from ..core.room_state import Stream, StreamChange
from .lock import LockPurpose

if TYPE_CHECKING:
    import trio

    from .redis import Event, PushItem, PushResult

__all__ = [
    "ExclusiveStorage",
    "JournalEntry",
    "JournaledStorage",
    "RoomInfo",
    "RoomSnapshot",
    "ServedStorage",
    "SharedStorage",
    "Storage",
    "StoreAccess",
    "WriteHealth",
    "shown_url",
]

#: How a command opens a store: ``create`` it if missing (a server, ``rooms import``),
#: ``write`` to one that exists (``rooms delete``), or ``read`` one that exists without
#: writing a byte to it (``rooms list``, ``inspect``, ``export``): a mistyped path is
#: then an error, not a new empty store.
StoreAccess: TypeAlias = Literal["create", "write", "read"]


def shown_url(url: str) -> str:
    """``url`` as messages may show it: a password in it is replaced by ``***``."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    userinfo, _, host = parts.netloc.rpartition("@")
    user = userinfo.split(":", 1)[0]
    return parts._replace(netloc=f"{user}:***@{host}").geturl()


@attrs.frozen
class RoomSnapshot:
    """A room as stored: its high-water seq and retained streams."""

    seq: int
    streams: dict[str, Stream]
    #: Events published for the room so far (shared backends; 0 elsewhere).
    ev: int = 0


@attrs.frozen
class RoomInfo:
    """One stored room, as listed by :meth:`Storage.list_rooms`."""

    room_id: str
    seq: int
    #: Unix time of the last push, join or eviction.
    last_active: float


class Storage(Protocol):
    """What a room task needs from a backend."""

    async def create_room(self, room_id: str) -> None:
        """Create an empty room (seq 0, no streams)."""

    async def room_exists(self, room_id: str) -> bool:
        """Whether the room exists."""

    async def load_room(self, room_id: str) -> RoomSnapshot | None:
        """The stored room, or ``None`` if it does not exist."""

    async def commit(self, room_id: str, seq: int, changes: Sequence[StreamChange]) -> None:
        """Atomically apply ``changes`` in order and raise the high-water seq to ``seq``."""

    async def delete_room(self, room_id: str) -> None:
        """Delete the room and its data (a no-op if it does not exist)."""

    async def touch(self, room_id: str) -> None:
        """Record activity on the room without a write (joins, evictions)."""

    async def expire(self, idle_seconds: float, keep: Container[str] = ()) -> list[str]:
        """Delete rooms idle longer than ``idle_seconds``, except ``keep``; return their ids."""

    async def count_rooms(self) -> int:
        """How many rooms are stored."""

    async def list_rooms(self) -> list[RoomInfo]:
        """Every stored room, by id (for the ``drifttrio rooms`` admin commands)."""

    async def import_room(self, room_id: str, snapshot: RoomSnapshot) -> None:
        """Atomically replace the room (creating it if needed) with ``snapshot``."""

    async def aclose(self) -> None:
        """Release resources."""


@runtime_checkable
class ExclusiveStorage(Protocol):
    """A backend one process at a time may write: a server locks it before it serves
    rooms, and ``drifttrio rooms`` before it writes."""

    def take_store_lock(self, purpose: LockPurpose = "serve") -> None:
        """Hold the store lock until ``aclose``; raise StoreInUse if another process has it."""


@runtime_checkable
class WriteHealth(Protocol):
    """A backend that knows whether its latest write failed, and can test one."""

    @property
    def write_failure(self) -> str | None:
        """Why the latest write failed, or ``None`` if it succeeded."""

    async def probe_write(self) -> None:
        """Make a small write now (updating ``write_failure``); StorageError if it fails."""


@runtime_checkable
class ServedStorage(Protocol):
    """A backend with a task of its own (a networked store's connection and event
    feed): the hub starts :meth:`run` in its nursery before serving rooms."""

    async def run(self, *, task_status: trio.TaskStatus[None] = ...) -> None:
        """Connect, then serve until cancelled; ``task_status.started()`` once usable."""


#: Called with each batch of events published for a followed room (the raw records),
#: in order, or with ``None`` when the feed broke.
FeedCallback: TypeAlias = Callable[[bytes | None], None]


@runtime_checkable
class SharedStorage(Protocol):
    """A backend that orders rooms shared by several nodes: it assigns the seqs of a
    batch of pushes itself and publishes the events every node follows
    (:mod:`drifttrio.runtime.shared_room`), instead of taking :meth:`Storage.commit`."""

    async def load_room(self, room_id: str) -> RoomSnapshot | None:
        """The stored room, with the last event published for it (``ev``)."""

    async def follow(self, room_id: str, callback: FeedCallback) -> None:
        """Deliver the room's published events to ``callback`` from now on."""

    async def unfollow(self, room_id: str, callback: FeedCallback) -> None:
        """Stop delivering the room's events to ``callback``."""

    async def push_batch(
        self,
        room_id: str,
        items: Sequence[PushItem],
        *,
        seen_ev: int,
        max_keys: int = 0,
        max_values: int = 0,
        max_bytes: int = 0,
    ) -> list[PushResult]:
        """Apply the pushes atomically (seqs assigned here), log and publish them."""

    async def read_events(self, room_id: str, first: int, last: int) -> list[Event]:
        """Events ``first..last`` from the room's log (fewer if they were trimmed)."""


@attrs.frozen
class JournalEntry:
    """One committed push kept for :meth:`drifttrio.hooks.Hooks.on_committed`.

    ``id`` grows with each entry the store keeps for the room (memory and SQLite:
    across rooms too), so each room's entries in ``id`` order are in its commit
    order. It names the entry to :meth:`JournaledStorage.trim_journal`; it is not
    a cursor across rooms (a Redis Cluster keeps each room's journal on its own
    shard, where no counter is shared)."""

    id: int
    room_id: str
    seq: int
    #: ``replace``, ``append`` or ``compact`` (a :class:`StreamChange` kind).
    action: str
    key: str
    value: object


@runtime_checkable
class JournaledStorage(Protocol):
    """A backend that keeps, with each commit and in the same transaction, a journal
    of the committed pushes, until a consumer has taken them: what makes
    ``on_committed`` at-least-once and resumable after a restart.

    The journal is a queue: the consumer reads its head, delivers it, then trims
    what it delivered; an entry read but not trimmed (the consumer failed or the
    process stopped) is read again."""

    def enable_journal(self) -> None:
        """Journal every commit from now on (off by default: it costs a write each)."""

    async def read_journal(self, limit: int) -> list[JournalEntry]:
        """Up to ``limit`` of the oldest entries not trimmed yet, each room's in
        ``id`` order (the rooms may interleave)."""

    async def trim_journal(self, entries: Sequence[JournalEntry]) -> None:
        """Forget ``entries`` (read with :meth:`read_journal`, then delivered)."""

    async def wait_journal(self) -> None:
        """Return once the journal may hold an entry for this consumer (at once if it
        does; a store without a wake-up may poll)."""
