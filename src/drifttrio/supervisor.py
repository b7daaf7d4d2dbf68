"""``drifttrio serve --workers N``: a supervisor and N worker processes.

The supervisor binds one listening socket per worker on the port
(``SO_REUSEPORT``) and the metrics listener, takes the SQLite store's lock once
for all its workers, and starts N workers, each a ``python -m
drifttrio.supervisor`` process running the ordinary server on its inherited
listening socket as one :class:`~drifttrio.workers.Shard`: it owns
the rooms :func:`~drifttrio.workers.owner_of` gives it and hands any other
room's connection to that room's worker. The supervisor itself serves no
client. It starts a worker again when one dies (its rooms recover from the
store; its clients reconnect and resume with ``get``), drains every worker on
SIGTERM, and answers ``/metrics``, ``/healthz`` and ``/readyz`` for all of them
(each worker's series with a ``worker`` label). A worker drains by itself when
the supervisor is gone (the end of a pipe only the supervisor writes to).

Not for embedding: ``open_server`` runs one server in the caller's trio program,
whose in-process API (``server.hub``) and hooks objects live in that one process;
workers are separate programs. See docs/deployment.md.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from collections.abc import Awaitable, Callable, MutableMapping, Sequence
from functools import partial
from pathlib import Path
from typing import Any, Final

import attrs
import h11
import orjson
import trio
from prometheus_client import CONTENT_TYPE_LATEST

from ._errors import ConfigError, DriftError, unwrap_group
from ._gc import paced_full_collections
from .hooks import configured_hooks
from .runtime.config import Config
from .server import (
    ListenError,
    _serve_on,
    fit_descriptors,
    open_listener_groups,
    open_listeners,
    raise_descriptor_limit,
    shown_store,
)
from .storage import open_storage
from .storage.lock import StoreLock
from .storage.sqlite import SqliteStorage
from .web.ops import reply, reply_json
from .web.peer import Peer
from .web.transport import serve_tcp
from .workers import HANDOFF_SUPPORTED, Shard

__all__ = ["MAX_WORKERS", "WorkerFailed", "check_workers", "parse_workers", "serve_workers"]

log = logging.getLogger("drifttrio")

#: The most workers ``--workers`` takes (a typo guard: one per core is the point).
MAX_WORKERS: Final = 256
#: A worker that ran this long before dying is restarted at once, not after a backoff.
_HEALTHY_SECONDS: Final = 30.0
_FIRST_BACKOFF: Final = 0.5
_MAX_BACKOFF: Final = 10.0
#: How long the supervisor waits for a worker's answer on ``/metrics`` and health.
_ASK_SECONDS: Final = 2.0


class WorkerFailed(DriftError):
    """A worker ended before it was serving; ``status`` is its exit status (it said
    why on stderr)."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


def parse_workers(raw: str) -> int:
    """``--workers``: a count, or ``auto`` (the cores this process may run on)."""
    if raw.strip().lower() == "auto":
        try:
            return max(1, min(len(os.sched_getaffinity(0)), MAX_WORKERS))
        except AttributeError:  # not on Linux
            return max(1, min(os.cpu_count() or 1, MAX_WORKERS))
    try:
        count = int(raw)
    except ValueError:
        count = 0
    if not 1 <= count <= MAX_WORKERS:
        raise ConfigError(f"--workers must be 1 to {MAX_WORKERS} or auto, got {raw!r}")
    return count


def check_workers(config: Config, transport: str, count: int) -> None:
    """:class:`ConfigError` if this server cannot run with ``count`` workers here."""
    if count == 1:
        return
    if not HANDOFF_SUPPORTED:
        raise ConfigError(
            f"--workers {count}: this platform cannot pass a connection between processes"
            " (SCM_RIGHTS over SOCK_SEQPACKET, Linux); run one worker per server, or several"
            " servers on the Redis store"
        )
    if transport != "drifttrio":
        raise ConfigError(
            f"--workers {count} needs drifttrio's own transport: {transport}'s connections"
            " cannot be handed to the worker that owns their room (drop --transport, or run"
            " one worker)"
        )
    if config.certfile:
        raise ConfigError(
            f"--workers {count} cannot terminate TLS itself: an encrypted connection cannot"
            " be handed to another process; terminate TLS at a proxy in front"
            " (docs/deployment.md) or run one worker"
        )


