"""One frozen configuration object, built from CLI flags or ``DRIFTTRIO_*`` variables."""

from __future__ import annotations

import difflib
import functools
import ipaddress
import logging
import math
import os
from collections.abc import Callable, Mapping
from typing import Any, Final, Literal, TypeAlias, get_args

import attrs

from .._errors import ConfigError
from .._logging import LOG_FORMATS
from ..core.room_state import RoomLimits
from ..protocol.codec import DecodeLimits

__all__ = [
    "LOG_LEVELS",
    "MAX_COUNT",
    "MAX_RATE",
    "MAX_SECONDS",
    "MAX_VALUE_DEPTH",
    "MIN_RATE",
    "MIN_SECONDS",
    "TOOLING_VARIABLES",
    "Config",
    "SettingError",
    "SlowClientPolicy",
    "parse_setting",
    "warn_unknown_variables",
]

log = logging.getLogger("drifttrio.config")

SlowClientPolicy = Literal["disconnect", "drop"]
#: Log levels ``drifttrio serve`` takes (``--log-level``, ``DRIFTTRIO_LOG_LEVEL``).
LOG_LEVELS: Final = ("debug", "info", "warning", "error")
#: ``DRIFTTRIO_*`` variables that are not settings: the project's own tooling reads
#: them (the test suite, ``.ci/run``), so they are known, never warned about.
TOOLING_VARIABLES: Final = frozenset(
    # (and DRIFTTRIO_WORKERS: how many processes drifttrio serve runs, not a setting of each)
    {"DRIFTTRIO_REQUIRE_REDIS", "DRIFTTRIO_REQUIRE_NGINX", "DRIFTTRIO_WORKERS"}
)

#: Longest duration any setting takes: ten years. Longer is a typo (where 0 means
#: "forever" or "off", say 0), and the bound keeps every deadline handed to trio, a
#: room token's expiry (12 digits) and a ``Retry-After`` finite and exact.
MAX_SECONDS: Final = 10 * 365 * 24 * 3600
#: Shortest duration: a millisecond. Shorter times out before any peer can answer.
MIN_SECONDS: Final = 0.001
#: Largest count or size: 2**53, the largest integer a float (the token buckets,
#: Redis's Lua scripts) holds exactly. Anything larger means "unlimited": say 0.
MAX_COUNT: Final = 2**53
#: Fastest rate (per second or per minute): a billion, more than any network
#: delivers. Faster means "unlimited": say 0.
MAX_RATE: Final = 1e9
#: Slowest positive rate: once a million seconds (11.6 days). Slower is a typo for
#: 0, and near 0 the wait a client is told (``Retry-After``: burst / rate) overflows
#: a float (at 5e-324 it is infinite and every refusal failed).
MIN_RATE: Final = 1e-6
#: Deepest ``max_value_depth``: orjson encodes at most 255 levels of nesting, and a
#: frame wraps a value in up to 3 more (an ``init``): a deeper value could be
#: accepted but never sent as JSON.
MAX_VALUE_DEPTH: Final = 250

_Network: TypeAlias = ipaddress.IPv4Network | ipaddress.IPv6Network

#: Settings that are gone, and what to set instead: naming one stops the server,
#: since keeping its old meaning (or silently dropping it) would be unsafe.
_REMOVED: Final = {
    "DRIFTTRIO_TRUST_FORWARDED_PROTO": (
        "DRIFTTRIO_TRUST_FORWARDED_PROTO is no longer supported: it believed"
        " X-Forwarded-Proto from any client; set DRIFTTRIO_TRUSTED_PROXIES to your"
        " reverse proxy's address instead (for example 127.0.0.1)"
    ),
}


class SettingError(ConfigError):
    """A setting's value breaks its rule. ``name`` is the field, ``rule`` what its
    value must be (``"must be ..."``): the CLI names the flag or variable instead."""

    def __init__(self, name: str, rule: str, value: object) -> None:
        super().__init__(f"{name} {rule}, got {value!r}")
        self.name = name
        self.rule = rule
        self.value = value


def _shown(number: float) -> str:
    """A bound as a reader types it: ``315360000``, ``0.001``, ``1000000000``."""
    return str(int(number)) if number == int(number) else f"{number:f}".rstrip("0")


