"""What a request may do, decided once for HTTP (``/room/ID/...``) and WebSocket
(``/room/ID/connect``): the room token and the capability it grants (read-only
refuses pushes), and what an undecodable message counts in the metrics.
"""

from __future__ import annotations

import re
from collections.abc import MutableMapping
from typing import Any
from urllib.parse import unquote

from ..protocol.codec import DecodeLimits
from ..runtime.config import Config
from ..runtime.metrics import Metrics
from .tokens import READ, verify_room_token

__all__ = ["READ_ONLY_REFUSAL", "authorize", "count_invalid", "parse_query", "read_only"]

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
