"""One connection's byte stream for drifttrio's own transport: writes under one
lock and a write deadline, reads, and a bounded linger before closing.

A plain TCP socket on POSIX is read and written with ``os.read`` / ``os.write``
directly (fewer calls and frames than ``SocketStream``); any other stream (TLS,
a ``trio.testing`` memory stream) goes through its own ``send_all`` /
``receive_some``. :class:`WireClosed` is the one way a write says the peer is
gone or was cut off.
"""

from __future__ import annotations

import logging
import os
from typing import Final

import trio

from .._logging import ThrottledLog

__all__ = ["RECEIVE_SIZE", "Wire", "WireClosed", "client_errors", "log", "write_now"]

#: The transport's one logger: its modules (wire, HTTP/1.1, WebSocket, listener) log here.
log = logging.getLogger("drifttrio.transport")
#: Client-caused refusals (400, 408, 426, 431, 503, 4029): one line each, rate-limited.
client_errors = ThrottledLog(log)

RECEIVE_SIZE: Final = 65536

#: Before closing a connection, read and discard the peer's data for at most this
#: long (and this much), so our last words are not lost to a TCP reset.
_LINGER_SECONDS: Final = 1.0
_LINGER_BYTES: Final = 4 * 1024 * 1024


class WireClosed(Exception):
    """The peer is gone or was cut off."""


def write_now(sock: trio.socket.SocketType, data: bytes | memoryview) -> memoryview:
    """Write what the socket takes without waiting; return what is left."""
    view = memoryview(data)
    while view:
        try:
            # fileno() is -1 once another task closed the stream: EBADF below.
            sent = os.write(sock.fileno(), view)
        except BlockingIOError:
            break
        except OSError as exc:
            raise trio.BrokenResourceError(f"socket connection broken: {exc}") from None
        view = view[sent:]
    return view


