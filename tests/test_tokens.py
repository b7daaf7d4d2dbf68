"""Signed, expiring room tokens: unit tests, then end to end on 127.0.0.1:0."""

from __future__ import annotations

import gc
import json
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest
import trio
from trio_websocket import ConnectionRejected, open_websocket_url

from drifttrio import Config, ProtocolError, RunningServer, open_server
from drifttrio.server import TRANSPORTS
from drifttrio.web.app import parse_query
from drifttrio.web.tokens import issue_room_token, token_expiry, verify_room_token

TIMEOUT = 10
SECRET = "test-secret"
KEY = "api-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
ROOM = "r" * 22


# -- the token itself -----------------------------------------------------------------------


def test_round_trip_and_capabilities() -> None:
    write = issue_room_token(SECRET, ROOM, "write", 60, now=1000)
    read = issue_room_token(SECRET, ROOM, "read", 60, now=1000)
    assert verify_room_token(SECRET, ROOM, write, now=1059) == "write"
    assert verify_room_token(SECRET, ROOM, read, now=1000) == "read"
    assert token_expiry(read) == 1060
    # URL-safe: survives a query string untouched, including the npm client's suffix.
    assert parse_query(f"token={read}?cbor=true") == {"token": read, "cbor": "true"}


@pytest.mark.parametrize(
    "token",
    [
        pytest.param(issue_room_token(SECRET, ROOM, "read", 60, now=1000), id="expired"),
        pytest.param(issue_room_token(SECRET, "other" * 5, "write", 1e6, now=0), id="other-room"),
        pytest.param(
            issue_room_token("other-secret", ROOM, "write", 1e6, now=0), id="other-secret"
        ),
        pytest.param(
            "w" + issue_room_token(SECRET, ROOM, "read", 1e6, now=0)[1:], id="read-upgraded"
        ),
        pytest.param("w.99999999999.AAAAAAAAAAAAAAAAAAAAAA", id="forged"),
        pytest.param("garbage", id="garbage"),
        pytest.param("w.-5.x", id="negative"),
    ],
)
def test_invalid_tokens_are_refused_alike(token: str) -> None:
    with pytest.raises(ProtocolError) as info:
        verify_room_token(SECRET, ROOM, token, now=2000)
    assert (info.value.status, info.value.message) == (401, "invalid or expired room token")


def test_missing_token() -> None:
    with pytest.raises(ProtocolError, match="needs a token") as info:
        verify_room_token(SECRET, ROOM, None)
    assert info.value.status == 401


def test_issuing_needs_a_secret_and_sane_arguments() -> None:
    with pytest.raises(ValueError, match="secret"):
        issue_room_token("", ROOM)
    with pytest.raises(ValueError, match="access"):
        issue_room_token(SECRET, ROOM, "admin")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="ttl_seconds"):
        issue_room_token(SECRET, ROOM, "read", 0)


# -- end to end -----------------------------------------------------------------------------


@asynccontextmanager
async def serving(
    transport: str = "drifttrio", **settings: Any
) -> AsyncIterator[tuple[RunningServer, httpx.AsyncClient]]:
    config = Config(room_token_secret=SECRET, api_key=KEY, **settings)
    async with (
        open_server(config, transport=transport) as server,
        httpx.AsyncClient(base_url=server.url, trust_env=False, timeout=TIMEOUT) as client,
    ):
        yield server, client


async def rejected_status(url: str) -> tuple[int, Any]:
    with pytest.raises(ConnectionRejected) as info:
        async with open_websocket_url(url):
            pytest.fail("the upgrade should have been refused")
    status, body = info.value.status_code, info.value.body
    del info
    gc.collect()  # trio-websocket 0.12 leaves a rejected handshake's socket open
    return status, json.loads(body or b"null")