@attrs.frozen
class _Number:
    """A finite number from ``low`` to ``high`` (``integer``: a whole one; never a
    bool). ``zero``, when set, says what 0 means (off, unlimited) below ``low``.

    Used as the field's attrs validator; ``also`` is a further check that needs the
    other fields (it runs when the whole config is built)."""

    low: float
    high: float
    integer: bool
    unit: str = ""
    zero: str | None = None
    note: str = ""
    also: Callable[[Config, attrs.Attribute[Any], Any], None] | None = None

    @property
    def rule(self) -> str:
        kind = ("a whole number" if self.integer else "a number") + (
            f" of {self.unit}" if self.unit else ""
        )
        span = f"{kind} from {_shown(self.low)} to {_shown(self.high)}{self.note}"
        return f"must be 0 ({self.zero}) or {span}" if self.zero else f"must be {span}"

    def parse(self, raw: str) -> object:
        return int(raw) if self.integer else float(raw)

    def accepts(self, value: object) -> bool:
        if isinstance(value, bool) or not isinstance(value, int if self.integer else int | float):
            return False
        return (self.zero is not None and value == 0) or (
            math.isfinite(value) and self.low <= value <= self.high
        )

    def __call__(self, inst: Config, attr: attrs.Attribute[Any], value: object) -> None:
        if not self.accepts(value):
            raise SettingError(attr.name, self.rule, value)
        if self.also is not None:
            self.also(inst, attr, value)


@attrs.frozen
class _Choice:
    """One of ``choices`` (variables and flags are read in any case)."""

    choices: tuple[str, ...]

    @property
    def rule(self) -> str:
        return "must be one of " + ", ".join(self.choices)

    def parse(self, raw: str) -> object:
        return raw.strip().lower()

    def accepts(self, value: object) -> bool:
        return value in self.choices

    def __call__(self, _inst: object, attr: attrs.Attribute[Any], value: object) -> None:
        if not self.accepts(value):
            raise SettingError(attr.name, self.rule, value)


@attrs.frozen
class _Flag:
    """True or false; a variable says it with a word or a digit."""

    rule: str = "must be true or false (also 1/0, yes/no, on/off)"

    def parse(self, raw: str) -> object:
        lowered = raw.strip().lower()
        if lowered in ("1", "true", "yes", "on"):
            return True
        if lowered in ("0", "false", "no", "off", ""):
            return False
        raise ValueError(raw)

    def accepts(self, value: object) -> bool:
        return isinstance(value, bool)

    def __call__(self, _inst: object, attr: attrs.Attribute[Any], value: object) -> None:
        if not self.accepts(value):
            raise SettingError(attr.name, self.rule, value)


@attrs.frozen
class _Text:
    """A string; ``token``: a non-empty one without spaces or control characters
    (a host name, or a header value such as ``cors_origin``, where a newline or a
    non-ASCII character would break every response)."""

    rule: str = "must be text"
    token: bool = False
    empty: bool = True

    def parse(self, raw: str) -> object:
        return raw.strip() if self.token else raw

    def accepts(self, value: object) -> bool:
        if not isinstance(value, str):
            return False
        if not value:
            return self.empty
        return not self.token or all("!" <= c <= "~" for c in value)

    def __call__(self, _inst: object, attr: attrs.Attribute[Any], value: object) -> None:
        if not self.accepts(value):
            raise SettingError(attr.name, self.rule, value)


_Rule = _Number | _Choice | _Flag | _Text


def _seconds(zero: str | None = None) -> _Number:
    return _Number(
        MIN_SECONDS, MAX_SECONDS, integer=False, unit="seconds", zero=zero, note=" (ten years)"
    )


def _count(zero: str | None = None, *, low: int = 1, high: int = MAX_COUNT, **kw: Any) -> _Number:
    return _Number(low, high, integer=True, zero=zero, **kw)


def _rate(per: str = "second") -> _Number:
    return _Number(MIN_RATE, MAX_RATE, integer=False, zero="unlimited", note=f" per {per}")


