"""The ASGI application: HTTP routes, CORS and the WebSocket route (the session
itself, reader and writer, is in :mod:`drifttrio.web.session`).

Runs under hypercorn's trio worker (``hypercorn -k trio drifttrio.asgi:app``) or
embedded (:func:`drifttrio.open_server`). When it owns its hub, the hub lives in
the ASGI lifespan task, so room tasks run in a nursery the server owns.
"""

from __future__ import annotations

import hmac
import logging
import math
import re
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping, MutableMapping
from functools import partial
from typing import Any, Final, TypeAlias

import attrs
import orjson
import trio

from .. import __version__
from .._errors import (
    CapacityError,
    CloseCode,
    ConfigError,
    DriftError,
    ProtocolError,
    RoomNotFound,
    ShuttingDown,
    StorageError,
    unwrap_group,
)
from ..hooks import Admit, Hooks, Refuse
from ..hooks._api import ADMIT_ALL
from ..protocol.codec import CBOR, JSON, bytes_as_ints, decode_json_client_message, json_nodes
from ..protocol.messages import Error, Init, Push
from ..runtime.commands import Command, Outcome, PushCommand, Reply
from ..runtime.config import Config
from ..runtime.hub import Hub, open_hub
from ..runtime.member import Member
from ..runtime.redact import room_tag
from ..runtime.room import Join
from .limits import ClientBudgets, ConnectionCounter, KeyedRateLimiter
from .ops import handle_ops, is_ops_path
from .peer import AsgiPeer, Peer
from .policy import (
    READ_ONLY_REFUSAL,
    admission,
    authorize,
    count_invalid,
    key_refusal,
    parse_query,
    read_only,
    screen_push,
)
from .proxy import TrustedProxies
from .session import Session, command_for
from .tokens import READ, WRITE, issue_room_token, token_expiry

__all__ = ["DriftApp", "parse_query"]

log = logging.getLogger("drifttrio.web")
conn_log = logging.getLogger("drifttrio.connection")

Scope: TypeAlias = MutableMapping[str, Any]
Message: TypeAlias = MutableMapping[str, Any]
Receive: TypeAlias = Callable[[], Awaitable[Message]]
Send: TypeAlias = Callable[[Message], Awaitable[None]]

#: The challenge of a 401 (RFC 9110 15.5.2).
_CHALLENGE: Final = (b"www-authenticate", b'Bearer realm="drifttrio"')
#: Scope key: what the authorize hook admitted an HTTP request with.
_ADMIT_KEY: Final = "drifttrio.admit"
_ROOM_PATH = re.compile(r"/room/([^/]+)(/connect|/send|/token)?/?")
#: The ``reason`` label of a close code the server chose.
_CLOSE_REASONS = {
    CloseCode.GOING_AWAY: "shutdown",
    CloseCode.MESSAGE_TOO_BIG: "too_big",
    CloseCode.INTERNAL_ERROR: "internal_error",
    CloseCode.TOO_MANY_ERRORS: "too_many_errors",
    CloseCode.SLOW_CLIENT: "slow_client",
    CloseCode.RATE_LIMITED: "rate_limited",
}
_HOST = re.compile(r"[A-Za-z0-9.\-]+(:[0-9]{1,5})?|\[[0-9A-Fa-f:.]+\](:[0-9]{1,5})?")


def _require_trio() -> None:
    """Refuse to start outside Trio (hypercorn's default asyncio worker), in one line
    rather than a traceback from deep inside the first nursery."""
    try:
        trio.lowlevel.current_trio_token()
    except RuntimeError:
        raise ConfigError(
            "drifttrio.asgi needs hypercorn's trio worker: run hypercorn -k trio drifttrio.asgi:app"
        ) from None


def _startup_error(exc: BaseException) -> str:
    """One line for why the hub could not start: the error itself, out of the nursery's
    group; its text if drifttrio raised it on purpose, its type too if not."""
    exc = unwrap_group(exc)
    if isinstance(exc, DriftError):
        return str(exc)
    return f"{type(exc).__name__}: {exc}"


