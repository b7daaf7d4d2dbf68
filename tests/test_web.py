"""End to end: the real server on 127.0.0.1:0, trio-websocket and httpx as clients."""

from __future__ import annotations

import gc
import json
import re
import signal
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import cbor2
import httpx
import pytest
import trio
import trio.testing
from trio_websocket import (
    ConnectionClosed,
    ConnectionRejected,
    WebSocketConnection,
    connect_websocket_url,
    open_websocket_url,
)

from _procs import drifttrio_command, start_child
from drifttrio import CloseCode, Config, DriftApp, RunningServer, open_hub, open_server
from drifttrio.protocol import Relay
from drifttrio.server import TRANSPORTS

TIMEOUT = 10  # a guard against hangs, never a way to wait for something
ROOM_ID = re.compile(r"[A-Za-z0-9_-]{22,}")


@pytest.fixture(params=TRANSPORTS)
def transport(request: pytest.FixtureRequest) -> str:
    """Every end-to-end test runs on both transports: drifttrio's own and hypercorn."""
    name: str = request.param
    return name


@pytest.fixture
async def server(transport: str) -> AsyncIterator[RunningServer]:
    async with open_server(Config(), transport=transport) as running:
        yield running


@pytest.fixture
async def client(server: RunningServer) -> AsyncIterator[httpx.AsyncClient]:
    # Depends on `server` so that it is closed first.
    async with httpx.AsyncClient(base_url=server.url, trust_env=False, timeout=TIMEOUT) as c:
        yield c


@asynccontextmanager
async def serve_and_connect(config: Config, transport: str) -> AsyncIterator[httpx.AsyncClient]:
    """A server with its own configuration, and an HTTP client for it."""
    async with (
        open_server(config, transport=transport) as running,
        httpx.AsyncClient(base_url=running.url, trust_env=False, timeout=TIMEOUT) as client,
    ):
        yield client


async def new_room(client: httpx.AsyncClient, **kw: Any) -> dict[str, str]:
    response = await client.post("/new", **kw)
    assert response.status_code == 200
    info: dict[str, str] = response.json()
    return info


async def recv(ws: WebSocketConnection) -> Any:
    """The next message, decoded from JSON (text) or CBOR (binary)."""
    with trio.fail_after(TIMEOUT):
        message = await ws.get_message()
    return json.loads(message) if isinstance(message, str) else cbor2.loads(message)


async def recv_binary(ws: WebSocketConnection) -> Any:
    with trio.fail_after(TIMEOUT):
        message = await ws.get_message()
    assert isinstance(message, bytes), f"expected a CBOR binary frame, got {message!r}"
    return cbor2.loads(message)


async def recv_text(ws: WebSocketConnection) -> Any:
    with trio.fail_after(TIMEOUT):
        message = await ws.get_message()
    assert isinstance(message, str), f"expected a JSON text frame, got {message!r}"
    return json.loads(message)


async def send_json(ws: WebSocketConnection, message: object) -> None:
    await ws.send_message(json.dumps(message))


async def wait_closed(ws: WebSocketConnection) -> int | None:
    """Read until the server closes the connection; return the close code."""
    with trio.fail_after(TIMEOUT):
        while True:
            try:
                await ws.get_message()
            except ConnectionClosed as closed:
                code = closed.reason.code
                break
    # trio-websocket 0.12 never closes its socket when the server started the
    # close handshake (aclose() returns early): close it, or it leaks.
    await ws._stream.aclose()
    return code


def push(key: str, value: object, action: str = "append", **extra: Any) -> dict[str, Any]:
    return {"type": "push", "key": key, "value": value, "action": {"type": action, **extra}}


# -- HTTP API --------------------------------------------------------------------------------------


async def test_new_room(server: RunningServer, client: httpx.AsyncClient) -> None:
    response = await client.post("/new")
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    info = response.json()
    assert set(info) == {"room", "socket_url", "http_url"}
    room = info["room"]
    assert ROOM_ID.fullmatch(room), "at least 128 bits, URL-safe"
    assert info["socket_url"] == f"ws://127.0.0.1:{server.port}/room/{room}/connect"
    assert info["http_url"] == f"http://127.0.0.1:{server.port}/room/{room}/send"
    assert (await new_room(client))["room"] != room


