"""Prometheus metrics of one server (one registry per hub, so servers never share).

The hot path only touches children bound once here (``metrics.push_in[kind]``),
and counts per batch where it can: a broadcast is one ``inc(n)`` for its n
deliveries, a writer batch one ``inc`` for its frames and bytes. Nothing is
labelled by room. Gauges that describe the whole server (live rooms, inbox
depth) are computed when scraped (:meth:`Metrics.collect_live`).

The metrics counted per message or per batch (messages and bytes in and out,
fan-out, batch sizes, commit times) are :class:`TallyCounter` and
:class:`TallyHistogram`: plain ``+=`` on the event loop's thread, exported by
their own collector in the same exposition as a ``Counter`` or ``Histogram``.
prometheus_client's locked values cost a tenth of the server's time at one
small message per batch.
"""

from __future__ import annotations

import time
from bisect import bisect_left
from collections.abc import Callable, Iterable, Iterator, Sequence
from itertools import accumulate
from typing import Any, Final

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest
from prometheus_client.metrics_core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.samples import Sample
from prometheus_client.utils import floatToGoString

#: How prometheus_client writes a bucket bound (``le``); typed here, it is not there.
_le: Callable[[float], str] = floatToGoString

__all__ = [
    "CLOSE_REASONS",
    "CODECS",
    "ERROR_REASONS",
    "IN_KINDS",
    "LIMITS",
    "OUT_KINDS",
    "Metrics",
    "Tally",
    "TallyCounter",
    "TallyHistogram",
]

CODECS: Final = ("json", "cbor", "none")
#: Client messages, by type (pushes by action).
IN_KINDS: Final = ("relay", "replace", "append", "compact", "get", "ping", "invalid")
#: Server messages, by type.
OUT_KINDS: Final = ("push", "init", "stream_size", "pong", "error")
#: Why an ``error`` message was sent.
ERROR_REASONS: Final = ("invalid", "refused", "hook", "rate_limited", "storage", "slow_client")
#: Why a connection ended (``client``: the peer closed or went away).
CLOSE_REASONS: Final = (
    "client",
    "shutdown",
    "room_closed",
    "internal_error",
    "too_big",
    "too_many_errors",
    "slow_client",
    "rate_limited",
)
#: Which limit refused a request.
LIMITS: Final = (
    "max_connections",
    "max_connections_per_ip",
    "max_connections_per_room",
    "new_rooms_per_minute",
    "max_rooms",
    "api_key",
    "allowed_origins",
    "max_message_bytes",
    "rate_limit",
    "max_message_nodes",
    "address_budget",
    "hook",
)

_LATENCY_BUCKETS: Final = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
)
_FANOUT_BUCKETS: Final = (0, 1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000)
_CLIENT_CODES: Final = frozenset({1000, 1001, 1005, 1006})
_BATCH_BUCKETS: Final = (1, 2, 5, 10, 20, 50, 100, 200, 500)


class Tally:
    """One child of a :class:`TallyCounter`. Only the event loop's thread counts:
    every count happens in a room, session or request task, never in a worker
    thread, so a plain ``+=`` needs no lock."""

    __slots__ = ("created", "value")

    def __init__(self) -> None:
        self.value = 0.0
        self.created = time.time()

    def inc(self, amount: float = 1.0) -> None:
        self.value += amount


class TallyCounter:
    """A labelled counter whose children are :class:`Tally`, all made up front."""

    def __init__(
        self,
        name: str,
        documentation: str,
        labelnames: Sequence[str],
        label_values: Iterable[tuple[str, ...]],
        registry: CollectorRegistry,
    ) -> None:
        self.name = name
        self.documentation = documentation
        self.labelnames = tuple(labelnames)
        self.children = {values: Tally() for values in label_values}
        registry.register(self)

    def describe(self) -> list[Metric]:
        return [CounterMetricFamily(self.name, self.documentation, labels=self.labelnames)]

    def collect(self) -> Iterator[Metric]:
        family = CounterMetricFamily(self.name, self.documentation, labels=self.labelnames)
        for values, child in self.children.items():
            family.add_metric(values, child.value, created=child.created)
        yield family