def _flag(params: dict[str, str], name: str) -> bool:
    return params.get(name, "").lower() in ("true", "1", "yes")


class DriftApp:
    """The drifttrio ASGI application."""

    def __init__(
        self,
        config: Config | None = None,
        *,
        hub: Hub | None = None,
        startup_failed: Callable[[str], None] | None = None,
        hooks: Hooks | None = None,
    ) -> None:
        """Serve ``hub``'s rooms, or (without one) run a hub of its own from ``config``
        in the ASGI lifespan. ``startup_failed`` is called with one line saying why
        that hub could not start (a bad store, not on Trio), before the lifespan
        reports ``lifespan.startup.failed``: :mod:`drifttrio.asgi` ends the process there.
        """
        self.config = config or (hub.config if hub is not None else Config())
        self.hub = hub
        self._startup_failed = startup_failed
        #: The room logic of the hub this app runs itself (a given ``hub`` has its own).
        self._hooks = hooks
        self._owns_hub = hub is None
        self._ready = hub is not None
        cfg = self.config
        self._connections = ConnectionCounter(
            cfg.max_connections, cfg.max_connections_per_ip, cfg.max_connections_per_room
        )
        self._new_room_limiter = KeyedRateLimiter(
            cfg.new_rooms_per_minute / 60.0, max(cfg.new_rooms_per_minute, 1.0)
        )
        #: What each client address may spend across all its connections and
        #: ``/send`` requests (the transport charges control frames to it too).
        self.budgets = ClientBudgets(
            messages=(cfg.address_messages_per_second, cfg.address_messages_burst),
            nbytes=(cfg.address_bytes_per_second, cfg.address_bytes_burst),
            work=(cfg.address_nodes_per_second, cfg.address_nodes_burst),
        )
        #: ``/send`` requests per client address, limited as one WebSocket connection's
        #: messages are (``rate_limit_per_second``, ``rate_limit_burst``).
        self._send_limit = ClientBudgets(messages=(cfg.rate_limit_per_second, cfg.rate_limit_burst))
        #: Whose ``X-Forwarded-*`` / ``Forwarded`` headers name the client.
        self._proxies = TrustedProxies(cfg.trusted_networks)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            if self._proxies:
                self._proxies.apply(scope)  # the real client, for everything below
            await self._http(scope, receive, send)
        elif kind == "websocket":
            if (await receive())["type"] == "websocket.connect":
                await self.websocket(AsgiPeer(scope, receive, send))
        elif kind == "lifespan":
            await self._lifespan(receive, send)

    # -- lifespan -------------------------------------------------------------------

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        message = await receive()
        assert message["type"] == "lifespan.startup"
        if not self._owns_hub:
            await send({"type": "lifespan.startup.complete"})
            await receive()
            await send({"type": "lifespan.shutdown.complete"})
            return
        started = False
        try:
            _require_trio()
            # Opens the store (a bad one fails here) and loads the hooks.
            async with open_hub(self.config, hooks=self._hooks) as hub:
                self.hub = hub
                self._ready = started = True
                await send({"type": "lifespan.startup.complete"})
                await receive()  # lifespan.shutdown
                self._ready = False
                hub.close_all()
        except Exception as exc:
            if started:
                raise
            reason = _startup_error(exc)
            if self._startup_failed is not None:
                self._startup_failed(reason)
            await send({"type": "lifespan.startup.failed", "message": reason})
            raise
        await send({"type": "lifespan.shutdown.complete"})

    # -- HTTP -----------------------------------------------------------------------

    def _path(self, scope: Scope) -> str:
        path: str = scope["path"]
        root: str = scope.get("root_path") or ""
        if root and path.startswith(root):
            path = path[len(root) :] or "/"
        return path

    async def _ops(self, scope: Scope, receive: Receive, send: Send, path: str) -> bool:
        """``/healthz``, ``/readyz``, ``/metrics`` (if public) and ``/ui`` (if enabled)."""
        hub = self.hub
        if hub is None or not self._ready:
            if path == "/healthz":
                await self._respond(send, 200, {"status": "ok"})
                return True
            if path == "/readyz":
                await self._respond(send, 503, {"ready": False, "reason": "starting"})
                return True
            return False
        return await handle_ops(
            hub,
            scope,
            receive,
            send,
            path,
            metrics=self.config.public_metrics,
            inspector=self.config.inspector,
        )

    def _cors(self) -> list[tuple[bytes, bytes]]:
        origin = self.config.cors_origin
        return [(b"access-control-allow-origin", origin.encode())] if origin else []

    async def _respond(
        self,
        send: Send,
        status: int,
        body: object,
        headers: Iterable[tuple[bytes, bytes]] = (),
    ) -> None:
        payload = orjson.dumps(body, default=bytes_as_ints)
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(payload)).encode()),
                    *self._cors(),
                    *headers,
                ],
            }
        )
        await send({"type": "http.response.body", "body": payload})

    async def _error(
        self,
        send: Send,
        status: int,
        message: str,
        headers: Iterable[tuple[bytes, bytes]] = (),
    ) -> None:
        await self._respond(
            send, status, {"type": "error", "message": message}, _challenged(status, headers)
        )

    def _room_info(self, scope: Scope, room_id: str, token: str | None = None) -> dict[str, str]:
        headers = dict(scope.get("headers") or ())
        secure = scope.get("scheme") in ("https", "wss")  # a trusted proxy's word included
        host = headers.get(b"host", b"").decode("latin-1")
        if not _HOST.fullmatch(host):
            server = scope.get("server") or ("localhost", None)
            host = server[0] if server[1] is None else f"{server[0]}:{server[1]}"
        root = (scope.get("root_path") or "").rstrip("/")
        base = f"{host}{root}/room/{room_id}"
        # The npm client keeps the URL's query (and appends ?cbor=true to it).
        query = f"?token={token}" if token else ""
        return {
            "room": room_id,
            "socket_url": f"{'wss' if secure else 'ws'}://{base}/connect{query}",
            "http_url": f"{'https' if secure else 'http'}://{base}/send{query}",
        }

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        method = scope["method"]
        path = self._path(scope)
        if method == "OPTIONS":
            await send(
                {
                    "type": "http.response.start",
                    "status": 204,
                    "headers": [
                        *self._cors(),
                        (b"access-control-allow-methods", b"GET, POST, DELETE"),
                        (b"access-control-allow-headers", b"authorization, accept, content-type"),
                        (b"access-control-max-age", b"86400"),
                    ],
                }
            )
            await send({"type": "http.response.body", "body": b""})
            return
        if is_ops_path(path) and await self._ops(scope, receive, send, path):
            return
        hub = self.hub
        if hub is None or not self._ready or hub.closing:
            await self._error(send, 503, "server is not ready")
            return
        found = _route(path)
        if found is None:
            await self._error(send, 404, "not found")
            return
        route, room_id = found
        admin = route.admin.get(method)
        if admin is not None:
            await admin(self, scope, receive, send, hub, room_id, None)
            return
        token = None
        if route.in_room:
            try:
                # Checked before the room's existence: without a token, nothing is revealed.
                token = authorize(self.config, scope, room_id)
            except ProtocolError as exc:
                await self._error(send, exc.status, exc.message)
                return
            decision = await admission(
                hub.hooks, hub.metrics, scope, room_id, "http", _client_ip(scope), token
            )
            if isinstance(decision, Refuse):
                await self._error(send, decision.status, decision.reason)
                return
            scope[_ADMIT_KEY] = decision
            if not await hub.room_exists(room_id):
                await self._error(send, 404, "room not found")
                return
        if route.methods and method not in route.methods:
            allow = [(b"allow", route.allowed)]
            await self._error(send, 405, route.wrong_method, headers=allow)
            return
        await route.handle(self, scope, receive, send, hub, room_id, token)

    async def _server_info(
        self, scope: Scope, receive: Receive, send: Send, hub: Hub, room_id: str, token: str | None
    ) -> None:
        """``/``: which server this is."""
        await self._respond(send, 200, {"server": "drifttrio", "version": __version__})

    async def _new_room(
        self, scope: Scope, receive: Receive, send: Send, hub: Hub, room_id: str, token: str | None
    ) -> None:
        """``POST /new`` (with the API key if one is set): a new room and its URLs."""
        if self.config.api_key and not _bearer_matches(scope, self.config.api_key):
            hub.metrics.rejected["api_key"].inc()
            await self._error(
                send,
                401,
                "POST /new needs the API key",
                headers=[_CHALLENGE],
            )
            return
        if not self._new_room_limiter.take(_client_ip(scope)):
            hub.metrics.rejected["new_rooms_per_minute"].inc()
            await self._error(
                send,
                429,
                "too many new rooms from this address; try again later",
                headers=[(b"retry-after", b"60")],
            )
            return
        try:
            room_id = await hub.create_room()
        except CapacityError as exc:
            hub.metrics.rejected["max_rooms"].inc()
            await self._error(send, 503, str(exc))
            return
        except StorageError as exc:
            await self._error(send, 503, f"storage unavailable: {exc}")
            return
        if self.config.room_token_secret:
            token = issue_room_token(
                self.config.room_token_secret,
                room_id,
                WRITE,
                self.config.room_token_ttl_seconds,
            )
        await self._respond(send, 200, self._room_info(scope, room_id, token))

    async def _room(
        self, scope: Scope, receive: Receive, send: Send, hub: Hub, room_id: str, token: str | None
    ) -> None:
        """``GET /room/ID``: the room's URLs (with the token it was asked with)."""
        await self._respond(send, 200, self._room_info(scope, room_id, token))

    async def _delete_room(
        self, scope: Scope, receive: Receive, send: Send, hub: Hub, room_id: str, token: str | None
    ) -> None:
        """``DELETE /room/ID`` with the API key: the room and its data go, its members
        are closed with 4004 (``RoomDeleted`` is told to the hooks)."""
        api_key = self.config.api_key
        if not api_key:
            await self._error(send, 403, "deleting rooms needs an API key (api_key)")
            return
        if not _bearer_matches(scope, api_key):
            await self._error(send, 401, "deleting rooms needs the API key")
            return
        try:
            await hub.delete_room(room_id)
        except RoomNotFound:
            await self._error(send, 404, "room not found")
            return
        except StorageError as exc:
            await self._error(send, 503, f"storage unavailable: {exc}")
            return
        await self._respond(send, 200, {"room": room_id, "deleted": True})

    async def _upgrade_required(
        self, scope: Scope, receive: Receive, send: Send, hub: Hub, room_id: str, token: str | None
    ) -> None:
        """``/room/ID/connect`` without an upgrade."""
        await self._error(
            send, 426, "WebSocket upgrade required", headers=[(b"upgrade", b"websocket")]
        )

    async def _issue_token(
        self, scope: Scope, receive: Receive, send: Send, hub: Hub, room_id: str, token: str | None
    ) -> None:
        """``POST /room/ID/token`` with the API key: a signed URL for the room."""
        config = self.config
        if not config.room_token_secret:
            await self._error(send, 404, "room tokens are not enabled (room_token_secret)")
            return
        if not config.api_key:
            await self._error(send, 403, "issuing room tokens needs an API key (api_key)")
            return
        if not _bearer_matches(scope, config.api_key):
            await self._error(
                send,
                401,
                "issuing room tokens needs the API key",
                headers=[_CHALLENGE],
            )
            return
        body = await self._read_body(scope, receive)
        if body is None:
            await self._error(send, 413, f"body larger than {config.max_message_bytes} bytes")
            return
        try:
            request = orjson.loads(body) if body.strip() else {}
        except orjson.JSONDecodeError:
            request = None
        access = request.get("access", WRITE) if isinstance(request, dict) else None
        ttl = (
            request.get("ttl_seconds", config.room_token_ttl_seconds)
            if isinstance(request, dict)
            else None
        )
        if (
            access not in (READ, WRITE)
            or isinstance(ttl, bool)
            or not isinstance(ttl, int | float)
            or not 0 < ttl < 10**9
        ):
            await self._error(
                send,
                400,
                'body: {"access": "read" or "write", "ttl_seconds": a positive number}',
            )
            return
        if not await hub.room_exists(room_id):
            await self._error(send, 404, "room not found")
            return
        token = issue_room_token(config.room_token_secret, room_id, access, ttl)
        info: dict[str, object] = {**self._room_info(scope, room_id, token)}
        info.update(token=token, access=access, expires=token_expiry(token))
        await self._respond(send, 200, info)

    async def _read_body(self, scope: Scope, receive: Receive) -> bytes | None:
        """The request body, or ``None`` if it exceeds ``max_message_bytes``."""
        limit = self.config.max_message_bytes
        for name, value in scope.get("headers") or ():
            if name == b"content-length" and value.isdigit() and int(value) > limit:
                return None
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return b""
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                return None
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)

    async def _http_send(
        self, scope: Scope, receive: Receive, send: Send, hub: Hub, room_id: str, token: str | None
    ) -> None:
        """``POST /room/ID/send``: one client message, answered as its reply."""
        body = await self._read_body(scope, receive)
        if body is None:
            hub.metrics.rejected["max_message_bytes"].inc()
            await self._error(send, 413, f"body larger than {self.config.max_message_bytes} bytes")
            return
        limits = self.config.decode_limits
        wait, nodes = self._charge_send(_client_ip(scope), body, limits.max_nodes, hub)
        if wait > 0.0:
            await self._error(
                send,
                429,
                "rate limit: too many messages from this client address; try again later",
                headers=[(b"retry-after", str(math.ceil(wait)).encode())],
            )
            return
        try:
            message = decode_json_client_message(body, limits, nodes=nodes)
        except ProtocolError as exc:
            count_invalid(hub.metrics, nodes, limits)
            await self._error(send, exc.status, exc.message)
            return
        if isinstance(message, Push) and read_only(scope):
            await self._error(send, 403, READ_ONLY_REFUSAL)
            return
        make: Callable[[Reply], Command]
        if isinstance(message, Push):
            admit: Admit = scope.get(_ADMIT_KEY, ADMIT_ALL)
            if not admit.may_write(message.key):
                hub.metrics.errors["hook"].inc()
                await self._error(send, 403, key_refusal(message.key))
                return
            ip = _client_ip(scope)
            screen = await screen_push(hub.hooks, admit, room_id, message, "http", ip)
            if isinstance(screen, Refuse):
                hub.metrics.errors["hook"].inc()
                await self._error(send, screen.status, screen.reason)
                return
            value, expect_seq = screen
            push = message

            def make(origin: Reply) -> Command:
                return PushCommand(push.key, value, push.action, origin, admit.identity, expect_seq)
        else:
            make = partial(command_for, message)
        try:
            reply = await hub.request(room_id, make, "http")
        except RoomNotFound:
            await self._error(send, 404, "room not found")
            return
        except ShuttingDown as exc:
            await self._error(send, 503, str(exc))
            return
        except StorageError as exc:  # the room could not be loaded
            await self._error(send, 503, f"storage unavailable: {exc}")
            return
        answer = reply.message
        if isinstance(answer, Error):
            status = (
                reply.refused_status
                if reply.outcome is Outcome.REFUSED
                else _REPLY_STATUS[reply.outcome]
            )
            await self._error(send, status, answer.message)
            return
        if isinstance(answer, Init):
            await self._respond_init(send, answer)
            return
        await self._respond(send, 200, None if answer is None else JSON.unstructure(answer))

    async def _respond_init(self, send: Send, init: Init) -> None:
        """An ``init`` reply, encoded and sent about ``init_chunk_bytes`` at a time
        (chunked transfer when it takes more than one): a client that does not
        read holds one chunk of server memory, and the value being encoded, not
        the whole reply."""
        limit = self.config.init_chunk_bytes
        parts = [orjson.dumps({"key": init.key, "data": []})[:-2]]  # {"key":K,"data":[
        size = len(parts[0])
        started = False
        for index, entry in enumerate(init.data):
            item = orjson.dumps({"value": entry.value, "seq": entry.seq}, default=bytes_as_ints)
            parts += (b",", item) if index else (item,)
            size += len(item) + 1
            if size >= limit:
                if not started:
                    started = True
                    await send(_response_start(200, self._cors(), None))
                pieces, parts, size = _pieces(parts, limit), [], 0
                for piece in pieces:
                    await send({"type": "http.response.body", "body": piece, "more_body": True})
        parts.append(b'],"type":"init"}')
        if not started:
            body = b"".join(parts)
            await send(_response_start(200, self._cors(), len(body)))
            await send({"type": "http.response.body", "body": body})
            return
        for piece in _pieces(parts, limit):
            await send({"type": "http.response.body", "body": piece, "more_body": True})
        await send({"type": "http.response.body", "body": b""})

    def _charge_send(self, ip: str, body: bytes, limit: int, hub: Hub) -> tuple[float, int]:
        """Charge a ``/send`` body before it is decoded, like a WebSocket message: to
        the address's ``/send`` rate (one connection's), then to its budgets (see
        ``Session._reader``). ``(seconds to wait or 0.0, nodes)``."""
        wait = self._send_limit.charge(ip)
        if wait > 0.0:
            hub.metrics.rejected["rate_limit"].inc()
            return wait, 0
        wait, nodes = self.budgets.charge_message(ip, len(body), lambda: json_nodes(body, limit))
        if wait > 0.0:
            hub.metrics.rejected["address_budget"].inc()
        return wait, nodes

    # -- WebSocket ------------------------------------------------------------------

    async def websocket(self, peer: Peer) -> None:
        """Admit a WebSocket upgrade (or refuse it) and run its member until it
        ends. drifttrio's own transport calls this directly; ASGI servers through
        :meth:`__call__`."""
        if self._proxies:
            self._proxies.apply(peer.scope)  # the real client, for everything below
        # Admission is over before the member runs: one frame less per connection.
        admitted = await self._admit(peer)
        if admitted is not None:
            hub, room_id, ip, admit = admitted  # counted in by _admit, no checkpoint since
            try:
                await self._join(peer, hub, room_id, admit)
            finally:
                self._connections.remove(ip, room_id)

    async def _reject(self, peer: Peer, status: int, message: str) -> None:
        body = orjson.dumps({"type": "error", "message": message})
        headers = [(b"content-type", b"application/json"), *self._cors()]
        await peer.reject(status, body, _challenged(status, headers))

    async def _admit(self, peer: Peer) -> tuple[Hub, str, str, Admit] | None:
        """Check an upgrade (room, origin, token, connection limits, the authorize
        hook, the room's existence); refuse it, or count the connection in and
        return the hub, the room id, the client address and the admission to join
        with (the caller counts it out)."""
        scope = peer.scope
        hub = self.hub
        if hub is None or not self._ready:
            await self._reject(peer, 503, "server is not ready")
            return None
        match = _ROOM_PATH.fullmatch(self._path(scope))
        if match is None or match.group(2) != "/connect":
            await self._reject(peer, 404, "not found")
            return None
        room_id = match.group(1)
        if not self._origin_allowed(scope):
            hub.metrics.rejected["allowed_origins"].inc()
            await self._reject(peer, 403, "origin not allowed")
            return None
        try:
            token = authorize(self.config, scope, room_id)
        except ProtocolError as exc:
            await self._reject(peer, exc.status, exc.message)
            return None
        ip = _client_ip(scope)
        exceeded = self._connections.exceeded(ip, room_id)
        if exceeded is not None:
            limit, cap = exceeded
            hub.metrics.rejected[limit.value].inc()
            await self._reject(peer, 503, limit.refusal(cap))
            return None
        # Counted in before the first await: a handshake waiting on the authorize
        # hook (a webhook's slot) or the store is a connection of its address.
        self._connections.add(ip, room_id)
        admitted = False
        try:
            admit = await admission(hub.hooks, hub.metrics, scope, room_id, "websocket", ip, token)
            if isinstance(admit, Refuse):
                await self._reject(peer, admit.status, admit.reason)
                return None
            if not await hub.room_exists(room_id):
                await self._reject(peer, 404, "room not found")
                return None
            admitted = True
            return hub, room_id, ip, admit
        finally:
            if not admitted:
                self._connections.remove(ip, room_id)

    def _origin_allowed(self, scope: Scope) -> bool:
        """Whether the ``Origin`` header, if any, is allowed (``allowed_origins``)."""
        origins = self.config.origins
        if not origins:
            return True
        origin = dict(scope.get("headers") or ()).get(b"origin")
        return origin is None or origin.decode("latin-1").rstrip("/") in origins

    async def _join(self, peer: Peer, hub: Hub, room_id: str, admit: Admit) -> None:
        scope = peer.scope
        params = parse_query(scope.get("query_string", b""))
        conn = hub.new_member(
            encoder=peer.encoder(CBOR if _flag(params, "cbor") else JSON),
            debug=_flag(params, "debug"),
            explicit=params.get("subscribe", "").lower() == "explicit",
            transport=peer.transport,
            asks_after_join=True,
            write_now=peer.write_now,
            identity=admit.identity,
        )
        # Join before accepting, so a client that sees the handshake complete is
        # already a member and misses nothing pushed after it.
        try:
            room = await hub.submit(room_id, Join(conn))
        except RoomNotFound:
            await self._reject(peer, 404, "room not found")
            return
        except ShuttingDown as exc:
            await self._reject(peer, 503, str(exc))
            return
        except StorageError as exc:  # the room could not be loaded
            await self._reject(peer, 503, f"storage unavailable: {exc}")
            return
        if hub.closing:
            conn.kick(CloseCode.GOING_AWAY, "server shutdown")
        metrics = hub.metrics
        metrics.connections_opened[conn.labels].inc()
        gauge = metrics.connections[conn.labels]
        gauge.inc()
        session = Session(
            self.config,
            conn,
            room,
            peer,
            read_only=read_only(scope),
            budgets=self.budgets,
            ip=_client_ip(scope),
            admit=admit,
            hooks=hub.hooks,
        )
        code: int | None = None
        reason, by_peer = "", False
        try:
            code, reason, by_peer = await session.run()
        finally:
            gauge.dec()
            if by_peer:
                label = "client"
            else:
                label = "room_closed" if code is None else _CLOSE_REASONS.get(code, "room_closed")
            metrics.closed(code, label)
            if conn_log.isEnabledFor(logging.DEBUG):
                fields = _connection_fields(conn, room_id, _client_ip(scope), code, reason, label)
                conn_log.debug("connection closed", extra={"fields": fields})