def _within_half_outbox(inst: Config, attr: attrs.Attribute[Any], value: int) -> None:
    if value > inst.outbox_bytes // 2:
        raise ConfigError(
            f"{attr.name} ({value}) must be at most half of outbox_bytes ({inst.outbox_bytes}):"
            " an init chunk has to fit in an outbox with room to spare"
        )


def _trusted_proxies(_inst: object, _attr: attrs.Attribute[Any], value: str) -> None:
    _parse_networks(value)


def _parse_networks(text: str) -> tuple[_Network, ...]:
    """The networks of a ``trusted_proxies`` value (an address is a network of one);
    :class:`ConfigError` naming the first entry that is neither."""
    networks: list[_Network] = []
    for entry in (part.strip() for part in text.split(",")):
        if not entry:
            continue
        try:
            networks.append(ipaddress.ip_network(entry))
        except ValueError:
            loose = _loose_network(entry)
            if loose is not None:
                raise ConfigError(
                    f"trusted_proxies: {entry!r} has host bits set (did you mean {loose}?)"
                ) from None
            raise ConfigError(
                f"trusted_proxies: {entry!r} is not an IP address or network"
                " (for example 127.0.0.1,10.0.0.0/8,::1)"
            ) from None
    return tuple(networks)


def _loose_network(entry: str) -> _Network | None:
    try:
        return ipaddress.ip_network(entry, strict=False)
    except ValueError:
        return None


def _with_certfile(inst: Config, _attr: attrs.Attribute[Any], value: str) -> None:
    if bool(value) != bool(inst.certfile):
        given, missing = ("keyfile", "certfile") if value else ("certfile", "keyfile")
        raise ConfigError(
            f"{given} is set but {missing} is not: TLS needs both (--certfile and --keyfile)"
        )


_PORT = _count(low=0, high=65535, note=" (0: any free port)")
_HOST = _Text(
    "must be an address or a host name (0.0.0.0: every interface)", token=True, empty=False
)
_TEXT = _Text()
_CORS_ORIGIN = _Text("must be *, one origin (https://app.example.com) or empty", token=True)
_FLAG = _Flag()