async def test_new_needs_post(client: httpx.AsyncClient) -> None:
    response = await client.get("/new")
    assert response.status_code == 405
    assert response.json()["type"] == "error"


async def test_get_room(client: httpx.AsyncClient) -> None:
    info = await new_room(client)
    response = await client.get(f"/room/{info['room']}")
    assert response.status_code == 200
    assert response.json() == info


@pytest.mark.parametrize("room", ["AAAAAAAAAAAAAAAAAAAAAA", "nope", "x" * 200, "%2e%2e", "a.b"])
async def test_get_unknown_room_is_404(client: httpx.AsyncClient, room: str) -> None:
    response = await client.get(f"/room/{room}")
    assert response.status_code == 404
    body = response.json()
    assert body["type"] == "error"
    assert body["message"]


async def test_unknown_path_is_404(client: httpx.AsyncClient) -> None:
    assert (await client.get("/nothing/here")).status_code == 404


async def test_connect_over_plain_http_needs_upgrade(client: httpx.AsyncClient) -> None:
    info = await new_room(client)
    assert (await client.get(f"/room/{info['room']}/connect")).status_code == 426


# -- HTTP /send ------------------------------------------------------------------------------------


async def test_send_replies(client: httpx.AsyncClient) -> None:
    url = (await new_room(client))["http_url"]

    async def send(message: object) -> Any:
        response = await client.post(url, json=message)
        assert response.status_code == 200, response.text
        return response.json()

    assert await send(push("k", {"v": 1})) is None
    assert await send(push("k", {"v": 2})) == {"type": "stream_size", "key": "k", "size": 2}
    assert await send(push("k", "gone", "relay")) == {"type": "stream_size", "key": "k", "size": 2}
    assert await send(push("other", "gone", "relay")) is None
    assert await send({"type": "get", "key": "k", "seq": 0}) == {
        "type": "init",
        "key": "k",
        "data": [{"value": {"v": 1}, "seq": 1}, {"value": {"v": 2}, "seq": 2}],
    }
    assert await send({"type": "get", "key": "k", "seq": 1}) == {
        "type": "init",
        "key": "k",
        "data": [{"value": {"v": 2}, "seq": 2}],
    }
    assert await send({"type": "get", "key": "empty"}) == {
        "type": "init",
        "key": "empty",
        "data": [],
    }
    assert await send({"type": "ping", "nonce": 7}) == {"type": "pong", "nonce": 7}
    assert await send({"type": "ping"}) == {"type": "pong", "nonce": None}
    assert await send({"type": "get", "key": "k", "seq": None}) is None
    assert await send(push("k", "reset", "compact", seq=2)) is None


@pytest.mark.parametrize(
    ("body", "mentions"),
    [
        (b"not json", "JSON"),
        (b"", "JSON"),
        (b'{"type":"nope"}', "unknown message type"),
        (b"[1,2]", "object"),
        (b'{"type":"push","key":5,"value":1,"action":{"type":"append"}}', "key"),
        (b'{"type":"push","key":"k","value":NaN,"action":{"type":"append"}}', "JSON"),
        (b'{"type":"push","key":"k","value":1,"action":{"type":"compact","seq":99}}', "beyond"),
    ],
)
async def test_send_bad_body_is_400(client: httpx.AsyncClient, body: bytes, mentions: str) -> None:
    url = (await new_room(client))["http_url"]
    response = await client.post(url, content=body, headers={"content-type": "application/json"})
    assert response.status_code == 400
    error = response.json()
    assert error["type"] == "error"
    assert mentions in error["message"]


async def test_send_to_unknown_room_is_404(client: httpx.AsyncClient) -> None:
    response = await client.post("/room/AAAAAAAAAAAAAAAAAAAAAA/send", json={"type": "ping"})
    assert response.status_code == 404
    assert response.json()["type"] == "error"


async def test_send_needs_post(client: httpx.AsyncClient) -> None:
    url = (await new_room(client))["http_url"]
    assert (await client.get(url)).status_code == 405


