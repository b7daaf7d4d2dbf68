"""One WebSocket of drifttrio's own transport: a :class:`~drifttrio.web.peer.Peer`.

It answers the handshake (the bytes from :mod:`~drifttrio.web.handshake`), then
:class:`~drifttrio.web.frames.FrameReader` reads the client's frames. The
connection's progress is one explicit :class:`WebSocketState`; each event checks
it and moves it, and an event that does not fit the state (a second accept, a
message after our close frame) is dropped.

Control frames never stall the reader: pings are answered by a separate task
(a flood gets one pong, for the latest ping), and pings and pongs are charged
to a per-connection token bucket and to the client address's
:class:`~drifttrio.web.limits.ClientBudgets`: over it they are dropped, and
``_MAX_REFUSED_IN_A_ROW`` refused in a row close the connection with 4029.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import MutableMapping, Sequence
from typing import Any, Final

import trio

from .._errors import CloseCode
from ..protocol.codec import Codec
from ..runtime.config import Config
from ..runtime.member import Encoder, Frame
from .frames import (
    FRAME_ENCODERS,
    Close,
    FrameError,
    FrameReader,
    Message,
    Ping,
    close_frame,
    ping_frame,
    pong_frame,
)
from .handshake import accept_response, reject_response
from .limits import ClientBudgets, TokenBucket
from .liveness import Liveness
from .wire import Wire, WireClosed, client_errors, log

__all__ = ["FRAGMENT_COST", "WebSocket", "WebSocketState"]

#: Bytes each non-final fragment of a message counts towards ``max_message_bytes``
#: at least: a flood of empty continuation frames is closed with 1009 too.
FRAGMENT_COST = 64

#: Control frames refused in a row before the connection is closed with 4029.
_MAX_REFUSED_IN_A_ROW: Final = 100


class WebSocketState(enum.Enum):
    """Where one WebSocket is; moves only forwards (top to bottom)."""

    #: Upgrade request read; the handshake awaits the app's accept or reject.
    HANDSHAKE = enum.auto()
    #: Accepted: messages go both ways.
    OPEN = enum.auto()
    #: The peer stopped sending without a close frame (end of stream): nothing
    #: more to read, but we may still write until the app closes.
    PEER_DONE = enum.auto()
    #: We sent a close frame: nothing more goes out; reading goes on until the
    #: peer's close frame or end of stream.
    CLOSING = enum.auto()
    #: Over (closed both ways, rejected, broken or ended): nothing is read or written.
    CLOSED = enum.auto()


_HANDSHAKE: Final = WebSocketState.HANDSHAKE
_OPEN: Final = WebSocketState.OPEN
_PEER_DONE: Final = WebSocketState.PEER_DONE
_CLOSING: Final = WebSocketState.CLOSING
_CLOSED: Final = WebSocketState.CLOSED


class WebSocket:
    """One WebSocket, as the app admits it and a member's
    :class:`~drifttrio.web.session.Session` runs over it (a
    :class:`~drifttrio.web.peer.Peer`)."""

    #: The connection metrics' ``transport`` label.
    transport: Final = "drifttrio"
    #: A member's queued frames go out in one write: its reader need not wait.
    paced: Final = False

    __slots__ = (
        "_config",
        "_control",
        "_key",
        "_ping",
        "_ping_arrived",
        "_refused",
        "budgets",
        "close_code",
        "expired",
        "heard",
        "liveness",
        "nursery",
        "reader",
        "scope",
        "state",
        "wire",
    )

    def __init__(
        self,
        scope: MutableMapping[str, Any],
        key: bytes,
        wire: Wire,
        config: Config,
        leftover: bytes,
    ) -> None:
        self.scope = scope
        self.state = _HANDSHAKE
        #: The request's ``Sec-WebSocket-Key``, until the handshake is answered.
        self._key: bytes | None = key
        self.wire = wire
        self.reader = FrameReader(config.max_message_bytes, FRAGMENT_COST)
        self.reader.feed(leftover)
        #: Where the pong task runs, started at the first ping (set by serve_stream).
        self.nursery: trio.Nursery | None = None
        self._ping: bytes | None = None  # the latest unanswered ping's payload
        self._ping_arrived: trio.Event | None = None
        self._config = config
        #: What the client's address may spend (set by serve_stream).
        self.budgets: ClientBudgets | None = None
        #: The transport's ping timer (set by serve_stream), joined once accepted.
        self.liveness: Liveness | None = None
        #: Bytes arrived since the ping timer last looked (see Liveness).
        self.heard = True
        #: Closed by the ping timer: the peer did not answer a ping.
        self.expired = False
        #: Control frames' token bucket (made at the first one) and refusals in a row.
        self._control: TokenBucket | None = None
        self._refused = 0
        #: The code the connection ended with, once :meth:`receive` returned ``None``.
        self.close_code: int | None = None

    def encoder(self, codec: Codec) -> Encoder:
        return FRAME_ENCODERS[codec]

    async def receive(self) -> Message | None:
        """The next message, or ``None`` once the connection is over (its code in
        :attr:`close_code`)."""
        reader = self.reader
        while self.state is not _PEER_DONE and self.state is not _CLOSED:
            try:
                event = reader.next_event()
            except FrameError as exc:
                # Not the peer's close: a frame broke the protocol (unmasked, invalid
                # UTF-8, fragmented control frame, too big...). Tell the peer why.
                await self._fail(exc.code, exc.reason)
                return self._ended(exc.code)
            if event is None:
                if reader.pongs:
                    pongs, reader.pongs = reader.pongs, 0
                    self._charge_control(pongs)
                    if self._refused >= _MAX_REFUSED_IN_A_ROW:
                        return await self._rate_limited()
                data = await self.wire.receive()
                if not data:
                    # The peer finished sending: after our close frame, that ends it.
                    self.state = _PEER_DONE if self.state is _OPEN else _CLOSED
                    break
                self.heard = True
                reader.feed(data)
                continue
            if type(event) is tuple:
                return event
            if isinstance(event, Ping):
                # Answered by another task: the reader never waits on the socket, and
                # a flood of pings gets one pong, for the latest (RFC 6455 5.5.3).
                # Over the rate limit it gets none.
                if self._charge_control(1):
                    self._answer(event.payload)
                elif self._refused >= _MAX_REFUSED_IN_A_ROW:
                    return await self._rate_limited()
            elif isinstance(event, Close):
                if self.state is not _CLOSING:
                    await self._send_close(close_frame(event.code, event.reason))
                self.state = _CLOSED
                return self._ended(1005 if event.code is None else event.code)
        return self._ended(CloseCode.PING_TIMEOUT if self.expired else 1006)

    def _ended(self, code: int) -> Message | None:
        """The connection is over with ``code``: :meth:`receive` returns ``None``."""
        self.close_code = code
        return None

    def _charge_control(self, count: int) -> bool:
        """Charge ``count`` control frames to the connection's bucket (the message
        rate limit's numbers) and to the client address's budget; whether the last
        one was allowed. Stops at ``_MAX_REFUSED_IN_A_ROW`` refusals in a row."""
        bucket = self._control
        if bucket is None:
            config = self._config
            bucket = self._control = TokenBucket(
                config.rate_limit_per_second, config.rate_limit_burst
            )
        budgets = self.budgets
        ip = client_ip(self.scope)
        allowed = True
        for _ in range(count):
            allowed = bucket.take() and (budgets is None or budgets.charge(ip) == 0.0)
            if allowed:
                self._refused = 0
            else:
                self._refused += 1
                if self._refused >= _MAX_REFUSED_IN_A_ROW:
                    break
        return allowed

    async def _rate_limited(self) -> Message | None:
        """Close a control-frame flood with 4029, as the app closes a message flood."""
        client_errors.log(
            logging.INFO,
            "control flood",
            "closed a connection flooding control frames: 4029",
            client=client_ip(self.scope),
        )
        await self._fail(CloseCode.RATE_LIMITED, "control frames over the rate limit")
        return self._ended(CloseCode.RATE_LIMITED)

    async def ping(self) -> None:
        """A server ping (the ping timer's), unless the connection is closing."""
        if self.state is _OPEN:
            await self._send_bytes(ping_frame())

    async def expire(self) -> None:
        """The peer did not answer a ping: close it with 4001 and cut it off, so
        its reader ends and the app counts it out."""
        if self.state is _PEER_DONE or self.state is _CLOSED:
            return
        self.expired = True
        await self._close(CloseCode.PING_TIMEOUT, "no answer to ping")
        await self.wire.abort()

    def _answer(self, payload: bytes) -> None:
        self._ping = payload
        if self._ping_arrived is None:
            # Most connections never ping: their pong task starts at the first ping.
            assert self.nursery is not None
            self._ping_arrived = trio.Event()
            self.nursery.start_soon(self._answer_pings, self._ping_arrived)
        self._ping_arrived.set()

    async def _answer_pings(self, arrived: trio.Event) -> None:
        """Send a pong for the latest ping, whenever one has arrived, until the
        connection ends (:meth:`end`)."""
        try:
            while self.state is not _CLOSED and self.state is not _PEER_DONE:
                await arrived.wait()
                arrived = self._ping_arrived = trio.Event()
                payload, self._ping = self._ping, None
                if payload is None or self.state is not _OPEN:
                    continue
                await self._send_bytes(pong_frame(payload))
        except Exception:  # it may run in the listener's nursery: never take it down
            log.exception("pong task failed")

    def end(self) -> None:
        """The connection is over: the pong task, if any, ends too."""
        self.state = _CLOSED
        if self._ping_arrived is not None:
            self._ping_arrived.set()
        if self.liveness is not None:
            self.liveness.discard(self)

    async def _fail(self, code: int, reason: str) -> None:
        """Close on the peer's protocol error (serve_stream lingers before closing);
        nothing more is read."""
        await self._close(code, reason)
        self.wire.cut_short = True
        self.state = _CLOSED

    async def _send_bytes(self, data: bytes) -> None:
        try:
            await self.wire.send(data)
        except WireClosed:
            self.state = _CLOSED

    async def _send_close(self, frame: bytes) -> None:
        """Our close frame: nothing else goes out after it (RFC 6455 5.5.1)."""
        self.state = _CLOSING if self.state is _OPEN else _CLOSED
        await self._send_bytes(frame)

    async def _close(self, code: int, reason: str) -> None:
        if self.state is _OPEN or self.state is _PEER_DONE:
            await self._send_close(close_frame(code, reason))

    async def send(self, frames: Sequence[Frame]) -> int:
        """Write complete frames (made by :meth:`encoder`) in one write, unless
        our close frame went out; the bytes written."""
        state = self.state
        if self.wire.closed or not (state is _OPEN or state is _PEER_DONE):
            return 0
        data = frames[0] if len(frames) == 1 else b"".join(frames)  # type: ignore[arg-type]
        assert isinstance(data, bytes)
        await self._send_bytes(data)
        return len(data)

    def write_now(self, data: bytes) -> bool | None:
        """Write complete frames without waiting (see
        :attr:`~drifttrio.web.peer.Peer.write_now`), once open and until our close."""
        state = self.state
        if state is _OPEN or state is _PEER_DONE:
            return self.wire.write_now(data)
        return None

    async def close(self, code: int, reason: str) -> None:
        if self.wire.closed:
            return
        if self.state is _HANDSHAKE:
            await self.reject(403, b"", [])
        else:
            await self._close(code, reason)

    async def accept(self) -> None:
        key, self._key = self._key, None
        if self.state is not _HANDSHAKE or key is None or self.wire.closed:
            self.state = _CLOSED  # accepted twice, or after a reject
            return
        self.state = _OPEN
        if self.liveness is not None:
            self.liveness.add(self)
        answer = accept_response(key)
        # Almost always the socket takes the 101 at once: no lock, no schedule point.
        written = self.wire.write_now(answer)
        if written is None:
            await self._send_bytes(answer)
        elif not written:
            await self._send_bytes(b"")  # the rest, owed: the client waits for it

    async def reject(
        self, status: int, body: bytes, headers: Sequence[tuple[bytes, bytes]]
    ) -> None:
        """Answer the upgrade with an HTTP response (once: nothing after it)."""
        key, self._key = self._key, None
        self.state = _CLOSED
        if key is None or self.wire.closed:
            return
        try:
            data = reject_response(status, headers, body)
        except ValueError:
            return  # a header that would break the head: the app's bug, sent as nothing
        await self._send_bytes(data)


def client_ip(scope: MutableMapping[str, Any]) -> str:
    """The client's address in ``scope``, or ``"unknown"``."""
    client = scope.get("client")
    return str(client[0]) if client else "unknown"
