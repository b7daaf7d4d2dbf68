"""``drifttrio check URL``: a protocol conformance suite for any DriftDB server.

Each check talks raw protocol (HTTP with httpx, WebSocket frames with
trio-websocket) and either passes or fails with a reason. ``core`` checks are the
DriftDB protocol the npm client relies on; ``extension`` checks are drifttrio
behaviour other servers need not have.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any, Literal, cast

import attrs
import cbor2
import httpx
import trio
from trio_websocket import ConnectionClosed as WsClosed
from trio_websocket import ConnectionRejected, WebSocketConnection, wrap_client_stream

from ._connection import StreamOpener, _only_leaf, open_tcp

__all__ = ["CHECKS", "CheckResult", "format_table", "run_checks"]

Kind = Literal["core", "extension"]


class CheckFailed(Exception):
    """The server did something the protocol does not allow; the message says what."""


@attrs.frozen
class CheckResult:
    name: str
    kind: Kind
    passed: bool
    reason: str = ""


@attrs.define
class _Context:
    base_url: str
    http: httpx.AsyncClient
    open_stream: StreamOpener
    timeout: float

    async def new_room(self) -> dict[str, Any]:
        response = await self.http.post(f"{self.base_url}/new")
        expect(response.status_code == 200, f"POST /new answered {response.status_code}")
        room: dict[str, Any] = response.json()
        return room

    async def send(self, room: dict[str, Any], message: dict[str, Any]) -> Any:
        response = await self.http.post(room["http_url"], json=message)
        expect(response.status_code == 200, f"POST send answered {response.status_code}")
        return response.json()

    @asynccontextmanager
    async def socket(self, url: str, *, query: str = "") -> AsyncIterator[_Socket]:
        parts = httpx.URL(url)
        tls = parts.scheme == "wss"
        port = parts.port or (443 if tls else 80)
        resource = parts.raw_path.decode() + query
        stream = await self.open_stream(parts.host, port, tls)
        try:
            async with _unwrapped(), trio.open_nursery() as nursery:
                ws = await wrap_client_stream(
                    nursery, cast(Any, stream), parts.netloc.decode(), resource
                )
                try:
                    yield _Socket(ws, self.timeout)
                finally:
                    with trio.move_on_after(1, shield=True):
                        await ws.aclose()
                    nursery.cancel_scope.cancel()
        finally:
            await stream.aclose()


@asynccontextmanager
async def _unwrapped() -> AsyncIterator[None]:
    """Raise the one exception of a nursery's group as itself."""
    try:
        yield
    except BaseExceptionGroup as group:
        leaf = _only_leaf(group, (Exception,))
        if leaf is None:
            raise
        raise leaf from None


class _Socket:
    def __init__(self, ws: WebSocketConnection, timeout: float) -> None:
        self.ws = ws
        self.timeout = timeout
        self.cbor = False

    async def send(self, message: dict[str, Any]) -> None:
        await self.ws.send_message(cbor2.dumps(message) if self.cbor else json.dumps(message))

    async def receive(self, what: str = "a message") -> dict[str, Any]:
        with trio.move_on_after(self.timeout):
            try:
                frame = await self.ws.get_message()
            except WsClosed as exc:
                raise CheckFailed(f"connection closed while waiting for {what}: {exc}") from None
            message: dict[str, Any] = (
                json.loads(frame) if isinstance(frame, str) else cbor2.loads(frame)
            )
            return message
        raise CheckFailed(f"waited {self.timeout:g}s for {what} in vain")

    async def until(self, kind: str, key: str | None = None) -> dict[str, Any]:
        """The next message of ``kind`` (and ``key``), skipping others."""
        while True:
            message = await self.receive(f"a {kind!r} message")
            if message.get("type") == kind and (key is None or message.get("key") == key):
                return message

    async def barrier(self) -> None:
        """Everything sent before has been handled once the pong arrives."""
        await self.send({"type": "ping", "nonce": 4242})
        await self.until("pong")


def expect(condition: bool, reason: str) -> None:
    if not condition:
        raise CheckFailed(reason)


def _push(key: str, value: Any, action: str, **extra: Any) -> dict[str, Any]:
    return {"type": "push", "key": key, "value": value, "action": {"type": action, **extra}}


# -- the checks ------------------------------------------------------------------------