async def test_send_body_too_large_is_413(transport: str) -> None:
    async with serve_and_connect(Config(max_message_bytes=64), transport) as client:
        url = (await new_room(client))["http_url"]
        small = await client.post(url, json=push("k", "x"))
        assert small.status_code == 200
        big = await client.post(url, json=push("k", "x" * 100))
        assert big.status_code == 413
        assert big.json()["type"] == "error"

        async def chunks() -> AsyncIterator[bytes]:  # no content-length: streamed
            for _ in range(10):
                yield b"          "

        streamed = await client.post(url, content=chunks())
        assert streamed.status_code == 413


async def test_send_is_broadcast_to_socket_members(client: httpx.AsyncClient) -> None:
    info = await new_room(client)
    async with open_websocket_url(info["socket_url"]) as ws:
        await send_json(ws, {"type": "ping", "nonce": 1})
        assert await recv(ws) == {"type": "pong", "nonce": 1}  # joined
        response = await client.post(info["http_url"], json=push("k", [1, 2], "relay"))
        assert response.status_code == 200
        assert await recv_text(ws) == {"type": "push", "key": "k", "value": [1, 2], "seq": 1}


# -- CORS ------------------------------------------------------------------------------------------


async def test_cors_preflight(client: httpx.AsyncClient) -> None:
    response = await client.options(
        "/new",
        headers={
            "origin": "https://app.example",
            "access-control-request-method": "POST",
            "access-control-request-headers": "content-type",
        },
    )
    assert 200 <= response.status_code < 300
    assert response.headers["access-control-allow-origin"] == "*"
    methods = {m.strip() for m in response.headers["access-control-allow-methods"].split(",")}
    assert {"GET", "POST"} <= methods
    allowed = {
        h.strip().lower() for h in response.headers["access-control-allow-headers"].split(",")
    }
    assert {"authorization", "accept", "content-type"} <= allowed


async def test_cors_on_responses(client: httpx.AsyncClient) -> None:
    info = await new_room(client, headers={"origin": "https://app.example"})
    for response in (
        await client.post("/new"),
        await client.get(f"/room/{info['room']}"),
        await client.get("/room/unknown"),
        await client.post(info["http_url"], json={"type": "ping"}),
        await client.post(info["http_url"], content=b"garbage"),
    ):
        assert response.headers.get("access-control-allow-origin") == "*", response.request.url


@pytest.mark.parametrize(
    ("origin", "expected"), [("https://app.example", "https://app.example"), ("", None)]
)
async def test_cors_is_configurable(origin: str, expected: str | None, transport: str) -> None:
    async with serve_and_connect(Config(cors_origin=origin), transport) as client:
        response = await client.post("/new")
        assert response.status_code == 200
        assert response.headers.get("access-control-allow-origin") == expected
        preflight = await client.options("/new")
        assert preflight.headers.get("access-control-allow-origin") == expected


# -- WebSocket -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "path", ["/room/AAAAAAAAAAAAAAAAAAAAAA/connect", "/room/x.y/connect", "/elsewhere"]
)
@pytest.mark.filterwarnings("ignore::ResourceWarning")
async def test_websocket_to_unknown_room_is_rejected_before_upgrade(
    server: RunningServer, path: str
) -> None:
    with pytest.raises(ConnectionRejected) as info:
        async with open_websocket_url(server.ws_url + path):
            pytest.fail("the upgrade should have been refused")
    status, body = info.value.status_code, info.value.body
    del info
    # trio-websocket 0.12 does not close the socket of a rejected handshake:
    # collect it here, where its ResourceWarning is ignored, not in a later test.
    gc.collect()
    assert status == 404
    assert body is not None
    assert json.loads(body)["type"] == "error"