async def message(ws: Any) -> Any:
    with trio.fail_after(TIMEOUT):
        return json.loads(await ws.get_message())


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.filterwarnings("ignore::ResourceWarning")
async def test_rooms_need_a_token_and_read_only_cannot_push(transport: str) -> None:
    async with serving(transport) as (_, client):
        created = (await client.post("/new", headers=AUTH)).json()
        room = created["room"]
        # POST /new hands out URLs that carry a read-write token.
        assert "?token=w." in created["socket_url"]
        assert created["http_url"].endswith(created["socket_url"].split("/connect")[1])

        # Without a token (or with a bad one) nothing about the room is revealed.
        bare = f"/room/{room}"
        refused = await client.get(bare)
        assert refused.status_code == 401
        assert refused.headers["www-authenticate"] == 'Bearer realm="drifttrio"'  # RFC 9110
        unknown = (await client.get(f"/room/{'x' * 22}?token=w.1.AAAA")).json()
        assert unknown == (await client.get(f"{bare}?token=w.1.AAAA")).json()
        send = await client.post(f"{bare}/send", json={"type": "ping"})
        assert (send.status_code, send.json()["message"]) == (
            401,
            "this room needs a token (token=... in the URL)",
        )
        ws_base = created["socket_url"].split("?")[0]
        assert (await rejected_status(ws_base))[0] == 401
        assert (await rejected_status(f"{ws_base}?token=garbage"))[0] == 401

        # A read-only token, issued by the backend with the API key.
        issued = await client.post(
            f"{bare}/token", headers=AUTH, json={"access": "read", "ttl_seconds": 60}
        )
        assert issued.status_code == 200, issued.text
        read = issued.json()
        assert read["access"] == "read"
        assert read["token"].startswith("r.")
        assert read["socket_url"].endswith(f"/connect?token={read['token']}")
        assert (await client.get(f"{bare}?token={read['token']}")).json()["socket_url"] == read[
            "socket_url"
        ]

        # The npm client appends ?cbor=true (sometimes twice) to the URL it was given.
        async with (
            open_websocket_url(created["socket_url"] + "?cbor=false") as writer,
            open_websocket_url(read["socket_url"] + "?cbor=false?cbor=false") as reader,
        ):
            await reader.send_message(json.dumps({"type": "get", "key": "k"}))
            assert await message(reader) == {"type": "init", "key": "k", "data": []}
            push = {"type": "push", "key": "k", "value": 1, "action": {"type": "append"}}
            await reader.send_message(json.dumps(push))
            assert await message(reader) == {
                "type": "error",
                "message": "read-only token: push refused",
            }
            await writer.send_message(json.dumps(push))
            assert (await message(writer))["seq"] == 1
            assert await message(reader) == {"type": "push", "key": "k", "value": 1, "seq": 1}

        # Over HTTP too: read-only may get and ping, not push.
        refused = await client.post(read["http_url"], json=push)
        assert (refused.status_code, refused.json()["message"]) == (
            403,
            "read-only token: push refused",
        )
        got = await client.post(read["http_url"], json={"type": "get", "key": "k"})
        assert got.json()["data"] == [{"value": 1, "seq": 1}]
        stream_size = (await client.post(created["http_url"], json=push)).json()
        assert stream_size == {"type": "stream_size", "key": "k", "size": 2}


async def test_token_endpoint_needs_the_api_key_and_valid_input() -> None:
    async with serving() as (_, client):
        room = (await client.post("/new", headers=AUTH)).json()["room"]
        url = f"/room/{room}/token"
        assert (await client.post(url)).status_code == 401
        assert (await client.post(url, headers={"Authorization": "Bearer no"})).status_code == 401
        assert (await client.get(url, headers=AUTH)).status_code == 405
        for body in ({"access": "admin"}, {"ttl_seconds": -1}, {"ttl_seconds": "1"}, [1]):
            assert (await client.post(url, headers=AUTH, json=body)).status_code == 400
        unknown = await client.post(f"/room/{'x' * 22}/token", headers=AUTH)
        assert unknown.status_code == 404
        default = (await client.post(url, headers=AUTH)).json()
        assert default["access"] == "write"
        assert 3590 < default["expires"] - time.time() <= 3600


async def test_token_endpoint_off_without_secret_or_api_key() -> None:
    async with (
        open_server(Config(room_token_secret=SECRET)) as server,
        httpx.AsyncClient(base_url=server.url, trust_env=False) as client,
    ):
        room = (await client.post("/new")).json()["room"]
        assert (await client.post(f"/room/{room}/token")).status_code == 403
    async with (
        open_server(Config()) as server,
        httpx.AsyncClient(base_url=server.url, trust_env=False) as client,
    ):
        info = (await client.post("/new")).json()
        assert "token" not in info["socket_url"]
        assert (await client.post(f"/room/{info['room']}/token")).status_code == 404
