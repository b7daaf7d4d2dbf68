"""Server-side room logic over HTTP, for backends in any language.

:class:`WebhookHooks` is a :class:`~drifttrio.hooks.Hooks` whose ``authorize``,
``on_push``, ``on_event`` and ``on_committed`` are signed HTTP POSTs of JSON to
``{url}/authorize``, ``{url}/push``, ``{url}/event`` and ``{url}/committed``
(each body also names its ``"hook"``, for a backend with one route). Only the
hooks it is told to call are overridden, so the others cost nothing.

The exception tree (all raised inside a hook, never to a client)::

    DriftError
    └── WebhookError            a webhook call failed
        ├── WebhookUnavailable  no answer in time: refused, reset, timed out, or
        │                       every slot of ``max_in_flight`` was busy
        └── WebhookBadAnswer    an answer, but not a documented one: non-2xx,
                                not JSON, the wrong shape, too large

A failed ``authorize`` or ``on_push`` refuses (the runner answers 503 / an
``error``, and logs one line) unless that hook is in ``fail_open`` (then it
allows, and this module logs the one line). A failed ``on_event`` is retried
with backoff a few times, then dropped (best effort); a failed
``on_committed`` raises, and the runner retries it from the store (at least
once). See the "Webhooks" section of docs/server-side-logic.md.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Iterable, Mapping, Sequence
from contextlib import aclosing, asynccontextmanager
from typing import TYPE_CHECKING, Any, Final, TypeVar, cast

import attrs
import httpx
import orjson
import trio

from .._errors import ConfigError, DriftError
from ..protocol.codec import bytes_as_ints
from ._api import (
    Accept,
    Admit,
    AuthorizeDecision,
    Committed,
    ConnectRequest,
    Event,
    Hooks,
    PushDecision,
    PushRequest,
    Refuse,
    Replace,
)

if TYPE_CHECKING:
    from ..runtime.config import Config

__all__ = [
    "EVENT_ATTEMPTS",
    "EVENT_FIRST_BACKOFF",
    "FAIL_OPEN_HOOKS",
    "MIN_SECRET_CHARS",
    "SIGNATURE_HEADER",
    "WEBHOOK_HOOKS",
    "WebhookBadAnswer",
    "WebhookError",
    "WebhookHooks",
    "WebhookUnavailable",
    "hooks_from_config",
    "parse_authorize_answer",
    "parse_push_answer",
    "sign",
    "verify_signature",
]


#: What a deciding hook's answer is read as (authorize, push).
_Decision = TypeVar("_Decision")

log = logging.getLogger("drifttrio.hooks.webhooks")

#: The header carrying ``t=UNIX_SECONDS,v1=HEX``: HEX is the HMAC-SHA256, keyed
#: with the shared secret, of ``f"{t}."`` followed by the raw request body.
SIGNATURE_HEADER: Final = "Drifttrio-Signature"
#: The hooks a backend can be called for, each at ``{url}/{name}``.
WEBHOOK_HOOKS: Final = ("authorize", "push", "event", "committed")
#: The hooks that may allow when the backend fails (``fail_open``). Events are
#: best effort and committed pushes are retried whatever happens.
FAIL_OPEN_HOOKS: Final = ("authorize", "push")
#: The hook method each name overrides.
_WEBHOOKS: Final = {
    "authorize": "authorize",
    "on_push": "push",
    "on_event": "event",
    "on_committed": "committed",
}
#: A secret shorter than this is a placeholder, not a key (32 random bytes, as
#: ``secrets.token_urlsafe(32)`` makes, is what the docs suggest).
#: One client address may hold at most 1/ADDRESS_SHARE of ``max_in_flight``.
ADDRESS_SHARE: Final = 4
MIN_SECRET_CHARS: Final = 16
#: Calls made for one event (the first and its retries), and the wait before the
#: first retry (doubling after it): an event survives a backend restart of a
#: second or so, and a backend that is down costs the event task a few seconds.
EVENT_ATTEMPTS: Final = 3
EVENT_FIRST_BACKOFF: Final = 0.5
#: Added to the runner's deadlines: this module's own deadline (``timeout``) ends
#: a call first, so the failure mode, not the runner's timeout, answers.
_GRACE: Final = 1.0


class WebhookError(DriftError):
    """A webhook call failed."""


class WebhookUnavailable(WebhookError):
    """The backend gave no answer in time: connection refused or reset, the call's
    timeout passed, or every ``max_in_flight`` slot stayed busy until then."""


class WebhookBadAnswer(WebhookError):
    """The backend answered, but not as documented: a non-2xx status, a body that
    is not JSON, the wrong shape, or one larger than ``max_answer_bytes``."""


# -- the signature ------------------------------------------------------------------------


def _as_key(secret: str | bytes) -> bytes:
    return secret.encode() if isinstance(secret, str) else secret


def sign(secret: str | bytes, timestamp: int, body: bytes) -> str:
    """The :data:`SIGNATURE_HEADER` value for ``body`` sent at ``timestamp``."""
    mac = hmac.new(_as_key(secret), b"%d." % timestamp + body, hashlib.sha256)
    return f"t={timestamp},v1={mac.hexdigest()}"


def verify_signature(
    secret: str | bytes,
    header: str,
    body: bytes,
    *,
    tolerance: float = 300.0,
    now: float | None = None,
) -> bool:
    """Whether ``header`` signs ``body`` with ``secret``, made within ``tolerance``
    seconds of ``now`` (a replayed old request fails). For Python backends; the
    docs show the same check in a few lines for any language."""
    fields = dict(part.split("=", 1) for part in header.split(",") if "=" in part)
    try:
        timestamp = int(fields["t"])
    except (KeyError, ValueError):
        return False
    current = time.time() if now is None else now
    if abs(current - timestamp) > tolerance:
        return False
    expected = sign(secret, timestamp, body).partition(",v1=")[2]
    return hmac.compare_digest(expected, fields.get("v1", ""))


# -- what is sent -------------------------------------------------------------------------


def _authorize_body(request: ConnectRequest) -> dict[str, Any]:
    return {
        "hook": "authorize",
        "room_id": request.room_id,
        "source": request.source,
        "client": request.client,
        "headers": dict(request.headers),
        "query": dict(request.query),
        "claims": None if request.claims is None else dict(request.claims),
    }


def _push_body(push: PushRequest) -> dict[str, Any]:
    return {
        "hook": "push",
        "room_id": push.room_id,
        "key": push.key,
        "action": push.action,
        "value": push.value,
        "identity": push.identity,
        "source": push.source,
        "compact_seq": push.compact_seq,
        "client": push.client,
    }


def _event_body(event: Event) -> dict[str, Any]:
    return {"hook": "event", "event": event.KIND, **attrs.asdict(event, recurse=False)}


def _committed_body(pushes: Sequence[Committed]) -> dict[str, Any]:
    return {
        "hook": "committed",
        "pushes": [
            {"room_id": p.room_id, "seq": p.seq, "key": p.key, "action": p.action, "value": p.value}
            for p in pushes
        ],
    }


# -- what is answered ---------------------------------------------------------------------


def _refusal(answer: Mapping[str, Any], what: str) -> Refuse:
    refusal: dict[str, Any] = {}
    if "reason" in answer:
        refusal["reason"] = answer["reason"]
        if not isinstance(refusal["reason"], str):
            raise WebhookBadAnswer(f"{what} answer: 'reason' must be a string")
    if "status" in answer:
        refusal["status"] = status = answer["status"]
        if type(status) is not int or not 400 <= status <= 599:
            raise WebhookBadAnswer(f"{what} answer: 'status' must be an HTTP status, 400 to 599")
    return Refuse(**refusal)


def _object(answer: object, what: str) -> Mapping[str, Any]:
    if not isinstance(answer, dict):
        raise WebhookBadAnswer(f"{what} answer is not a JSON object")
    return cast("dict[str, Any]", answer)


def parse_authorize_answer(answer: object) -> Admit | Refuse:
    """The decision a decoded ``/authorize`` answer states, or
    :class:`WebhookBadAnswer`: ``{"allow": true, "identity": ..., "write": true,
    "keys": [...]}`` or ``{"allow": false, "status": 403, "reason": "..."}``."""
    data = _object(answer, "authorize")
    allow = data.get("allow")
    if allow is False:
        return _refusal(data, "authorize")
    if allow is not True:
        raise WebhookBadAnswer("authorize answer: 'allow' must be true or false")
    write = data.get("write", True)
    keys = data.get("keys")
    if not isinstance(write, bool):
        raise WebhookBadAnswer("authorize answer: 'write' must be true or false")
    if keys is not None and (
        not isinstance(keys, list) or not all(isinstance(k, str) for k in keys)
    ):
        raise WebhookBadAnswer("authorize answer: 'keys' must be a list of strings or null")
    return Admit(identity=data.get("identity"), write=write, keys=keys)


def parse_push_answer(answer: object) -> Accept | Replace | Refuse:
    """The decision a decoded ``/push`` answer states, or :class:`WebhookBadAnswer`:
    ``{"accept": true}``, ``{"accept": true, "value": X}`` (replace the value),
    ``{"accept": false, "reason": "..."}``; an accept may add ``"expect_seq"``."""
    data = _object(answer, "push")
    accept = data.get("accept")
    if accept is False:
        return _refusal(data, "push")
    if accept is not True:
        raise WebhookBadAnswer("push answer: 'accept' must be true or false")
    expect_seq = data.get("expect_seq")
    if expect_seq is not None and (type(expect_seq) is not int or expect_seq < 0):
        raise WebhookBadAnswer("push answer: 'expect_seq' must be a seq (0 or more) or null")
    if "value" in data:
        return Replace(data["value"], expect_seq)
    return Accept(expect_seq)


def _decoded(body: bytes, what: str) -> object:
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        raise WebhookBadAnswer(f"{what} answer is not JSON") from None


# -- the hooks ----------------------------------------------------------------------------


def _names(given: Iterable[str], allowed: tuple[str, ...], what: str) -> frozenset[str]:
    if isinstance(given, str):
        given = given.split(",")
    names = frozenset(name.strip() for name in given if name.strip())
    unknown = sorted(names - set(allowed))
    if unknown:
        raise ConfigError(
            f"webhook {what}: {', '.join(unknown)} (choose from {', '.join(allowed)})"
        )
    return names


#: The classes :func:`_narrowed` made, by class and enabled hooks (a few at most).
class WebhookHooks(Hooks):
    """Calls a backend over HTTP for the ``hooks`` named (of :data:`WEBHOOK_HOOKS`).

    ``url``: the backend's base URL (``http://`` or ``https://``). ``secret``: the
    shared key that signs every request (:data:`SIGNATURE_HEADER`; at least
    :data:`MIN_SECRET_CHARS` characters). ``timeout``: seconds one call may take,
    waiting for a free slot included. ``max_in_flight``: calls open at once, over
    all hooks; a call past it waits for a slot within its timeout, then fails.
    ``fail_open``: hooks (of :data:`FAIL_OPEN_HOOKS`) that allow when the backend
    fails; the others refuse. ``max_answer_bytes``: the largest answer read.
    """

    def __init__(
        self,
        url: str,
        secret: str,
        *,
        hooks: Iterable[str] = ("authorize", "push"),
        timeout: float = 2.0,
        max_in_flight: int = 64,
        fail_open: Iterable[str] = (),
        max_answer_bytes: int = 1024 * 1024,
    ) -> None:
        parsed = httpx.URL(url)
        if parsed.scheme not in ("http", "https") or not parsed.host:
            raise ConfigError(f"webhook url must be an http:// or https:// URL, got {url!r}")
        if len(secret) < MIN_SECRET_CHARS:
            raise ConfigError(
                f"webhook secret must be at least {MIN_SECRET_CHARS} characters (for example"
                ' python -c "import secrets; print(secrets.token_urlsafe(32))")'
            )
        if not 0 < timeout < float("inf") or max_in_flight < 1 or max_answer_bytes < 1:
            raise ConfigError(
                "webhook timeout, max_in_flight and max_answer_bytes must be positive"
            )
        self.url = url.rstrip("/")
        self.enabled = _names(hooks, WEBHOOK_HOOKS, "hooks")
        self.fail_open = _names(fail_open, FAIL_OPEN_HOOKS, "fail_open")
        self.timeout = timeout
        self.max_in_flight = max_in_flight
        self.max_answer_bytes = max_answer_bytes
        self._key = secret.encode()
        # The runner's deadlines sit just past this module's own, which answers first.
        self.authorize_timeout = self.push_timeout = timeout + _GRACE
        backoff = EVENT_FIRST_BACKOFF * (2 ** (EVENT_ATTEMPTS - 1) - 1)
        self.event_timeout = EVENT_ATTEMPTS * timeout + backoff + _GRACE
        self._limiter = trio.CapacityLimiter(max_in_flight)
        #: Calls one client address may have in flight: a share of the slots, so one
        #: address (a slow backend for its requests, many connections) cannot take
        #: them all. Events and committed pushes are the server's, not counted.
        self.per_address = max(1, max_in_flight // ADDRESS_SHARE)
        self._addresses: dict[str, trio.CapacityLimiter] = {}
        self._client: httpx.AsyncClient | None = None

    def overrides(self, name: str) -> bool:
        """Only the hooks ``enabled`` call the backend; a method a subclass wrote
        itself is called whatever ``enabled`` says."""
        if not super().overrides(name):
            return False
        webhook = _WEBHOOKS.get(name)
        if webhook is None or webhook in self.enabled:
            return True
        return getattr(type(self), name) is not getattr(WebhookHooks, name)

    def __repr__(self) -> str:
        return f"WebhookHooks({self.url!r}, hooks={sorted(self.enabled)})"

    @asynccontextmanager
    async def lifespan(self) -> AsyncIterator[None]:
        """One HTTP client (its connection pool) for the server's life."""
        if self._client is not None:
            raise RuntimeError("these WebhookHooks already serve a server")
        client = httpx.AsyncClient(
            timeout=self.timeout,
            limits=httpx.Limits(
                max_connections=self.max_in_flight, max_keepalive_connections=self.max_in_flight
            ),
            follow_redirects=False,
            trust_env=False,
        )
        async with client:
            self._client = client
            try:
                yield
            finally:
                self._client = None

    @asynccontextmanager
    async def _address_slot(self, address: str) -> AsyncIterator[None]:
        """One of ``address``'s :attr:`per_address` slots, for the block (no limit
        for the server's own calls, ``address`` empty)."""
        if not address:
            yield
            return
        limiter = self._addresses.get(address)
        if limiter is None:
            limiter = self._addresses[address] = trio.CapacityLimiter(self.per_address)
        try:
            async with limiter:
                yield
        finally:
            stats = limiter.statistics()
            if not stats.borrowed_tokens and not stats.tasks_waiting:
                self._addresses.pop(address, None)  # forget idle addresses

    async def _post(self, hook: str, payload: dict[str, Any], address: str = "") -> bytes:
        """POST ``payload`` to the hook's URL, signed; the 2xx answer's body, or
        :class:`WebhookError`. At most ``timeout`` seconds, from the wait for a slot
        to the answer's last byte."""
        client = self._client
        url = f"{self.url}/{hook}"
        if client is None:
            raise WebhookUnavailable(f"POST {url}: the webhooks are not running (no lifespan)")
        body = orjson.dumps(payload, default=bytes_as_ints)
        headers = {
            "content-type": "application/json",
            SIGNATURE_HEADER: sign(self._key, int(time.time()), body),
        }
        holding = False
        with trio.move_on_after(self.timeout):
            async with self._address_slot(address), self._limiter:
                holding = True
                try:
                    async with client.stream("POST", url, content=body, headers=headers) as answer:
                        if not 200 <= answer.status_code <= 299:
                            raise WebhookBadAnswer(f"POST {url} answered {answer.status_code}")
                        return await self._read(answer, url)
                except httpx.HTTPError as exc:
                    raise WebhookUnavailable(
                        f"POST {url}: {str(exc) or type(exc).__name__}"
                    ) from None
        if not holding:
            busy = (
                f"the calls in flight (all {self.max_in_flight}, or this address's share)"
                " stayed busy"
            )
            raise WebhookUnavailable(f"POST {url}: {busy} for {self.timeout:g} s")
        raise WebhookUnavailable(f"POST {url}: no answer within {self.timeout:g} s")

    async def _read(self, answer: httpx.Response, url: str) -> bytes:
        """The answer's body, up to ``max_answer_bytes``. Past it (unless its
        ``content-length`` said so first) the rest is read and dropped within the
        call's deadline: httpx leaks a half-read stream's generators."""
        too_large = WebhookBadAnswer(f"POST {url}: answer over {self.max_answer_bytes} bytes")
        length = answer.headers.get("content-length", "")
        if length.isdigit() and int(length) > self.max_answer_bytes:
            raise too_large
        body = bytearray()
        over = False
        # Closed here even when the call is cancelled midway: left to the garbage
        # collector, the generator would be finalised outside trio ("Exception
        # ignored in ... ByteStream.__aiter__" at shutdown).
        chunks = cast("AsyncGenerator[bytes, None]", answer.aiter_bytes())  # a generator
        async with aclosing(chunks):
            async for chunk in chunks:
                over = over or len(body) + len(chunk) > self.max_answer_bytes
                if not over:
                    body += chunk
        if over:
            raise too_large
        return bytes(body)

    def _failed(self, hook: str, exc: WebhookError) -> None:
        """Re-raise (the runner refuses, with one log line) unless ``hook`` fails open."""
        if hook not in self.fail_open:
            raise exc
        log.warning("webhook %s failed, allowed (fail_open): %s", hook, exc)

    async def authorize(self, request: ConnectRequest) -> AuthorizeDecision:
        return await self._decide(
            "authorize", _authorize_body(request), request.client, parse_authorize_answer
        )

    async def on_push(self, push: PushRequest) -> PushDecision:
        return await self._decide("push", _push_body(push), push.client, parse_push_answer)

    async def _decide(
        self,
        hook: str,
        payload: dict[str, Any],
        client: str,
        parse: Callable[[Any], _Decision],
    ) -> _Decision | None:
        """Ask the backend's ``hook`` and read its answer with ``parse``; a failure is
        refused, or allowed (``None``) when ``hook`` fails open."""
        try:
            body = await self._post(hook, payload, client)
            return parse(_decoded(body, hook))
        except WebhookError as exc:
            self._failed(hook, exc)
            return None

    async def on_event(self, event: Event) -> None:
        payload = _event_body(event)
        delay = EVENT_FIRST_BACKOFF
        for attempt in range(EVENT_ATTEMPTS):
            try:
                await self._post("event", payload)
                return
            except WebhookError:
                if attempt == EVENT_ATTEMPTS - 1:
                    raise  # the runner logs it once, and the event is dropped
            await trio.sleep(delay)
            delay *= 2

    async def on_committed(self, pushes: Sequence[Committed]) -> None:
        await self._post("committed", _committed_body(pushes))


def hooks_from_config(config: Config) -> WebhookHooks | None:
    """The webhooks the ``webhook_*`` settings ask for (``None``: no
    ``webhook_url``). :class:`ConfigError` if they are wrong, or if ``hooks`` (a
    Python import path) is set too: combine the two in code, by subclassing
    :class:`WebhookHooks` in the module ``hooks`` names."""
    if not config.webhook_url:
        if config.webhook_secret:
            raise ConfigError("webhook_secret is set but webhook_url is not")
        return None
    if config.hooks:
        raise ConfigError(
            "set hooks (a Python import path) or webhook_url, not both: to combine them,"
            " subclass drifttrio.hooks.webhooks.WebhookHooks in your hooks module"
        )
    return WebhookHooks(
        config.webhook_url,
        config.webhook_secret,
        hooks=config.webhook_hooks,
        timeout=config.webhook_timeout_seconds,
        max_in_flight=config.webhook_max_in_flight,
        fail_open=config.webhook_fail_open,
        max_answer_bytes=config.max_message_bytes,
    )
