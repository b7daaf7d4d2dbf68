"""Accepting connections for drifttrio's own transport: the HTTP-phase caps
(:class:`HttpConnections`), TCP keepalive (set once on the listening socket
where the kernel passes it on to accepted ones), and an accept loop that
pauses, rather than fails, when descriptors run out (EMFILE), with one log line
per episode.
"""

from __future__ import annotations

import errno
import os
import socket
import sys
from collections.abc import Callable
from typing import Final

import trio

from .proxy import TrustedProxies
from .wire import log

__all__ = [
    "BUSY_CONNECTIONS",
    "KEEPALIVE_INHERITED",
    "HttpConnections",
    "accept_connections",
    "keepalive",
]

#: Over an HTTP cap, at most this many connections are answered at once (with
#: 503, or ``/healthz``); beyond, they are closed unanswered.
BUSY_CONNECTIONS: Final = 32
#: TCP keepalive on accepted sockets: probe after 60 s of silence, every 15 s,
#: give up after 4 probes (a vanished peer is found within 2 minutes, even with
#: server pings off).
_TCP_KEEPALIVE: Final = (("TCP_KEEPIDLE", 60), ("TCP_KEEPINTVL", 15), ("TCP_KEEPCNT", 4))
#: Linux copies a listening socket's keepalive options to the sockets it accepts:
#: set there once, rather than four system calls per connection.
KEEPALIVE_INHERITED: Final = sys.platform == "linux"
#: accept() errors meaning "no descriptors or memory right now": wait, retry.
_CAPACITY_ERRNOS: Final = frozenset((errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS))
_ACCEPT_RETRY_SECONDS: Final = 0.1


class HttpConnections:
    """Connections in the HTTP phase (accepted, not upgraded): in total and per
    client address, plus those being told 503 for being over a cap.

    Counted at accept, before any header is read, so by the peer's address: a
    trusted proxy (``trusted``) carries every user's connections and is held to
    the total cap only.
    """

    def __init__(self, total: int, per_ip: int, trusted: TrustedProxies | None = None) -> None:
        self.limits = (total, per_ip)
        self.trusted = trusted or TrustedProxies()
        self.total = 0
        self.by_ip: dict[str, int] = {}
        #: Over a cap, being answered (at most BUSY_CONNECTIONS).
        self.busy = 0

    def admit(self, ip: str) -> bool:
        """Count a connection in, if it fits the caps."""
        total, per_ip = self.limits
        held = self.by_ip.get(ip, 0)
        if total and self.total >= total:
            return False
        if per_ip and held >= per_ip and not self.trusted.trusts(ip):
            return False
        self.total += 1
        self.by_ip[ip] = held + 1
        return True

    def release(self, ip: str) -> None:
        self.total -= 1
        left = self.by_ip[ip] - 1
        if left:
            self.by_ip[ip] = left
        else:
            del self.by_ip[ip]

    def release_busy(self) -> None:
        self.busy -= 1


def keepalive(sock: trio.socket.SocketType) -> None:
    """TCP keepalive, so the kernel finds a peer that vanished without a FIN (on
    a listening socket: for the sockets it accepts, see :data:`KEEPALIVE_INHERITED`)."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        for name, value in _TCP_KEEPALIVE:
            option = getattr(socket, name, None)  # Linux has all three, others vary
            if option is not None:
                sock.setsockopt(socket.IPPROTO_TCP, option, value)
    except OSError:
        pass  # the peer is already gone: the connection's reader will see it


async def accept_connections(
    listener: trio.SocketListener, handle: Callable[[trio.SocketStream], None]
) -> None:
    """Accept connections and hand each to ``handle`` (which starts its task),
    until cancelled. Out of descriptors (EMFILE, ENFILE) or memory, accepting
    pauses and retries: one log line when it starts, one when it ends, however
    long it lasts, so a descriptor squeeze never floods the log."""
    failures = 0
    while True:
        try:
            stream = await listener.accept()
        except OSError as exc:
            if exc.errno not in _CAPACITY_ERRNOS:
                raise
            if not failures:
                log.warning(
                    "accept failed with %s (%s): pausing new connections until descriptors free up",
                    errno.errorcode.get(exc.errno or 0, exc.errno),
                    os.strerror(exc.errno or 0),
                )
            failures += 1
            await trio.sleep(_ACCEPT_RETRY_SECONDS)
            continue
        if failures:
            log.warning("accepting connections again after %d failed attempt(s)", failures)
            failures = 0
        handle(stream)
