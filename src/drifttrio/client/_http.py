"""The room API (``POST /new``, ``GET /room/ID``) and the HTTP-only connection, on httpx."""

from __future__ import annotations

from types import TracebackType
from typing import Any

import attrs
import httpx

from .._errors import RoomNotFound
from ._errors import HttpError
from ._wire import ActionName, push_message

__all__ = ["Api", "HttpConnection", "RoomInfo"]


@attrs.frozen
class RoomInfo:
    """What ``POST /new`` and ``GET /room/ID`` answer."""

    room: str
    socket_url: str
    http_url: str


def _reply(response: httpx.Response) -> Any:
    try:
        body = response.json()
    except ValueError:
        body = response.text
    if not response.is_success:
        raise HttpError(response.status_code, body)
    return body


class _Owned:
    """Owns an httpx client unless one was given."""

    def __init__(self, client: httpx.AsyncClient | None) -> None:
        self._own = client is None
        self.http = client if client is not None else httpx.AsyncClient(timeout=30.0)

    async def aclose(self) -> None:
        if self._own:
            await self.http.aclose()

    async def __aenter__(self) -> Any:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()


class Api(_Owned):
    """A DriftDB server's room API::

    async with Api("http://127.0.0.1:8080/") as api:
        room = await api.new_room()

    ``http_client``: an ``httpx.AsyncClient`` to use (e.g. with a test transport).
    """

    def __init__(self, base_url: str, *, http_client: httpx.AsyncClient | None = None) -> None:
        super().__init__(http_client)
        self.base_url = base_url.rstrip("/")

    async def __aenter__(self) -> Api:
        return self

    async def new_room(self) -> RoomInfo:
        """Create a room (``POST /new``)."""
        return _room(_reply(await self.http.post(f"{self.base_url}/new")))

    async def get_room(self, room: str) -> RoomInfo:
        """Look a room up (``GET /room/ID``); :class:`~drifttrio.RoomNotFound` if unknown."""
        response = await self.http.get(f"{self.base_url}/room/{room}")
        if response.status_code == 404:
            raise RoomNotFound(room)
        return _room(_reply(response))


def _room(body: Any) -> RoomInfo:
    if not isinstance(body, dict):
        raise HttpError(200, body)
    return RoomInfo(str(body["room"]), str(body["socket_url"]), str(body["http_url"]))


class HttpConnection(_Owned):
    """A room over HTTP only (``POST http_url``), for where WebSockets are unavailable.

    Every call is one request; nothing is pushed to you (poll with :meth:`get`).
    """

    def __init__(self, http_url: str, *, http_client: httpx.AsyncClient | None = None) -> None:
        super().__init__(http_client)
        self.http_url = http_url

    async def __aenter__(self) -> HttpConnection:
        return self

    async def send(self, message: dict[str, Any]) -> Any:
        """Send one raw client message; the server's direct reply (or ``None``)."""
        return _reply(await self.http.post(self.http_url, json=message))

    async def push(
        self, key: str, value: Any, action: ActionName = "append", *, seq: int | None = None
    ) -> int | None:
        """Push; returns the new ``stream_size`` when the server sends one, else ``None``."""
        reply = await self.send(push_message(key, value, action, seq))
        if isinstance(reply, dict) and reply.get("type") == "stream_size":
            return int(reply["size"])
        return None

    async def get(self, key: str, since: int = 0) -> list[tuple[int, Any]]:
        """The retained values of ``key`` with a seq above ``since``, as ``(seq, value)``."""
        reply = await self.send({"type": "get", "key": key, "seq": since})
        if not isinstance(reply, dict) or reply.get("type") != "init":
            raise HttpError(200, reply)
        return [(int(entry["seq"]), entry["value"]) for entry in reply["data"]]

    async def ping(self, nonce: int | None = None) -> Any:
        """Send a ``ping``; the ``pong`` reply."""
        message: dict[str, Any] = {"type": "ping"}
        if nonce is not None:
            message["nonce"] = nonce
        return await self.send(message)
