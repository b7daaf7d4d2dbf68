"""The server a command line tool talks to (``drifttrio check``, ``drifttrio bench``):
its base URL checked before anything runs, and one line when it cannot be reached.

Both tools would otherwise fail every check or scenario with the same transport
error; a mistake that the user fixes in one place gets one line instead.
"""

from __future__ import annotations

import httpx

from .._errors import ConfigError
from ._errors import ClientError

__all__ = ["ServerUnreachable", "cannot_reach", "reach", "server_url"]

_SCHEMES = {"http": "http", "https": "https", "ws": "http", "wss": "https"}


class ServerUnreachable(ClientError):
    """No HTTP answer from the server's base URL (refused, unknown host, timed out)."""


def server_url(text: str) -> str:
    """``text`` as a server's base URL (``http[s]://HOST[:PORT][/PATH]``, no trailing
    slash); :class:`~drifttrio.ConfigError` saying what to write instead if it is not."""
    scheme, sep, rest = text.partition("://")
    if not sep:
        raise ConfigError(f"not a server URL: {text!r} (give its scheme: http://{text})")
    http = _SCHEMES.get(scheme.lower())
    if http is None or not rest.strip("/"):
        raise ConfigError(
            f"not a server URL: {text!r} (expected http://HOST:PORT or https://HOST:PORT)"
        )
    if http != scheme.lower():
        raise ConfigError(f"not a server URL: {text!r} (the base URL is {http}://{rest})")
    return text.rstrip("/")


def cannot_reach(base_url: str, exc: BaseException) -> str:
    """The one line for a server that did not answer: what failed and what to check."""
    return (
        f"cannot reach {base_url}: {exc or type(exc).__name__}"
        " (is the server running, and is this its address?)"
    )


async def reach(http: httpx.AsyncClient, base_url: str) -> None:
    """One request to the server's base URL: any HTTP answer will do.
    :class:`ServerUnreachable` (with :func:`cannot_reach`'s line) if none comes."""
    try:
        await http.get(base_url + "/")
    except httpx.TransportError as exc:
        raise ServerUnreachable(cannot_reach(base_url, exc)) from None