@attrs.define
class _Worker:
    """One worker slot: its current process, and how often it was started again."""

    index: int
    process: trio.Process | None = None
    restarts: int = 0


async def serve_workers(
    config: Config,
    count: int,
    serve_args: Sequence[str],
    *,
    shutdown_trigger: Callable[[], Awaitable[None]],
) -> None:
    """Run ``count`` workers (each: ``drifttrio serve SERVE_ARGS`` as one shard) until
    ``shutdown_trigger`` returns, then drain them. Raises :class:`WorkerFailed` if a
    worker cannot start."""
    configured_hooks(config)  # bad hook settings fail here, once, before anything starts
    raise_descriptor_limit()  # the workers inherit the raised limit
    groups = await open_listener_groups(config.host, config.port, count)
    public = [listener for group in groups for listener in group]
    ops: list[trio.SocketListener] = []
    guard: int | None = None
    lock: StoreLock | None = None
    directory = Path(tempfile.mkdtemp(prefix="drifttrio-workers-"))
    # Every worker inherits the read end; the write end stays here (not inheritable):
    # when this process ends, however it ends, the workers read EOF and drain.
    life_read, life_write = os.pipe()
    try:
        guard = _guard_port(config.host, groups[0][0].socket.getsockname()[1])
        if config.metrics_port >= 0:
            ops = await open_listeners(
                config.metrics_host, config.metrics_port, flags=("--metrics-host", "--metrics-port")
            )
        lock = await _prepare_store(config.store)
        workers = [_Worker(i) for i in range(count)]
        supervisor = _Supervisor(
            config, workers, groups, directory, list(serve_args), lock, life_read
        )
        await supervisor.run(ops, shutdown_trigger)
    finally:
        for listener in (*public, *ops):
            listener.socket.close()
        if lock is not None:
            lock.release()
        shutil.rmtree(directory, ignore_errors=True)  # the workers' sockets
        os.close(life_read)
        os.close(life_write)
        if guard is not None:
            os.close(guard)


def _guard_port(host: str, port: int) -> int:
    """Hold a lock named after ``port`` for as long as this supervisor runs: another
    process of this user may join an ``SO_REUSEPORT`` group without an error, so a
    second ``drifttrio serve --workers`` on the same port is refused here instead,
    as a second plain server is by the kernel. Returns the lock's descriptor."""
    path = Path(tempfile.gettempdir()) / f"drifttrio-workers-port-{port}.lock"
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        shown = f"[{host}]" if ":" in host else host
        raise ListenError(
            f"cannot listen on {shown}:{port}: address already in use (another drifttrio"
            " --workers? stop it or pick another --port)"
        ) from None
    return fd


async def _prepare_store(url: str) -> StoreLock | None:
    """Open the store once before any worker does (a bad ``--store`` fails here, a
    new SQLite file gets its tables once), and take a SQLite file's lock for all
    the workers."""
    storage = open_storage(url, lock_held_by_parent=True)
    lock = None
    try:
        if isinstance(storage, SqliteStorage) and storage.path != ":memory:":
            lock = StoreLock(storage.path)
            lock.acquire()
            await storage.count_rooms()
    except BaseException:
        if lock is not None:
            lock.release()
        raise
    finally:
        await storage.aclose()
    return lock


