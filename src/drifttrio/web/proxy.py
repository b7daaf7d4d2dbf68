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
import socket
from collections.abc import Iterable, Iterator, MutableMapping
from typing import Any, Final, TypeAlias

__all__ = ["Network", "TrustedProxies", "parse_address"]

#: One entry of ``trusted_proxies``.
Network: TypeAlias = ipaddress.IPv4Network | ipaddress.IPv6Network
#: One hop of a forwarding header: the address the proxy saw, packed (4 or 16
#: bytes; ``None``: unreadable), and the scheme it said (``None``: not said).
_Hop: TypeAlias = tuple[bytes | None, str | None]

#: ``proto`` values that mean the client used TLS, and those that mean it did not.
_SECURE: Final = frozenset({"https", "wss"})
_PLAIN: Final = frozenset({"http", "ws"})
_V4_MAPPED: Final = bytes(10) + b"\xff\xff"
#: One ``name=value`` pair of a ``Forwarded`` element: a token or a quoted string.
_PAIR: Final = re.compile(r'\s*([!#$%&\'*+\-.^_`|~0-9A-Za-z]+)=([^";,\s]+|"(?:[^"\\]|\\.)*")\s*')


def _packed(text: str) -> bytes | None:
    """The address of one hop as proxies write it (``1.2.3.4``, ``1.2.3.4:80``,
    ``2001:db8::1``, ``[2001:db8::1]:80``), packed, an IPv4-mapped IPv6 address
    as IPv4; ``None`` for anything else (``unknown``, an obfuscated ``_id``, junk).

    ``inet_pton`` rather than :mod:`ipaddress`: a few hundred nanoseconds per
    address instead of several microseconds, on every request from a proxy.
    """
    text = text.strip()
    if text.startswith("["):
        text, bracket, _port = text[1:].partition("]")
        if not bracket:
            return None
    elif text.count(":") == 1:
        text = text.partition(":")[0]
    try:
        return socket.inet_pton(socket.AF_INET, text)
    except (OSError, ValueError):
        pass
    try:
        packed = socket.inet_pton(socket.AF_INET6, text)
    except (OSError, ValueError):
        return None
    return packed[12:] if packed.startswith(_V4_MAPPED) else packed


def _text(packed: bytes) -> str:
    return socket.inet_ntop(socket.AF_INET if len(packed) == 4 else socket.AF_INET6, packed)


def parse_address(text: str) -> str | None:
    """A hop's address in its canonical form (see :func:`_packed`), or ``None``."""
    packed = _packed(text)
    return None if packed is None else _text(packed)


class TrustedProxies:
    """The peers whose forwarding headers are believed (``trusted_proxies``)."""

    __slots__ = ("_ranges", "networks")

    def __init__(self, networks: Iterable[Network] = ()) -> None:
        self.networks = tuple(networks)
        #: (address length, network, netmask), as integers: a hop is trusted when
        #: its length matches and ``address & netmask == network``.
        self._ranges = tuple(
            (n.max_prefixlen // 8, int(n.network_address), int(n.netmask)) for n in self.networks
        )

    def __bool__(self) -> bool:
        return bool(self.networks)

    def trusts(self, peer: str) -> bool:
        """Whether ``peer`` (an address as the socket reports it) is a trusted proxy."""
        if not self._ranges:
            return False
        packed = _packed(peer)
        return packed is not None and self._trusted(packed)

    def _trusted(self, packed: bytes) -> bool:
        size, value = len(packed), int.from_bytes(packed, "big")
        return any(
            size == length and value & mask == network for length, network, mask in self._ranges
        )

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
            address = self._client(_x_forwarded_for(forwarded_for))[0] if forwarded_for else None
            proto = _proto(forwarded_proto[-1].rpartition(b",")[2]) if forwarded_proto else None
        elif forwarded:
            address, proto = self._client(_forwarded(forwarded))
        else:
            return
        if address is not None:
            scope["client"] = (_text(address), 0)
        if proto is not None:
            secure = proto in _SECURE
            if scope.get("type") == "websocket":
                scope["scheme"] = "wss" if secure else "ws"
            else:
                scope["scheme"] = "https" if secure else "http"

    def _client(self, hops: Iterator[_Hop]) -> _Hop:
        """The client among ``hops`` (given nearest first): the first untrusted
        one, or the farthest when all are trusted; ``(None, None)`` when a hop
        that has to be read is unreadable (the peer is the client then). Hops
        are parsed as they are reached: what a client put in front of the first
        untrusted hop costs a split, never a parse."""
        farthest: _Hop = (None, None)
        for hop in hops:
            address = hop[0]
            if address is None:
                return None, None
            if not self._trusted(address):
                return hop
            farthest = hop
        return farthest


def _x_forwarded_for(values: list[bytes]) -> Iterator[_Hop]:
    """The hops of ``X-Forwarded-For`` header lines (several lines are one list),
    nearest first."""
    for value in reversed(values):
        for entry in reversed(value.split(b",")):
            yield _packed(entry.decode("latin-1")), None


def _forwarded(values: list[bytes]) -> Iterator[_Hop]:
    """The hops of RFC 7239 ``Forwarded`` header lines, nearest first: each
    element's ``for`` and ``proto``. An element that does not parse is an
    unreadable hop.

    Elements are split at every comma: the values a proxy writes (addresses,
    schemes) hold none, and what a client wrote further left is never read past
    its first untrusted hop.
    """
    for value in reversed(values):
        for element in reversed(value.decode("latin-1").split(",")):
            pairs: dict[str, str] = {}
            for pair in element.split(";"):
                match = _PAIR.fullmatch(pair)
                if match is None:
                    pairs.clear()
                    break
                pairs.setdefault(match.group(1).lower(), match.group(2).strip('"'))
            address = _packed(pairs["for"]) if "for" in pairs else None
            yield address, _proto(pairs.get("proto", "").encode("latin-1"))


def _proto(value: bytes) -> str | None:
    """A forwarded scheme, lower-cased, if it is one drifttrio knows."""
    proto = value.strip().lower().decode("latin-1")
    return proto if proto in _SECURE or proto in _PLAIN else None