async def check_http_rooms(ctx: _Context) -> None:
    room = await ctx.new_room()
    for field in ("room", "socket_url", "http_url"):
        expect(isinstance(room.get(field), str), f"POST /new: no {field!r} in {room}")
    expect(room["socket_url"].startswith(("ws://", "wss://")), "socket_url is not ws(s)://")
    again = (await ctx.http.get(f"{ctx.base_url}/room/{room['room']}")).json()
    expect(again == room, f"GET /room/ID answered {again}, not {room}")
    other = await ctx.new_room()
    expect(other["room"] != room["room"], "two POST /new gave the same room id")
    status = (await ctx.http.get(f"{ctx.base_url}/room/no-such-room-0000")).status_code
    expect(status == 404, f"GET /room/unknown answered {status}, not 404")


async def check_http_send(ctx: _Context) -> None:
    room = await ctx.new_room()
    reply = await ctx.send(room, _push("k", "a", "append"))
    expect(reply is None, f"push over HTTP answered {reply!r}, not null")
    init = await ctx.send(room, {"type": "get", "key": "k", "seq": 0})
    expect(init.get("type") == "init", f"get over HTTP answered {init!r}")
    expect(init.get("data") == [{"value": "a", "seq": 1}], f"init data {init.get('data')}")
    pong = await ctx.send(room, {"type": "ping", "nonce": 5})
    expect(pong == {"type": "pong", "nonce": 5}, f"ping over HTTP answered {pong!r}")
    bad = await ctx.http.post(room["http_url"], content=b"{not json")
    expect(bad.status_code == 400, f"a bad body answered {bad.status_code}, not 400")


async def check_actions(ctx: _Context) -> None:
    room = await ctx.new_room()
    async with ctx.socket(room["socket_url"]) as ws:
        for message in (
            _push("log", 1, "append"),
            _push("log", 2, "append"),
            _push("one", "x", "replace"),
            _push("one", "y", "replace"),
            _push("log", "r", "relay"),
        ):
            await ws.send(message)
        await ws.barrier()
        await ws.send({"type": "get", "key": "log", "seq": 0})
        log = await ws.until("init", "log")
        expect(
            log["data"] == [{"value": 1, "seq": 1}, {"value": 2, "seq": 2}],
            f"append/relay: retained {log['data']}",
        )
        await ws.send({"type": "get", "key": "one", "seq": 0})
        one = await ws.until("init", "one")
        expect(one["data"] == [{"value": "y", "seq": 4}], f"replace: retained {one['data']}")


async def check_ordering(ctx: _Context) -> None:
    room = await ctx.new_room()
    async with ctx.socket(room["socket_url"]) as a, ctx.socket(room["socket_url"]) as b:
        for ws in (a, b):
            await ws.send({"type": "get", "key": "k", "seq": 0})
            await ws.until("init", "k")
        for n in range(10):
            await (a if n % 2 else b).send(_push("k", n, "append"))
        seen: list[list[tuple[int, Any]]] = []
        for ws in (a, b):
            got: list[tuple[int, Any]] = []
            while len(got) < 10:
                message = await ws.until("push")
                got.append((message["seq"], message["value"]))
            seen.append(got)
        expect(seen[0] == seen[1], f"two sockets saw different orders: {seen}")
        seqs = [seq for seq, _ in seen[0]]
        expect(seqs == list(range(1, 11)), f"seqs are not 1..10 in order: {seqs}")


async def check_replay_filters(ctx: _Context) -> None:
    room = await ctx.new_room()
    for n in range(1, 5):
        await ctx.send(room, _push("k", n, "append"))
    async with ctx.socket(room["socket_url"]) as ws:
        await ws.send({"type": "get", "key": "k", "seq": 2})
        init = await ws.until("init", "k")
        seqs = [entry["seq"] for entry in init["data"]]
        expect(seqs == [3, 4], f"get seq 2 replayed seqs {seqs}, not [3, 4]")
        await ws.send({"type": "get", "key": "empty", "seq": 0})
        empty = await ws.until("init", "empty")
        expect(empty["data"] == [], f"an unknown key replayed {empty['data']}")
        await ws.send({"type": "get", "key": "k", "seq": None})
        await ws.send({"type": "ping", "nonce": 1})
        message = await ws.receive("a pong")
        expect(message.get("type") == "pong", f"get seq null answered {message}")