class Wire:
    """One stream with a send lock and a write deadline."""

    __slots__ = (
        "_socket",
        "_sparse",
        "closed",
        "cut_short",
        "lock",
        "owed",
        "stream",
        "write_timeout",
    )

    def __init__(self, stream: trio.abc.Stream, write_timeout: float) -> None:
        self.stream = stream
        self.write_timeout = write_timeout
        self.lock = trio.StrictFIFOLock()
        self.closed = False
        #: We end the conversation while the peer may still be sending: linger.
        self.cut_short = False
        #: What :meth:`write_now` could not write: the next :meth:`send` writes it first.
        self.owed = b""
        #: A plain TCP socket on POSIX: read and written directly (see :meth:`receive`).
        #: The last :meth:`receive` found nothing to read and had to wait: the next
        #: one waits first, sparing a read that fails (and its exception).
        self._sparse = False
        self._socket = (
            stream.socket if isinstance(stream, trio.SocketStream) and os.name == "posix" else None
        )

    @property
    def socket(self) -> trio.socket.SocketType | None:
        """The plain TCP socket under this wire (POSIX), else ``None`` (TLS, memory)."""
        return self._socket

    def write_now(self, data: bytes) -> bool | None:
        """Write without waiting, if nothing else is being written (a plain socket
        only): ``True`` all of it; ``False`` part of it, the rest is :attr:`owed`
        and the next :meth:`send` writes it first; ``None`` nothing."""
        sock = self._socket
        if sock is None or self.closed or self.owed or self.lock.locked():
            return None
        try:
            # The usual case in one call: the socket takes all of it.
            sent = os.write(sock.fileno(), data)
            if sent == len(data):
                return True
            rest = write_now(sock, memoryview(data)[sent:])
        except BlockingIOError:
            return None
        except (OSError, trio.BrokenResourceError):
            self.closed = True  # the next send says WireClosed
            return None
        if not rest:
            return True
        self.owed = bytes(rest)
        return False

    async def send(self, data: bytes) -> None:
        if self.closed:
            raise WireClosed
        lock = self.lock
        try:
            lock.acquire_nowait()  # the usual case: nobody else is writing
        except trio.WouldBlock:
            await lock.acquire()
        if self.owed:
            data, self.owed = self.owed + data, b""
        try:
            rest: bytes | memoryview = data
            if self._socket is not None:
                # The usual case: the socket takes it all at once, with no waiting,
                # so there is nothing to cancel and no deadline to set.
                rest = write_now(self._socket, data)
                if not rest:
                    await trio.lowlevel.cancel_shielded_checkpoint()
                    return
            # A write interrupted half-way would corrupt the framing, so writes are
            # never cancelled from outside: each one ends by itself, within
            # write_timeout, or the connection is cut off.
            deadline = trio.current_time() + self.write_timeout
            with trio.CancelScope(shield=True, deadline=deadline) as scope:
                if self._socket is not None:
                    await self._write_socket(self._socket, rest)
                else:
                    await self.stream.send_all(rest)
            if scope.cancelled_caught:
                log.debug("write deadline passed: cutting the connection off")
                await self.abort()
                raise WireClosed
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            self.closed = True
            raise WireClosed from None
        finally:
            lock.release()

    async def _write_socket(self, sock: trio.socket.SocketType, data: bytes | memoryview) -> None:
        """``SocketStream.send_all`` for a TCP socket, with fewer calls (the lock
        above already keeps writes from interleaving). A checkpoint."""
        while data:
            await trio.lowlevel.wait_writable(sock)
            data = write_now(sock, data)
        await trio.lowlevel.cancel_shielded_checkpoint()

    async def receive(self) -> bytes:
        """Bytes from the peer; ``b""`` once it is gone (or the stream was closed).

        A TCP socket is read as ``SocketStream.receive_some`` would, minus five
        frames: an idle connection waits in ``wait_readable`` directly, which keeps
        about 2 KiB less alive per connection, and a busy one reads with fewer
        calls. It is a schedule point once, as trio's own socket calls are: after
        waiting for data it returns it without yielding again.
        """
        if self.closed:
            return b""
        sock = self._socket
        if sock is None:
            try:
                return bytes(await self.stream.receive_some(RECEIVE_SIZE))
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                self.closed = True
                return b""
        # The last call had to wait: this one likely will too, so it waits first.
        must_wait = self._sparse
        if not must_wait:
            await trio.lowlevel.checkpoint_if_cancelled()
        waited = False
        while True:
            if must_wait:
                try:
                    await trio.lowlevel.wait_readable(sock)
                except trio.ClosedResourceError:
                    self.closed = True
                    return b""
                waited = True
            try:
                # fileno() is -1 once another task closed the stream: EBADF below.
                data = os.read(sock.fileno(), RECEIVE_SIZE)
            except BlockingIOError:
                must_wait = True  # (waits outside the except block: no exception kept alive)
                continue
            except OSError:
                self.closed = True
                return b""
            self._sparse = waited
            if not waited:  # (wait_readable was this call's schedule point)
                await trio.lowlevel.cancel_shielded_checkpoint()
            return data  # b"": the peer finished sending

    async def abort(self) -> None:
        self.closed = True
        await trio.aclose_forcefully(self.stream)

    async def linger(self) -> None:
        """Before closing: stop sending, then read and discard what the peer still
        sends (bounded), so what we sent last is not lost to a TCP reset caused by
        unread data (a 413 before the body, a close frame after a protocol error)."""
        if self.closed or not self.cut_short:
            return
        with trio.move_on_after(min(_LINGER_SECONDS, self.write_timeout)):
            if isinstance(self.stream, trio.abc.HalfCloseableStream):
                try:
                    async with self.lock:
                        await self.stream.send_eof()
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    return
            discarded = 0
            while discarded < _LINGER_BYTES:
                data = await self.receive()
                if not data:
                    break
                discarded += len(data)
