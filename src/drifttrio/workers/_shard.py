"""Which worker owns a room, and handing a connection over to it.

With ``drifttrio serve --workers N`` every room lives in exactly one worker
process, the one :func:`owner_of` names: a stable hash of the room id, modulo
N, so every worker (and a restart with the same N) agrees without asking
anyone. Any worker may accept a connection; once its request names a room
another worker owns, the connection itself moves there (:meth:`Shard.hand_off`):
its socket, passed over a Unix socket with ``SCM_RIGHTS``, with the bytes
already read. From then on the owner talks to the client directly: no hop per
message. A keep-alive HTTP connection moves again if a later request names a
room of yet another worker.

Each worker listens on ``worker-<i>.sock`` (``SOCK_SEQPACKET``: one handed
connection is one message, kept whole) in the directory the supervisor made.
"""

from __future__ import annotations

import array
import hashlib
import logging
import socket
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Final
from urllib.parse import unquote

import trio

from .._errors import DriftError

if TYPE_CHECKING:
    from ..runtime.metrics import Metrics

__all__ = ["HANDOFF_SUPPORTED", "Shard", "WorkerUnavailable", "owner_of", "room_in_path"]

log = logging.getLogger("drifttrio.workers")

#: Whether this platform can pass a socket to another process the way workers do
#: (``SCM_RIGHTS`` over a ``SOCK_SEQPACKET`` Unix socket: Linux).
HANDOFF_SUPPORTED: Final = hasattr(socket, "SCM_RIGHTS") and hasattr(socket, "SOCK_SEQPACKET")
#: The largest handed-over message: a request head (``max_header_bytes``) and what
#: came right behind it in the same reads.
_MAX_HANDOFF_BYTES: Final = 192 * 1024
_FD_SIZE: Final = array.array("i").itemsize


class WorkerUnavailable(DriftError):
    """The worker that owns the room cannot take the connection now (it is
    restarting, or draining): the client is told 503 and retries."""


def owner_of(room_id: str, workers: int) -> int:
    """The index of the worker that owns ``room_id`` among ``workers``: the same in
    every process and every run (not Python's salted ``hash``)."""
    if workers <= 1:
        return 0
    digest = hashlib.blake2b(room_id.encode("utf-8", "surrogatepass"), digest_size=8).digest()
    return int.from_bytes(digest, "big") % workers


def room_in_path(path: str) -> str | None:
    """The room id a request path names (``/room/ID`` and below), if any."""
    if not path.startswith("/room/"):
        return None
    room_id = path[len("/room/") :].partition("/")[0]
    return room_id or None


def socket_path(directory: Path, index: int) -> Path:
    """Where worker ``index`` takes handed-over connections."""
    return directory / f"worker-{index}.sock"


class Shard:
    """This worker's place among the workers: which rooms are its own, and the
    connections it hands to the others or takes from them."""

    def __init__(self, index: int, count: int, directory: Path) -> None:
        self.index = index
        self.count = count
        self.directory = directory
        #: Connected sockets to the other workers, made at first use; one hand-off
        #: at a time on each (a SEQPACKET message is atomic anyway).
        self._peers: dict[int, trio.socket.SocketType] = {}
        self._locks = {i: trio.Lock() for i in range(count)}
        #: Where hand-offs are counted (the worker's hub's metrics, once it runs).
        self.metrics: Metrics | None = None

    def owns(self, room_id: str) -> bool:
        return owner_of(room_id, self.count) == self.index

    def owner(self, target: bytes) -> int | None:
        """The worker that must serve a request for ``target`` (its path and query,
        as sent), if it is not this one."""
        path = unquote(target.partition(b"?")[0].decode("latin-1"))
        room_id = room_in_path(path)
        if room_id is None:
            return None
        owner = owner_of(room_id, self.count)
        return None if owner == self.index else owner

    async def hand_off(self, worker: int, sock: trio.socket.SocketType, data: bytes) -> None:
        """Give the connection ``sock`` (its peer has sent ``data`` so far, none of
        it answered) to ``worker``; the caller then closes its own descriptor.
        :class:`WorkerUnavailable` if that worker cannot take it now."""
        if len(data) > _MAX_HANDOFF_BYTES:
            raise WorkerUnavailable("request too large to hand over")
        fds = array.array("i", [sock.fileno()])
        async with self._locks[worker]:
            for attempt in (1, 2):
                peer = self._peers.get(worker)
                try:
                    if peer is None:
                        peer = trio.socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
                        try:
                            await peer.connect(str(socket_path(self.directory, worker)))
                        except BaseException:
                            peer.close()
                            raise
                        self._peers[worker] = peer
                    with trio.fail_after(5):
                        await peer.sendmsg([data], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, fds)])
                except (OSError, trio.TooSlowError) as exc:
                    # The worker restarted (a stale socket) or is not there yet.
                    dead = self._peers.pop(worker, None)
                    if dead is not None:
                        dead.close()
                    if attempt == 2 or not isinstance(exc, OSError):
                        raise WorkerUnavailable(f"worker {worker}: {exc}") from None
                    continue
                if self.metrics is not None:
                    self.metrics.handoffs.labels("out").inc()
                return

    async def take_connections(
        self,
        adopt: Callable[[trio.SocketStream, bytes], None],
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Take the connections other workers hand over, each to ``adopt`` with the
        bytes already read, until cancelled."""
        path = socket_path(self.directory, self.index)
        path.unlink(missing_ok=True)  # a socket left by this worker's predecessor
        listener = trio.socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            await listener.bind(str(path))
            listener.listen(64)
            task_status.started()
            async with trio.open_nursery() as nursery:
                while True:
                    peer, _ = await listener.accept()
                    nursery.start_soon(self._take_from, peer, adopt)
        finally:
            listener.close()

    async def _take_from(
        self, peer: trio.socket.SocketType, adopt: Callable[[trio.SocketStream, bytes], None]
    ) -> None:
        with peer:
            while True:
                try:
                    data, ancillary, flags, _ = await peer.recvmsg(
                        _MAX_HANDOFF_BYTES, socket.CMSG_SPACE(_FD_SIZE)
                    )
                except OSError:
                    return
                fds = _descriptors(ancillary)
                if not data and not fds:
                    return  # the other worker closed this socket
                if len(fds) != 1 or flags & (socket.MSG_TRUNC | socket.MSG_CTRUNC):
                    for fd in fds:
                        socket.close(fd)
                    log.warning("dropped a malformed connection hand-off")
                    continue
                sock = trio.socket.from_stdlib_socket(socket.socket(fileno=fds[0]))
                if self.metrics is not None:
                    self.metrics.handoffs.labels("in").inc()
                adopt(trio.SocketStream(sock), data)

    def close(self) -> None:
        for peer in self._peers.values():
            peer.close()
        self._peers.clear()


def _descriptors(ancillary: list[tuple[int, int, bytes]]) -> list[int]:
    fds: list[int] = []
    for level, kind, payload in ancillary:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            usable = len(payload) - len(payload) % _FD_SIZE
            fds.extend(array.array("i", payload[:usable]))
    return fds