@attrs.frozen(kw_only=True)
class Config:
    """Everything that can be tuned. Every field has a ``DRIFTTRIO_<NAME>`` variable
    and a rule (its validator) checked whenever a config is built: a bad value raises
    :class:`ConfigError` at start-up, never a failure per request later."""

    #: Storage URL: ``memory`` or ``sqlite:///PATH[?synchronous=normal|full]``.
    #: The library default is ``memory``; ``drifttrio serve`` and ``drifttrio.asgi``
    #: default to ``sqlite:///drifttrio.db``.
    store: str = attrs.field(default="memory", validator=_TEXT)
    #: Address ``drifttrio serve`` listens on (``0.0.0.0``: every interface).
    host: str = attrs.field(default="127.0.0.1", validator=_HOST)
    #: Port ``drifttrio serve`` listens on (0: any free port, the log says which).
    port: int = attrs.field(default=8080, validator=_PORT)
    #: Lowest level ``drifttrio serve`` logs: ``debug``, ``info``, ``warning``, ``error``.
    log_level: str = attrs.field(default="info", validator=_Choice(LOG_LEVELS))
    #: Seconds a room may stay idle (no push, no member) before it is deleted with
    #: its data; 0 keeps rooms forever. Upstream's hosted worker used 24 hours.
    room_ttl_seconds: float = attrs.field(
        default=24 * 3600.0, validator=_seconds("keep rooms forever")
    )
    #: Commands waiting in a room's inbox before senders are made to wait.
    room_inbox_size: int = attrs.field(default=1024, validator=_count())
    #: Most commands a room applies per storage commit.
    room_batch_size: int = attrs.field(default=256, validator=_count())
    #: Seconds a room with no members stays in memory before its task ends.
    room_idle_seconds: float = attrs.field(
        default=60.0, validator=_seconds("end the room task at once")
    )
    #: Frames queued for one connection before the slow-client policy applies.
    outbox_messages: int = attrs.field(default=1024, validator=_count())
    #: Bytes queued for one connection before the slow-client policy applies.
    outbox_bytes: int = attrs.field(default=8 * 1024 * 1024, validator=_count(low=2))
    #: Bytes of retained values per ``init`` frame: a longer stream is sent as several
    #: ``init``s of the key, encoded one at a time as the client reads them.
    init_chunk_bytes: int = attrs.field(
        default=64 * 1024, validator=_count(high=MAX_COUNT // 2, also=_within_half_outbox)
    )
    #: Bytes queued in all outboxes together (0: unlimited). Past it, the connection
    #: with the most queued (over ``QUEUE_FAIR_BYTES``, 256 KiB) meets the slow-client
    #: policy; connections that keep up are not refused.
    max_queued_bytes: int = attrs.field(default=256 * 1024 * 1024, validator=_count("unlimited"))
    #: Keys one connection may ``get`` (0: unlimited); a ``get`` for one more key is
    #: refused with ``error``.
    max_subscriptions_per_connection: int = attrs.field(default=1000, validator=_count("unlimited"))
    #: ``disconnect`` (close 4008) or ``drop`` (skip frames, tell the client with ``error``).
    slow_client_policy: str = attrs.field(
        default="disconnect", validator=_Choice(get_args(SlowClientPolicy))
    )
    #: Seconds any single write may take; a client that stops reading is cut off
    #: after it (drifttrio transport; under hypercorn only the close frame is bounded).
    write_timeout: float = attrs.field(default=10.0, validator=_seconds())
    #: Seconds for a client to send a complete request head / upgrade (slowloris).
    handshake_timeout: float = attrs.field(default=10.0, validator=_seconds())
    #: Largest request head (request line and headers) accepted, in bytes.
    max_header_bytes: int = attrs.field(default=16 * 1024, validator=_count())
    #: Seconds for a whole HTTP request, head and body, to arrive (a body trickled a
    #: byte at a time ends here with 408, whatever its pace; drifttrio transport).
    request_timeout: float = attrs.field(default=30.0, validator=_seconds())
    #: Seconds an HTTP keep-alive connection may sit idle between requests.
    keepalive_timeout: float = attrs.field(default=5.0, validator=_seconds())
    #: Connections still in the HTTP phase (not upgraded) in total (0: unlimited);
    #: beyond it a short 503 (``/healthz`` and ``/readyz`` are still answered).
    max_http_connections: int = attrs.field(default=2048, validator=_count("unlimited"))
    #: Connections in the HTTP phase from one client address (0: unlimited).
    max_http_connections_per_ip: int = attrs.field(default=1024, validator=_count("unlimited"))
    #: Seconds a WebSocket may stay silent before the server pings it (0: no pings).
    ping_interval: float = attrs.field(default=30.0, validator=_seconds("no pings"))
    #: Seconds a pinged WebSocket has to send anything (a pong) before it is closed
    #: with 4001 and its slot freed.
    ping_timeout: float = attrs.field(default=20.0, validator=_seconds())
    #: Broadcast ``compact`` as a push with its seq (``False``: strict upstream parity).
    broadcast_compact: bool = attrs.field(default=True, validator=_FLAG)
    #: How long a new WebSocket connection's broadcasts are held, per key, until it
    #: asks for the key with ``get`` (its ``init`` then comes first); its first
    #: ``ping`` or ``push``, or the end of this time, lets everything flow (0: no hold).
    join_hold_seconds: float = attrs.field(default=5.0, validator=_seconds("no hold"))
    #: Largest WebSocket message or HTTP body accepted, in bytes.
    max_message_bytes: int = attrs.field(default=1024 * 1024, validator=_count())
    #: Deepest nesting accepted in a value.
    max_value_depth: int = attrs.field(
        default=64,
        validator=_count(high=MAX_VALUE_DEPTH, note=" (deeper values cannot be sent as JSON)"),
    )
    #: Longest key accepted, in UTF-8 bytes.
    max_key_bytes: int = attrs.field(default=1024, validator=_count())
    #: Invalid messages in a row before the connection is closed with 4000 (0: never).
    max_consecutive_errors: int = attrs.field(default=100, validator=_count("never close"))
    #: Most rooms stored at once (0: unlimited); ``POST /new`` answers 503 beyond it.
    max_rooms: int = attrs.field(default=0, validator=_count("unlimited"))
    #: Most keys with a retained stream in one room (0: unlimited).
    max_keys_per_room: int = attrs.field(default=10_000, validator=_count("unlimited"))
    #: Most values retained in one stream (0: unlimited); appends beyond it get ``error``.
    max_stream_values: int = attrs.field(default=10_000, validator=_count("unlimited"))
    #: Most bytes retained by one room (0: unlimited), counted at their cost in
    #: memory (``value_size``: about 72 bytes for an empty map, a string's length).
    max_room_bytes: int = attrs.field(default=64 * 1024 * 1024, validator=_count("unlimited"))
    #: Most bytes retained by all rooms in memory together (0: unlimited), counted as
    #: for ``max_room_bytes``. Past it idle rooms are unloaded (oldest first), then
    #: pushes that would grow a room are refused (``error``; 503 for ``/send``).
    max_retained_bytes: int = attrs.field(default=512 * 1024 * 1024, validator=_count("unlimited"))
    #: Live WebSocket connections in total (0: unlimited); beyond it the upgrade gets 503.
    max_connections: int = attrs.field(default=10_000, validator=_count("unlimited"))
    #: Live WebSocket connections from one client address (0: unlimited).
    max_connections_per_ip: int = attrs.field(default=1024, validator=_count("unlimited"))
    #: Live WebSocket connections in one room (0: unlimited).
    max_connections_per_room: int = attrs.field(default=1024, validator=_count("unlimited"))
    #: Messages per second one connection may send, sustained (0: unlimited).
    rate_limit_per_second: float = attrs.field(default=200.0, validator=_rate())
    #: Messages one connection may send in a burst; over the limit each message gets
    #: ``error``, and 100 refused in a row close the connection with 4029.
    rate_limit_burst: int = attrs.field(default=1000, validator=_count())
    #: Most nodes (values and map keys; a byte string also counts one per 64 bytes)
    #: in one message, counted before it is decoded: over it, ``error`` (HTTP 400).
    #: Decoding, storing and encoding cost up to ~1.5 µs per node, none of it yielding.
    max_message_nodes: int = attrs.field(default=10_000, validator=_count())
    #: Messages per second one client address may send over all its WebSocket
    #: connections and ``/send`` requests together (0: unlimited).
    address_messages_per_second: float = attrs.field(default=2000.0, validator=_rate())
    #: Messages one client address may send in a burst. Over any of its budgets a
    #: WebSocket message gets ``error`` and its connection is read no faster than the
    #: budget (4029 after 100 refused in a row); ``/send`` gets 429.
    address_messages_burst: int = attrs.field(default=10_000, validator=_count())
    #: Message bytes per second one client address may send, sustained (0: unlimited).
    address_bytes_per_second: float = attrs.field(default=8 * 1024 * 1024.0, validator=_rate())
    #: Message bytes one client address may send in a burst.
    address_bytes_burst: int = attrs.field(default=16 * 1024 * 1024, validator=_count())
    #: Nodes (see ``max_message_nodes``) per second one client address may send,
    #: sustained (0: unlimited): the decode work it may ask of the event loop.
    address_nodes_per_second: float = attrs.field(default=200_000.0, validator=_rate())
    #: Nodes one client address may send in a burst (three full messages).
    address_nodes_burst: int = attrs.field(default=100_000, validator=_count())
    #: ``POST /new`` per client address per minute (0: unlimited); beyond it: 429.
    new_rooms_per_minute: float = attrs.field(default=60.0, validator=_rate("minute"))
    #: Comma-separated origins allowed to open WebSockets (empty: any). Requests
    #: without an ``Origin`` header (non-browsers) always pass; others get 403.
    allowed_origins: str = attrs.field(default="", validator=_TEXT)
    #: If set, ``POST /new`` needs ``Authorization: Bearer <api_key>`` (else 401).
    api_key: str = attrs.field(default="", repr=False, validator=_TEXT)
    #: Server-side room logic: ``module:attribute`` naming a ``drifttrio.hooks.Hooks``
    #: (an instance, or a class or factory called with no arguments). Empty: none.
    hooks: str = attrs.field(default="", validator=_TEXT)
    #: If set, every room URL needs a signed, expiring ``token=`` (HTTP 401 without);
    #: ``POST /new`` hands out read-write URLs, ``POST /room/ID/token`` issues more.
    room_token_secret: str = attrs.field(default="", repr=False, validator=_TEXT)
    #: Seconds a room token stays valid (tokens from ``POST /new``, and the default
    #: of ``POST /room/ID/token``).
    room_token_ttl_seconds: float = attrs.field(default=3600.0, validator=_seconds())
    #: Comma-separated addresses and networks of the reverse proxies in front of the
    #: server (``127.0.0.1,10.0.0.0/8,::1``; empty: none). From these peers only,
    #: ``X-Forwarded-For`` / ``Forwarded`` name the client that limits and logs
    #: count, ``X-Forwarded-Proto`` says whether it came over TLS, and the
    #: per-address HTTP-phase cap does not apply (the total cap does).
    trusted_proxies: str = attrs.field(default="", validator=_trusted_proxies)
    #: CORS allowed origin (``*`` like upstream, or one origin; empty disables CORS).
    cors_origin: str = attrs.field(default="*", validator=_CORS_ORIGIN)
    #: Port of the internal listener for ``/metrics``, ``/healthz`` and ``/readyz``
    #: (-1: none; 0: any free port). Keep it off the public network.
    metrics_port: int = attrs.field(
        default=-1, validator=_count(low=-1, high=65535, note=" (-1: off, 0: any free port)")
    )
    #: Address of the internal metrics listener.
    metrics_host: str = attrs.field(default="127.0.0.1", validator=_HOST)
    #: Also serve ``/metrics`` on the public listener (under hypercorn, the only one).
    public_metrics: bool = attrs.field(default=False, validator=_FLAG)
    #: Serve the room inspector at ``/ui`` (it needs a room id, like any client).
    inspector: bool = attrs.field(default=True, validator=_FLAG)
    #: Seconds a graceful shutdown (SIGTERM) may take before connections are cut.
    shutdown_timeout: float = attrs.field(default=10.0, validator=_seconds())
    #: TLS certificate chain (PEM) of the public listener: with ``keyfile``, both
    #: transports serve ``https://`` and ``wss://`` directly (empty: plain HTTP).
    certfile: str = ""
    #: Private key (PEM, unencrypted) of ``certfile``; both or neither.
    keyfile: str = attrs.field(default="", validator=_with_certfile)
    #: Log line format of ``drifttrio serve``: ``text``, ``kv`` (key=value) or ``json``.
    log_format: str = attrs.field(default="text", validator=_Choice(LOG_FORMATS))
    # -- webhooks (drifttrio.hooks.webhooks; docs/server-side-logic.md#webhooks) --
    #: Base URL of the application's webhook backend (empty: no webhooks): hooks
    #: are POSTed to ``{url}/authorize``, ``/push``, ``/event``, ``/committed``.
    webhook_url: str = attrs.field(default="", validator=_Text("must be a URL", token=True))
    #: Shared secret signing every webhook call (``Drifttrio-Signature``, HMAC-SHA256);
    #: required with ``webhook_url``, at least 16 characters.
    webhook_secret: str = attrs.field(default="", repr=False, validator=_TEXT)
    #: Comma-separated hooks the backend is called for: ``authorize``, ``push``,
    #: ``event``, ``committed``.
    webhook_hooks: str = attrs.field(default="authorize,push", validator=_TEXT)
    #: Seconds one webhook call may take, waiting for a free slot included; then
    #: the hook's failure mode applies.
    webhook_timeout_seconds: float = attrs.field(default=2.0, validator=_seconds())
    #: Webhook calls open at once, over all hooks; past it a call waits for a slot
    #: (within its timeout), so client traffic never becomes a flood of calls.
    webhook_max_in_flight: int = attrs.field(default=64, validator=_count())
    #: Comma-separated hooks that allow when the backend fails (``authorize``,
    #: ``push``; empty: every hook refuses).
    webhook_fail_open: str = attrs.field(default="", validator=_TEXT)

    @property
    def origins(self) -> frozenset[str]:
        return frozenset(
            o.strip().rstrip("/") for o in self.allowed_origins.split(",") if o.strip()
        )

    @property
    def trusted_networks(self) -> tuple[_Network, ...]:
        """``trusted_proxies``, parsed."""
        return _parse_networks(self.trusted_proxies)

    @property
    def room_limits(self) -> RoomLimits:
        return RoomLimits(
            max_keys=self.max_keys_per_room,
            max_stream_values=self.max_stream_values,
            max_room_bytes=self.max_room_bytes,
        )

    @functools.cached_property
    def decode_limits(self) -> DecodeLimits:
        """The decode limits of these settings (made once: every connection asks)."""
        return DecodeLimits(
            max_depth=self.max_value_depth,
            max_key_bytes=self.max_key_bytes,
            max_nodes=self.max_message_nodes,
        )

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Config:
        """Build a config from ``DRIFTTRIO_*`` variables; ``overrides`` (not ``None``) win.

        A variable that breaks its setting's rule raises :class:`ConfigError` naming
        the variable. Unknown ``DRIFTTRIO_*`` names are not errors here: see
        :func:`warn_unknown_variables`.
        """
        env = os.environ if environ is None else environ
        for name, advice in _REMOVED.items():
            if name in env:
                raise ConfigError(advice)
        values: dict[str, Any] = {}
        from_env: dict[str, str] = {}
        for field in attrs.fields(cls):
            name = _variable(field.name)
            if name in env and overrides.get(field.name) is None:
                values[field.name] = parse_setting(field.name, env[name], source=name)
                from_env[field.name] = name
        values.update({k: v for k, v in overrides.items() if v is not None})
        try:
            return cls(**values)
        except SettingError as exc:
            if exc.name in from_env:
                name = from_env[exc.name]
                raise ConfigError(f"{name} {exc.rule}, got {env[name]!r}") from None
            raise
        except TypeError as exc:  # an override that is not a setting
            raise ConfigError(str(exc)) from None


def _variable(field: str) -> str:
    return f"DRIFTTRIO_{field.upper()}"


def _rule(name: str) -> _Rule:
    """The rule of setting ``name``; a field declared without one is plain text, a
    flag or a number after its default."""
    field = attrs.fields_dict(Config)[name]
    if isinstance(field.validator, _Number | _Choice | _Flag | _Text):
        return field.validator
    default = field.default
    if isinstance(default, bool):
        return _FLAG
    if isinstance(default, int | float):
        return _Number(-math.inf, math.inf, integer=isinstance(default, int))
    return _TEXT


def parse_setting(name: str, raw: str, *, source: str | None = None) -> Any:
    """Setting ``name`` read from the text ``raw`` (a variable, a flag), checked
    against its own rule. Raises :class:`ConfigError` naming ``source`` (default:
    the setting's variable; ``""``: no subject, for a flag argparse names). Rules
    between settings are checked by :class:`Config`."""
    rule = _rule(name)
    try:
        value = rule.parse(raw)
    except ValueError:
        value = None
    if value is None or not rule.accepts(value):
        subject = _variable(name) if source is None else source
        raise ConfigError(f"{subject} {rule.rule}, got {raw!r}".lstrip())
    return value


def warn_unknown_variables(environ: Mapping[str, str] | None = None) -> list[str]:
    """Log one warning for each ``DRIFTTRIO_*`` variable that is no setting (a typo
    is otherwise ignored without a word), naming the closest setting; return them.

    ``drifttrio serve`` and ``drifttrio.asgi`` call it once logging is set up.
    """
    env = os.environ if environ is None else environ
    known = {_variable(field.name) for field in attrs.fields(Config)}
    unknown = sorted(
        name
        for name in env
        if name.startswith("DRIFTTRIO_") and name not in known and name not in TOOLING_VARIABLES
    )
    for name in unknown:
        close = difflib.get_close_matches(name, known, n=1, cutoff=0.8)
        hint = f"did you mean {close[0]}?" if close else "see the list in docs/quickstart.md"
        log.warning("%s is not a drifttrio setting and is ignored: %s", name, hint)
    return unknown
