"""Signed, expiring room tokens: access control a browser can carry in a URL.

The npm client cannot send headers, but it keeps whatever query its
``socket_url`` / ``http_url`` has, so a token travels as ``?token=...``. A
token is bound to one room, one capability (``read`` or ``write``) and an
expiry time, signed with HMAC-SHA256 under ``Config.room_token_secret``::

    w.1767225600.Qk9uQ2xJb0ZrZ3Y3dTRnYQ
    ^ ^          ^ 128-bit signature (URL-safe base64) over room, capability, expiry
    | expiry, Unix seconds
    capability: r (read: get, ping) or w (write: push too)

Tokens are stateless: nothing is stored, and rotating the secret revokes them all.

A token arrives from the network, so :func:`verify_room_token` accepts any
string: whatever is malformed (non-ASCII, Unicode digits, a huge expiry, empty
parts, lone surrogates) is refused with the same 401 as a forged token, and
nothing else is ever raised.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import time
from typing import Final, Literal

from .._errors import ProtocolError

__all__ = ["READ", "WRITE", "Access", "issue_room_token", "token_expiry", "verify_room_token"]

Access = Literal["read", "write"]
READ: Final = "read"
WRITE: Final = "write"

_LETTER: Final[dict[str, str]] = {READ: "r", WRITE: "w"}
_ACCESS: Final[dict[str, Access]] = {"r": READ, "w": WRITE}
#: The expiry as issued: ASCII digits, no leading zero, at most 12 of them (year
#: 33658). Not ``str.isdigit()``: that also takes superscripts, which ``int()`` chokes
#: on, and Arabic-Indic digits, which it reads as another spelling of a number.
_EXPIRY: Final = re.compile(r"[1-9][0-9]{0,11}")


def _utf8(text: str) -> bytes:
    """``text`` as bytes, whatever it holds: a secret read from the environment may
    carry surrogate escapes, and encoding must never be the thing that fails."""
    return text.encode("utf-8", "surrogatepass")


def _signature(secret: str, room_id: str, letter: str, expires: int) -> str:
    message = _utf8(f"drifttrio room token\n{room_id}\n{letter}\n{expires}")
    digest = hmac.new(_utf8(secret), message, hashlib.sha256).digest()[:16]
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def issue_room_token(
    secret: str,
    room_id: str,
    access: Access = WRITE,
    ttl_seconds: float = 3600.0,
    *,
    now: float | None = None,
) -> str:
    """A token for ``room_id`` with ``access``, valid for ``ttl_seconds`` from ``now``."""
    if not secret:
        raise ValueError("room tokens need a secret (Config.room_token_secret)")
    if access not in _LETTER:
        raise ValueError(f"access must be 'read' or 'write', got {access!r}")
    if not ttl_seconds > 0:
        raise ValueError(f"ttl_seconds must be positive, got {ttl_seconds!r}")
    expires = int((time.time() if now is None else now) + ttl_seconds)
    letter = _LETTER[access]
    return f"{letter}.{expires}.{_signature(secret, room_id, letter, expires)}"


def token_expiry(token: str) -> int:
    """The expiry (Unix seconds) written in a token issued by :func:`issue_room_token`."""
    return int(token.split(".")[1])


def verify_room_token(
    secret: str, room_id: str, token: str | None, *, now: float | None = None
) -> Access:
    """The capability ``token`` grants on ``room_id``; :class:`ProtocolError` (401) if none.

    Every failure (missing, malformed, forged, for another room, expired) reads
    the same apart from "missing", so a token reveals nothing about other rooms.
    """
    if not token:
        raise ProtocolError("this room needs a token (token=... in the URL)", status=401)
    letter, _, rest = token.partition(".")
    expires_text, _, signature = rest.partition(".")
    invalid = ProtocolError("invalid or expired room token", status=401)
    if letter not in _ACCESS or _EXPIRY.fullmatch(expires_text) is None:
        raise invalid
    expires = int(expires_text)
    expected = _signature(secret, room_id, letter, expires)
    # As bytes: compare_digest refuses str holding anything but ASCII.
    if not hmac.compare_digest(_utf8(signature), expected.encode("ascii")):
        raise invalid
    if (time.time() if now is None else now) >= expires:
        raise invalid
    return _ACCESS[letter]
