"""A room member (:class:`Member`) and its bounded outbox.

The room task hands every member already-encoded frames with
:meth:`Member.deliver`, which never blocks: when the outbox is full (by
count or by bytes) the slow-client policy decides what happens. Every frame is
charged at its size, and an ``init`` of a long stream is queued as an
:class:`InitStream` that the member's writer encodes one chunk at a time.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Final, Protocol, TypeAlias

import trio

from .._errors import CloseCode
from ..core.join_gate import JoinGate
from ..core.room_state import ENTRY_COST, value_size
from ..protocol.codec import CBOR
from ..protocol.messages import Error, Init, SeqValue, ServerMessage

if TYPE_CHECKING:
    from .metrics import Metrics

__all__ = [
    "QUEUE_FAIR_BYTES",
    "Encoder",
    "Frame",
    "InitStream",
    "Member",
    "Outbox",
    "QueueBudget",
    "Queued",
]

#: What goes through an outbox: an encoded frame, or a message object for
#: in-process members (which have no codec).
Frame: TypeAlias = str | bytes | ServerMessage

#: What the outbox holds: frames, and inits still to be encoded.
Queued: TypeAlias = "Frame | InitStream"


class Encoder(Protocol):
    """How a member's transport wants server messages: a codec
    (:data:`~drifttrio.protocol.JSON`, :data:`~drifttrio.protocol.CBOR`) for a
    payload, or an encoder that web/ gives its WebSockets (a complete frame).

    A room encodes each broadcast once per encoder, so members whose encoders are
    the same object share the encoded frame.
    """

    #: The wire format's name (``json``, ``cbor``): a metrics label.
    @property
    def name(self) -> str: ...

    def encode(self, message: ServerMessage, /) -> str | bytes: ...


#: What a retained value costs an :class:`InitStream` while it waits: one
#: reference in its snapshot (the value itself is shared with the room).
_REFERENCE_BYTES: Final = 8
#: What an entry of an ``init`` adds around its value (``{"value":…,"seq":N},``).
_ENTRY_BYTES: Final = 24

_ids = itertools.count(1)


def _size(item: Queued) -> int:
    """What an outbox item is charged: its encoded length (characters for text
    frames), a message object's CBOR length, an init's :attr:`InitStream.charge`."""
    if isinstance(item, (str, bytes)):
        return len(item)
    if isinstance(item, InitStream):
        return item.charge
    return len(CBOR.encode(item))


class InitStream:
    """``init`` messages for one or more keys, encoded a chunk at a time as the
    member's writer takes them.

    The room takes a snapshot of each key's retained values when it answers (a
    list of references: later pushes do not change it, so the init still covers
    exactly what it covered when the room answered); the writer encodes at most
    about ``chunk_bytes`` of values per ``init``. A stream of any length thus
    costs its outbox one chunk plus a reference per value, and the room task does
    no encoding for it. Every chunk but the last says ``"more": true``; the npm
    client ignores that and applies several ``init``s of one key in a row as one
    (it dispatches each value in turn).
    """

    __slots__ = ("_chunk_bytes", "_encode", "_index", "_part", "_parts", "charge")

    def __init__(
        self,
        parts: Sequence[tuple[str, Sequence[SeqValue], Sequence[int] | None]],
        chunk_bytes: int,
        encode: Callable[[ServerMessage], Frame],
    ) -> None:
        #: ``(key, values, their sizes or None)``: sizes as the room tracks them
        #: (CBOR bytes); ``None`` when it does not, then measured while chunking.
        self._parts = parts
        self._chunk_bytes = chunk_bytes
        self._encode = encode
        self._part = 0
        self._index = 0
        values = sum(len(values) for _, values, _ in parts)
        known = sum(sum(sizes) if sizes is not None else chunk_bytes for _, _, sizes in parts)
        #: What this costs its outbox while queued: the snapshot's references and
        #: the one chunk that exists at a time.
        self.charge = _REFERENCE_BYTES * (values + len(parts)) + min(known, chunk_bytes)

    @property
    def done(self) -> bool:
        return self._part >= len(self._parts)

    def next_frame(self) -> Frame:
        """Encode the next ``init`` (an empty stream still gets one, with no data)."""
        key, values, sizes = self._parts[self._part]
        start = end = self._index
        budget = self._chunk_bytes
        while end < len(values) and (budget > 0 or end == start):
            # Sizes are memory charges (core.room_state): less the entry's own
            # charge they are an upper bound of the value's encoding.
            size = sizes[end] if sizes is not None else value_size(values[end].value)
            budget -= size - ENTRY_COST + _ENTRY_BYTES
            end += 1
        more = end < len(values)
        if more:
            self._index = end
        else:
            self._part += 1
            self._index = 0
        return self._encode(Init(key, tuple(values[start:end]), more))


#: Past ``max_queued_bytes``, what an outbox may still hold: a reader that keeps up
#: rarely has more queued, one that stopped reading has far more.
QUEUE_FAIR_BYTES: Final = 256 * 1024


class QueueBudget:
    """The bytes queued in all the outboxes of a server together (``max_queued_bytes``).

    Past ``limit``, the heaviest outbox (holding more than ``fair_bytes``, and the
    most of all) takes no more frames: its connection meets the slow-client policy
    (4008, or dropped frames) and, once it ends, gives its bytes back. Readers that
    do not read grow without pause and are soon the heaviest; readers that keep up
    (or lag a moment) are never refused for the others' backlog. So a thousand
    sockets that join a busy room and never read cannot make the server hold
    ``outbox_bytes`` for each.
    """

    __slots__ = ("_most", "_stale", "fair_bytes", "heavy", "limit", "used")

    def __init__(self, limit: int, fair_bytes: int) -> None:
        self.limit = limit
        self.fair_bytes = fair_bytes
        #: Bytes queued now, in every outbox that shares this budget.
        self.used = 0
        #: The outboxes holding more than ``fair_bytes``: the ones that may be refused.
        self.heavy: set[Outbox] = set()
        #: The most a heavy outbox holds; recounted only after the heaviest shrank.
        self._most = 0
        self._stale = False

    def refuses(self, outbox: Outbox, queued: int, size: int) -> bool:
        """Whether ``outbox``, holding ``queued`` bytes once it takes ``size`` more,
        must refuse them: the budget is spent and it is the heaviest."""
        if self.used + size <= self.limit or queued <= self.fair_bytes:
            return False
        if self._stale:
            self._most = max((other.queued_bytes for other in self.heavy), default=0)
            self._stale = False
        return queued >= self._most

    def moved(self, outbox: Outbox, before: int, after: int) -> None:
        """``outbox`` went from ``before`` to ``after`` queued bytes."""
        self.used += after - before
        if after > self.fair_bytes:
            self.heavy.add(outbox)
            self._most = max(self._most, after)
        elif before > self.fair_bytes:
            self.heavy.discard(outbox)
        if after < before >= self._most:
            self._stale = True  # the heaviest shrank: recount when it matters


class Outbox:
    """A bounded queue of frames for one connection, bounded by count and by bytes.

    The room queues with :meth:`send_nowait`, which never blocks; one consumer (the
    member's writer) takes batches with :meth:`receive_batch`. A list and a parked
    task rather than a memory channel: an idle member's outbox costs some 200
    bytes instead of 2 KiB.
    """

    __slots__ = (
        "_budget",
        "_closed",
        "_frames",
        "_inits",
        "_max_bytes",
        "_max_messages",
        "_taken_waiter",
        "_waiter",
        "deferred",
        "queued_bytes",
    )

    def __init__(
        self, max_messages: int, max_bytes: int, budget: QueueBudget | None = None
    ) -> None:
        #: The server-wide budget this outbox's bytes count against, if any.
        self._budget = budget
        self._frames: list[Queued] = []
        #: How many :class:`InitStream` items are queued (none: the fast path).
        self._inits = 0
        self._max_messages = max_messages
        self._max_bytes = max_bytes
        self.queued_bytes = 0
        self._closed = False
        self._waiter: trio.lowlevel.Task | None = None
        self._taken_waiter: trio.lowlevel.Task | None = None
        #: Frames queued do not wake the receiver: whoever queues them calls
        #: :meth:`write_through` once done (a room, at the end of its batch).
        self.deferred = False

    def send_nowait(self, frame: Queued) -> None:
        """Queue a frame; raise :class:`trio.WouldBlock` when full, and
        :class:`trio.ClosedResourceError` once closed.

        A frame larger than the byte bound never fits, not even into an empty
        outbox: what a connection holds is bounded whatever it asks for.
        """
        if self._closed:
            raise trio.ClosedResourceError("the outbox is closed")
        # The usual frame (bytes) in a few ns; an ``isinstance`` with ``str | bytes``
        # builds a union object on every call.
        size = len(frame) if type(frame) is bytes else _size(frame)
        queued = self.queued_bytes + size
        if len(self._frames) >= self._max_messages or queued > self._max_bytes:
            raise trio.WouldBlock
        budget = self._budget
        if budget is not None:
            # Inline for the usual case (every member of a broadcast comes here):
            # the budget has room and this outbox holds less than its share.
            before = self.queued_bytes
            if budget.used + size > budget.limit and budget.refuses(self, queued, size):
                raise trio.WouldBlock  # the server's queues are full: this one holds most
            if queued <= budget.fair_bytes:
                budget.used += size
            else:
                budget.moved(self, before, queued)
        self._frames.append(frame)
        self.queued_bytes = queued
        if type(frame) is InitStream:
            self._inits += 1
        if not self.deferred:
            self._wake()

    def write_through(self, write: Callable[[bytes], bool | None]) -> tuple[int, int]:
        """Hand everything queued to ``write`` (a non-blocking write of complete
        frames, see :meth:`Member.flush`) if the receiver is parked with nothing in
        hand, sparing it a wake-up; otherwise (or if ``write`` cannot take it now)
        wake the receiver, which takes the frames as usual. The frames and bytes
        written, ``(0, 0)`` when the receiver takes them.
        """
        frames = self._frames
        if not frames:
            return 0, 0
        if self._waiter is None or self._inits:
            self._wake()  # busy (it takes them next), or an init for it to encode
            return 0, 0
        data = frames[0] if len(frames) == 1 else b"".join(frames)  # type: ignore[arg-type]
        assert isinstance(data, bytes)
        written = write(data)
        if written is None:
            self._wake()
            return 0, 0
        self._frames = []
        self._taken(self.queued_bytes)
        if self._taken_waiter is not None:
            self._wake_taken()
        if not written:
            self._owe()
        return len(frames), len(data)

    def write_direct(self, write: Callable[[bytes], bool | None], frame: bytes) -> bool:
        """Hand ``frame`` straight to ``write`` (as :meth:`write_through` would once
        it were queued) if nothing is queued and the receiver is parked: whether
        it went out (or in part, the rest owed to the receiver's next write).
        ``False``: nothing happened, queue it as usual (a frame over the byte bound
        too: it would not fit even into the empty outbox, see :meth:`send_nowait`)."""
        if self._frames or self._waiter is None or self._closed or len(frame) > self._max_bytes:
            return False
        written = write(frame)
        if written is None:
            return False
        if not written:
            self._owe()
        return True

    def _owe(self) -> None:
        """A write went out in part: the rest is owed, and goes out first with the
        receiver's next write (under its deadline). An empty frame asks for one."""
        self._frames.append(b"")
        self._wake()

    async def receive_batch(self, max_frames: int = 1024) -> list[Frame]:
        """Wait for at least one frame, then take whatever else is queued (up to
        ``max_frames``). A checkpoint only when it has to wait.

        Raises :class:`trio.EndOfChannel` once closed and drained.
        """
        await trio.lowlevel.checkpoint_if_cancelled()
        if not self._frames:
            if self._closed:
                raise trio.EndOfChannel
            if self._waiter is not None:
                raise trio.BusyResourceError("another task is receiving from this outbox")
            self._waiter = trio.lowlevel.current_task()

            def abort(_: trio.lowlevel.RaiseCancelT) -> trio.lowlevel.Abort:
                self._waiter = None
                return trio.lowlevel.Abort.SUCCEEDED

            await trio.lowlevel.wait_task_rescheduled(abort)
            if not self._frames:
                raise trio.EndOfChannel  # woken by close()
        frames = self._frames
        self._wake_taken()
        if self._inits:
            return self._take_through_init(max_frames)
        if len(frames) <= max_frames:
            self._frames = []
            self._taken(self.queued_bytes)
            return frames  # type: ignore[return-value]  # no InitStream in it
        batch = frames[:max_frames]
        del frames[:max_frames]
        self._taken(sum(map(_size, batch)))
        return batch  # type: ignore[return-value]

    def _taken(self, size: int) -> None:
        """``size`` bytes left this outbox (taken by the writer, or discarded)."""
        before = self.queued_bytes
        self.queued_bytes = before - size
        budget = self._budget
        if budget is not None:
            if before <= budget.fair_bytes:
                budget.used -= size  # the usual case: it held less than its share
            else:
                budget.moved(self, before, before - size)

    def discard(self) -> None:
        """Close, and drop whatever is still queued (the connection is over): its
        bytes no longer count against the server's budget."""
        self.close()
        self._frames = []
        self._inits = 0
        self._taken(self.queued_bytes)

    def _take_through_init(self, max_frames: int) -> list[Frame]:
        """The frames before the first queued init, or else that init's next chunk
        (the init stays first in line until its last chunk is taken)."""
        frames = self._frames
        head = frames[0]
        if isinstance(head, InitStream):
            frame = head.next_frame()
            if head.done:
                del frames[0]
                self._inits -= 1
                self._taken(head.charge)
            return [frame]
        end = 1
        while end < len(frames) and end < max_frames and not isinstance(frames[end], InitStream):
            end += 1
        batch: list[Frame] = frames[:end]  # type: ignore[assignment]  # stops at an init
        del frames[:end]
        self._taken(sum(map(_size, batch)))
        return batch

    async def wait_taken(self) -> None:
        """Wait until the receiver takes a batch, if frames are queued (at once
        otherwise, or once closed; no checkpoint then)."""
        if not self._frames or self._closed:
            return
        if self._taken_waiter is not None:
            raise trio.BusyResourceError("another task is waiting on this outbox")
        self._taken_waiter = trio.lowlevel.current_task()

        def abort(_: trio.lowlevel.RaiseCancelT) -> trio.lowlevel.Abort:
            self._taken_waiter = None
            return trio.lowlevel.Abort.SUCCEEDED

        await trio.lowlevel.wait_task_rescheduled(abort)

    def close(self) -> None:
        """No more frames: the receiver takes what is queued, then gets EndOfChannel."""
        self._closed = True
        self._wake()
        self._wake_taken()

    def _wake(self) -> None:
        if self._waiter is not None:
            trio.lowlevel.reschedule(self._waiter)
            self._waiter = None

    def _wake_taken(self) -> None:
        if self._taken_waiter is not None:
            trio.lowlevel.reschedule(self._taken_waiter)
            self._taken_waiter = None

    def __len__(self) -> int:
        return len(self._frames)


class Member:
    """One member of a room: a WebSocket session or an in-process subscriber."""

    #: One per connection: no instance dict (about 1.6 KiB each).
    __slots__ = (
        "_bytes_out",
        "_dirty",
        "_flushes",
        "_kicked",
        "_missed",
        "_missed_count",
        "_write_now",
        "asks_after_join",
        "bytes_in",
        "bytes_out",
        "close_code",
        "close_reason",
        "closed",
        "debug",
        "dropped",
        "encoder",
        "explicit",
        "gate",
        "id",
        "identity",
        "kick_scope",
        "labels",
        "messages_in",
        "messages_out",
        "metrics",
        "opened_at",
        "outbox",
        "peer_close_code",
        "policy",
        "subscriptions",
        "transport",
    )

    def __init__(
        self,
        *,
        encoder: Encoder | None,
        outbox: Outbox,
        policy: str = "disconnect",
        debug: bool = False,
        explicit: bool = False,
        metrics: Metrics | None = None,
        transport: str = "in_process",
        asks_after_join: bool = False,
        write_now: Callable[[bytes], bool | None] | None = None,
        identity: Any = None,
    ) -> None:
        #: A process-unique number, for log lines.
        self.id = next(_ids)
        #: Who this member is, as the authorize hook admitted it (``drifttrio.hooks``).
        self.identity = identity
        #: What encodes this member's frames (``None``: in-process, message objects).
        self.encoder: Final = encoder
        self.outbox = outbox
        self.policy = policy
        self.debug = debug
        self.explicit = explicit
        #: Keys this connection sent ``get`` for (its gate lets them flow once answered).
        self.subscriptions: set[str] = set()
        #: What this member receives of keys it has not asked for yet (set by the
        #: room at the join; ``None``: every broadcast flows). See ``core/join_gate.py``.
        self.gate: JoinGate[Frame] | None = None
        #: Whether the client asks for its keys only after it has joined (a WebSocket
        #: client sends its ``get``s once the socket is open): the room then holds its
        #: broadcasts until it asks, for up to ``join_hold_seconds``.
        self.asks_after_join = asks_after_join
        self.closed = False
        #: Set (with the reason) when the room decided to close this connection.
        self.close_code: int | None = None
        self.close_reason = ""
        self._kicked: trio.Event | None = None
        #: Cancelled by :meth:`kick`: the session running this member sets it, so a
        #: kicked member stops at once, with no task waiting for the kick.
        self.kick_scope: trio.CancelScope | None = None
        self.dropped = 0
        self.metrics = metrics
        #: What carries this member (a metrics label: ``in_process``, or what web/ says).
        self.transport = transport
        #: The (transport, codec) labels of this member's metrics.
        self.labels: Final = (transport, "none" if encoder is None else encoder.name)
        self.opened_at = trio.current_time()
        # Counted by the session's reader and writer, for the close log line.
        self.messages_in = 0
        self.bytes_in = 0
        self.messages_out = 0
        self.bytes_out = 0
        #: The close code the peer sent, if it closed first.
        self.peer_close_code: int | None = None
        self._missed: tuple[int, int] | None = None
        self._missed_count = 0
        #: A non-blocking write to the member's socket (given by web/, see :meth:`flush`).
        self._write_now = write_now
        #: The room's list of members to flush at the end of its batch (see :meth:`attach`).
        self._flushes: list[Member] | None = None
        self._dirty = False
        self._bytes_out: Any = None

    @property
    def kicked(self) -> trio.Event:
        """Set when the room decided to close this connection (made when asked for:
        sessions use :attr:`kick_scope` instead)."""
        if self._kicked is None:
            self._kicked = trio.Event()
            if self.close_code is not None:
                self._kicked.set()
        return self._kicked

    def encode(self, message: ServerMessage) -> Frame:
        encoder = self.encoder
        return message if encoder is None else encoder.encode(message)

    def send_message(self, message: ServerMessage) -> None:
        """Encode and deliver a direct reply (never blocks)."""
        if not self.closed:
            self.deliver(self.encode(message))

    def tell(self, message: ServerMessage) -> None:
        """Send ``message`` from outside the room's task (the session's own refusals):
        delivered, then flushed at once."""
        self.send_message(message)
        if self._dirty:
            self.flush()

    def attach(self, flushes: list[Member]) -> None:
        """Joined a room that flushes ``flushes`` at the end of each batch: what the
        room delivers then waits there (the writer is not woken per frame), and
        :meth:`flush` writes it. Only for a member with a non-blocking write."""
        if self._write_now is not None:
            self._flushes = flushes
            self.outbox.deferred = True

    def flush(self) -> None:
        """Write what the room delivered during its batch: straight to the socket, in
        one write, when the member's writer is idle and the socket takes it at once
        (no task wakes up); else the writer is woken to write it, as usual."""
        self._dirty = False
        write = self._write_now
        if write is None or self.closed:
            return
        frames, size = self.outbox.write_through(write)
        if frames:
            self._written(frames, size)

    def send_now(self, frame: Frame, seq: int) -> None:
        """Deliver a frame that is this member's only one in its room's batch (a
        one-command batch's broadcast): written to the socket at once when its
        writer is idle with nothing queued and the socket takes it, so nothing is
        queued, counted against the outbox budget and flushed for it; queued with
        :meth:`deliver` otherwise."""
        write = self._write_now
        if (
            write is None
            or self._dirty
            or self._missed_count
            or self.closed
            or type(frame) is not bytes
            or not self.outbox.write_direct(write, frame)
        ):
            self.deliver(frame, seq)
            return
        self._written(1, len(frame))

    def _written(self, frames: int, size: int) -> None:
        """Count what the room wrote to the socket itself (the writer counts its own)."""
        self.messages_out += frames
        self.bytes_out += size
        counter = self._bytes_out
        if counter is None and self.metrics is not None:
            counter = self._bytes_out = self.metrics.bytes_out[self.labels[1]]
        if counter is not None:
            counter.inc(size)

    def deliver(self, frame: Queued, seq: int | None = None) -> None:
        """Queue a frame without blocking; apply the slow-client policy if full."""
        if self.closed:
            return
        flushes = self._flushes
        if flushes is not None and not self._dirty:
            self._dirty = True
            flushes.append(self)
        if self._missed_count and not self._report_missed():
            self._overflow(seq)
            return
        try:
            self.outbox.send_nowait(frame)
        except trio.WouldBlock:
            self._overflow(seq)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            self.closed = True

    def kick(self, code: int, reason: str) -> None:
        """Close this connection from the room's side (never blocks)."""
        if self.closed:
            return
        self.closed = True
        self.close_code = code
        self.close_reason = reason
        self.outbox.close()
        if self.kick_scope is not None:
            self.kick_scope.cancel()
        if self._kicked is not None:
            self._kicked.set()

    def _overflow(self, seq: int | None) -> None:
        if self.policy != "drop":
            if self.metrics is not None and not self.closed:
                self.metrics.slow_disconnects.inc()
            self.kick(CloseCode.SLOW_CLIENT, "slow client: outbox full")
            return
        self.dropped += 1
        if self.metrics is not None:
            self.metrics.slow_drops.inc()
        self._missed_count += 1
        if seq is not None:
            first, last = self._missed or (seq, seq)
            self._missed = (min(first, seq), max(last, seq))

    def _report_missed(self) -> bool:
        if self._missed is not None:
            first, last = self._missed
            what = f"seq {first}..{last}" if first != last else f"seq {first}"
            text = f"slow connection: {self._missed_count} message(s) dropped ({what})"
        else:
            text = f"slow connection: {self._missed_count} reply message(s) dropped"
        try:
            self.outbox.send_nowait(self.encode(Error(text)))
        except trio.WouldBlock:
            return False
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            self.closed = True
            return False
        self._missed = None
        self._missed_count = 0
        if self.metrics is not None:
            self.metrics.errors["slow_client"].inc()
        return True
