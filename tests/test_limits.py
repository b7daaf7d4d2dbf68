"""Edge limits against the real server on 127.0.0.1:0: connection caps, rate limits,
allowed origins and the API key for POST /new."""

from __future__ import annotations

import gc
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest
import trio
from trio_websocket import (
    ConnectionRejected,
    WebSocketConnection,
    open_websocket_url,
)

from drifttrio import Config, RunningServer, open_server

TIMEOUT = 10  # a guard against hangs, never a way to wait for something


@asynccontextmanager
async def serving(**settings: Any) -> AsyncIterator[tuple[RunningServer, httpx.AsyncClient]]:
    async with (
        open_server(Config(**settings)) as server,
        httpx.AsyncClient(base_url=server.url, trust_env=False, timeout=TIMEOUT) as c,
    ):
        yield server, c


async def new_room(client: httpx.AsyncClient, **kw: Any) -> dict[str, str]:
    response = await client.post("/new", **kw)
    assert response.status_code == 200, response.text
    info: dict[str, str] = response.json()
    return info


async def rejected(url: str, headers: list[tuple[bytes, bytes]] | None = None) -> tuple[int, Any]:
    """Status and decoded body of a refused upgrade."""
    with pytest.raises(ConnectionRejected) as info:
        async with open_websocket_url(url, extra_headers=headers):
            pytest.fail("the upgrade should have been refused")
    status, body = info.value.status_code, info.value.body
    del info
    # trio-websocket 0.12 does not close the socket of a rejected handshake:
    # collect it here, where its ResourceWarning is ignored.
    gc.collect()
    assert body is not None
    return status, json.loads(body)


async def pong(ws: WebSocketConnection, nonce: int) -> None:
    """Round-trip a ping: proves the connection is a member and served."""
    await ws.send_message(json.dumps({"type": "ping", "nonce": nonce}))
    with trio.fail_after(TIMEOUT):
        assert json.loads(await ws.get_message()) == {"type": "pong", "nonce": nonce}


async def test_api_key_guards_new_rooms_only() -> None:
    async with serving(api_key="s3cret") as (_, client):
        missing = await client.post("/new")
        assert missing.status_code == 401
        assert missing.json()["type"] == "error"
        assert missing.headers["www-authenticate"].startswith("Bearer")
        wrong = await client.post("/new", headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401
        room = await new_room(client, headers={"Authorization": "Bearer s3cret"})
        # Joining and sending with the room URL needs no key.
        assert (await client.get(f"/room/{room['room']}")).status_code == 200
        reply = await client.post(room["http_url"], json={"type": "ping", "nonce": 1})
        assert reply.json() == {"type": "pong", "nonce": 1}
        async with open_websocket_url(room["socket_url"]) as ws:
            await pong(ws, 2)


async def test_new_room_rate_limit_per_address() -> None:
    async with serving(new_rooms_per_minute=3) as (_, client):
        for _ in range(3):
            await new_room(client)
        refused = await client.post("/new")
        assert refused.status_code == 429
        assert refused.headers["retry-after"] == "60"
        assert "too many new rooms" in refused.json()["message"]


@pytest.mark.filterwarnings("ignore::ResourceWarning")
async def test_allowed_origins() -> None:
    async with serving(allowed_origins="https://app.example.com, https://other.example") as (
        _,
        client,
    ):
        room = await new_room(client)
        url = room["socket_url"]
        status, body = await rejected(url, [(b"origin", b"https://evil.example")])
        assert status == 403
        assert body == {"type": "error", "message": "origin not allowed"}
        async with open_websocket_url(
            url, extra_headers=[(b"origin", b"https://app.example.com")]
        ) as ws:
            await pong(ws, 1)
        async with open_websocket_url(url) as ws:  # no Origin: not a browser, passes
            await pong(ws, 2)


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ("max_connections_per_room", "room's limit of 2 connections"),
        ("max_connections_per_ip", "limit of 2 connections per client address"),
        ("max_connections", "server's limit of 2 connections"),
    ],
)
@pytest.mark.filterwarnings("ignore::ResourceWarning")
async def test_connection_caps_refuse_before_upgrade(setting: str, message: str) -> None:
    async with serving(**{setting: 2}) as (_, client):
        room = await new_room(client)
        async with (
            open_websocket_url(room["socket_url"]) as first,
            open_websocket_url(room["socket_url"]) as second,
        ):
            status, body = await rejected(room["socket_url"])
            assert status == 503
            assert message in body["message"]
            # The two members keep being served.
            await pong(first, 1)
            await pong(second, 2)


async def test_message_spam_is_read_no_faster_than_the_rate_limit() -> None:
    """Past its burst a connection's next message waits for the rate (it is not
    refused: the npm client ignores ``error``); others keep their own budget."""
    # One message a second: past the burst of 5, the next waits about a second.
    async with serving(rate_limit_per_second=1, rate_limit_burst=5) as (_, client):
        room = await new_room(client)
        async with (
            open_websocket_url(room["socket_url"]) as spammer,
            open_websocket_url(room["socket_url"]) as bystander,
        ):
            for nonce in range(5):
                await pong(spammer, nonce)
            await spammer.send_message(json.dumps({"type": "ping", "nonce": 99}))
            await pong(bystander, 7)  # others in the room are unaffected
            with trio.move_on_after(0.2) as waited:
                reply = await spammer.get_message()
            assert waited.cancelled_caught, f"answered past the rate limit: {reply}"
            with trio.fail_after(TIMEOUT):  # then answered: waited for, not lost
                assert json.loads(await spammer.get_message()) == {"type": "pong", "nonce": 99}


async def test_a_flood_over_the_rate_limit_is_paced_and_nothing_is_lost() -> None:
    rate, count = 500, 400
    async with serving(rate_limit_per_second=rate, rate_limit_burst=1) as (_, client):
        room = await new_room(client)
        async with open_websocket_url(room["socket_url"]) as flooder:
            started = trio.current_time()
            for nonce in range(count):
                await flooder.send_message(json.dumps({"type": "ping", "nonce": nonce}))
            with trio.fail_after(TIMEOUT):
                replies = [json.loads(await flooder.get_message()) for _ in range(count)]
            elapsed = trio.current_time() - started
    assert replies == [{"type": "pong", "nonce": n} for n in range(count)]
    assert elapsed >= 0.8 * (count - 1) / rate, f"{count} messages in {elapsed:.3f} s"
