"""Operations endpoints: ``/healthz``, ``/readyz``, ``/metrics`` and the ``/ui`` files.

:class:`OpsApp` is the ASGI app of the internal listener (``metrics_port``);
:func:`handle_ops` answers the same paths on the public listener, where
``/metrics`` is only served if ``public_metrics`` is set and ``/ui`` unless
``inspector`` is off.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from functools import cache
from importlib import resources
from typing import Any, Final, TypeAlias

import orjson
import trio
from prometheus_client import CONTENT_TYPE_LATEST

from ..runtime.hub import Hub
from .peer import Peer

__all__ = ["OPS_PATHS", "OpsApp", "handle_ops", "is_ops_path", "reply", "reply_json"]

Scope: TypeAlias = MutableMapping[str, Any]
Send: TypeAlias = Callable[[MutableMapping[str, Any]], Awaitable[None]]
Receive: TypeAlias = Callable[[], Awaitable[MutableMapping[str, Any]]]

OPS_PATHS: Final = frozenset({"/healthz", "/readyz", "/metrics"})

#: How long ``/readyz`` and ``/metrics`` wait for the store.
STORE_CHECK_SECONDS: Final = 2.0

_UI_FILES: Final = {
    "index.html": "text/html; charset=utf-8",
    "inspector.js": "text/javascript; charset=utf-8",
    "inspector.css": "text/css; charset=utf-8",
}
_UI_HEADERS: Final = [
    (
        b"content-security-policy",
        b"default-src 'self'; img-src 'self' data:; connect-src 'self' ws: wss:; "
        b"frame-ancestors 'none'",
    ),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),  # the page URL may carry a room id
    (b"cache-control", b"no-cache"),
]


def is_ops_path(path: str) -> bool:
    return path in OPS_PATHS or path == "/ui" or path.startswith("/ui/")


async def reply(
    send: Send,
    status: int,
    body: bytes,
    content_type: str,
    headers: Iterable[tuple[bytes, bytes]] = (),
) -> None:
    """Answer an ASGI request with ``body`` (its length known)."""
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", content_type.encode()),
                (b"content-length", str(len(body)).encode()),
                *headers,
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


async def reply_json(send: Send, status: int, body: object) -> None:
    """Answer with ``body`` as JSON."""
    await reply(send, status, orjson.dumps(body), "application/json")


async def _store_reachable(hub: Hub) -> int | None:
    """The number of stored rooms, or ``None`` if the store failed or took too long."""
    with trio.move_on_after(STORE_CHECK_SECONDS):
        try:
            return await hub.storage.count_rooms()
        except Exception:
            return None
    return None


async def _not_ready(hub: Hub) -> str | None:
    """Why the server should get no traffic now (``/readyz``), or ``None``: draining,
    a store that cannot be read, or one whose latest write failed (pushes would get
    ``storage unavailable``, though reads still work)."""
    if hub.closing:
        return "draining"
    if await _store_reachable(hub) is None:
        return "store unreachable"
    problem: str | None = "the write probe took too long"
    with trio.move_on_after(STORE_CHECK_SECONDS):
        problem = await hub.write_problem()
    return None if problem is None else f"storage cannot commit: {problem}"


@cache
def _ui_file(name: str) -> bytes:
    return (resources.files("drifttrio.web") / "ui" / name).read_bytes()


async def handle_ops(
    hub: Hub,
    scope: Scope,
    receive: Receive,
    send: Send,
    path: str,
    *,
    metrics: bool = True,
    inspector: bool = False,
) -> bool:
    """Answer an operations path; return ``False`` if this listener does not serve it."""
    if not (path in OPS_PATHS and (metrics or path != "/metrics")) and not (
        inspector and path.startswith("/ui")
    ):
        return False
    # Read the (empty) request body, so the connection can carry the next request.
    if scope.get("method") in ("GET", "HEAD"):
        with trio.move_on_after(STORE_CHECK_SECONDS):
            await receive()
    if path == "/healthz":
        await reply_json(send, 200, {"status": "ok"})
    elif path == "/readyz":
        reason = await _not_ready(hub)
        if reason is None:
            await reply_json(send, 200, {"ready": True})
        else:
            await reply_json(send, 503, {"ready": False, "reason": reason})
    elif path == "/metrics" and metrics:
        stored = await _store_reachable(hub)
        if stored is not None:
            hub.metrics.rooms_stored.set(stored)
        rooms = list(hub.rooms.values())
        hub.metrics.collect_live(
            (room.inbox.statistics().current_buffer_used for room in rooms), len(rooms)
        )
        await reply(send, 200, hub.metrics.exposition(), CONTENT_TYPE_LATEST)
    elif (path == "/ui" or path.startswith("/ui/")) and inspector:
        await _ui(scope, send, path)
    else:
        return False
    return True


async def _ui(scope: Scope, send: Send, path: str) -> None:
    if scope.get("method") not in ("GET", "HEAD"):
        await reply_json(send, 405, {"type": "error", "message": "use GET"})
        return
    if path == "/ui":
        # Relative URLs in the page resolve under /ui/ (and under any root_path).
        query = scope.get("query_string") or b""
        location = b"ui/" + (b"?" + query if query else b"")
        await reply(send, 308, b"", "text/plain", [(b"location", location)])
        return
    name = path[len("/ui/") :] or "index.html"
    content_type = _UI_FILES.get(name)
    if content_type is None:
        await reply_json(send, 404, {"type": "error", "message": "not found"})
        return
    await reply(send, 200, _ui_file(name), content_type, _UI_HEADERS)


class OpsApp:
    """The ASGI app of the internal listener: ``/metrics``, ``/healthz``, ``/readyz``."""

    def __init__(self, hub: Hub) -> None:
        self.hub = hub

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket":
            await receive()
            await send({"type": "websocket.close", "code": 1008})
            return
        if scope["type"] != "http":
            return
        if not await handle_ops(self.hub, scope, receive, send, scope["path"], metrics=True):
            await reply_json(send, 404, {"type": "error", "message": "not found"})

    async def websocket(self, peer: Peer) -> None:
        """No WebSockets here: the upgrade is refused."""
        await peer.reject(403, b"", [])