async def test_json_connection(client: httpx.AsyncClient) -> None:
    info = await new_room(client)
    async with open_websocket_url(info["socket_url"]) as ws:
        await send_json(ws, {"type": "get", "key": "k", "seq": 0})
        assert await recv_text(ws) == {"type": "init", "key": "k", "data": []}
        await send_json(ws, push("k", {"a": 1}))
        assert await recv_text(ws) == {"type": "push", "key": "k", "value": {"a": 1}, "seq": 1}
        await send_json(ws, push("k", {"a": 2}))
        assert await recv_text(ws) == {"type": "push", "key": "k", "value": {"a": 2}, "seq": 2}
        assert await recv_text(ws) == {"type": "stream_size", "key": "k", "size": 2}
        await send_json(ws, {"type": "ping"})
        assert await recv_text(ws) == {"type": "pong", "nonce": None}
        # CBOR input is accepted on a JSON connection; the reply stays JSON.
        await ws.send_message(cbor2.dumps({"type": "ping", "nonce": 4}))
        assert await recv_text(ws) == {"type": "pong", "nonce": 4}


async def test_websocket_ping_frames_are_answered(client: httpx.AsyncClient) -> None:
    # Upstream's server loops forever on a WebSocket ping frame.
    info = await new_room(client)
    async with open_websocket_url(info["socket_url"]) as ws:
        with trio.fail_after(TIMEOUT):
            await ws.ping(b"are you there")
            await ws.ping()
        await send_json(ws, push("k", 1))
        assert (await recv(ws))["seq"] == 1


async def test_slow_socket_is_closed_with_4008_and_the_room_keeps_going(transport: str) -> None:
    config = Config(outbox_messages=4, outbox_bytes=512 * 1024)
    value = "x" * 100_000
    async with (
        open_server(config, transport=transport) as server,
        httpx.AsyncClient(trust_env=False) as client,
    ):
        info = (await client.post(f"{server.url}/new")).json()
        room_id, url = info["room"], info["socket_url"]
        # message_queue_size=1: once one message waits, the client stops reading its socket.
        async with open_websocket_url(url, message_queue_size=1) as slow:
            await send_json(slow, {"type": "ping", "nonce": 1})
            assert await recv(slow) == {"type": "pong", "nonce": 1}
            [slow_member] = server.hub.rooms[room_id].members
            async with open_websocket_url(url) as fast:
                await send_json(fast, {"type": "ping", "nonce": 2})
                assert await recv(fast) == {"type": "pong", "nonce": 2}
                # Lock-step with the fast member, so only the slow one falls behind.
                with trio.fail_after(60):
                    seq = 0
                    while not slow_member.kicked.is_set():
                        assert seq < 2000, "the slow member was never closed"
                        await server.hub.push(room_id, "k", value, Relay())
                        seq += 1
                        assert (await recv(fast))["seq"] == seq, "the fast member misses nothing"
                await send_json(fast, push("k", "after", "relay"))
                assert (await recv(fast))["seq"] == seq + 1
            assert slow_member.close_code == CloseCode.SLOW_CLIENT
            assert await wait_closed(slow) == CloseCode.SLOW_CLIENT == 4008


async def test_slow_socket_with_drop_policy_is_told_what_it_missed(transport: str) -> None:
    config = Config(outbox_messages=4, outbox_bytes=512 * 1024, slow_client_policy="drop")
    value = "x" * 100_000
    async with (
        open_server(config, transport=transport) as server,
        httpx.AsyncClient(trust_env=False) as client,
    ):
        info = (await client.post(f"{server.url}/new")).json()
        room_id, url = info["room"], info["socket_url"]
        async with open_websocket_url(url, message_queue_size=1) as slow:
            await send_json(slow, {"type": "ping", "nonce": 1})
            assert await recv(slow) == {"type": "pong", "nonce": 1}
            [slow_member] = server.hub.rooms[room_id].members
            async with open_websocket_url(url) as fast:
                await send_json(fast, {"type": "ping", "nonce": 2})
                assert await recv(fast) == {"type": "pong", "nonce": 2}
                with trio.fail_after(60):
                    seq = 0
                    while slow_member.dropped < 3:
                        assert seq < 2000, "nothing was ever dropped"
                        await server.hub.push(room_id, "k", value, Relay())
                        seq += 1
                        assert (await recv(fast))["seq"] == seq
            assert not slow_member.closed

            # Now read the slow socket; push small sentinels until one is queued.
            received: set[int] = set()
            missed: list[int] = []
            progress = trio.Event()

            async def read_slow() -> None:
                nonlocal progress
                while True:
                    message = await recv(slow)
                    if message["type"] == "error":
                        found = re.search(r"seq (\d+)(?:\.\.(\d+))?", message["message"])
                        assert found, message
                        first, last = int(found[1]), int(found[2] or found[1])
                        missed.extend(range(first, last + 1))
                    else:
                        received.add(message["seq"])
                    progress.set()
                    progress = trio.Event()

            with trio.fail_after(60):
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(read_slow)
                    while True:
                        dropped, waiting = slow_member.dropped, progress
                        await server.hub.push(room_id, "sentinel", None, Relay())
                        seq += 1
                        if slow_member.dropped == dropped:
                            break  # queued: it (and any report before it) is on its way
                        await waiting.wait()  # dropped: the outbox was full, let it drain
                    while seq not in received:
                        await progress.wait()
                    nursery.cancel_scope.cancel()
            assert missed, "the client was told about the dropped messages"
            assert len(missed) == len(set(missed)), "each missed seq is reported once"
            assert not received & set(missed)
            assert received | set(missed) == set(range(1, seq + 1)), "every seq is accounted for"


