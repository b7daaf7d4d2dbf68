"""Real ``redis-server`` processes for tests, on loopback ports the OS picked.

Servers run with ``appendonly yes`` and ``appendfsync always`` (what drifttrio asks
for) in a temporary directory, so a killed and restarted server comes back with
every acknowledged write. Tests skip if ``redis-server`` is not installed, unless
``DRIFTTRIO_REQUIRE_REDIS=1`` (``.ci/run`` sets it), when they fail instead.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest

__all__ = ["RedisCluster", "RedisServer", "require_redis"]

TIMEOUT = 30.0  # a guard against hangs, never a way to wait for something


def require_redis() -> str:
    """The ``redis-server`` binary, or skip (fail under ``DRIFTTRIO_REQUIRE_REDIS=1``)."""
    binary = shutil.which("redis-server")
    if binary is None:
        if os.environ.get("DRIFTTRIO_REQUIRE_REDIS") == "1":
            pytest.fail("redis-server is required (DRIFTTRIO_REQUIRE_REDIS=1) but not installed")
        pytest.skip("redis-server is not installed (apt-get install redis-server)")
    return binary


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class RedisServer:
    """One ``redis-server`` on 127.0.0.1; :meth:`kill` and :meth:`start` again keep
    its port and data directory (a restart)."""

    def __init__(self, directory: Path, *extra: str) -> None:
        self.binary = require_redis()
        self.directory = directory
        self.directory.mkdir(parents=True, exist_ok=True)
        self.extra = extra
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None
        self._accepting = False

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        """Start (or restart) the server and return once it accepts connections."""
        for _ in range(5):
            port = self.port or _free_port()
            if self._start_on(port):
                self.port = port
                return
            if self.port:
                break  # a restart must keep its port
        raise RuntimeError(f"redis-server did not start: see {self.directory / 'redis.log'}")

    def _start_on(self, port: int) -> bool:
        self.process = subprocess.Popen(
            [
                self.binary,
                "--bind",
                "127.0.0.1",
                "--port",
                str(port),
                "--dir",
                str(self.directory),
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
                "--save",
                "",
                "--logfile",
                "",
                *self.extra,
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        ready = threading.Event()
        self._accepting = False
        threading.Thread(target=self._drain, args=(self.process, ready), daemon=True).start()
        # Ready, or the process ended (the drain thread sets the event at EOF too).
        ready.wait(TIMEOUT)
        if self._accepting:
            return True
        self.kill()
        return False

    def _drain(self, process: subprocess.Popen[bytes], ready: threading.Event) -> None:
        """Read the server's log (so its pipe never fills); signal readiness."""
        assert process.stdout is not None
        with (self.directory / "redis.log").open("ab") as log:
            for line in process.stdout:
                log.write(line)
                log.flush()
                if b"Ready to accept connections" in line:
                    self._accepting = True
                    ready.set()
        process.stdout.close()
        ready.set()

    def kill(self) -> None:
        """SIGKILL: no chance to save anything beyond what ``appendfsync always`` did."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self.process = None

    def cli(self, *args: str) -> str:
        return subprocess.run(
            ["redis-cli", "-h", "127.0.0.1", "-p", str(self.port), *args],
            check=True,
            capture_output=True,
            text=True,
            timeout=TIMEOUT,
        ).stdout


class RedisCluster:
    """Three primaries with cluster mode on, slots spread by ``redis-cli --cluster create``."""

    def __init__(self, directory: Path, size: int = 3) -> None:
        self.servers = [
            RedisServer(
                directory / f"node{i}",
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                str(directory / f"node{i}" / "nodes.conf"),
            )
            for i in range(size)
        ]

    @property
    def url(self) -> str:
        nodes = ",".join(f"127.0.0.1:{s.port}" for s in self.servers)
        return f"redis+cluster://{nodes}"

    def start(self) -> None:
        for server in self.servers:
            server.start()
        subprocess.run(
            [
                "redis-cli",
                "--cluster",
                "create",
                *(f"127.0.0.1:{s.port}" for s in self.servers),
                "--cluster-replicas",
                "0",
                "--cluster-yes",
            ],
            check=True,
            capture_output=True,
            timeout=TIMEOUT,
        )
        # Wait until every node agrees the cluster is up (gossip takes a moment).
        deadline = time.monotonic() + TIMEOUT
        for server in self.servers:
            while "cluster_state:ok" not in server.cli("cluster", "info"):
                if time.monotonic() > deadline:
                    raise RuntimeError("the Redis cluster did not come up")
                subprocess.run(
                    ["redis-cli", "-p", str(server.port), "wait", "0", "50"],
                    capture_output=True,
                    timeout=TIMEOUT,
                )

    def kill(self) -> None:
        for server in self.servers:
            server.kill()
