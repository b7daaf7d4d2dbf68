"""One frozen configuration object, built from CLI flags or ``DRIFTTRIO_*`` variables."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any, Literal, get_args

import attrs

from .._errors import ConfigError
from ..core.room_state import RoomLimits
from ..protocol.codec import DecodeLimits

__all__ = ["Config", "SlowClientPolicy"]

SlowClientPolicy = Literal["disconnect", "drop"]


def _positive(_inst: object, attr: attrs.Attribute[Any], value: float) -> None:
    if value <= 0:
        raise ConfigError(f"{attr.name} must be positive, got {value!r}")


def _non_negative(_inst: object, attr: attrs.Attribute[Any], value: float) -> None:
    if value < 0:
        raise ConfigError(f"{attr.name} must not be negative, got {value!r}")


def _port_or_off(_inst: object, attr: attrs.Attribute[Any], value: int) -> None:
    if not -1 <= value <= 65535:
        raise ConfigError(f"{attr.name} must be -1 (off), 0 (any free port) or a port, got {value}")


def _log_format(_inst: object, _attr: attrs.Attribute[Any], value: str) -> None:
    if value not in ("text", "kv", "json"):
        raise ConfigError(f"log_format must be 'text', 'kv' or 'json', got {value!r}")


def _within_half_outbox(inst: Config, attr: attrs.Attribute[Any], value: int) -> None:
    _positive(inst, attr, value)
    if value > inst.outbox_bytes // 2:
        raise ConfigError(
            f"{attr.name} ({value}) must be at most half of outbox_bytes ({inst.outbox_bytes}):"
            " an init chunk has to fit in an outbox with room to spare"
        )


def _with_certfile(inst: Config, _attr: attrs.Attribute[Any], value: str) -> None:
    if bool(value) != bool(inst.certfile):
        given, missing = ("keyfile", "certfile") if value else ("certfile", "keyfile")
        raise ConfigError(
            f"{given} is set but {missing} is not: TLS needs both (--certfile and --keyfile)"
        )


def _policy(_inst: object, _attr: attrs.Attribute[Any], value: str) -> None:
    if value not in get_args(SlowClientPolicy):
        raise ConfigError(f"slow_client_policy must be 'disconnect' or 'drop', got {value!r}")


@attrs.frozen(kw_only=True)
class Config:
    """Everything that can be tuned. Every field has a ``DRIFTTRIO_<NAME>`` variable."""

    #: Storage URL: ``memory`` or ``sqlite:///PATH[?synchronous=normal|full]``.
    #: The library default is ``memory``; ``drifttrio serve`` and ``drifttrio.asgi``
    #: default to ``sqlite:///drifttrio.db``.
    store: str = "memory"
    #: Seconds a room may stay idle (no push, no member) before it is deleted with
    #: its data; 0 keeps rooms forever. Upstream's hosted worker used 24 hours.
    room_ttl_seconds: float = attrs.field(default=24 * 3600.0, validator=_non_negative)
    #: Commands waiting in a room's inbox before senders are made to wait.
    room_inbox_size: int = attrs.field(default=1024, validator=_positive)
    #: Most commands a room applies per storage commit.
    room_batch_size: int = attrs.field(default=256, validator=_positive)
    #: Seconds a room with no members stays in memory before its task ends.
    room_idle_seconds: float = attrs.field(default=60.0, validator=_non_negative)
    #: Frames queued for one connection before the slow-client policy applies.
    outbox_messages: int = attrs.field(default=1024, validator=_positive)
    #: Bytes queued for one connection before the slow-client policy applies.
    outbox_bytes: int = attrs.field(default=8 * 1024 * 1024, validator=_positive)
    #: Bytes of retained values per ``init`` frame: a longer stream is sent as several
    #: ``init``s of the key, encoded one at a time as the client reads them.
    init_chunk_bytes: int = attrs.field(default=64 * 1024, validator=_within_half_outbox)
    #: Bytes queued in all outboxes together (0: unlimited). Past it, the connection
    #: with the most queued (over ``QUEUE_FAIR_BYTES``, 256 KiB) meets the slow-client
    #: policy; connections that keep up are not refused.
    max_queued_bytes: int = attrs.field(default=256 * 1024 * 1024, validator=_non_negative)
    #: Keys one connection may ``get`` (0: unlimited); a ``get`` for one more key is
    #: refused with ``error``.
    max_subscriptions_per_connection: int = attrs.field(default=1000, validator=_non_negative)
    #: ``disconnect`` (close 4008) or ``drop`` (skip frames, tell the client with ``error``).
    slow_client_policy: str = attrs.field(default="disconnect", validator=_policy)
    #: Seconds any single write may take; a client that stops reading is cut off
    #: after it (drifttrio transport; under hypercorn only the close frame is bounded).
    write_timeout: float = attrs.field(default=10.0, validator=_positive)
    #: Seconds for a client to send a complete request head / upgrade (slowloris).
    handshake_timeout: float = attrs.field(default=10.0, validator=_positive)
    #: Largest request head (request line and headers) accepted, in bytes.
    max_header_bytes: int = attrs.field(default=16 * 1024, validator=_positive)
    #: Seconds for a whole HTTP request, head and body, to arrive (a body trickled a
    #: byte at a time ends here with 408, whatever its pace; drifttrio transport).
    request_timeout: float = attrs.field(default=30.0, validator=_positive)
    #: Seconds an HTTP keep-alive connection may sit idle between requests.
    keepalive_timeout: float = attrs.field(default=5.0, validator=_positive)
    #: Connections still in the HTTP phase (not upgraded) in total (0: unlimited);
    #: beyond it a short 503 (``/healthz`` and ``/readyz`` are still answered).
    max_http_connections: int = attrs.field(default=2048, validator=_non_negative)
    #: Connections in the HTTP phase from one client address (0: unlimited).
    max_http_connections_per_ip: int = attrs.field(default=1024, validator=_non_negative)
    #: Seconds a WebSocket may stay silent before the server pings it (0: no pings).
    ping_interval: float = attrs.field(default=30.0, validator=_non_negative)
    #: Seconds a pinged WebSocket has to send anything (a pong) before it is closed
    #: with 4001 and its slot freed.
    ping_timeout: float = attrs.field(default=20.0, validator=_positive)
    #: Broadcast ``compact`` as a push with its seq (``False``: strict upstream parity).
    broadcast_compact: bool = True
    #: How long a new WebSocket connection's broadcasts are held, per key, until it
    #: asks for the key with ``get`` (its ``init`` then comes first); its first
    #: ``ping`` or ``push``, or the end of this time, lets everything flow (0: no hold).
    join_hold_seconds: float = attrs.field(default=5.0, validator=_non_negative)
    #: Largest WebSocket message or HTTP body accepted, in bytes.
    max_message_bytes: int = attrs.field(default=1024 * 1024, validator=_positive)
    #: Deepest nesting accepted in a value.
    max_value_depth: int = attrs.field(default=64, validator=_positive)
    #: Longest key accepted, in UTF-8 bytes.
    max_key_bytes: int = attrs.field(default=1024, validator=_positive)
    #: Invalid messages in a row before the connection is closed with 4000 (0: never).
    max_consecutive_errors: int = attrs.field(default=100, validator=_non_negative)
    #: Most rooms stored at once (0: unlimited); ``POST /new`` answers 503 beyond it.
    max_rooms: int = attrs.field(default=0, validator=_non_negative)
    #: Most keys with a retained stream in one room (0: unlimited).
    max_keys_per_room: int = attrs.field(default=10_000, validator=_non_negative)
    #: Most values retained in one stream (0: unlimited); appends beyond it get ``error``.
    max_stream_values: int = attrs.field(default=10_000, validator=_non_negative)
    #: Most bytes retained by one room (0: unlimited), counted at their cost in
    #: memory (``value_size``: about 72 bytes for an empty map, a string's length).
    max_room_bytes: int = attrs.field(default=64 * 1024 * 1024, validator=_non_negative)
    #: Most bytes retained by all rooms in memory together (0: unlimited), counted as
    #: for ``max_room_bytes``. Past it idle rooms are unloaded (oldest first), then
    #: pushes that would grow a room are refused (``error``; 503 for ``/send``).
    max_retained_bytes: int = attrs.field(default=512 * 1024 * 1024, validator=_non_negative)
    #: Live WebSocket connections in total (0: unlimited); beyond it the upgrade gets 503.
    max_connections: int = attrs.field(default=10_000, validator=_non_negative)
    #: Live WebSocket connections from one client address (0: unlimited).
    max_connections_per_ip: int = attrs.field(default=1024, validator=_non_negative)
    #: Live WebSocket connections in one room (0: unlimited).
    max_connections_per_room: int = attrs.field(default=1024, validator=_non_negative)
    #: Messages per second one connection may send, sustained (0: unlimited).
    rate_limit_per_second: float = attrs.field(default=200.0, validator=_non_negative)
    #: Messages one connection may send in a burst; over the limit each message gets
    #: ``error``, and 100 refused in a row close the connection with 4029.
    rate_limit_burst: int = attrs.field(default=1000, validator=_positive)
    #: Most nodes (values and map keys; a byte string also counts one per 64 bytes)
    #: in one message, counted before it is decoded: over it, ``error`` (HTTP 400).
    #: Decoding, storing and encoding cost up to ~1.5 µs per node, none of it yielding.
    max_message_nodes: int = attrs.field(default=10_000, validator=_positive)
    #: Messages per second one client address may send over all its WebSocket
    #: connections and ``/send`` requests together (0: unlimited).
    address_messages_per_second: float = attrs.field(default=2000.0, validator=_non_negative)
    #: Messages one client address may send in a burst. Over any of its budgets a
    #: WebSocket message gets ``error`` and its connection is read no faster than the
    #: budget (4029 after 100 refused in a row); ``/send`` gets 429.
    address_messages_burst: int = attrs.field(default=10_000, validator=_positive)
    #: Message bytes per second one client address may send, sustained (0: unlimited).
    address_bytes_per_second: float = attrs.field(
        default=8 * 1024 * 1024.0, validator=_non_negative
    )
    #: Message bytes one client address may send in a burst.
    address_bytes_burst: int = attrs.field(default=16 * 1024 * 1024, validator=_positive)
    #: Nodes (see ``max_message_nodes``) per second one client address may send,
    #: sustained (0: unlimited): the decode work it may ask of the event loop.
    address_nodes_per_second: float = attrs.field(default=200_000.0, validator=_non_negative)
    #: Nodes one client address may send in a burst (three full messages).
    address_nodes_burst: int = attrs.field(default=100_000, validator=_positive)
    #: ``POST /new`` per client address per minute (0: unlimited); beyond it: 429.
    new_rooms_per_minute: float = attrs.field(default=60.0, validator=_non_negative)
    #: Comma-separated origins allowed to open WebSockets (empty: any). Requests
    #: without an ``Origin`` header (non-browsers) always pass; others get 403.
    allowed_origins: str = ""
    #: If set, ``POST /new`` needs ``Authorization: Bearer <api_key>`` (else 401).
    api_key: str = attrs.field(default="", repr=False)
    #: If set, every room URL needs a signed, expiring ``token=`` (HTTP 401 without);
    #: ``POST /new`` hands out read-write URLs, ``POST /room/ID/token`` issues more.
    room_token_secret: str = attrs.field(default="", repr=False)
    #: Seconds a room token stays valid (tokens from ``POST /new``, and the default
    #: of ``POST /room/ID/token``).
    room_token_ttl_seconds: float = attrs.field(default=3600.0, validator=_positive)
    #: Trust ``X-Forwarded-Proto`` (set it when behind a TLS-terminating proxy).
    trust_forwarded_proto: bool = False
    #: CORS allowed origin (``*`` like upstream, or one origin; empty disables CORS).
    cors_origin: str = "*"
    #: Port of the internal listener for ``/metrics``, ``/healthz`` and ``/readyz``
    #: (-1: none; 0: any free port). Keep it off the public network.
    metrics_port: int = attrs.field(default=-1, validator=_port_or_off)
    #: Address of the internal metrics listener.
    metrics_host: str = "127.0.0.1"
    #: Also serve ``/metrics`` on the public listener (under hypercorn, the only one).
    public_metrics: bool = False
    #: Serve the room inspector at ``/ui`` (it needs a room id, like any client).
    inspector: bool = True
    #: Seconds a graceful shutdown (SIGTERM) may take before connections are cut.
    shutdown_timeout: float = attrs.field(default=10.0, validator=_positive)
    #: TLS certificate chain (PEM) of the public listener: with ``keyfile``, both
    #: transports serve ``https://`` and ``wss://`` directly (empty: plain HTTP).
    certfile: str = ""
    #: Private key (PEM, unencrypted) of ``certfile``; both or neither.
    keyfile: str = attrs.field(default="", validator=_with_certfile)
    #: Log line format of ``drifttrio serve``: ``text``, ``kv`` (key=value) or ``json``.
    log_format: str = attrs.field(default="text", validator=_log_format)

    @property
    def origins(self) -> frozenset[str]:
        return frozenset(
            o.strip().rstrip("/") for o in self.allowed_origins.split(",") if o.strip()
        )

    @property
    def room_limits(self) -> RoomLimits:
        return RoomLimits(
            max_keys=self.max_keys_per_room,
            max_stream_values=self.max_stream_values,
            max_room_bytes=self.max_room_bytes,
        )

    @property
    def decode_limits(self) -> DecodeLimits:
        return DecodeLimits(
            max_depth=self.max_value_depth,
            max_key_bytes=self.max_key_bytes,
            max_nodes=self.max_message_nodes,
        )

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Config:
        """Build a config from ``DRIFTTRIO_*`` variables; ``overrides`` win."""
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for field in attrs.fields(cls):
            name = f"DRIFTTRIO_{field.name.upper()}"
            if name in env:
                values[field.name] = _parse(name, env[name], field.default)
        values.update({k: v for k, v in overrides.items() if v is not None})
        try:
            return cls(**values)
        except TypeError as exc:
            raise ConfigError(str(exc)) from None


def _parse(name: str, raw: str, default: object) -> object:
    try:
        if isinstance(default, bool):
            lowered = raw.strip().lower()
            if lowered in ("1", "true", "yes", "on"):
                return True
            if lowered in ("0", "false", "no", "off", ""):
                return False
            raise ValueError(raw)
        if isinstance(default, int):
            return int(raw)
        if isinstance(default, float):
            return float(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not a valid {type(default).__name__}") from None
    return raw