async def test_every_member_receives_every_broadcast_by_default(client: httpx.AsyncClient) -> None:
    info = await new_room(client)
    async with (
        open_websocket_url(info["socket_url"]) as a,
        open_websocket_url(info["socket_url"]) as b,
    ):
        for ws in (a, b):
            await send_json(ws, {"type": "ping", "nonce": 0})
            assert await recv(ws) == {"type": "pong", "nonce": 0}
        await send_json(a, push("never-subscribed", 1, "relay"))
        expected = {"type": "push", "key": "never-subscribed", "value": 1, "seq": 1}
        assert await recv(a) == expected
        assert await recv(b) == expected


async def test_total_order_across_sockets(client: httpx.AsyncClient) -> None:
    clients, per_client = 4, 30
    total = clients * per_client
    url = (await new_room(client))["socket_url"]
    seen: dict[int, list[tuple[int, int, int]]] = {}

    async def member(n: int, joined: trio.Event, go: trio.Event) -> None:
        query = "?cbor=true" if n % 2 else ""
        async with open_websocket_url(url + query) as ws:
            await send_json(ws, {"type": "ping", "nonce": n})
            assert (await recv(ws))["nonce"] == n
            joined.set()
            await go.wait()
            for i in range(per_client):
                await send_json(ws, push("k", {"from": n, "i": i}, "relay"))
            got = []
            while len(got) < total:
                message = await recv(ws)
                got.append((message["seq"], message["value"]["from"], message["value"]["i"]))
            seen[n] = got

    go = trio.Event()
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            for n in range(clients):
                joined = trio.Event()
                nursery.start_soon(member, n, joined, go)
                await joined.wait()
            go.set()
    orders = list(seen.values())
    assert [seq for seq, _, _ in orders[0]] == list(range(1, total + 1))
    assert all(order == orders[0] for order in orders), "one order for every member"
    for n in range(clients):
        assert [i for _, sender, i in orders[0] if sender == n] == list(range(per_client))


async def test_explicit_subscribe_connection(client: httpx.AsyncClient) -> None:
    info = await new_room(client)
    async with open_websocket_url(info["socket_url"] + "?subscribe=explicit") as ws:
        await send_json(ws, {"type": "get", "key": "mine", "seq": None})
        await send_json(ws, {"type": "ping", "nonce": 1})
        assert await recv(ws) == {"type": "pong", "nonce": 1}, "seq null: no init"
        await client.post(info["http_url"], json=push("other", 1))
        await client.post(info["http_url"], json=push("mine", 2))
        assert await recv(ws) == {"type": "push", "key": "mine", "value": 2, "seq": 2}


@pytest.mark.parametrize(
    "query", ["?cbor=true", "?cbor=true?cbor=true", "?cbor=1", "?cbor=true&x=1"]
)
async def test_cbor_connection(client: httpx.AsyncClient, query: str) -> None:
    info = await new_room(client)
    async with open_websocket_url(info["socket_url"] + query) as ws:
        await ws.send_message(cbor2.dumps({"type": "get", "key": "k"}))
        assert await recv_binary(ws) == {"type": "init", "key": "k", "data": []}
        await ws.send_message(cbor2.dumps(push("k", 1.5)))
        assert await recv_binary(ws) == {"type": "push", "key": "k", "value": 1.5, "seq": 1}
        # JSON input is accepted on a CBOR connection; the reply stays CBOR.
        await send_json(ws, {"type": "ping", "nonce": 3})
        assert await recv_binary(ws) == {"type": "pong", "nonce": 3}