#: The HTTP status of a ``/send`` answered with an ``error``.
_REPLY_STATUS: Final = {
    Outcome.REFUSED: 400,
    Outcome.CONFLICT: 409,
    Outcome.TRY_LATER: 503,
    Outcome.ROOM_GONE: 404,
}

_Handler: TypeAlias = Callable[
    [DriftApp, Scope, Receive, Send, Hub, str, str | None], Awaitable[None]
]


@attrs.frozen
class _Route:
    """What an HTTP path runs, and what is checked first."""

    handle: _Handler
    #: The methods it answers (empty: any); any other gets 405 and ``wrong_method``.
    methods: tuple[str, ...] = ()
    wrong_method: str = ""
    #: ``/room/ID/...``: the room token is checked, then that the room exists,
    #: before the method (without a token, nothing is revealed).
    in_room: bool = False
    #: Methods answered with the API key instead (no room token, no authorize hook).
    admin: Mapping[str, _Handler] = attrs.field(factory=dict)

    @property
    def allowed(self) -> bytes:
        """The ``Allow`` header of a 405 (RFC 9110 15.5.6): every method it answers."""
        return ", ".join([*self.methods, *self.admin]).encode()


#: The HTTP routes (``/healthz`` and the other ops paths are answered before these);
#: ``ID`` stands for a room id.
_ROUTES = {
    "/": _Route(DriftApp._server_info),
    "/new": _Route(DriftApp._new_room, ("POST",), "use POST /new"),
    "/room/ID": _Route(
        DriftApp._room,
        ("GET", "HEAD"),
        "use GET (or DELETE with the API key)",
        in_room=True,
        admin={"DELETE": DriftApp._delete_room},
    ),
    "/room/ID/connect": _Route(DriftApp._upgrade_required, in_room=True),
    "/room/ID/send": _Route(DriftApp._http_send, ("POST",), "use POST", in_room=True),
    "/room/ID/token": _Route(DriftApp._issue_token, ("POST",), "use POST"),
}


