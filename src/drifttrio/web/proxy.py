"""The real client behind trusted reverse proxies (sans-IO).

Behind a proxy every connection comes from the proxy's address, so the
per-address limits would count all users as one client. A peer listed in
``trusted_proxies`` is believed about who it forwards for:

- ``X-Forwarded-For`` is walked right to left, skipping trusted addresses; the
  first untrusted one is the client. A client can prepend anything to the
  header, so only what trusted hops appended counts. When every hop is trusted,
  the leftmost is the client (a client on the proxies' own network).
- ``X-Forwarded-Proto`` (its rightmost value: what the nearest proxy said) tells
  whether the client came over TLS.
- RFC 7239 ``Forwarded`` is read only from a request without
  ``X-Forwarded-For`` / ``X-Forwarded-Proto``: a proxy appends to one family and
  passes the other through untouched, so believing both would let a client
  pick its own address. nginx, Caddy, HAProxy (``option forwardfor``), Traefik
  and the cloud balancers all write ``X-Forwarded-For``; a proxy that writes
  only ``Forwarded`` must drop a client's ``X-Forwarded-*``.

A header that does not parse never raises: the client is then the peer itself.
A peer that is not trusted: its headers are ignored entirely. This mirrors
uvicorn's ``--forwarded-allow-ips`` (``ProxyHeadersMiddleware``) and hypercorn's
``ProxyFixMiddleware``, with the trusted list of the former.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, MutableMapping
from typing import Any, TypeAlias

import attrs

__all__ = ["Network", "TrustedProxies", "parse_address"]

#: One entry of ``trusted_proxies``.
Network: TypeAlias = ipaddress.IPv4Network | ipaddress.IPv6Network
_Address: TypeAlias = ipaddress.IPv4Address | ipaddress.IPv6Address

#: ``proto`` values that mean the client used TLS, and those that mean it did not.
_SECURE = frozenset({"https", "wss"})
_PLAIN = frozenset({"http", "ws"})
#: One ``name=value`` pair of a ``Forwarded`` element: a token or a quoted string.
_PAIR = re.compile(r'\s*([!#$%&\'*+\-.^_`|~0-9A-Za-z]+)=([^";,\s]+|"(?:[^"\\]|\\.)*")\s*')


def parse_address(text: str) -> _Address | None:
    """The IP address of one hop as proxies write it (``1.2.3.4``, ``1.2.3.4:80``,
    ``2001:db8::1``, ``[2001:db8::1]:80``), an IPv4-mapped IPv6 address as IPv4;
    ``None`` for anything else (``unknown``, an obfuscated ``_id``, junk)."""
    text = text.strip()
    if text.startswith("["):
        text, bracket, _port = text[1:].partition("]")
        if not bracket:
            return None
    elif text.count(":") == 1:
        text = text.partition(":")[0]
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


@attrs.frozen
class _Hop:
    """One hop a proxy reported: the address it saw (``None``: unreadable) and
    the scheme the request came in with (``None``: not said)."""

    address: _Address | None
    proto: str | None = None


class TrustedProxies:
    """The peers whose forwarding headers are believed (``trusted_proxies``)."""

    __slots__ = ("networks",)

    def __init__(self, networks: Iterable[Network] = ()) -> None:
        self.networks = tuple(networks)

    def __bool__(self) -> bool:
        return bool(self.networks)

    def trusts(self, peer: str) -> bool:
        """Whether ``peer`` (an address as the socket reports it) is a trusted proxy."""
        if not self.networks:
            return False
        address = parse_address(peer)
        return address is not None and self._trusted(address)

    def _trusted(self, address: _Address) -> bool:
        return any(address in network for network in self.networks)

    def apply(self, scope: MutableMapping[str, Any]) -> None:
        """Rewrite an ASGI scope's ``client`` and ``scheme`` to the real client's,
        when its peer is a trusted proxy; otherwise leave it as it is.

        Done once, at the app's entry, so every limit, budget and log line (and
        the transport, which reads the same scope) sees the same client.
        """
        client = scope.get("client")
        if not client or not self.trusts(str(client[0])):
            return
        forwarded_for: list[bytes] = []
        forwarded_proto: list[bytes] = []
        forwarded: list[bytes] = []
        for name, value in scope.get("headers") or ():
            if name == b"x-forwarded-for":
                forwarded_for.append(value)
            elif name == b"x-forwarded-proto":
                forwarded_proto.append(value)
            elif name == b"forwarded":
                forwarded.append(value)
        if forwarded_for or forwarded_proto:
            hop = self._client(_x_forwarded_for(forwarded_for)) if forwarded_for else None
            proto = _proto(forwarded_proto[-1].rpartition(b",")[2]) if forwarded_proto else None
        elif forwarded:
            hop = self._client(_forwarded(forwarded))
            proto = hop.proto if hop is not None else None
        else:
            return
        if hop is not None and hop.address is not None:
            scope["client"] = (str(hop.address), 0)
        if proto is not None:
            secure = proto in _SECURE
            if scope.get("type") == "websocket":
                scope["scheme"] = "wss" if secure else "ws"
            else:
                scope["scheme"] = "https" if secure else "http"

    def _client(self, hops: list[_Hop]) -> _Hop | None:
        """The client among ``hops`` (nearest last): the first untrusted one from
        the right, or the leftmost when all are trusted; ``None`` when a hop
        that would have to be read is unreadable (the peer is the client then)."""
        for hop in reversed(hops):
            if hop.address is None:
                return None
            if not self._trusted(hop.address):
                return hop
        return hops[0] if hops else None


def _x_forwarded_for(values: list[bytes]) -> list[_Hop]:
    """The hops of ``X-Forwarded-For`` header lines (several lines are one list)."""
    return [
        _Hop(parse_address(entry.decode("latin-1")))
        for value in values
        for entry in value.split(b",")
    ]


def _forwarded(values: list[bytes]) -> list[_Hop]:
    """The hops of RFC 7239 ``Forwarded`` header lines: each element's ``for``
    and ``proto``. An element that does not parse is an unreadable hop.

    Elements are split at every comma: the values a proxy writes (addresses,
    schemes) hold none, and what a client wrote further left is never read past
    its first untrusted hop.
    """
    hops: list[_Hop] = []
    for value in values:
        for element in value.decode("latin-1").split(","):
            pairs: dict[str, str] = {}
            for pair in element.split(";"):
                match = _PAIR.fullmatch(pair)
                if match is None:
                    pairs.clear()
                    break
                pairs.setdefault(match.group(1).lower(), match.group(2).strip('"'))
            address = parse_address(pairs["for"]) if "for" in pairs else None
            hops.append(_Hop(address, _proto(pairs.get("proto", "").encode("latin-1"))))
    return hops


def _proto(value: bytes) -> str | None:
    """A forwarded scheme, lower-cased, if it is one drifttrio knows."""
    proto = value.strip().lower().decode("latin-1")
    return proto if proto in _SECURE or proto in _PLAIN else None