class TallyHistogram:
    """An unlabelled histogram observed with two ``+=`` (see :class:`Tally`)."""

    __slots__ = ("_bounds", "counts", "created", "documentation", "name", "sum")

    def __init__(
        self, name: str, documentation: str, buckets: Sequence[float], registry: CollectorRegistry
    ) -> None:
        self.name = name
        self.documentation = documentation
        self._bounds = tuple(float(b) for b in buckets)
        #: Observations per bucket (not cumulative); the last one is ``+Inf``.
        self.counts = [0] * (len(self._bounds) + 1)
        self.sum = 0.0
        self.created = time.time()
        registry.register(self)

    def observe(self, amount: float) -> None:
        self.counts[bisect_left(self._bounds, amount)] += 1
        self.sum += amount

    def describe(self) -> list[Metric]:
        return [HistogramMetricFamily(self.name, self.documentation)]

    def collect(self) -> Iterator[Metric]:
        family = HistogramMetricFamily(self.name, self.documentation)
        totals = list(accumulate(self.counts))
        buckets = [(_le(b), float(n)) for b, n in zip(self._bounds, totals, strict=False)]
        buckets.append(("+Inf", float(totals[-1])))
        family.add_metric([], buckets, self.sum)
        family.samples.append(Sample(self.name + "_created", {}, self.created))
        yield family


class _Children(dict[tuple[str, ...], Any]):
    """A metric's label children, made when first looked up."""

    def __init__(self, metric: Any) -> None:
        super().__init__()
        self._metric = metric

    def __missing__(self, labels: tuple[str, ...]) -> Any:
        child = self[labels] = self._metric.labels(*labels)
        return child