def _route(path: str) -> tuple[_Route, str] | None:
    """The route of ``path`` and its room id (``""`` outside ``/room/``)."""
    if path in ("/", "", "/new"):
        return _ROUTES[path or "/"], ""
    match = _ROOM_PATH.fullmatch(path)
    if match is None:
        return None
    return _ROUTES["/room/ID" + (match.group(2) or "")], match.group(1)


def _pieces(parts: list[bytes], limit: int) -> Iterator[bytes]:
    """``parts`` joined and cut into pieces of at most ``limit`` bytes, never
    copying a large part whole (a value can be up to ``max_message_bytes``)."""
    buffer = bytearray()
    for part in parts:
        view = memoryview(part)
        while view:
            take = limit - len(buffer)
            buffer += view[:take]
            view = view[take:]
            if len(buffer) >= limit:
                yield bytes(buffer)
                buffer.clear()
    if buffer:
        yield bytes(buffer)


def _response_start(
    status: int, headers: list[tuple[bytes, bytes]], length: int | None
) -> dict[str, Any]:
    """A JSON response's start; no length: the server sends it chunked."""
    fields = [(b"content-type", b"application/json"), *headers]
    if length is not None:
        fields.insert(1, (b"content-length", str(length).encode()))
    return {"type": "http.response.start", "status": status, "headers": fields}