async def test_cbor_and_debug_from_doubled_query(client: httpx.AsyncClient) -> None:
    info = await new_room(client)
    await client.post(info["http_url"], json=push("a", 1))
    await client.post(info["http_url"], json=push("a", 2))
    await client.post(info["http_url"], json=push("b", "x", "replace"))
    async with open_websocket_url(info["socket_url"] + "?cbor=true?debug=true") as ws:
        inits = [await recv_binary(ws), await recv_binary(ws)]
        assert sorted(inits, key=lambda m: m["key"]) == [
            {"type": "init", "key": "a", "data": [{"value": 1, "seq": 1}, {"value": 2, "seq": 2}]},
            {"type": "init", "key": "b", "data": [{"value": "x", "seq": 3}]},
        ]
        await client.post(info["http_url"], json=push("a", 3))
        assert await recv_binary(ws) == {"type": "push", "key": "a", "value": 3, "seq": 4}
        assert await recv_binary(ws) == {"type": "stream_size", "key": "a", "size": 3}
        await client.post(info["http_url"], json=push("c", "hi", "relay"))
        assert await recv_binary(ws) == {"type": "push", "key": "c", "value": "hi", "seq": 5}


async def test_cbor_byte_strings_survive(client: httpx.AsyncClient) -> None:
    info = await new_room(client)
    url = info["socket_url"]
    async with (
        open_websocket_url(url + "?cbor=true") as sender,
        open_websocket_url(url + "?cbor=true?cbor=true") as cbor_peer,
        open_websocket_url(url) as json_peer,
    ):
        for n, ws in enumerate((sender, cbor_peer, json_peer)):
            await send_json(ws, {"type": "ping", "nonce": n})
            assert (await recv(ws))["nonce"] == n
        value = {"bin": b"\x00\x01\xfe\xff", "u8": cbor2.CBORTag(64, b"\x07")}
        await sender.send_message(cbor2.dumps(push("k", value)))
        got = await recv_binary(cbor_peer)
        assert got["value"] == {"bin": b"\x00\x01\xfe\xff", "u8": b"\x07"}
        assert type(got["value"]["bin"]) is bytes
        assert (await recv_text(json_peer))["value"] == {"bin": [0, 1, 254, 255], "u8": [7]}
        assert (await recv_binary(sender))["value"]["bin"] == b"\x00\x01\xfe\xff"
        # Later get returns the bytes as bytes, too.
        await cbor_peer.send_message(cbor2.dumps({"type": "get", "key": "k"}))
        assert (await recv_binary(cbor_peer))["data"][0]["value"]["bin"] == b"\x00\x01\xfe\xff"


async def test_garbage_frames_get_an_error_and_the_connection_stays_open(
    client: httpx.AsyncClient,
) -> None:
    info = await new_room(client)
    async with open_websocket_url(info["socket_url"]) as ws:
        for garbage in ("not json", b"\xff\xff", '{"type":"push"}', "[]", cbor2.dumps({"type": 1})):
            await ws.send_message(garbage)
            error = await recv_text(ws)
            assert error["type"] == "error"
            assert error["message"]
        await send_json(ws, {"type": "ping", "nonce": 42})
        assert await recv_text(ws) == {"type": "pong", "nonce": 42}


async def test_room_error_goes_to_the_sender(client: httpx.AsyncClient) -> None:
    info = await new_room(client)
    async with open_websocket_url(info["socket_url"]) as ws:
        await send_json(ws, push("k", "x", "compact", seq=10))
        error = await recv_text(ws)
        assert error["type"] == "error"
        assert "beyond" in error["message"]
        await send_json(ws, push("k", 1))
        assert (await recv_text(ws))["seq"] == 1


