"""A raw DriftDB protocol client over trio-websocket, for tests.

It speaks the wire protocol as a browser client would: JSON text frames (or CBOR
binary frames) in both directions, and decodes what the server sends into plain
dicts, exactly as they were on the wire.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from types import TracebackType
from typing import Any, Literal, TypeAlias

import cbor2
import trio
import trio.testing
from trio_websocket import CloseReason, ConnectionClosed, WebSocketConnection

from ._streams import Endpoint

__all__ = ["ActionName", "DriftClient", "Message", "settle"]

#: A message as decoded from the wire: a JSON object or a CBOR map.
Message: TypeAlias = dict[str, Any]

ActionName: TypeAlias = Literal["relay", "replace", "append", "compact"]


async def settle() -> None:
    """Wait until every task is blocked.

    Afterwards, everything that could happen without time passing (or a client
    doing something) has happened: pushes are committed and delivered, frames are
    in the clients' buffers, closed connections have left their rooms.
    """
    await trio.testing.wait_all_tasks_blocked()


class DriftClient:
    """One WebSocket connection to a room of a test server.

    Made by :meth:`DriftTestServer.connect <drifttrio.testing.DriftTestServer.connect>`.
    ``last_seq`` is the highest seq seen in a ``push`` or an ``init``: what a
    reconnecting client passes to ``get`` to resume.
    """

    def __init__(
        self,
        websocket: WebSocketConnection,
        endpoint: Endpoint,
        room: str,
        *,
        binary: bool,
        server_done: trio.Event,
        nursery: trio.Nursery,
    ) -> None:
        self.websocket = websocket
        self.room = room
        #: Send CBOR binary frames (else JSON text frames).
        self.binary = binary
        self.last_seq = 0
        #: Set when the server has finished with this connection.
        self.server_done = server_done
        self._endpoint = endpoint
        self._send, self._receive = trio.open_memory_channel[str | bytes](0)
        nursery.start_soon(self._pump)

    async def _pump(self) -> None:
        # Hands over one message at a time (an unbuffered channel), so that a
        # client that stops calling receive() stops reading, as a real one would.
        async with self._send:
            try:
                while True:
                    await self._send.send(await self.websocket.get_message())
            except ConnectionClosed:
                pass

    # -- sending -------------------------------------------------------------------

    async def send(self, message: Mapping[str, Any]) -> None:
        """Send one protocol message (CBOR if ``binary``, else JSON)."""
        if self.binary:
            await self.websocket.send_message(cbor2.dumps(dict(message)))
        else:
            await self.websocket.send_message(json.dumps(dict(message)))

    async def send_raw(self, frame: str | bytes) -> None:
        """Send a frame exactly as given (a text frame for ``str``)."""
        await self.websocket.send_message(frame)

    async def push(
        self, key: str, value: Any, action: ActionName = "append", *, seq: int | None = None
    ) -> None:
        """Send a ``push``; ``seq`` is the compaction point of a ``compact``."""
        act: dict[str, Any] = {"type": action}
        if seq is not None:
            act["seq"] = seq
        await self.send({"type": "push", "key": key, "value": value, "action": act})

    async def get(self, key: str, seq: int | None = 0) -> None:
        """Send a ``get``: subscribe, and replay values with a seq above ``seq``.

        ``seq=None`` subscribes without a replay (no ``init`` comes back).
        """
        await self.send({"type": "get", "key": key, "seq": seq})

    async def ping(self, nonce: int | None = None) -> None:
        await self.send({"type": "ping"} if nonce is None else {"type": "ping", "nonce": nonce})

    # -- receiving -----------------------------------------------------------------

    def _decode(self, frame: str | bytes) -> Message:
        message: Message = json.loads(frame) if isinstance(frame, str) else cbor2.loads(frame)
        if message.get("type") == "push" and isinstance(message.get("seq"), int):
            self.last_seq = max(self.last_seq, message["seq"])
        elif message.get("type") == "init":
            for entry in message.get("data") or ():
                self.last_seq = max(self.last_seq, entry["seq"])
        return message

    async def receive(self) -> Message:
        """The next message from the server.

        Raises :class:`trio_websocket.ConnectionClosed` once the connection is
        closed and every message sent before the close has been received.
        """
        try:
            frame = await self._receive.receive()
        except trio.EndOfChannel:
            raise ConnectionClosed(self.websocket.closed) from None
        return self._decode(frame)

    def receive_nowait(self) -> Message:
        """The next message if one has arrived; else raise :class:`trio.WouldBlock`."""
        try:
            frame = self._receive.receive_nowait()
        except trio.EndOfChannel:
            raise ConnectionClosed(self.websocket.closed) from None
        return self._decode(frame)

    async def drain(self) -> list[Message]:
        """Settle, then take every message that has arrived (possibly none)."""
        messages: list[Message] = []
        while True:
            await settle()
            try:
                messages.append(self.receive_nowait())
            except (trio.WouldBlock, ConnectionClosed):
                return messages

    async def wait_closed(self) -> CloseReason:
        """Read (and discard) messages until the server closes; return why it closed."""
        while True:
            try:
                await self.receive()
            except ConnectionClosed as exc:
                return exc.reason or CloseReason(1006, "closed without a close reason")

    @property
    def close_code(self) -> int | None:
        """The close code once the connection is closed, else ``None``."""
        reason = self.websocket.closed
        return None if reason is None else reason.code

    # -- faults --------------------------------------------------------------------

    def stall(self) -> None:
        """Stop reading from the connection: a slow client.

        Frames the server sends pile up in the connection's buffer
        (``buffer_bytes``); once it is full, the server's writes wait.
        """
        self._endpoint.pause_reading()

    def resume(self) -> None:
        """Read again after :meth:`stall`."""
        self._endpoint.resume_reading()

    def drop(self) -> None:
        """Drop the connection abruptly: no close frame, unread data lost.

        The server sees the connection fail (like a TCP reset); this client's
        :meth:`receive` raises :class:`~trio_websocket.ConnectionClosed` (1006).
        """
        self._endpoint.reset()

    # -- closing -------------------------------------------------------------------

    async def aclose(self, code: int = 1000, *, within: float = 10.0) -> None:
        """Close the WebSocket with a close handshake (reading again if stalled).

        If the handshake takes longer than ``within`` seconds, drop the connection.
        """
        self.resume()
        with trio.move_on_after(within) as scope:
            await self.websocket.aclose(code)
        if scope.cancelled_caught:
            self.drop()

    async def __aenter__(self) -> DriftClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()