class _Supervisor:
    def __init__(
        self,
        config: Config,
        workers: list[_Worker],
        groups: list[list[trio.SocketListener]],
        directory: Path,
        serve_args: list[str],
        lock: StoreLock | None,
        life: int,
    ) -> None:
        self.config = config
        #: The read end of the pipe whose end tells the workers the supervisor is gone.
        self.life = life
        #: The store lock's descriptor, inherited by every worker (see StoreLock.fileno).
        self.lock_fd = None if lock is None else lock.fileno()
        self.workers = workers
        #: Each worker's listening sockets (one set each, one port: SO_REUSEPORT).
        self.groups = groups
        self.directory = directory
        self.serve_args = serve_args
        self.draining = False

    async def run(
        self, ops: list[trio.SocketListener], shutdown_trigger: Callable[[], Awaitable[None]]
    ) -> None:
        try:
            await self._run(ops, shutdown_trigger)
        finally:
            # A worker that failed to start, or a supervisor cancelled: no worker is
            # left behind, serving the port on its own.
            with trio.CancelScope(shield=True):
                for worker in self.workers:
                    if worker.process is not None and worker.process.returncode is None:
                        worker.process.kill()
                        await worker.process.wait()

    async def _run(
        self, ops: list[trio.SocketListener], shutdown_trigger: Callable[[], Awaitable[None]]
    ) -> None:
        async with trio.open_nursery() as nursery:
            async with trio.open_nursery() as starting:  # all at once, each until it serves
                for worker in self.workers:
                    starting.start_soon(partial(nursery.start, self._keep_running, worker))
            host, port = self.groups[0][0].socket.getsockname()[:2]
            shown = f"[{host}]" if ":" in host else host
            log.info(
                "drifttrio listening on http://%s:%d (store: %s) [transport: drifttrio, workers: %d]",  # noqa: E501
                shown,
                port,
                shown_store(self.config.store),
                len(self.workers),
            )
            if ops:
                ops_host, ops_port = await nursery.start(
                    partial(serve_tcp, _SupervisorOps(self), self.config, listeners=ops)
                )
                shown = f"[{ops_host}]" if ":" in ops_host else ops_host
                log.info("metrics, health and readiness on http://%s:%d", shown, ops_port)
            await shutdown_trigger()
            await self._drain()
            nursery.cancel_scope.cancel()

    async def _drain(self) -> None:
        """SIGTERM to every worker (each drains as ``drifttrio serve`` does), then wait
        for them, within the shutdown deadline and a little more."""
        self.draining = True
        log.info("shutting down: draining %d worker(s)", len(self.workers))
        for group in self.groups:
            for listener in group:
                listener.socket.close()  # the port is free once the workers close theirs
        live = [w.process for w in self.workers if w.process and w.process.returncode is None]
        for process in live:
            process.send_signal(signal.SIGTERM)
        with trio.move_on_after(self.config.shutdown_timeout + 5.0):
            for process in live:
                await process.wait()
        for process in live:
            if process.returncode is None:
                log.warning("worker pid %d did not finish draining: killed", process.pid)
                process.kill()
                await process.wait()

    async def _keep_running(
        self, worker: _Worker, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Start the worker, and start it again whenever it dies, until draining."""
        process = await self._start(worker)
        task_status.started()
        backoff = _FIRST_BACKOFF
        while True:
            started = trio.current_time()
            status = await process.wait()
            if self.draining:
                return
            log.warning(
                "worker %d (pid %d) ended with status %d: starting it again"
                " (its rooms recover from the store, its clients reconnect)",
                worker.index,
                process.pid,
                status,
            )
            if trio.current_time() - started >= _HEALTHY_SECONDS:
                backoff = _FIRST_BACKOFF
            await trio.sleep(backoff)
            backoff = min(backoff * 2, _MAX_BACKOFF)
            if self.draining:
                return
            worker.restarts += 1
            try:
                process = await self._start(worker)
                log.info("worker %d serving again (pid %d)", worker.index, process.pid)
            except WorkerFailed as exc:
                log.warning("%s", exc)
                # Ended already: the loop goes round again, after the backoff.
                assert worker.process is not None
                process = worker.process

    async def _start(self, worker: _Worker) -> trio.Process:
        """Start ``worker``'s process and wait until it serves; :class:`WorkerFailed`
        if it ends first."""
        ready_read, ready_write = os.pipe()
        fds = [listener.socket.fileno() for listener in self.groups[worker.index]]
        spec = {
            "index": worker.index,
            "count": len(self.workers),
            "directory": str(self.directory),
            "listen": fds,
            "ready": ready_write,
            "life": self.life,
            "args": self.serve_args,
        }
        async with trio.lowlevel.FdStream(ready_read) as ready:
            try:
                process = await trio.lowlevel.open_process(
                    [sys.executable, "-m", "drifttrio.supervisor", json.dumps(spec)],
                    stdin=subprocess.DEVNULL,
                    pass_fds=[
                        *fds,
                        ready_write,
                        self.life,
                        *([] if self.lock_fd is None else [self.lock_fd]),
                    ],
                )
            finally:
                os.close(ready_write)  # the worker's copy is the only one: EOF if it dies
            worker.process = process
            said = await ready.receive_some(1)
        if said != b"1":
            status = await process.wait()
            raise WorkerFailed(
                f"worker {worker.index} ended before serving (status {status})", status
            )
        return process

    # -- what the supervisor answers for all its workers ---------------------------

    async def ask_all(self, target: str) -> list[tuple[int, bytes]]:
        """``GET target`` of every worker's internal listener, in worker order; a
        worker that does not answer gives ``(0, b"")``."""
        answers: list[tuple[int, bytes]] = [(0, b"")] * len(self.workers)

        async def ask(index: int) -> None:
            answers[index] = await _ask(_ops_path(self.directory, index), target)

        async with trio.open_nursery() as nursery:
            for worker in self.workers:
                nursery.start_soon(ask, worker.index)
        return answers


def _ops_path(directory: Path, index: int) -> Path:
    """Where worker ``index`` answers ``/metrics``, ``/healthz`` and ``/readyz``."""
    return directory / f"ops-{index}.sock"


async def _ask(path: Path, target: str) -> tuple[int, bytes]:
    """One ``GET`` over a Unix socket: the status and body, or ``(0, b"")``."""
    conn = h11.Connection(h11.CLIENT)
    status, body = 0, bytearray()
    with trio.move_on_after(_ASK_SECONDS):
        try:
            stream = await trio.open_unix_socket(str(path))
        except OSError:
            return 0, b""
        async with stream:
            request = h11.Request(
                method="GET", target=target, headers=[("host", "worker"), ("connection", "close")]
            )
            try:
                await stream.send_all(conn.send(request) + (conn.send(h11.EndOfMessage()) or b""))
                while True:
                    event = conn.next_event()
                    if event is h11.NEED_DATA:
                        conn.receive_data(await stream.receive_some(65536))
                    elif isinstance(event, h11.Response):
                        status = event.status_code
                    elif isinstance(event, h11.Data):
                        body += event.data
                    else:
                        return status, bytes(body)
            except (OSError, trio.BrokenResourceError, h11.ProtocolError):
                return 0, b""
    return 0, b""


def merge_metrics(texts: Sequence[bytes], extra: str = "") -> bytes:
    """Prometheus text expositions of the workers, as one: each sample gets a
    ``worker`` label (its index), each family's ``HELP`` and ``TYPE`` lines once."""
    families: dict[str, tuple[list[str], list[str]]] = {}
    for index, text in enumerate(texts):
        family = ""
        for line in text.decode("utf-8", "replace").splitlines():
            if not line:
                continue
            if line.startswith("#"):
                parts = line.split(" ", 3)
                if len(parts) >= 3 and parts[1] in ("HELP", "TYPE"):
                    family = parts[2]
                    head, _ = families.setdefault(family, ([], []))
                    if line not in head:
                        head.append(line)
                continue
            name, brace, rest = line.partition("{")
            if brace:
                sample = f'{name}{{worker="{index}",{rest}'
            else:
                metric, _, value = line.partition(" ")
                sample = f'{metric}{{worker="{index}"}} {value}'
            families.setdefault(family, ([], []))[1].append(sample)
    lines = [line for head, samples in families.values() for line in (*head, *samples)]
    return ("\n".join(lines) + "\n" + extra).encode()


class _SupervisorOps:
    """The supervisor's internal listener: every worker's metrics, health and
    readiness in one place."""

    def __init__(self, supervisor: _Supervisor) -> None:
        self.supervisor = supervisor

    async def __call__(
        self,
        scope: MutableMapping[str, Any],
        receive: Callable[[], Awaitable[Any]],
        send: Callable[[Any], Awaitable[None]],
    ) -> None:
        if scope["type"] != "http":
            return
        path = scope["path"]
        if path not in ("/metrics", "/healthz", "/readyz"):
            await reply_json(send, 404, {"type": "error", "message": "not found"})
            return
        answers = await self.supervisor.ask_all(path)
        workers = self.supervisor.workers
        if path == "/metrics":
            restarts = "\n".join(
                f'drifttrio_worker_restarts_total{{worker="{w.index}"}} {w.restarts}'
                for w in workers
            )
            extra = (
                "# HELP drifttrio_worker_restarts_total Times the supervisor started a worker"
                " again after it died.\n# TYPE drifttrio_worker_restarts_total counter\n"
                f"{restarts}\n"
            )
            body = merge_metrics([text for status, text in answers if status == 200], extra)
            await reply(send, 200, body, CONTENT_TYPE_LATEST)
            return
        states = []
        for worker, (status, text) in zip(workers, answers, strict=True):
            state: dict[str, Any] = {"worker": worker.index, "status": status}
            if worker.process is not None:
                state["pid"] = worker.process.pid
            if status not in (0, 200):
                with contextlib.suppress(orjson.JSONDecodeError, AttributeError):
                    state["reason"] = orjson.loads(text).get("reason")
            elif status == 0:
                state["reason"] = "not answering (starting, or restarting)"
            states.append(state)
        good = all(status == 200 for status, _ in answers)
        key = "ready" if path == "/readyz" else "ok"
        summary = (
            {key: good, "workers": states}
            if key == "ready"
            else {
                "status": "ok" if good else "degraded",
                "workers": states,
            }
        )
        await reply_json(send, 200 if good else 503, summary)

    async def websocket(self, peer: Peer) -> None:
        await peer.reject(403, b"", [])


# -- the worker's side -----------------------------------------------------------------


async def _run_worker(config: Config, spec: dict[str, Any]) -> None:
    shard = Shard(spec["index"], spec["count"], Path(spec["directory"]))
    public = [
        trio.SocketListener(trio.socket.from_stdlib_socket(socket.socket(fileno=fd)))
        for fd in spec["listen"]
    ]
    ops_path = _ops_path(shard.directory, shard.index)
    ops_path.unlink(missing_ok=True)
    ops_socket = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    await ops_socket.bind(str(ops_path))
    ops_socket.listen(64)
    ops = [trio.SocketListener(ops_socket)]
    storage = open_storage(config.store, lock_held_by_parent=True)
    config = attrs.evolve(fit_descriptors(config, raise_descriptor_limit()), metrics_port=-1)
    hooks = configured_hooks(config)
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        stop = trio.Event()

        async def until_signal() -> None:
            async for _ in signals:
                break
            stop.set()

        async def while_supervised() -> None:
            # The supervisor holds the pipe's only write end: it reads b"" (EOF) once
            # the supervisor is gone, however it ended. (Not PR_SET_PDEATHSIG: that
            # fires when the *thread* that started the worker ends, and trio starts
            # processes from cached threads that end after 10 s idle.)
            async with trio.lowlevel.FdStream(spec["life"]) as life:
                while await life.receive_some(1):
                    pass
            log.warning("worker %d: its supervisor is gone; draining", shard.index)
            stop.set()

        async with trio.open_nursery() as nursery:
            await nursery.start(paced_full_collections)
            nursery.start_soon(until_signal)
            nursery.start_soon(while_supervised)

            async def serve(task_status: trio.TaskStatus[Any] = trio.TASK_STATUS_IGNORED) -> None:
                await _serve_on(
                    config,
                    public,
                    ops,
                    None,
                    "drifttrio",
                    stop.wait,
                    hooks,
                    task_status,
                    shard=shard,
                    storage=storage,
                )
                nursery.cancel_scope.cancel()

            await nursery.start(serve)
            os.write(spec["ready"], b"1")
            os.close(spec["ready"])
    shard.close()


def worker_main(argv: Sequence[str]) -> int:
    """A worker process: ``python -m drifttrio.supervisor SPEC`` (the supervisor's
    JSON: its index, the count, the directory of the workers' sockets, the
    inherited descriptors, and the ``drifttrio serve`` arguments)."""
    from ._logging import configure_logging
    from .cli import serve_config

    spec = json.loads(argv[0])
    config, _ = serve_config(spec["args"])
    configure_logging(config.log_format, config.log_level)
    try:
        trio.run(_run_worker, config, spec)
    except BaseException as exc:
        leaf = unwrap_group(exc)
        if isinstance(leaf, KeyboardInterrupt):
            return 130
        if not isinstance(leaf, DriftError | OSError):
            raise
        print(f"drifttrio: worker {spec['index']}: {leaf}", file=sys.stderr, flush=True)
        return 2 if isinstance(leaf, ConfigError) else 1
    return 0


if __name__ == "__main__":
    sys.exit(worker_main(sys.argv[1:]))