async def check_stream_size(ctx: _Context) -> None:
    room = await ctx.new_room()
    async with ctx.socket(room["socket_url"]) as ws:
        await ws.send(_push("k", 1, "append"))
        await ws.send(_push("k", 2, "append"))
        await ws.send({"type": "ping", "nonce": 9})
        kinds = []
        while True:
            message = await ws.receive("the echoes and a pong")
            kinds.append((message["type"], message.get("size")))
            if message["type"] == "pong":
                break
        expect(("stream_size", 2) in kinds, f"no stream_size 2 after the second append: {kinds}")
        expect(kinds.index(("stream_size", 2)) > 1, f"stream_size came before its echo: {kinds}")


async def check_compact(ctx: _Context) -> None:
    room = await ctx.new_room()
    for n in range(1, 4):
        await ctx.send(room, _push("k", n, "append"))
    await ctx.send(room, _push("k", {"reset": 3}, "compact", seq=2))
    init = await ctx.send(room, {"type": "get", "key": "k", "seq": 0})
    expect(
        init["data"] == [{"value": {"reset": 3}, "seq": 2}, {"value": 3, "seq": 3}],
        f"after compact at 2 the stream is {init['data']}",
    )


async def check_cbor_bytes(ctx: _Context) -> None:
    room = await ctx.new_room()
    async with ctx.socket(room["socket_url"], query="?cbor=true") as ws:
        ws.cbor = True
        await ws.send(_push("bin", b"\x00\x01\xff", "append"))
        echo = await ws.until("push", "bin")
        expect(echo["value"] == b"\x00\x01\xff", f"byte string came back as {echo['value']!r}")
        await ws.send({"type": "get", "key": "bin", "seq": 0})
        init = await ws.until("init", "bin")
        expect(init["data"][0]["value"] == b"\x00\x01\xff", "byte string not kept in the stream")


async def check_ping(ctx: _Context) -> None:
    room = await ctx.new_room()
    async with ctx.socket(room["socket_url"]) as ws:
        await ws.send({"type": "ping", "nonce": 77})
        pong = await ws.until("pong")
        expect(pong.get("nonce") == 77, f"pong did not echo the nonce: {pong}")
        await ws.send({"type": "ping"})
        pong = await ws.until("pong")
        expect(pong.get("nonce") is None, f"pong for a ping without nonce: {pong}")


async def check_errors(ctx: _Context) -> None:
    room = await ctx.new_room()
    async with ctx.socket(room["socket_url"]) as ws:
        await ws.ws.send_message("{this is not json")
        error = await ws.receive("an error for invalid JSON")
        expect(error.get("type") == "error", f"invalid JSON answered {error}")
        await ws.send({"type": "nonsense"})
        error = await ws.receive("an error for an unknown type")
        expect(error.get("type") == "error", f"an unknown message type answered {error}")
        await ws.send({"type": "ping", "nonce": 3})
        await ws.until("pong")  # still usable after errors
    url = room["socket_url"].replace(room["room"], "no-such-room-0000")
    try:
        async with ctx.socket(url):
            raise CheckFailed("a socket to an unknown room was accepted")
    except ConnectionRejected as exc:
        expect(exc.status_code == 404, f"unknown room: upgrade refused with {exc.status_code}")


async def check_resume(ctx: _Context) -> None:
    """A client that reconnects and asks from its last seq misses nothing retained."""
    room = await ctx.new_room()
    async with ctx.socket(room["socket_url"]) as ws:
        await ws.send({"type": "get", "key": "k", "seq": 0})
        await ws.until("init", "k")
        await ws.send(_push("k", 1, "append"))
        last = (await ws.until("push", "k"))["seq"]
    for n in (2, 3):
        await ctx.send(room, _push("k", n, "append"))
    async with ctx.socket(room["socket_url"]) as ws:
        await ws.send({"type": "get", "key": "k", "seq": last})
        init = await ws.until("init", "k")
        values = [entry["value"] for entry in init["data"]]
        expect(values == [2, 3], f"resuming from seq {last} replayed {values}, not [2, 3]")
        await ctx.send(room, _push("k", 4, "append"))
        live = await ws.until("push", "k")
        expect(live["value"] == 4 and live["seq"] == 4, f"after resuming: {live}")


