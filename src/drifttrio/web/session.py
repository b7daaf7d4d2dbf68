"""One WebSocket member's session, over any :class:`~drifttrio.web.peer.Peer`.

A reader (this task) decodes client messages, applies the per-connection limits
(rate limit, size, consecutive errors, read-only tokens), charges each message
to its client address's budget (messages, bytes and nodes, counted before the
decode) and hands commands to the room; a writer drains the member's outbox to
the peer, a batch at a time (one write with drifttrio's own transport).
Either side ending ends both.
"""

from __future__ import annotations

from contextlib import suppress
from functools import partial
from typing import Any

import trio

from .._errors import CloseCode, ProtocolError
from ..hooks import Admit, Refuse
from ..hooks._api import ADMIT_ALL
from ..hooks._runner import HookRunner
from ..protocol.codec import (
    cbor_nodes,
    decode_cbor_client_message,
    decode_json_client_message,
    json_nodes,
)
from ..protocol.messages import ClientMessage, Error, Get, Ping, Push
from ..runtime.config import Config
from ..runtime.member import Member
from ..runtime.room import Command, GetCommand, Leave, PingCommand, PushCommand, Room
from .limits import ClientBudgets, TokenBucket
from .peer import Peer
from .policy import READ_ONLY_REFUSAL, count_invalid, key_refusal, screen_push

__all__ = ["Session", "command_for"]

_CLOSE_DRAIN_SECONDS = 1.0


def command_for(message: ClientMessage, origin: Any) -> Command:
    """The room command for a decoded client message from ``origin`` (a push
    unscreened: see :func:`~drifttrio.web.policy.screen_push`)."""
    if isinstance(message, Push):
        return PushCommand(message.key, message.value, message.action, origin)
    if isinstance(message, Get):
        return GetCommand(message.key, message.seq, origin)
    assert isinstance(message, Ping)
    return PingCommand(message.nonce, origin)


