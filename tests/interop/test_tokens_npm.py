"""Room tokens with the published npm client: the token rides in socket_url."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import httpx
import pytest

from drifttrio import Config, open_server

pytestmark = pytest.mark.interop

#: The ``run_node`` fixture (tests/interop/conftest.py).
RunNode = Callable[..., Awaitable[dict[str, Any]]]

KEY = "api-key"


async def test_npm_client_with_read_and_write_tokens(run_node: RunNode) -> None:
    config = Config(room_token_secret="interop-secret", api_key=KEY)
    async with (
        open_server(config) as server,
        httpx.AsyncClient(base_url=server.url, trust_env=False) as client,
    ):
        auth = {"Authorization": f"Bearer {KEY}"}
        room = (await client.post("/new", headers=auth)).json()
        read = (
            await client.post(f"/room/{room['room']}/token", headers=auth, json={"access": "read"})
        ).json()
        result = await run_node("tokens.js", server.url, room["socket_url"], read["socket_url"])
    assert result["reader_errors"] == ["read-only token: push refused"]
    assert result["writer_errors"] == []
    assert result["reader_got"]["value"] == "from writer"