async def test_too_many_consecutive_errors_closes_with_4000(transport: str) -> None:
    async with serve_and_connect(Config(max_consecutive_errors=3), transport) as client:
        info = await new_room(client)
        async with open_websocket_url(info["socket_url"]) as ws:
            # A valid message in between resets the count.
            for _ in range(2):
                await ws.send_message("garbage")
                assert (await recv(ws))["type"] == "error"
            await send_json(ws, {"type": "ping", "nonce": 1})
            assert await recv(ws) == {"type": "pong", "nonce": 1}
            for _ in range(2):
                await ws.send_message("garbage")
                assert (await recv(ws))["type"] == "error"
            await send_json(ws, {"type": "ping", "nonce": 2})
            assert await recv(ws) == {"type": "pong", "nonce": 2}
            for _ in range(3):
                await ws.send_message("garbage")
            assert await wait_closed(ws) == CloseCode.TOO_MANY_ERRORS == 4000


async def test_too_big_message_closes_with_1009(transport: str) -> None:
    async with serve_and_connect(Config(max_message_bytes=256), transport) as client:
        info = await new_room(client)
        async with open_websocket_url(info["socket_url"]) as ws:
            await send_json(ws, push("k", "x" * 100))
            assert (await recv(ws))["seq"] == 1
            await send_json(ws, push("k", "x" * 300))
            assert await wait_closed(ws) == CloseCode.MESSAGE_TOO_BIG == 1009
        async with open_websocket_url(info["socket_url"]) as ws:
            await ws.send_message(cbor2.dumps(push("k", b"\x00" * 300)))
            assert await wait_closed(ws) == 1009


async def test_server_shutdown_closes_members_with_1001(
    nursery: trio.Nursery, transport: str
) -> None:
    async with serve_and_connect(Config(), transport) as client:
        info = await new_room(client)
        ws = await connect_websocket_url(nursery, info["socket_url"])
        await send_json(ws, {"type": "ping"})
        assert (await recv(ws))["type"] == "pong"
    assert await wait_closed(ws) == CloseCode.GOING_AWAY == 1001


# -- URLs: forwarded proto and root path -----------------------------------------------------------


@pytest.mark.parametrize(("proxies", "secure"), [("", False), ("127.0.0.1", True)])
async def test_forwarded_proto(proxies: str, secure: bool, transport: str) -> None:
    """``X-Forwarded-Proto`` counts from a trusted proxy only (the client here)."""
    async with serve_and_connect(Config(trusted_proxies=proxies), transport) as client:
        info = await new_room(client, headers={"x-forwarded-proto": "https"})
        again = (
            await client.get(f"/room/{info['room']}", headers={"x-forwarded-proto": "https"})
        ).json()
        plain = (await client.get(f"/room/{info['room']}")).json()
    for urls in (info, again):
        assert urls["socket_url"].startswith("wss://" if secure else "ws://")
        assert urls["http_url"].startswith("https://" if secure else "http://")
    assert plain["socket_url"].startswith("ws://")
    assert plain["http_url"].startswith("http://")


async def asgi_request(
    app: DriftApp,
    method: str,
    path: str,
    *,
    root_path: str = "",
    headers: list[tuple[bytes, bytes]] | None = None,
    scheme: str = "http",
    body: bytes = b"",
) -> tuple[int, dict[bytes, bytes], Any]:
    """Call the ASGI app directly with a crafted scope."""
    requests = [{"type": "http.request", "body": body, "more_body": False}]
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        if requests:
            return requests.pop(0)
        await trio.sleep_forever()
        raise AssertionError("unreachable")

    async def send(message: Any) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": scheme,
        "path": path,
        "raw_path": path.encode(),
        "root_path": root_path,
        "query_string": b"",
        "headers": headers if headers is not None else [(b"host", b"drift.example")],
        "server": ("10.0.0.1", 4321),
        "client": ("10.0.0.2", 5555),
    }
    with trio.fail_after(TIMEOUT):
        await app(scope, receive, send)
    start = sent[0]
    assert start["type"] == "http.response.start"
    payload = b"".join(m.get("body", b"") for m in sent[1:])
    return start["status"], dict(start["headers"]), json.loads(payload) if payload else None


