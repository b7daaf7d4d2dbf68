"""In-memory connections with a bounded buffer per direction, like a socket's.

``trio.testing.memory_stream_pair()`` buffers without limit, so a peer that stops
reading never pushes back on the sender. A real TCP connection does: once the
socket buffers are full, ``send_all`` waits. :func:`connection_pair` models that
(``capacity`` bytes per direction), and lets a test pause the reading side
(a slow client) or reset the connection (a dropped client).
"""

from __future__ import annotations

import math
import operator
import socket
from itertools import count

import trio

__all__ = ["Endpoint", "PeerSocket", "connection_pair"]

_ports = count(40000)


class _Pipe:
    """One direction of a connection: a byte buffer of bounded size."""

    def __init__(self, capacity: float) -> None:
        self.buffer = bytearray()
        self.capacity = capacity
        self.eof = False  # the writer sent EOF or closed
        self.reset = False  # the connection was reset: reads fail, data is lost
        self.reader_gone = False  # the reader closed: writes fail
        self.paused = False  # the reader is stalled (reads wait)
        self._lot = trio.lowlevel.ParkingLot()

    def changed(self) -> None:
        self._lot.unpark_all()

    async def wait(self) -> None:
        await self._lot.park()


class PeerSocket:
    """The two attributes of a socket hypercorn reads: ``family`` and the addresses.

    hypercorn's ``TCPServer`` takes the client and server addresses for the ASGI
    scope from ``stream.socket``; an in-memory connection has no socket, so each
    one gets a made-up loopback peer address (a distinct port per connection).
    """

    family = socket.AF_INET

    def __init__(self, peer: tuple[str, int] | None = None) -> None:
        self._peer = peer or ("127.0.0.1", next(_ports))

    def getpeername(self) -> tuple[str, int]:
        return self._peer

    def getsockname(self) -> tuple[str, int]:
        return ("127.0.0.1", 80)


class Endpoint(trio.abc.HalfCloseableStream):
    """One end of an in-memory connection made by :func:`connection_pair`."""

    def __init__(self, outgoing: _Pipe, incoming: _Pipe) -> None:
        self._out = outgoing
        self._in = incoming
        self._closed = False
        self._sending = False
        self._receiving = False
        #: What hypercorn reads the peer's address from.
        self.socket = PeerSocket()

    # -- faults ------------------------------------------------------------------------

    def pause_reading(self) -> None:
        """Stop delivering incoming bytes to this end (they pile up, then the peer waits)."""
        self._in.paused = True
        self._in.changed()

    def resume_reading(self) -> None:
        self._in.paused = False
        self._in.changed()

    def reset(self) -> None:
        """Drop the connection abruptly: both ends fail, unread data is lost."""
        for pipe in (self._out, self._in):
            pipe.reset = pipe.reader_gone = pipe.eof = True
            pipe.buffer.clear()
            pipe.changed()

    @property
    def buffered(self) -> int:
        """Bytes sent by the peer and not yet read by this end."""
        return len(self._in.buffer)

    # -- the stream interface ------------------------------------------------------

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        if self._sending:
            raise trio.BusyResourceError("another task is sending on this end")
        self._sending = True
        try:
            await self._send_all(memoryview(data).cast("B"))
        finally:
            self._sending = False

    async def _send_all(self, view: memoryview) -> None:
        await trio.lowlevel.checkpoint_if_cancelled()
        while True:
            if self._closed:
                raise trio.ClosedResourceError("this end is closed")
            if self._out.reader_gone:
                raise trio.BrokenResourceError("the peer closed the connection")
            if self._out.eof:
                raise trio.ClosedResourceError("EOF was sent on this end")
            if not view:
                break
            space = self._out.capacity - len(self._out.buffer)
            if space > 0:
                n = len(view) if math.isinf(space) else min(len(view), int(space))
                self._out.buffer += view[:n]
                view = view[n:]
                self._out.changed()
            else:
                await self._out.wait()
        await trio.lowlevel.cancel_shielded_checkpoint()

    async def wait_send_all_might_not_block(self) -> None:
        if self._sending:
            raise trio.BusyResourceError("another task is sending on this end")
        self._sending = True
        try:
            await self._wait_writable()
        finally:
            self._sending = False

    async def _wait_writable(self) -> None:
        await trio.lowlevel.checkpoint_if_cancelled()
        while True:
            if self._closed:
                raise trio.ClosedResourceError("this end is closed")
            if len(self._out.buffer) < self._out.capacity or self._out.reader_gone:
                break
            await self._out.wait()
        await trio.lowlevel.cancel_shielded_checkpoint()

    async def send_eof(self) -> None:
        if self._sending:
            raise trio.BusyResourceError("another task is sending on this end")
        if self._closed:
            raise trio.ClosedResourceError("this end is closed")
        self._out.eof = True
        self._out.changed()
        await trio.lowlevel.checkpoint()

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        if max_bytes is not None and operator.index(max_bytes) < 1:
            raise ValueError("max_bytes must be at least 1")
        if self._receiving:
            raise trio.BusyResourceError("another task is receiving on this end")
        self._receiving = True
        try:
            return await self._receive_some(max_bytes)
        finally:
            self._receiving = False

    async def _receive_some(self, max_bytes: int | None) -> bytes:
        await trio.lowlevel.checkpoint_if_cancelled()
        pipe = self._in
        while True:
            if self._closed:
                raise trio.ClosedResourceError("this end is closed")
            if pipe.reset:
                raise trio.BrokenResourceError("the connection was reset")
            if not pipe.paused and (pipe.buffer or pipe.eof):
                break
            await pipe.wait()
        size = len(pipe.buffer) if max_bytes is None else min(max_bytes, len(pipe.buffer))
        data = bytes(pipe.buffer[:size])
        del pipe.buffer[:size]
        pipe.changed()
        await trio.lowlevel.cancel_shielded_checkpoint()
        return data

    async def aclose(self) -> None:
        if not self._closed:
            self._closed = True
            self._out.eof = True
            self._in.reader_gone = True
            self._in.buffer.clear()
            self._out.changed()
            self._in.changed()
        await trio.lowlevel.checkpoint()


def connection_pair(
    capacity: float = math.inf, *, client_address: tuple[str, int] | None = None
) -> tuple[Endpoint, Endpoint]:
    """Two connected ends, (client, server); each direction buffers at most
    ``capacity`` bytes. The server's end reports ``client_address`` as its peer
    (default: 127.0.0.1 with a port of its own)."""
    if capacity < 1:
        raise ValueError("capacity must be at least one byte")
    to_server, to_client = _Pipe(capacity), _Pipe(capacity)
    client, server = Endpoint(to_server, to_client), Endpoint(to_client, to_server)
    server.socket = PeerSocket(client_address)
    return client, server
