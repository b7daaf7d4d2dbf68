"""What a bench run is asked to do, and what it found."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import attrs

from ._stats import LatencyHistogram

__all__ = [
    "ACTIONS",
    "DEFAULT_SCENARIOS",
    "SCENARIOS",
    "BenchOptions",
    "ScenarioResult",
    "ServerUsage",
]

#: Every scenario, in the order they run.
SCENARIOS = ("fanout", "writers", "rooms", "replay", "churn", "ping")
#: What runs without ``--scenario``: churn is left out (it leaves thousands of sockets
#: in TIME_WAIT and trips per-address connection limits of hosted servers).
DEFAULT_SCENARIOS = ("fanout", "writers", "rooms", "replay", "ping")
#: Push actions the load may use (each consumes a seq and is broadcast).
ACTIONS = ("relay", "append", "replace")

_MAX_FAILURES = 20


@attrs.frozen(kw_only=True)
class BenchOptions:
    """The knobs of ``drifttrio bench``; see ``drifttrio bench --help``."""

    #: The server's base URL (``POST {url}/new`` must create a room).
    url: str
    scenarios: tuple[str, ...] = DEFAULT_SCENARIOS
    #: Seconds each scenario is measured, after ``warmup`` seconds of load not counted.
    seconds: float = 5.0
    warmup: float = 1.0
    #: Subscribers: in the fanout room (default 10), in each room of ``rooms`` (default 3).
    subscribers: int | None = None
    #: Pushes kept in flight: by the fanout publisher; in total for writers and rooms.
    in_flight: int = 100
    writers: int = 10
    rooms: int = 10
    #: Values appended to the stream the replay scenario reads back.
    values: int = 1000
    #: Connections opening and closing at once in the churn scenario.
    concurrency: int = 10
    action: str = "relay"
    #: Bytes of padding in each pushed value (besides its timestamp).
    payload: int = 32
    #: Seconds to wait for a room, an upgrade, an init, and the final drain.
    timeout: float = 10.0
    #: A local server process to sample CPU and RSS of.
    pid: int | None = None
    #: Called with a progress line once a second (None: silent).
    progress: Callable[[str], None] | None = None

    def subscribers_for(self, scenario: str) -> int:
        if self.subscribers is not None:
            return self.subscribers
        return 10 if scenario == "fanout" else 3


@attrs.frozen
class ServerUsage:
    """What the ``--pid`` process used while a scenario was measured."""

    cpu_seconds: float
    #: CPU seconds per 1,000 messages delivered (None when nothing was delivered).
    cpu_per_1k: float | None
    #: Share of one core, 0-1 (can exceed 1 for a multi-threaded server).
    cpu_share: float
    rss_before: int
    rss_after: int
    #: RSS growth from before the scenario connected to the end of the window,
    #: divided by the scenario's connections.
    rss_per_connection: float | None

    def to_json(self) -> dict[str, Any]:
        def rounded(value: float | None, digits: int) -> float | None:
            return None if value is None else round(value, digits)

        return {
            "cpu_seconds": round(self.cpu_seconds, 3),
            "cpu_per_1k": rounded(self.cpu_per_1k, 6),
            "cpu_share": round(self.cpu_share, 3),
            "rss_before": self.rss_before,
            "rss_after": self.rss_after,
            "rss_per_connection": rounded(self.rss_per_connection, 0),
        }


@attrs.define(kw_only=True)
class ScenarioResult:
    """One scenario's figures and everything that went wrong in it."""

    name: str
    params: dict[str, Any] = attrs.field(factory=dict)
    #: What ``delivered`` counts, per second: ``msg/s``, ``values/s``, ``conn/s``, ``rtt/s``.
    unit: str = "msg/s"
    connections: int = 0
    #: Length of the measured window in seconds.
    seconds: float = 0.0
    delivered: int = 0
    #: Pushes (or gets) acknowledged during the window.
    sent: int = 0
    latency: LatencyHistogram = attrs.field(factory=LatencyHistogram)
    lost: int = 0
    reordered: int = 0
    duplicated: int = 0
    #: ``error`` messages from the server, and the first one's text.
    errors: int = 0
    first_error: str | None = None
    #: Connections the server (or the network) closed, as ``"who: code reason"``.
    closed: list[str] = attrs.field(factory=list)
    #: Anything else that went wrong (a wait that timed out, a wrong answer).
    failures: list[str] = attrs.field(factory=list)
    #: Share of one core the load generator used during the window.
    client_cpu: float | None = None
    server: ServerUsage | None = None

    @property
    def rate(self) -> float:
        return self.delivered / self.seconds if self.seconds > 0 else 0.0

    @property
    def ok(self) -> bool:
        return not (
            self.lost
            or self.reordered
            or self.duplicated
            or self.errors
            or self.closed
            or self.failures
        )

    def fail(self, message: str) -> None:
        """Note a problem; after 20 only the count grows (a broken server repeats itself)."""
        if len(self.failures) < _MAX_FAILURES:
            self.failures.append(message)
        elif len(self.failures) == _MAX_FAILURES:
            self.failures.append("... (more problems not listed)")

    def error(self, message: str) -> None:
        self.errors += 1
        if self.first_error is None:
            self.first_error = message

    def to_json(self) -> dict[str, Any]:
        def ms(ns: float | None) -> float | None:
            return None if ns is None else round(ns / 1e6, 4)

        lat = self.latency
        return {
            "scenario": self.name,
            "ok": self.ok,
            "params": self.params,
            "connections": self.connections,
            "seconds": round(self.seconds, 4),
            "delivered": self.delivered,
            "unit": self.unit,
            "rate": round(self.rate, 1),
            "sent": self.sent,
            "latency_ms": {
                "samples": lat.count,
                "p50": ms(lat.percentile(0.5)),
                "p99": ms(lat.percentile(0.99)),
                "max": ms(lat.max_ns if lat.count else None),
                "mean": ms(lat.mean_ns),
            },
            "lost": self.lost,
            "reordered": self.reordered,
            "duplicated": self.duplicated,
            "errors": self.errors,
            "first_error": self.first_error,
            "closed": self.closed,
            "failures": self.failures,
            "client_cpu": None if self.client_cpu is None else round(self.client_cpu, 3),
            "server": None if self.server is None else self.server.to_json(),
        }
