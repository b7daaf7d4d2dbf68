"""The room task: the single ordering point of one room on this node.

Everything that reads or changes a room (push, get, ping, join, leave, debug
attach, a shared store's events) arrives through the room's bounded inbox and is
handled here, in order, in batches. The ordering step is the room's
:class:`~drifttrio.runtime.orderer.Orderer`: it gives pushes their seqs, makes
them durable and only then delivers their effects, so no member ever sees a seq
that storage could take back. Membership, the join gates, delivery, metrics and
logging are this module's alone, for every kind of room. Delivery never awaits a
socket.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from contextlib import suppress
from typing import Any, TypeGuard

import attrs
import trio

from .._errors import CloseCode, ProtocolError
from ..core.join_gate import GateMode, Held, JoinGate, Offer
from ..core.recent_keys import RecentKeys
from ..core.room_state import PushOutcome, RoomState, StreamChange
from ..hooks._api import (
    HookRefused,
    MemberJoined,
    MemberLeft,
    Refuse,
    Replace,
    RoomView,
)
from ..hooks._runner import HookRunner, push_request
from ..protocol.messages import Error, Init, Pong, PushEvent, SeqValue, StreamSize
from ..storage.base import Storage
from .commands import (
    GATES_DUE,
    Command,
    FeedEvents,
    FeedLost,
    GatesDue,
    GetCommand,
    Join,
    Leave,
    Ordered,
    Origin,
    PingCommand,
    PushCommand,
    Reply,
    Request,
)
from .config import Config
from .effects import Broadcast, Done, Effect, InitReply, Release
from .member import Frame, InitStream, Member
from .member import _size as frame_size
from .metrics import Metrics
from .orderer import LocalOrderer, Orderer
from .redact import room_tag

__all__ = [
    "Command",
    "GetCommand",
    "Join",
    "Leave",
    "PingCommand",
    "PushCommand",
    "Reply",
    "Room",
    "RoomEnded",
]

log = logging.getLogger("drifttrio.room")


class RoomEnded(Exception):
    """Raised inside a room task to end the room and close its members with ``code``."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


#: The ``messages_in`` kind of commands other than pushes.
_KINDS: dict[type, str] = {GetCommand: "get", PingCommand: "ping"}