def _connection_fields(
    conn: Member, room_id: str, client: str, code: int | None, reason: str, by: str
) -> dict[str, Any]:
    """The fields of a connection's one log line, written when it ends (at DEBUG: the
    metrics count every connection; a line each would cost a busy server more)."""
    return {
        "event": "close",
        "conn": conn.id,
        "room": room_tag(room_id),
        "transport": conn.transport,
        "codec": conn.labels[1],
        "debug": conn.debug,
        "client": client,
        "duration_s": round(trio.current_time() - conn.opened_at, 3),
        "messages_in": conn.messages_in,
        "messages_out": conn.messages_out,
        "bytes_in": conn.bytes_in,
        "bytes_out": conn.bytes_out,
        "dropped": conn.dropped,
        "code": code,
        "reason": by,
        "detail": reason,
    }


def _challenged(status: int, headers: Iterable[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """``headers``, with the challenge RFC 9110 (15.5.2) requires of every 401 if
    none is there (a room token, or the application's authorize hook, refused)."""
    listed = list(headers)
    if status == 401 and not any(name.lower() == b"www-authenticate" for name, _ in listed):
        listed.append(_CHALLENGE)
    return listed


def _client_ip(scope: Scope) -> str:
    client = scope.get("client")
    return str(client[0]) if client else "unknown"


def _bearer_matches(scope: Scope, key: str) -> bool:
    """Whether the request's first ``Authorization`` header is ``Bearer <key>``.

    Compared as bytes: a header may carry any byte (latin-1 junk, UTF-8), and
    ``hmac.compare_digest`` raises on a str holding anything but ASCII.
    """
    expected = key.encode("utf-8", "surrogatepass")
    for name, value in scope.get("headers") or ():
        if name == b"authorization":
            scheme, _, token = bytes(value).partition(b" ")
            return scheme.lower() == b"bearer" and hmac.compare_digest(token.strip(), expected)
    return False