async def check_compact_broadcast(ctx: _Context) -> None:
    room = await ctx.new_room()
    async with ctx.socket(room["socket_url"]) as ws:
        for n in (1, 2):
            await ws.send(_push("k", n, "append"))
        await ws.send(_push("k", {"reset": 2}, "compact", seq=2))
        await ws.barrier()
        await ws.send(_push("k", {"reset": 0}, "compact", seq=99))
        error = await ws.until("error")
        expect("99" in str(error.get("message")), f"future compact: {error}")
    # The broadcast: seen above only if the server sends it; check on a fresh pair.
    async with ctx.socket(room["socket_url"]) as a, ctx.socket(room["socket_url"]) as b:
        await b.send({"type": "get", "key": "c", "seq": 0})  # b asks, as clients do
        await b.until("init", "c")
        await a.send(_push("c", 1, "append"))
        seq = (await b.until("push", "c"))["seq"]
        await a.send(_push("c", {"reset": 1}, "compact", seq=seq))
        message = await b.until("push", "c")
        expect(message.get("seq") == seq, f"compact broadcast carries seq {message.get('seq')}")


async def check_doubled_query(ctx: _Context) -> None:
    room = await ctx.new_room()
    async with ctx.socket(room["socket_url"], query="?cbor=true?cbor=true") as ws:
        ws.cbor = True
        await ws.send({"type": "ping", "nonce": 1})
        frame = await ws.ws.get_message()
        expect(isinstance(frame, bytes), "?cbor=true?cbor=true did not give CBOR frames")


async def check_explicit_subscribe(ctx: _Context) -> None:
    room = await ctx.new_room()
    async with (
        ctx.socket(room["socket_url"], query="?subscribe=explicit") as ws,
    ):
        await ws.send({"type": "get", "key": "mine", "seq": 0})
        await ws.until("init", "mine")
        await ctx.send(room, _push("other", 1, "append"))
        await ctx.send(room, _push("mine", 2, "append"))
        message = await ws.until("push")
        expect(message["key"] == "mine", f"got a push for an unsubscribed key: {message}")


Check = Callable[[_Context], Awaitable[None]]

#: name → (kind, what it checks, function)
CHECKS: dict[str, tuple[Kind, Check]] = {
    "http rooms (POST /new, GET /room/ID, 404)": ("core", check_http_rooms),
    "http send (push, get, ping, 400)": ("core", check_http_send),
    "actions (append, replace, relay)": ("core", check_actions),
    "ordering (one seq order for all)": ("core", check_ordering),
    "replay filters (get seq N, null)": ("core", check_replay_filters),
    "stream_size after the echo": ("core", check_stream_size),
    "compact at a seq": ("core", check_compact),
    "CBOR byte strings": ("core", check_cbor_bytes),
    "ping / pong nonce": ("core", check_ping),
    "errors keep the socket open; 404": ("core", check_errors),
    "resume after reconnect": ("core", check_resume),
    "compact broadcast, future refused": ("extension", check_compact_broadcast),
    "doubled ?cbor=true query": ("extension", check_doubled_query),
    "?subscribe=explicit": ("extension", check_explicit_subscribe),
}


async def run_checks(
    base_url: str,
    *,
    wait: float = 5.0,
    http_client: httpx.AsyncClient | None = None,
    open_stream: StreamOpener = open_tcp,
) -> list[CheckResult]:
    """Run every check against the server at ``base_url``; ``wait``: seconds per reply."""
    results: list[CheckResult] = []
    async with httpx.AsyncClient(timeout=wait) as own:
        ctx = _Context(base_url.rstrip("/"), http_client or own, open_stream, wait)
        for name, (kind, check) in CHECKS.items():
            try:
                with trio.fail_after(wait * 4):
                    await check(ctx)
            except CheckFailed as exc:
                results.append(CheckResult(name, kind, False, str(exc)))
            except trio.TooSlowError:
                results.append(CheckResult(name, kind, False, f"took over {wait * 4:g}s"))
            except Exception as exc:  # a broken server can break a check in any way
                results.append(CheckResult(name, kind, False, f"{type(exc).__name__}: {exc}"))
            else:
                results.append(CheckResult(name, kind, True))
    return results


def format_table(results: list[CheckResult]) -> str:
    """A plain-text table: result, kind, check, reason."""
    width = max(len(r.name) for r in results)
    lines = [f"{'result':6}  {'kind':9}  {'check':{width}}  reason", "-" * (width + 30)]
    for r in results:
        status = "PASS" if r.passed else "FAIL"
        lines.append(f"{status:6}  {r.kind:9}  {r.name:{width}}  {r.reason}".rstrip())
    failed = [r for r in results if not r.passed]
    core = sum(r.kind == "core" for r in failed)
    lines.append(
        f"{len(results) - len(failed)}/{len(results)} passed"
        + (f"; {core} core and {len(failed) - core} extension check(s) failed" if failed else "")
    )
    return "\n".join(lines)