class Session:
    """Run one joined member over its :class:`~drifttrio.web.peer.Peer`."""

    def __init__(
        self,
        config: Config,
        conn: Member,
        room: Room,
        peer: Peer,
        *,
        read_only: bool = False,
        budgets: ClientBudgets | None = None,
        ip: str = "unknown",
        admit: Admit = ADMIT_ALL,
        hooks: HookRunner | None = None,
    ) -> None:
        self.config = config
        self.conn = conn
        self.room = room
        self.peer = peer
        #: A read-only room token: pushes are refused with ``error``.
        self.read_only = read_only
        #: What the client address ``ip`` may spend, shared by all its connections.
        self.budgets = budgets or ClientBudgets()
        self.ip = ip
        #: What the authorize hook admitted this member with (its identity, the keys
        #: it may write), and the hooks screening its pushes.
        self.admit = admit
        self.hooks = hooks

    async def run(self) -> tuple[int | None, str, bool]:
        """Run until either side ends; return the close code, its reason, and
        whether the peer closed (then the code is the peer's, if it sent one)."""
        conn, room, peer = self.conn, self.room, self.peer
        close_code: int | None = None
        reason = ""
        peer_gone = False
        outcome: list[Any] = [None, "", False]
        try:
            await peer.accept()
            async with trio.open_nursery() as nursery:
                # A kick (slow client, shutdown) cancels reader and writer at once.
                conn.kick_scope = nursery.cancel_scope
                if conn.close_code is not None:
                    nursery.cancel_scope.cancel()  # kicked before the session started
                nursery.start_soon(self._writer, nursery.cancel_scope)
                close_code, reason = await self._reader()
                peer_gone = close_code is None
                if peer_gone:
                    outcome[:] = [conn.peer_close_code, "", True]
                if not peer_gone:
                    # We chose to close (e.g. 4000): let the writer flush the errors
                    # explaining why; it cancels the nursery when drained.
                    conn.outbox.close()
                    with trio.move_on_after(self.config.write_timeout):
                        await trio.sleep_forever()
                nursery.cancel_scope.cancel()
        finally:
            conn.closed = True
            conn.outbox.discard()  # what is left will not be sent: free its share
            with trio.move_on_after(self.config.write_timeout) as scope:
                scope.shield = True
                with suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                    await room.inbox.send(Leave(conn))
                if conn.close_code is not None:
                    close_code, reason = conn.close_code, conn.close_reason
                if close_code is not None:
                    outcome[:] = [close_code, reason, False]
                    await peer.close(close_code, reason)
            # Keep reading for a moment, until the peer's close: hypercorn waits
            # (shielded) to hand this app frames the peer sent before our close, and
            # would stall its connection.
            with trio.move_on_after(min(_CLOSE_DRAIN_SECONDS, self.config.write_timeout)) as drain:
                drain.shield = True
                while not peer_gone:
                    peer_gone = await peer.receive() is None
        code, why, by_peer = outcome
        return code, why, by_peer

    async def _reader(self) -> tuple[int | None, str]:
        conn, room, peer = self.conn, self.room, self.peer
        limits = self.config.decode_limits
        metrics = conn.metrics
        assert metrics is not None
        bytes_in = metrics.bytes_in[conn.labels[1]]
        max_bytes = self.config.max_message_bytes
        max_errors = self.config.max_consecutive_errors
        errors = 0
        bucket = TokenBucket(self.config.rate_limit_per_second, self.config.rate_limit_burst)
        # Under a generic ASGI server every frame is a write of its own, the dearest
        # step of all: before reading on, let this member's writer take what is
        # queued for it (at most one writer cycle). Input then arrives in batches:
        # fewer reads and room batches per message, and a client that reads nothing
        # is not read from either. drifttrio's transport writes a batch at once.
        pace = peer.paced
        budgets, ip = self.budgets, self.ip
        # Pushes are screened (keys it may write, the on_push hook) only when the
        # application has a say: without hooks this costs one test per message.
        admit, hooks, room_id = self.admit, self.hooks, room.room_id
        screened = admit is not ADMIT_ALL or (hooks is not None and hooks.screens_pushes)
        while True:
            if pace:
                await conn.outbox.wait_taken()
            message = await peer.receive()
            if message is None:
                conn.peer_close_code = peer.close_code
                return None, ""  # the peer is gone
            conn.messages_in += 1
            data, binary = message
            size = len(data)
            conn.bytes_in += size
            bytes_in.inc(size)
            # (drifttrio's transport refuses a message over the limit on its first
            # frame header already; an ASGI server hands it over whole.)
            if size > max_bytes:
                metrics.rejected["max_message_bytes"].inc()
                return CloseCode.MESSAGE_TOO_BIG, f"message larger than {max_bytes} bytes"
            # Over the connection's rate limit or its address's budget a message waits,
            # it is not dropped: the npm client ignores ``error``, so a dropped append
            # would be lost without a word. This connection is read no faster than its
            # limits (TCP paces the client); its address's other connections wait
            # behind the address's debt. Charged before the decode, and counted
            # (bounded by the limit) only once the message and its bytes are paid for.
            wait = bucket.debit()
            if wait > 0.0:
                metrics.rejected["rate_limit"].inc()
                await trio.sleep(wait)
            nodes_of = cbor_nodes if binary else json_nodes
            wait, nodes = budgets.debit_message(ip, size, partial(nodes_of, data, limits.max_nodes))
            if wait > 0.0:
                metrics.rejected["address_budget"].inc()
                await trio.sleep(wait)
                if nodes < 0:
                    nodes = nodes_of(data, limits.max_nodes)
                    wait = budgets.debit_work(ip, nodes)
                    if wait > 0.0:
                        await trio.sleep(wait)
            decode = decode_cbor_client_message if binary else decode_json_client_message
            try:
                client_message = decode(data, limits, nodes=nodes)
            except ProtocolError as exc:
                count_invalid(metrics, nodes, limits)
                errors += 1
                conn.tell(Error(exc.message))
                if max_errors and errors >= max_errors:
                    return CloseCode.TOO_MANY_ERRORS, "too many invalid messages"
                continue
            # A push its token or its admission forbids is the client's error, counted
            # like an invalid message; a push the room logic refuses (below) is not.
            if isinstance(client_message, Push) and (
                self.read_only or (screened and not admit.may_write(client_message.key))
            ):
                errors += 1
                if self.read_only:
                    conn.tell(Error(READ_ONLY_REFUSAL))
                else:
                    metrics.errors["hook"].inc()
                    conn.tell(Error(key_refusal(client_message.key)))
                if max_errors and errors >= max_errors:
                    return CloseCode.TOO_MANY_ERRORS, "too many invalid messages"
                continue
            errors = 0
            if screened and isinstance(client_message, Push):
                screen = await screen_push(hooks, admit, room_id, client_message, "websocket", ip)
                if isinstance(screen, Refuse):
                    metrics.errors["hook"].inc()
                    conn.tell(Error(screen.reason))
                    continue
                value, expect_seq = screen
                push = client_message
                command: Command = PushCommand(
                    push.key, value, push.action, conn, admit.identity, expect_seq
                )
            else:
                command = command_for(client_message, conn)
            try:
                # Without yielding while there is room: every message already read
                # reaches the room before it wakes, so it applies (and commits, and
                # fans out) them as one batch. A full inbox makes this reader wait.
                room.inbox.send_nowait(command)
            except trio.WouldBlock:
                try:
                    await room.inbox.send(command)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    return CloseCode.GOING_AWAY, "room closed"
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                return CloseCode.GOING_AWAY, "room closed"

    async def _writer(self, scope: trio.CancelScope) -> None:
        conn, peer = self.conn, self.peer
        assert conn.metrics is not None
        bytes_out = conn.metrics.bytes_out[conn.labels[1]]
        try:
            while True:
                frames = await conn.outbox.receive_batch()
                if conn.close_code is not None:
                    break  # kicked: close now, whatever is queued
                conn.messages_out += len(frames)
                size = await peer.send(frames)
                conn.bytes_out += size
                bytes_out.inc(size)
        except trio.EndOfChannel:
            pass
        finally:
            scope.cancel()
