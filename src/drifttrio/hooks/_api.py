"""What an application's server-side room logic sees and answers.

Everything here is plain data (no trio, no I/O): the requests the server hands
a :class:`Hooks` object, the decisions it may answer with, and the events it is
told about. :mod:`drifttrio.hooks._runner` calls the hooks; the web and runtime
layers only ever see the decisions.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Iterable, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any, ClassVar, Literal, TypeAlias

import attrs

from .._errors import ProtocolError

if TYPE_CHECKING:
    from ..runtime.hub import Hub

__all__ = [
    "Accept",
    "Admit",
    "AuthorizeDecision",
    "Committed",
    "ConnectRequest",
    "Event",
    "HookRefused",
    "Hooks",
    "MemberJoined",
    "MemberLeft",
    "PushDecision",
    "PushRequest",
    "Refuse",
    "Replace",
    "RoomCreated",
    "RoomDeleted",
    "RoomExpired",
    "RoomView",
    "Source",
]

#: Where a request came from: a WebSocket member, an HTTP request (``/send``,
#: ``GET /room/ID``, ...) or the in-process API (:meth:`drifttrio.Hub.push`).
Source: TypeAlias = Literal["websocket", "http", "in_process"]


# -- authorize ------------------------------------------------------------------------


@attrs.frozen
class ConnectRequest:
    """A WebSocket upgrade or an HTTP request to a room, to admit or refuse.

    Asked once per WebSocket connection (before the handshake completes) and once
    per HTTP request to ``/room/ID/...``; never for ``POST /new``.
    """

    room_id: str
    source: Source
    #: The client's address (the proxy's client when ``trusted_proxies`` names it).
    client: str
    #: Header names lower-cased; a repeated header's values joined with ``", "``.
    headers: Mapping[str, str]
    #: The query parameters (the first value of each name).
    query: Mapping[str, str]
    #: What a valid room token granted (``{"room", "access", "expires"}``), or
    #: ``None`` when room tokens are off.
    claims: Mapping[str, Any] | None = None


def _key_rules(keys: Iterable[str] | None) -> frozenset[str] | None:
    if isinstance(keys, str):
        raise TypeError("Admit.keys is a collection of keys, not one string")
    if keys is None:
        return None
    rules = frozenset(keys)
    # Checked here, in the hook's own call: a wrong rule found later, at a push,
    # would fail in the member's reader instead of refusing this admission.
    if not all(isinstance(rule, str) for rule in rules):
        raise TypeError("Admit.keys must hold strings (key names, or prefixes ending in '*')")
    return rules


@attrs.frozen
class Admit:
    """Let the connection or request in.

    ``identity`` (any JSON value) travels with every push it makes (see
    :attr:`PushRequest.identity`). ``write=False`` refuses all its pushes;
    ``keys`` limits the keys it may push to (``None``: any key): an entry ending in
    ``*`` is a prefix (``"cursor/*"``), any other names one key. Reads stay
    room-wide.
    """

    identity: Any = None
    write: bool = True
    keys: frozenset[str] | None = attrs.field(default=None, converter=_key_rules)

    def may_write(self, key: str) -> bool:
        """Whether this admission lets its holder push to ``key``."""
        if not self.write:
            return False
        keys = self.keys
        if keys is None or key in keys:
            return True
        return any(rule.endswith("*") and key.startswith(rule[:-1]) for rule in keys)


#: Admits a request with no identity and every permission (no hook, or a hook that
#: answered ``None``).
ADMIT_ALL: Admit = Admit()


@attrs.frozen
class Refuse:
    """Refuse: a connection or request with ``status`` (an HTTP 4xx/5xx) and
    ``reason``; a push with an ``error`` message carrying ``reason`` (over
    ``/send``, answered with ``status``: 403 unless the hook says otherwise)."""

    reason: str = "refused by the server's room logic"
    status: int = 403

    def __attrs_post_init__(self) -> None:
        # Checked in the hook's own call (which then fails, with one log line): a
        # reason that is no text would reach the client as its error message.
        if not isinstance(self.reason, str):
            raise TypeError(f"Refuse.reason must be text, got {type(self.reason).__name__}")
        if not 400 <= self.status <= 599:
            raise ValueError(f"Refuse.status must be an HTTP error status, got {self.status}")


class HookRefused(ProtocolError):
    """A push the application's room logic refused (:class:`Refuse`): the sender
    gets an ``error`` with its reason (HTTP: its status), :meth:`drifttrio.Hub.push`
    raises this."""

    def __init__(self, refusal: Refuse) -> None:
        super().__init__(refusal.reason, status=refusal.status)
        self.refusal = refusal


# -- pushes -----------------------------------------------------------------------------


@attrs.define
class PushRequest:
    """A push, as :meth:`Hooks.on_push` and :meth:`Hooks.decide` see it: made anew
    for each call, read-only in spirit (changing it changes nothing: answer
    :class:`Replace` to push another value). Not frozen: it is made for every push,
    and a frozen class costs a microsecond more to build."""

    room_id: str
    key: str
    #: ``relay``, ``replace``, ``append`` or ``compact``.
    action: str
    value: Any
    #: What :meth:`Hooks.authorize` admitted the sender with (``None`` without an
    #: authorize hook, and for the in-process API).
    identity: Any
    source: Source
    #: For ``compact``: the seq the sender compacts up to.
    compact_seq: int | None = None
    #: The sender's address (as for :attr:`ConnectRequest.client`); empty for the
    #: in-process API and in :meth:`Hooks.decide`, where the room decides.
    client: str = ""


@attrs.frozen
class Accept:
    """Let the push through as it is. ``expect_seq``: only if the key's last
    retained seq is still this one where the room orders it (0: the key holds
    nothing); otherwise it is refused with a conflict ``error``. A hook that read
    the room before deciding passes the seq it read, and a concurrent push that
    changed the key makes this one fail instead of being applied to a state the
    hook never saw. Works on every store."""

    expect_seq: int | None = None


@attrs.frozen
class Replace:
    """Let the push through with ``value`` instead (for example, the sender's
    identity stamped into it). ``expect_seq``: as for :class:`Accept`."""

    value: Any
    expect_seq: int | None = None


#: What a push hook answers (``None`` is :class:`Accept`).
PushDecision: TypeAlias = Accept | Replace | Refuse | None
#: What an authorize hook answers (``None`` is :class:`Admit` with no identity).
AuthorizeDecision: TypeAlias = Admit | Refuse | None


class RoomView:
    """Read access to a room's retained state where its order is decided (see
    :meth:`Hooks.decide`). Valid only during the call."""

    __slots__ = ("_state", "room_id")

    def __init__(self, room_id: str, state: Any) -> None:
        self.room_id = room_id
        self._state = state

    @property
    def seq(self) -> int:
        """The room's last seq (the push being decided is not applied yet)."""
        return int(self._state.seq)

    def values(self, key: str, since: int = 0) -> list[tuple[int, Any]]:
        """The retained ``(seq, value)`` pairs of ``key`` after ``since``, oldest first."""
        return [(entry.seq, entry.value) for entry in self._state.get(key, since)]

    def last(self, key: str) -> tuple[int, Any] | None:
        """The key's last retained ``(seq, value)``, or ``None``."""
        stream = self._state.streams.get(key)
        if stream is None or not stream.entries:
            return None
        entry = stream.entries[-1]
        return entry.seq, entry.value

    def keys(self) -> list[str]:
        """The keys that retain values."""
        return [key for key, stream in self._state.streams.items() if stream.entries]


