"""An httpx transport into a test server, for application code written against httpx."""

from __future__ import annotations

from typing import TYPE_CHECKING

import httpx

if TYPE_CHECKING:
    from ._server import DriftTestServer

__all__ = ["DriftTransport"]


class DriftTransport(httpx.AsyncBaseTransport):
    """Sends each request to the test server over a new in-memory connection."""

    def __init__(self, server: DriftTestServer) -> None:
        self._server = server

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        body = await request.aread()
        headers = [
            (name.decode("latin-1"), value.decode("latin-1"))
            for name, value in request.headers.raw
            if name.lower() not in (b"host", b"connection", b"content-length")
        ]
        target = request.url.raw_path.decode("ascii")
        response = await self._server.request(request.method, target, headers=headers, body=body)
        return httpx.Response(
            response.status,
            headers=list(response.headers),
            content=response.body,
            request=request,
        )
