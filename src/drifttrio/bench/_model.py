"""What a bench run is asked to do, and what it found."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import attrs

from ._proc import ProcSample
from ._stats import LatencyHistogram

__all__ = [
    "ACTIONS",
    "DEFAULT_SCENARIOS",
    "SATURATED",
    "SCENARIOS",
    "BenchOptions",
    "ScenarioResult",
    "ServerUsage",
    "merge_results",
]

#: Every scenario, in the order they run.
SCENARIOS = ("fanout", "writers", "rooms", "replay", "churn", "ping")
#: What runs without ``--scenario``: churn is left out (it leaves thousands of sockets
#: in TIME_WAIT and trips per-address connection limits of hosted servers).
DEFAULT_SCENARIOS = ("fanout", "writers", "rooms", "replay", "ping")
#: Push actions the load may use (each consumes a seq and is broadcast).
ACTIONS = ("relay", "append", "replace")

_MAX_FAILURES = 20

#: Above this share of a core a load process, not the server, is likely the limit.
SATURATED = 0.9


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
    #: Processes the load runs in, each driving its share of the connections
    #: (1: this process alone).
    procs: int = 1

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

    @classmethod
    def between(
        cls,
        before: ProcSample,
        start: ProcSample,
        end: ProcSample,
        *,
        elapsed: float,
        delivered: int,
        connections: int,
    ) -> ServerUsage:
        """From samples before the scenario connected, and at the window's start and end."""
        cpu = end.cpu_seconds - start.cpu_seconds
        return cls(
            cpu_seconds=cpu,
            cpu_per_1k=cpu / (delivered / 1000) if delivered else None,
            cpu_share=cpu / elapsed,
            rss_before=before.rss_bytes,
            rss_after=end.rss_bytes,
            rss_per_connection=(
                (end.rss_bytes - before.rss_bytes) / connections if connections else None
            ),
        )

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
    #: Share of one core the load generator used during the window: the busiest
    #: of its processes, each of which is in ``client_cpus``.
    client_cpu: float | None = None
    client_cpus: list[float] = attrs.field(factory=list)
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

    @property
    def generator_limited(self) -> bool:
        """A load process used (nearly) a whole core: the rate may be its limit."""
        return self.client_cpu is not None and self.client_cpu >= SATURATED

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
            "client_cpus": [round(share, 3) for share in self.client_cpus],
            "generator_limited": self.generator_limited,
            "server": None if self.server is None else self.server.to_json(),
        }


def merge_results(parts: list[ScenarioResult]) -> ScenarioResult:
    """One scenario's results from its load processes, as one: counts and histograms
    add up, every problem is kept, the window is the longest, the CPU the busiest's.

    The server's usage is not merged: the process that started the others samples it.
    """
    first = parts[0]
    merged = ScenarioResult(name=first.name, params=first.params, unit=first.unit)
    for part in parts:
        merged.connections += part.connections
        merged.seconds = max(merged.seconds, part.seconds)
        merged.delivered += part.delivered
        merged.sent += part.sent
        merged.latency.merge(part.latency)
        merged.lost += part.lost
        merged.reordered += part.reordered
        merged.duplicated += part.duplicated
        merged.errors += part.errors
        if merged.first_error is None:
            merged.first_error = part.first_error
        merged.closed.extend(part.closed)
        for failure in part.failures:
            merged.fail(failure)
        merged.client_cpus.extend(part.client_cpus)
    merged.client_cpu = max(merged.client_cpus, default=None)
    return merged