# -- events -------------------------------------------------------------------------------


@attrs.frozen
class RoomCreated:
    """A room was created (``POST /new``, or the in-process API)."""

    KIND: ClassVar[str] = "room_created"
    room_id: str


@attrs.frozen
class RoomDeleted:
    """A room was deleted with its data (:meth:`drifttrio.Hub.delete_room`)."""

    KIND: ClassVar[str] = "room_deleted"
    room_id: str


@attrs.frozen
class RoomExpired:
    """A room was deleted after ``room_ttl_seconds`` without use."""

    KIND: ClassVar[str] = "room_expired"
    room_id: str


@attrs.frozen
class MemberJoined:
    """A WebSocket member joined. ``members``: the room's members on this server
    process after the join (with the Redis store: on this node only)."""

    KIND: ClassVar[str] = "member_joined"
    room_id: str
    identity: Any
    members: int


@attrs.frozen
class MemberLeft:
    """A WebSocket member left; ``members`` as for :class:`MemberJoined`."""

    KIND: ClassVar[str] = "member_left"
    room_id: str
    identity: Any
    members: int


#: The best-effort events :meth:`Hooks.on_event` receives.
Event: TypeAlias = RoomCreated | RoomDeleted | RoomExpired | MemberJoined | MemberLeft


@attrs.frozen
class Committed:
    """A committed push: a retained change (``replace``, ``append``, ``compact``)
    made durable with ``seq``. Relayed values are not stored, so not committed."""

    room_id: str
    seq: int
    key: str
    action: str
    value: Any


