"""What the app needs of one WebSocket: the member interface.

The app admits an upgrade (:meth:`Peer.reject` or :meth:`Peer.accept`) and a
member's :class:`~drifttrio.web.session.Session` runs over it: messages in
(:meth:`Peer.receive`), batches of frames out (:meth:`Peer.send`), a close.
drifttrio's own transport implements it directly
(:class:`~drifttrio.web.websocket.WebSocket`: no ASGI event between the two);
:class:`AsgiPeer` adapts any ASGI server's ``receive`` / ``send`` to it
(hypercorn, the in-process test client).

Each peer also says how the room should encode for it (:meth:`Peer.encoder`): a
payload per message for ASGI, complete frames for the own transport, which then
writes a member's queued frames in one write.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping, Sequence
from typing import Any, Final, Protocol, TypeAlias

from ..protocol.codec import Codec
from ..runtime.member import Encoder, Frame
from .frames import Message

__all__ = ["AsgiPeer", "Peer", "Scope"]

#: The upgrade request as ASGI describes it (path, query, headers, client).
Scope: TypeAlias = MutableMapping[str, Any]
_Receive: TypeAlias = Callable[[], Awaitable[MutableMapping[str, Any]]]
_Send: TypeAlias = Callable[[MutableMapping[str, Any]], Awaitable[None]]

#: The ASGI extension that lets an app answer a refused upgrade with a response.
_HTTP_RESPONSE: Final = "websocket.http.response"


class Peer(Protocol):
    """One client's WebSocket, from the upgrade request to the close."""

    @property
    def scope(self) -> Scope:
        """The upgrade request."""

    @property
    def transport(self) -> str:
        """What carries it: the ``transport`` label of the connection metrics."""

    @property
    def paced(self) -> bool:
        """Whether every frame is a write of its own (an ASGI server): the member's
        reader then lets its writer catch up before reading on."""

    @property
    def close_code(self) -> int | None:
        """The close code the peer sent (or its transport saw), once :meth:`receive`
        returned ``None``; ``None`` if there was none."""

    async def reject(
        self, status: int, body: bytes, headers: Sequence[tuple[bytes, bytes]]
    ) -> None:
        """Refuse the upgrade: an HTTP response, where the server can send one."""

    async def accept(self) -> None:
        """Complete the handshake."""

    def encoder(self, codec: Codec) -> Encoder:
        """How the room should encode this peer's frames for ``codec``."""

    async def receive(self) -> Message | None:
        """The next whole message, or ``None`` once the peer is gone."""

    async def send(self, frames: Sequence[Frame]) -> int:
        """Send frames made by :meth:`encoder`, in order; the bytes sent."""

    @property
    def write_now(self) -> Callable[[bytes], bool | None] | None:
        """A write that never waits, if the transport has one: given complete frames
        (from :meth:`encoder`), it writes them if nothing else is being written and
        says ``True`` (all written), ``False`` (in part: the rest goes out first with
        the next :meth:`send`, which the caller must make) or ``None`` (nothing
        written: send them as usual)."""

    async def close(self, code: int, reason: str) -> None:
        """Send our close frame (nothing goes out after it)."""


class AsgiPeer:
    """A :class:`Peer` over an ASGI server's ``receive`` and ``send`` (after the
    ``websocket.connect`` event, which the app reads before making it)."""

    __slots__ = ("_receive", "_send", "close_code", "scope")

    transport: Final = "asgi"
    paced: Final = True
    #: Every frame is an ASGI event: nothing to write without waiting.
    write_now: Final = None

    def __init__(self, scope: Scope, receive: _Receive, send: _Send) -> None:
        self.scope = scope
        self._receive = receive
        self._send = send
        self.close_code: int | None = None

    async def reject(
        self, status: int, body: bytes, headers: Sequence[tuple[bytes, bytes]]
    ) -> None:
        if _HTTP_RESPONSE in (self.scope.get("extensions") or {}):
            start = {"type": "websocket.http.response.start", "status": status}
            await self._send({**start, "headers": list(headers)})
            await self._send({"type": "websocket.http.response.body", "body": body})
        else:
            await self._send({"type": "websocket.close", "code": 1008})

    async def accept(self) -> None:
        await self._send({"type": "websocket.accept"})

    def encoder(self, codec: Codec) -> Encoder:
        return codec  # a payload per message: the server frames it

    async def receive(self) -> Message | None:
        message = await self._receive()
        if message["type"] != "websocket.receive":
            self.close_code = message.get("code")
            return None  # websocket.disconnect: the peer is gone
        text = message.get("text")
        if text is not None:
            return text.encode("utf-8", "surrogatepass"), False
        return message.get("bytes") or b"", True

    async def send(self, frames: Sequence[Frame]) -> int:
        size = 0
        send = self._send
        for frame in frames:
            if isinstance(frame, str):
                await send({"type": "websocket.send", "text": frame})
            elif isinstance(frame, bytes):
                await send({"type": "websocket.send", "bytes": frame})
            else:
                continue  # a message object: in-process members only, never here
            size += len(frame)
        return size

    async def close(self, code: int, reason: str) -> None:
        await self._send({"type": "websocket.close", "code": code, "reason": reason})