class Metrics:
    """Every drifttrio metric, registered in :attr:`registry`."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.rooms_live = Gauge("drifttrio_rooms_live", "Rooms loaded in memory", registry=r)
        self.rooms_stored = Gauge(
            "drifttrio_rooms_stored", "Rooms in the store (at the last scrape)", registry=r
        )
        self.inbox_depth = Gauge(
            "drifttrio_room_inbox_depth",
            "Commands waiting in room inboxes (sum and largest over live rooms)",
            ["stat"],
            registry=r,
        )
        self.draining = Gauge("drifttrio_draining", "1 while the server shuts down", registry=r)
        #: ``drifttrio serve --workers``: connections handed to the worker that owns
        #: their room (``out``), and taken from another worker (``in``).
        self.handoffs = Counter(
            "drifttrio_worker_handoffs",
            "Connections handed to the worker owning their room (out) or taken from one (in)",
            ["direction"],
            registry=r,
        )
        connections = Gauge(
            "drifttrio_connections",
            "Live room members",
            ["transport", "codec"],
            registry=r,
        )
        opened = Counter(
            "drifttrio_connections_opened",
            "Room members that joined",
            ["transport", "codec"],
            registry=r,
        )
        #: By ``Member.labels``: what carries a member (web/ names its transports)
        #: and its codec; a pair's series appears with its first member.
        self.connections = _Children(connections)
        self.connections_opened = _Children(opened)
        closed = Counter(
            "drifttrio_connections_closed",
            "Room members that left, by close code and reason",
            ["code", "reason"],
            registry=r,
        )
        self._closed = closed
        messages_in = TallyCounter(
            "drifttrio_messages_in",
            "Client messages received, by kind",
            ["kind"],
            [(k,) for k in IN_KINDS],
            r,
        )
        self.messages_in = {k: messages_in.children[k,] for k in IN_KINDS}
        messages_out = TallyCounter(
            "drifttrio_messages_out",
            "Server messages queued for members and HTTP callers, by kind",
            ["kind"],
            [(k,) for k in OUT_KINDS],
            r,
        )
        self.messages_out = {k: messages_out.children[k,] for k in OUT_KINDS}
        bytes_in = TallyCounter(
            "drifttrio_bytes_in",
            "WebSocket payload bytes received",
            ["codec"],
            [(c,) for c in CODECS],
            r,
        )
        bytes_out = TallyCounter(
            "drifttrio_bytes_out",
            "WebSocket bytes written (frames)",
            ["codec"],
            [(c,) for c in CODECS],
            r,
        )
        self.bytes_in = {c: bytes_in.children[c,] for c in CODECS}
        self.bytes_out = {c: bytes_out.children[c,] for c in CODECS}
        self.slow_disconnects = Counter(
            "drifttrio_slow_client_disconnects",
            "Members closed with 4008 because their outbox was full",
            registry=r,
        )
        self.slow_drops = Counter(
            "drifttrio_slow_client_dropped_messages",
            "Messages skipped for members under the drop policy",
            registry=r,
        )
        errors = Counter(
            "drifttrio_errors", "error messages sent, by reason", ["reason"], registry=r
        )
        self.errors = {k: errors.labels(k) for k in ERROR_REASONS}
        rejected = Counter(
            "drifttrio_rejected_requests",
            "Requests and upgrades refused by a limit",
            ["limit"],
            registry=r,
        )
        self.rejected = {k: rejected.labels(k) for k in LIMITS}
        self.shared_resyncs = Counter(
            "drifttrio_shared_resyncs",
            "Times a shared room (Redis) read missed events back from the room's log",
            registry=r,
        )
        self.storage_failures = Counter(
            "drifttrio_storage_failures",
            "Commits the store refused (batch rolled back)",
            registry=r,
        )
        self.retained_bytes = Gauge(
            "drifttrio_retained_bytes",
            "Bytes retained by the rooms in memory, as charged against max_retained_bytes",
            registry=r,
        )
        self.queued_bytes = Gauge(
            "drifttrio_queued_bytes",
            "Bytes queued in all outboxes, as charged against max_queued_bytes",
            registry=r,
        )
        self.rooms_evicted = Counter(
            "drifttrio_rooms_evicted",
            "Idle rooms unloaded early to stay within max_retained_bytes",
            registry=r,
        )
        self.rooms_crashed = Counter(
            "drifttrio_rooms_crashed", "Room tasks that ended on an error (close 1011)", registry=r
        )
        self.commit_seconds = TallyHistogram(
            "drifttrio_commit_seconds",
            "Time to commit one room batch to the store",
            _LATENCY_BUCKETS,
            r,
        )
        self.fanout = TallyHistogram(
            "drifttrio_broadcast_fanout",
            "Members a broadcast was delivered to",
            _FANOUT_BUCKETS,
            r,
        )
        self.batch_commands = TallyHistogram(
            "drifttrio_room_batch_commands",
            "Commands a room applied in one batch",
            _BATCH_BUCKETS,
            r,
        )

    def closed(self, code: int | None, reason: str) -> None:
        """Count a member that left (``code`` None: no close frame).

        A peer's own close codes are kept only when standard, to bound the labels.
        """
        if code is None:
            label = "none"
        elif reason == "client" and code not in _CLIENT_CODES:
            label = "other"
        else:
            label = str(code)
        self._closed.labels(label, reason).inc()

    def collect_live(self, inbox_depths: Iterable[int], live_rooms: int) -> None:
        """Set the gauges that describe the moment of a scrape."""
        depths = list(inbox_depths)
        self.rooms_live.set(live_rooms)
        self.inbox_depth.labels("sum").set(sum(depths))
        self.inbox_depth.labels("max").set(max(depths, default=0))

    def exposition(self) -> bytes:
        """The text exposition format (``text/plain; version=0.0.4``)."""
        return generate_latest(self.registry)