# -- the hooks object ----------------------------------------------------------------------


class Hooks:
    """An application's room logic. Subclass it and override what you need; what
    you do not override costs nothing (the server checks which methods are
    overridden, once).

    ``authorize``, ``on_push`` and ``on_event`` may be plain or ``async`` methods.
    An async one runs under a deadline (:attr:`authorize_timeout`,
    :attr:`push_timeout`); a plain one cannot be interrupted, so it is timed and
    one slower than :attr:`slow_seconds` is logged. A hook that raises or times out
    refuses that request or push (HTTP 503, or an ``error``), with one log line; it
    never closes the connection or the room.
    """

    #: Seconds an async :meth:`authorize` may take; then the request gets 503.
    authorize_timeout: float = 5.0
    #: Seconds an async :meth:`on_push` may take; then the push is refused.
    push_timeout: float = 2.0
    #: Seconds an async :meth:`on_event` or :meth:`on_committed` may take; then it
    #: counts as failed (an event is dropped, committed pushes are retried).
    event_timeout: float = 30.0
    #: A plain hook slower than this is logged (it held the event loop).
    slow_seconds: float = 0.05
    #: The hub running these hooks, set before :meth:`lifespan` is entered: what a
    #: hook uses to read a room (``await self.hub.get(room_id, key)``, then
    #: ``Accept(expect_seq=...)``) or to push itself (trusted, see the docs).
    hub: Hub | None = None

    def overrides(self, name: str) -> bool:
        """Whether the server should call the hook ``name``: by default, whether
        this class overrides it (what is not overridden costs nothing)."""
        return getattr(type(self), name, None) is not getattr(Hooks, name, None)

    @asynccontextmanager
    async def lifespan(self) -> AsyncIterator[None]:
        """Held open while the server runs (override to open clients, pools...):
        entered before the first request, left after the last."""
        yield

    def authorize(
        self, request: ConnectRequest
    ) -> AuthorizeDecision | Awaitable[AuthorizeDecision]:
        """Admit (with an identity and permissions) or refuse a connection or an
        HTTP request to a room. Runs after the room token check, if tokens are on."""
        return None

    def on_push(self, push: PushRequest) -> PushDecision | Awaitable[PushDecision]:
        """Accept, refuse or rewrite a push from a client (WebSocket or ``/send``),
        before it reaches the room: the room task never waits for it, and one
        connection's pushes keep their order. Not called for the in-process API."""
        return None

    def decide(self, room: RoomView, push: PushRequest) -> PushDecision:
        """Accept, refuse or rewrite a push where the room orders it, with read access
        to the room's retained state: two concurrent pushes are decided one after
        the other, each against the state the other left. Plain (never async), run
        by the room task: keep it short. Called for every push, the in-process API's
        too (``push.source`` says which). Needs a store this server orders (memory,
        SQLite); with Redis use :class:`Accept` ``expect_seq`` from :meth:`on_push`."""
        return None

    def on_event(self, event: Event) -> Awaitable[None] | None:
        """Told after the fact: rooms created, deleted or expired, members joined or
        left. Best effort: delivered by one task from a bounded queue; if the hook
        falls behind, events are dropped (counted, and logged once a minute)."""
        return None

    def on_committed(self, pushes: Sequence[Committed]) -> Awaitable[None] | None:
        """Told of committed pushes, in each room's order, at least once: the
        server keeps them in its store until this returns, retries (with backoff)
        when it raises, and resumes from the store after a restart. A slow hook
        never slows a room; its backlog waits in the store."""
        return None