@pytest.mark.parametrize(
    "full_path", [True, False], ids=["path-includes-root", "path-without-root"]
)
async def test_root_path_prefix_in_urls(full_path: bool) -> None:
    async with open_hub() as hub:
        app = DriftApp(hub=hub)
        prefix = "/drift" if full_path else ""
        status, _, info = await asgi_request(app, "POST", f"{prefix}/new", root_path="/drift")
        assert status == 200
        room = info["room"]
        assert info["socket_url"] == f"ws://drift.example/drift/room/{room}/connect"
        assert info["http_url"] == f"http://drift.example/drift/room/{room}/send"
        status, _, again = await asgi_request(
            app, "GET", f"{prefix}/room/{room}", root_path="/drift"
        )
        assert (status, again) == (200, info)
        status, _, reply = await asgi_request(
            app,
            "POST",
            f"{prefix}/room/{room}/send",
            root_path="/drift",
            body=b'{"type":"ping","nonce":1}',
        )
        assert (status, reply) == (200, {"type": "pong", "nonce": 1})


async def test_urls_from_scheme_and_host() -> None:
    async with open_hub() as hub:
        app = DriftApp(hub=hub)
        _, _, info = await asgi_request(app, "POST", "/new", scheme="https")
        assert info["socket_url"].startswith("wss://drift.example/room/")
        assert info["http_url"].startswith("https://drift.example/room/")
        # A Host header that is not a host is not echoed back into the URLs.
        _, _, info = await asgi_request(app, "POST", "/new", headers=[(b"host", b"evil/x?y")])
        assert info["socket_url"].startswith("ws://10.0.0.1:4321/room/")
        _, _, info = await asgi_request(app, "POST", "/new", headers=[(b"host", b"[::1]:9")])
        assert info["http_url"].startswith("http://[::1]:9/room/")


# -- the real command line and hypercorn -----------------------------------------------------------


async def exercise(base_url: str, prefix: str = "") -> None:
    """A short real session against a server at ``base_url``."""
    async with httpx.AsyncClient(trust_env=False, timeout=TIMEOUT) as client:
        response = await client.post(f"{base_url}{prefix}/new")
        assert response.status_code == 200
        info = response.json()
        assert info["socket_url"].startswith(base_url.replace("http", "ws", 1) + prefix + "/room/")
        async with open_websocket_url(info["socket_url"] + "?cbor=true") as ws:
            await ws.send_message(cbor2.dumps(push("k", b"\x01")))
            assert await recv_binary(ws) == {"type": "push", "key": "k", "value": b"\x01", "seq": 1}
        response = await client.post(info["http_url"], json={"type": "get", "key": "k"})
        assert response.json() == {"type": "init", "key": "k", "data": [{"value": [1], "seq": 1}]}


async def test_cli_serve_and_sigterm(tmp_path: Path) -> None:
    async with trio.open_nursery() as nursery:
        child = await start_child(nursery, [*drifttrio_command(), "serve", "--port", "0"], tmp_path)
        try:
            match = await child.wait_for_line(r"drifttrio listening on (http://127\.0\.0\.1:\d+)")
            await exercise(match.group(1))
            child.process.send_signal(signal.SIGTERM)
            with trio.fail_after(30):
                code = await child.process.wait()
            assert code == 0, "\n".join(child.lines)
        finally:
            if child.process.returncode is None:
                child.process.kill()
                await child.process.wait()


async def test_hypercorn_runs_the_asgi_app_with_a_root_path(tmp_path: Path) -> None:
    hypercorn = Path(sys.executable).with_name("hypercorn")
    argv = [str(hypercorn)] if hypercorn.exists() else [sys.executable, "-m", "hypercorn"]
    argv += ["-k", "trio", "--bind", "127.0.0.1:0", "--root-path", "/drift", "drifttrio.asgi:app"]
    async with trio.open_nursery() as nursery:
        child = await start_child(nursery, argv, tmp_path)
        try:
            match = await child.wait_for_line(r"Running on (http://127\.0\.0\.1:\d+)")
            await exercise(match.group(1), prefix="/drift")
        finally:
            child.process.terminate()
            with trio.fail_after(30):
                await child.process.wait()
