"""What a request may do, decided once for HTTP (``/room/ID/...``) and WebSocket
(``/room/ID/connect``): the room token and the capability it grants (read-only
refuses pushes), and what an undecodable message counts in the metrics.
"""

from __future__ import annotations

import re
from collections.abc import MutableMapping
from typing import Any
from urllib.parse import unquote

from ..hooks import Admit, ConnectRequest, Refuse, Replace, Source
from ..hooks._api import ADMIT_ALL
from ..hooks._runner import HookRunner, push_request
from ..protocol.codec import DecodeLimits
from ..protocol.messages import Push, Value
from ..runtime.config import Config
from ..runtime.metrics import Metrics
from .tokens import READ, token_expiry, verify_room_token

__all__ = [
    "READ_ONLY_REFUSAL",
    "admission",
    "authorize",
    "connect_request",
    "count_invalid",
    "key_refusal",
    "parse_query",
    "read_only",
    "screen_push",
]

#: What a push under a read-only room token is answered with.
READ_ONLY_REFUSAL = "read-only token: push refused"
#: Scope key: the capability a room token granted (absent when tokens are off).
_ACCESS_KEY = "drifttrio.access"


def parse_query(query: bytes | str) -> dict[str, str]:
    """Parse a query string leniently.

    The npm client appends ``?cbor=true`` to a URL that may already have a query,
    so ``cbor=true?cbor=true`` and ``cbor=true?debug=true`` must both work: ``?``
    is treated as one more separator. The first value of a name wins.
    """
    text = query.decode("latin-1") if isinstance(query, bytes) else query
    params: dict[str, str] = {}
    for part in re.split(r"[&?;]", text):
        if not part:
            continue
        name, _, value = part.partition("=")
        params.setdefault(unquote(name).strip().lower(), unquote(value).strip())
    return params


def authorize(config: Config, scope: MutableMapping[str, Any], room_id: str) -> str | None:
    """Check the ``?token=`` of a request to ``room_id`` when room tokens are on,
    and note in ``scope`` the capability it grants (see :func:`read_only`).

    Returns the token (``None`` when tokens are off); raises
    :class:`~drifttrio.ProtocolError`, carrying the status to answer, when it is
    missing, invalid, expired or for another room.
    """
    secret = config.room_token_secret
    if not secret:
        return None
    token = parse_query(scope.get("query_string", b"")).get("token")
    scope[_ACCESS_KEY] = verify_room_token(secret, room_id, token)
    return token


def connect_request(
    scope: MutableMapping[str, Any], room_id: str, source: Source, client: str, token: str | None
) -> ConnectRequest:
    """What the application's ``authorize`` hook is asked about a request to ``room_id``
    (after :func:`authorize` checked its token, if tokens are on)."""
    headers: dict[str, str] = {}
    for name, value in scope.get("headers") or ():
        key = bytes(name).decode("latin-1").lower()
        text = bytes(value).decode("latin-1")
        headers[key] = f"{headers[key]}, {text}" if key in headers else text
    claims = None
    access = scope.get(_ACCESS_KEY)
    if access is not None and token:
        claims = {"room": room_id, "access": access, "expires": token_expiry(token)}
    query = parse_query(scope.get("query_string", b""))
    return ConnectRequest(room_id, source, client, headers, query, claims)


def key_refusal(key: str) -> str:
    """What a push to ``key`` that its admission does not let it write is answered with."""
    return f"push refused: not allowed to write key {key!r}"


async def screen_push(
    hooks: HookRunner | None,
    admit: Admit,
    room_id: str,
    push: Push,
    source: Source,
    client: str,
) -> tuple[Value, int | None] | Refuse:
    """What the ``on_push`` hook (if any) says of a client's push its admission lets
    it write (the caller checked :meth:`Admit.may_write`): the value to push (maybe
    replaced) and the ``expect_seq`` to push it with, or the :class:`Refuse`."""
    if hooks is None or not hooks.screens_pushes:
        return push.value, None
    request = push_request(
        room_id, push.key, push.action, push.value, admit.identity, source, client
    )
    if hooks.push_is_plain:
        decision = hooks.screen_push_now(request)
    else:
        decision = await hooks.screen_push(request)
    if isinstance(decision, Refuse):
        return decision
    if isinstance(decision, Replace):
        return Value(decision.value), decision.expect_seq
    return push.value, decision.expect_seq


async def admission(
    hooks: HookRunner | None,
    metrics: Metrics,
    scope: MutableMapping[str, Any],
    room_id: str,
    source: Source,
    client: str,
    token: str | None,
) -> Admit | Refuse:
    """What the ``authorize`` hook says of a request to ``room_id`` (after its room
    token was checked): :data:`ADMIT_ALL` without one; a refusal is counted."""
    if hooks is None or not hooks.authorizes:
        return ADMIT_ALL
    decision = await hooks.authorize(connect_request(scope, room_id, source, client, token))
    if isinstance(decision, Refuse):
        metrics.rejected["hook"].inc()
    return decision


def read_only(scope: MutableMapping[str, Any]) -> bool:
    """Whether the request's room token grants reads only: its pushes are refused
    with :data:`READ_ONLY_REFUSAL`."""
    return bool(scope.get(_ACCESS_KEY) == READ)


def count_invalid(metrics: Metrics, nodes: int, limits: DecodeLimits) -> None:
    """Count a client message that could not be decoded (``nodes``: as counted
    before the decode), the same for a WebSocket frame and a ``/send`` body."""
    if nodes > limits.max_nodes:
        metrics.rejected["max_message_nodes"].inc()
    metrics.messages_in["invalid"].inc()
    metrics.errors["invalid"].inc()
