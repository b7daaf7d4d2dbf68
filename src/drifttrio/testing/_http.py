"""One HTTP/1.1 exchange over an in-memory connection, with h11 (hypercorn's own parser)."""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

import attrs
import h11

from ._streams import Endpoint

__all__ = ["HttpResponse", "exchange"]


@attrs.frozen
class HttpResponse:
    """A response: status, headers (names lower-cased) and the whole body."""

    status: int
    headers: tuple[tuple[str, str], ...]
    body: bytes

    def header(self, name: str) -> str | None:
        """The first value of header ``name`` (case-insensitive), or ``None``."""
        wanted = name.lower()
        return next((value for key, value in self.headers if key == wanted), None)

    def json(self) -> Any:
        """The body decoded as JSON."""
        return json.loads(self.body)


async def exchange(
    stream: Endpoint,
    host: str,
    method: str,
    target: str,
    headers: Iterable[tuple[str, str]] = (),
    body: bytes = b"",
) -> HttpResponse:
    """Send one request on ``stream`` (``Connection: close``) and read the response."""
    conn = h11.Connection(h11.CLIENT)
    request_headers = [
        ("host", host),
        ("connection", "close"),
        ("content-length", str(len(body))),
        *headers,
    ]
    parts = [conn.send(h11.Request(method=method, target=target, headers=request_headers))]
    if body:
        parts.append(conn.send(h11.Data(data=body)))
    parts.append(conn.send(h11.EndOfMessage()))
    await stream.send_all(b"".join(part for part in parts if part))
    response: h11.Response | None = None
    chunks: list[bytes] = []
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            conn.receive_data(await stream.receive_some())
        elif isinstance(event, h11.Response):
            response = event
        elif isinstance(event, h11.Data):
            chunks.append(bytes(event.data))
        elif isinstance(event, h11.EndOfMessage | h11.ConnectionClosed):
            break
    if response is None:
        raise h11.RemoteProtocolError("the connection closed before a response")
    return HttpResponse(
        response.status_code,
        tuple((k.decode("latin-1"), v.decode("latin-1")) for k, v in response.headers),
        b"".join(chunks),
    )