class Room:
    """One live room. Start :meth:`run` in a nursery; talk to it through :attr:`inbox`.

    ``orderer`` is its ordering step (by default, this node orders it on ``state``
    and commits to ``storage``). What an orderer may use of the room: :attr:`state`,
    :meth:`apply`, :meth:`broadcast_of`, :meth:`holds`, :meth:`count_in`,
    :meth:`deliver`, :attr:`metrics`, :attr:`inbox` and :attr:`closed`."""

    def __init__(
        self,
        room_id: str,
        state: RoomState,
        storage: Storage,
        config: Config,
        on_exit: Callable[[Room], None] = lambda room: None,
        metrics: Metrics | None = None,
        orderer: Orderer | None = None,
        hooks: HookRunner | None = None,
        *,
        timers: trio.Nursery,
    ) -> None:
        self.room_id = room_id
        #: The application's room logic: ``decide`` runs here, in the room's order,
        #: and membership events are told from here.
        self._hooks = hooks
        self._decides = hooks is not None and hooks.decides
        self.metrics = metrics or Metrics()
        # Messages in and out, counted during a batch and added to the metrics once.
        self._in: dict[str, int] = {}
        self._out: dict[str, int] = {}
        self.state = state
        self.storage = storage
        self.config = config
        self.orderer: Orderer = orderer or LocalOrderer(storage, state.seq)
        self._on_exit = on_exit
        self.inbox, self._commands = trio.open_memory_channel[Command | GatesDue](
            config.room_inbox_size
        )
        self.members: set[Member] = set()
        self._debug_members = 0
        #: Keys relayed lately: not retained, so listed to debug members on join.
        self.relay_keys = RecentKeys()
        #: Members whose join gate holds broadcasts, in join order (the first one's
        #: gate opens first: every gate gets the same hold time).
        self._holding: dict[Member, JoinGate[Frame]] = {}
        #: When the gates' timer wakes the room (``None``: no timer is running).
        self._gates_due_at: float | None = None
        #: Where the join gates' timer runs (the hub's nursery: a nursery of the room's
        #: own would cost each room about 1.3 KiB). See :meth:`_watch_gates`.
        self._timers = timers
        #: When the room was last used from this node (a command, or members present):
        #: a shared store's events alone do not keep a room with no members alive.
        self._used_at = -math.inf
        #: The batch in hand (or the last one): its callers are failed if the room dies.
        self._batch: list[Command] = []
        #: Members delivered to during this batch, whose frames the room writes (or
        #: hands to their writers) once the batch is delivered: see ``Member.flush``.
        self._flushes: list[Member] = []
        self.closed = False
        #: Set once the task has ended and the room has left its hub.
        self.ended = trio.Event()

    # -- the task --------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        self._used_at = trio.current_time()
        close_code = CloseCode.GOING_AWAY
        commands = self._commands
        task_status.started()
        try:
            while True:
                if self.members:
                    # Awaited right here, with no deadline (no cancel scope to pay
                    # for) and no coroutine frames to wake through on the way.
                    try:
                        command = await commands.receive()
                    except trio.EndOfChannel:
                        return  # the inbox was closed (server drain), and is empty
                else:
                    idle = await self._receive_idle()
                    if idle is None:
                        return  # idle: evicted, or drained
                    command = idle
                if isinstance(command, GatesDue):
                    self._end_batch()  # (what the gates let flow goes out)
                    continue
                if not self._still_used(command):
                    return  # idle: evicted
                self._batch = batch = self._drain(command)
                self.metrics.batch_commands.observe(len(batch))
                try:
                    await self._handle_batch(batch)
                finally:
                    self._end_batch()
        except RoomEnded as exc:
            log.warning("room %s ended: %s", room_tag(self.room_id), exc.reason)
            close_code = exc.code
        except Exception:
            # Storage failing even to reload, or a bug: end this room alone. Members
            # reconnect and the hub loads the room again from what was committed.
            log.exception("room %s stopped", room_tag(self.room_id))
            self.metrics.rooms_crashed.inc()
            close_code = CloseCode.INTERNAL_ERROR
        finally:
            await self._end(close_code)

    async def _end(self, close_code: int) -> None:
        self.closed = True
        # Wake whoever still waits on this room: the batch in hand, then what is
        # queued (no checkpoint until the inbox is closed, so nothing slips in).
        for c in self._batch:
            if isinstance(origin := getattr(c, "origin", None), Reply):
                origin.fail("room unavailable, try again")
        with suppress(trio.WouldBlock, trio.EndOfChannel):
            while True:
                left = self._commands.receive_nowait()
                origin = getattr(left, "origin", None)
                if isinstance(origin, Reply):
                    origin.fail("room unavailable, try again")
        self._commands.close()
        self._on_exit(self)
        for conn in self.members:
            conn.kick(close_code, "room closed")
        self._members_left()
        with trio.move_on_after(1.0) as scope:
            scope.shield = True
            await self.orderer.aclose(self)
        self.ended.set()

    def _still_used(self, command: Command) -> bool:
        """Whether the room lives on to handle ``command``: not when it is a shared
        store's notice and the room has had no members and no use from this node
        for ``room_idle_seconds``."""
        if isinstance(command, (FeedEvents, FeedLost)):
            if (
                not self.members
                and trio.current_time() - self._used_at > self.config.room_idle_seconds
                and self._commands.statistics().current_buffer_used == 0
            ):
                return False
        elif not self.members or isinstance(command, Leave):
            # Members count as use until the last one leaves: no clock read per batch.
            self._used_at = trio.current_time()
        return True

    def _end_batch(self) -> None:
        """After a batch (or the gates' timer's nudge): open the join gates whose time
        is up, write what the members got, count it. While the timer is set, no gate
        is due yet: the gates are looked at once it has fired (or lost its nudge)."""
        if self._holding and self._gates_due_at is None:
            self._open_expired_gates()
            self._watch_gates()
        self._flush_members()
        self._flush_counts()

    async def _receive_idle(self) -> Command | GatesDue | None:
        """The next command for a room without members; ``None`` once its inbox is
        closed, or ``room_idle_seconds`` after its last use (a join gates' nudge is
        no use: it leaves the deadline where it was)."""
        while True:
            with trio.move_on_at(self._used_at + self.config.room_idle_seconds):
                try:
                    return await self._commands.receive()
                except trio.EndOfChannel:
                    return None  # the inbox was closed (server drain), and is empty
            # Timed out with no members; a sender may have slipped a command in
            # while we were being woken up, so only leave when truly empty.
            if self._commands.statistics().current_buffer_used == 0:
                return None

    def _flush_members(self) -> None:
        flushes = self._flushes
        if flushes:
            for conn in flushes:
                conn.flush()
            flushes.clear()

    def _drain(self, first: Command) -> list[Command]:
        batch = [first]
        while len(batch) < self.config.room_batch_size:
            try:
                command = self._commands.receive_nowait()
            except (trio.WouldBlock, trio.EndOfChannel):
                break  # nothing more now; or the inbox was closed and this was its last
            if not isinstance(command, GatesDue):  # (the batch's end looks at the gates)
                batch.append(command)
        return batch

    async def _handle_batch(self, commands: list[Command]) -> None:
        """Order the batch run by run: membership changes are barriers, applied once
        what came before them is ordered and delivered."""
        run: list[Ordered] = []
        for command in commands:
            if isinstance(command, (Join, Leave)):
                if run:
                    await self.orderer.order(self, run)
                    run = []
                self._membership(command)
            else:
                run.append(command)
        if run:
            await self.orderer.order(self, run)
        await self.orderer.finish_batch(self)

    # -- applying commands --------------------------------------------------------------

    def _membership(self, command: Join | Leave) -> None:
        conn = command.conn
        hooks = self._hooks
        if isinstance(command, Leave):
            if conn in self.members:
                self.members.discard(conn)
                self._debug_members -= conn.debug
                self._forget_gate(conn)
                if hooks is not None and conn.encoder is not None:
                    hooks.emit(MemberLeft(self.room_id, conn.identity, len(self.members)))
            return
        if conn.closed:
            return
        self.members.add(conn)
        if hooks is not None and conn.encoder is not None:
            hooks.emit(MemberJoined(self.room_id, conn.identity, len(self.members)))
        conn.attach(self._flushes)
        self._attach_gate(conn)
        if conn.debug:
            self._debug_members += 1
            streams = self.state.streams
            parts = [self._snapshot(key) for key in streams]
            # A relay-only key gets an empty init, as a get of it would.
            parts += [self._snapshot(key) for key in self.relay_keys if key not in streams]
            if parts:
                conn.deliver(InitStream(parts, self.config.init_chunk_bytes, conn.encode))
                self._out["init"] = self._out.get("init", 0) + len(parts)

    def apply(self, command: Request, changes: list[StreamChange], effects: list[Effect]) -> None:
        """Apply ``command`` to the room's state: its stream change (if a push changed
        a retained stream) goes to ``changes``, what to deliver to ``effects``."""
        origin = command.origin
        kind = command.action.TAG if isinstance(command, PushCommand) else _KINDS[type(command)]
        self._in[kind] = self._in.get(kind, 0) + 1
        if not isinstance(command, GetCommand) and self.holds(origin):
            effects.append(Release(origin, None))
        if isinstance(command, PushCommand):
            try:
                if self._decides:
                    command = self._decide(command)
                outcome = self.state.push(
                    command.key, command.value, command.action, command.expect_seq
                )
            except ProtocolError as exc:
                self.metrics.errors["hook" if isinstance(exc, HookRefused) else "refused"].inc()
                if isinstance(origin, Reply):
                    origin.refused(exc)
                effects.append((origin, Error(exc.message)))
            else:
                change = outcome.change
                if change is not None:
                    changes.append(change)
                broadcast = self.broadcast_of(command.key, outcome)
                if broadcast is not None:
                    effects.append(broadcast)
                if outcome.stream_size is not None:
                    effects.append((origin, StreamSize(command.key, outcome.stream_size)))
        elif isinstance(command, GetCommand):
            if isinstance(origin, Reply):
                if command.since is not None:
                    data = tuple(self.state.get(command.key, command.since))
                    effects.append((origin, Init(command.key, data)))
            else:
                answer = self._answer_get(origin, command)
                if answer is not None:
                    effects.append(answer)
                if origin.gate is not None and command.key in origin.subscriptions:
                    # Answered (not refused by the subscription cap): after the init,
                    # the gate lets the key flow.
                    effects.append(Release(origin, command.key, command.since is not None))
        elif isinstance(command, PingCommand):
            effects.append((origin, Pong(command.nonce)))
        if isinstance(origin, Reply):
            effects.append(Done(origin))

    def _decide(self, command: PushCommand) -> PushCommand:
        """The push as the ``decide`` hook lets it through (its value maybe
        replaced); :class:`HookRefused` if the hook refuses it."""
        assert self._hooks is not None
        origin = command.origin
        request = push_request(
            self.room_id,
            command.key,
            command.action,
            command.value,
            command.identity,
            origin.source if isinstance(origin, Reply) else "websocket",
        )
        decision = self._hooks.decide(RoomView(self.room_id, self.state), request)
        if isinstance(decision, Refuse):
            raise HookRefused(decision)
        if isinstance(decision, Replace):
            return attrs.evolve(command, value=decision.value)
        return command

    def broadcast_of(self, key: str, outcome: PushOutcome) -> Broadcast | None:
        """What to deliver for an applied push: the broadcast, and for debug members
        the stream's new length after a change (also after a quiet compact). A
        relay's key is remembered for debug members joining later."""
        change = outcome.change
        if change is None and outcome.broadcast is not None:
            self.relay_keys.add(key)
        if change is None or not self._debug_members:
            if outcome.broadcast is None:
                return None
            return Broadcast(key, outcome.broadcast, retained=change is not None)
        public = outcome.broadcast is not None
        return Broadcast(key, change.entry, public, self._length(key), retained=True)

    def _answer_get(self, conn: Member, command: GetCommand) -> Effect | None:
        """Subscribe ``conn`` to the key (within its cap) and snapshot the ``init``
        it asked for; the writer encodes it in chunks."""
        limit = self.config.max_subscriptions_per_connection
        key = command.key
        if key not in conn.subscriptions:
            if limit and len(conn.subscriptions) >= limit:
                self.metrics.errors["refused"].inc()
                return (
                    conn,
                    Error(
                        f"get refused: this connection has reached its limit of {limit} "
                        "subscribed keys (max_subscriptions_per_connection)"
                    ),
                )
            conn.subscriptions.add(key)
        if command.since is None:
            return None  # subscribed, no replay
        part = self._snapshot(key, command.since)
        return InitReply(conn, InitStream([part], self.config.init_chunk_bytes, conn.encode))

    def _snapshot(self, key: str, since: int = 0) -> tuple[str, list[SeqValue], list[int] | None]:
        """The retained values of ``key`` after ``since`` (a copy of the references)
        with their sizes when the room tracks them."""
        stream = self.state.streams.get(key)
        if stream is None:
            return key, [], None
        values = stream.since(since)
        if len(stream.sizes) != len(stream.entries) or not self.state.limits.max_room_bytes:
            return key, values, None
        return key, values, stream.sizes[len(stream.entries) - len(values) :]

    def _length(self, key: str) -> int:
        stream = self.state.streams.get(key)
        return 0 if stream is None else len(stream.entries)

    # -- delivery -------------------------------------------------------------------

    def count_in(self, kind: str) -> None:
        """Count one message in of ``kind`` (added to the metrics after the batch)."""
        self._in[kind] = self._in.get(kind, 0) + 1

    def deliver(self, effect: Effect) -> None:
        """Deliver one effect now (the orderer calls this once it is durable)."""
        if isinstance(effect, Broadcast):
            self._broadcast(effect)
        elif isinstance(effect, InitReply):
            effect.conn.deliver(effect.init)
            self._out["init"] = self._out.get("init", 0) + 1
        elif isinstance(effect, Done):
            effect.origin.done.set()
        elif isinstance(effect, Release):
            self._release(effect)
        else:
            origin, message = effect
            self._out[message.TAG] = self._out.get(message.TAG, 0) + 1
            origin.send_message(message)

    def _broadcast(self, effect: Broadcast) -> None:
        key, entry = effect.key, effect.entry
        message = PushEvent(key, entry.value, entry.seq)
        frames: dict[Any, Frame] = {}
        delivered = held = 0
        public = effect.public
        # A batch of one push: its broadcast is all the members get from it (an error
        # for its sender comes after it), so each one's frame can go out now.
        batch = self._batch
        alone = len(batch) == 1 and type(batch[0]) is PushCommand
        for conn in self.members:
            if conn.debug:
                if effect.debug_size is not None:
                    self._debug_change(conn, effect, frames)
                    continue
            elif not public:
                continue
            frame = frames.get(conn.encoder)
            if frame is None:
                frame = frames[conn.encoder] = conn.encode(message)
            gate = conn.gate
            if gate is not None and not gate.lets_through(key):
                offer = self._pass_gate(conn, key, frame, effect)
                if offer is not Offer.DELIVER:
                    # Held (or sent with what the gate held): it is for this member.
                    held += offer is not Offer.SKIP
                    continue
            if alone:
                conn.send_now(frame, entry.seq)
            else:
                conn.deliver(frame, entry.seq)
            delivered += 1
        self.metrics.fanout.observe(delivered + held)
        self._out["push"] = self._out.get("push", 0) + delivered

    def _debug_change(self, conn: Member, effect: Broadcast, frames: dict[Any, Frame]) -> None:
        """A change as a debug member sees it: the push, then the stream's new
        length, from which the inspector rebuilds the stream (O(1) per push)."""
        entry = effect.entry
        push = frames.get(conn.encoder)
        if push is None:
            message = PushEvent(effect.key, entry.value, entry.seq)
            push = frames[conn.encoder] = conn.encode(message)
        size_key = ("size", conn.encoder)
        size = frames.get(size_key)
        if size is None:
            assert effect.debug_size is not None
            size = frames[size_key] = conn.encode(StreamSize(effect.key, effect.debug_size))
        conn.deliver(push, entry.seq)
        conn.deliver(size)
        self._out["push"] = self._out.get("push", 0) + 1
        self._out["stream_size"] = self._out.get("stream_size", 0) + 1

    # -- the join gate: who receives a push before asking (core/join_gate.py) -----------

    def _attach_gate(self, conn: Member) -> None:
        """Give a joining member its gate. WebSocket members in the default mode hold
        broadcasts until they ask; explicit ones only get what they ask for; debug
        members and in-process ones without keys receive everything from the join."""
        if conn.debug:
            return
        if conn.explicit:
            conn.gate = JoinGate(GateMode.EXPLICIT)
        elif conn.asks_after_join and self.config.join_hold_seconds > 0:
            conn.gate = JoinGate(
                GateMode.HOLDING,
                opens_at=trio.current_time() + self.config.join_hold_seconds,
                max_items=self.config.outbox_messages,
                max_bytes=self.config.outbox_bytes,
            )
            self._holding[conn] = conn.gate
            self._watch_gates()

    @staticmethod
    def holds(origin: Origin) -> TypeGuard[Member]:
        """Whether ``origin`` is a member whose gate holds (its ping or push opens it)."""
        return (
            isinstance(origin, Member)
            and origin.gate is not None
            and origin.gate.mode is GateMode.HOLDING
        )

    def _forget_gate(self, conn: Member) -> None:
        self._holding.pop(conn, None)
        conn.gate = None

    def _pass_gate(self, conn: Member, key: str, frame: Frame, effect: Broadcast) -> Offer:
        """Offer a broadcast to ``conn``'s gate; ``DELIVER``: it goes to ``conn`` now."""
        gate = conn.gate
        assert gate is not None
        offer = gate.offer(
            key,
            frame,
            effect.entry.seq,
            retained=effect.retained,
            size=frame_size(frame),
            queued=(len(conn.outbox), conn.outbox.queued_bytes),
        )
        if offer is Offer.FULL:
            self._let_flow(conn, gate.open())
        return offer

    def _release(self, effect: Release) -> None:
        conn, gate = effect.conn, effect.conn.gate
        if gate is None:
            return
        if effect.key is None:
            held = gate.spoke()
        else:
            held = gate.asked(effect.key, init_sent=effect.init_sent)
        self._let_flow(conn, held)

    def _watch_gates(self) -> None:
        """Make sure the room hears when its first held gate's time is up, even with
        nothing else arriving: one timer task at a time, sleeping until then (a
        deadline per batch, while gates hold, cost a cancel scope per message). It
        may outlive the room by up to ``join_hold_seconds``: its nudge then finds
        the inbox closed, and does nothing."""
        if self._gates_due_at is None and self._holding:
            due = next(iter(self._holding.values())).opens_at
            self._gates_due_at = due
            self._timers.start_soon(self._gates_timer, due)

    async def _gates_timer(self, due: float) -> None:
        await trio.sleep_until(due)
        self._gates_due_at = None  # a full or closed inbox: the room re-arms after its batch
        with suppress(trio.WouldBlock, trio.BrokenResourceError, trio.ClosedResourceError):
            self.inbox.send_nowait(GATES_DUE)

    def _open_expired_gates(self) -> None:
        holding = self._holding
        now = trio.current_time()
        while holding:
            conn, gate = next(iter(holding.items()))  # the first to open (join order)
            if not gate.expired(now):
                break
            self._let_flow(conn, gate.open())  # (which forgets it)
            holding.pop(conn, None)  # (whatever happens, never looked at twice)

    def _let_flow(self, conn: Member, held: list[Held[Frame]]) -> None:
        """Deliver what a gate gave back; drop the gate once it is open."""
        if conn.gate is not None and conn.gate.mode is GateMode.OPEN:
            self._forget_gate(conn)
        for h in held:
            conn.deliver(h.item, h.seq)
        if held:
            self._out["push"] = self._out.get("push", 0) + len(held)

    def _flush_counts(self) -> None:
        metrics = self.metrics
        for kind, n in self._in.items():
            metrics.messages_in[kind].inc(n)
        for kind, n in self._out.items():
            metrics.messages_out[kind].inc(n)
        self._in.clear()
        self._out.clear()

    def _members_left(self) -> None:
        """Tell the hooks the members still here when the room ends have left: their
        ``Leave`` finds the inbox closed (a deleted room, a shutdown, a crash)."""
        hooks = self._hooks
        if hooks is None:
            return
        members = len(self.members)
        for conn in self.members:
            members -= 1
            if conn.encoder is not None:
                hooks.emit(MemberLeft(self.room_id, conn.identity, members))

    def close_members(self, code: int, reason: str) -> None:
        """Ask every member to close (server shutdown)."""
        for conn in self.members:
            conn.kick(code, reason)
