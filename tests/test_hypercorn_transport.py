"""``drifttrio serve --transport hypercorn``: what drifttrio asks of hypercorn, held
against a real server on 127.0.0.1:0 (the app itself is tested on both transports
in test_web.py)."""

from __future__ import annotations

import httpx
import pytest
import trio

from _rawws import TIMEOUT, RawWebSocket
from drifttrio import Config, open_server
from drifttrio.server import hypercorn_config


@pytest.mark.parametrize(
    ("keepalive", "handshake", "idle"), [(5.0, 10.0, 10.0), (30.0, 10.0, 30.0)]
)
def test_hypercorn_idles_a_connection_for_the_longer_of_the_two_deadlines(
    keepalive: float, handshake: float, idle: float
) -> None:
    # hypercorn's one idle timer covers both the wait for a connection's first
    # request (handshake_timeout on the own transport) and keep-alive between requests.
    config = Config(keepalive_timeout=keepalive, handshake_timeout=handshake)
    assert hypercorn_config(config, "127.0.0.1", 0).keep_alive_timeout == idle


async def test_an_upgrade_sent_after_keepalive_timeout_but_within_handshake_timeout_is_served() -> (
    None
):
    # What a busy server looks like to hypercorn's idle timer, which starts at accept:
    # the upgrade is read late. With keepalive_timeout alone the connection was closed
    # unanswered ('socket hang up' in a reconnect storm); now it gets handshake_timeout,
    # as on drifttrio's own transport.
    config = Config(keepalive_timeout=0.2, handshake_timeout=TIMEOUT)
    async with (
        open_server(config, transport="hypercorn") as server,
        httpx.AsyncClient(base_url=server.url, trust_env=False, timeout=TIMEOUT) as client,
    ):
        room = (await client.post("/new")).json()["room"]
        ws = await RawWebSocket.connect(server.host, server.port)
        try:
            # The stimulus, not a wait for something: a client (or a server that has
            # not read it yet) five times past keepalive_timeout.
            await trio.sleep(1.0)
            await ws.handshake(f"/room/{room}/connect")
            await ws.send_json({"type": "ping", "nonce": 7})
            assert await ws.recv() == {"type": "pong", "nonce": 7}
        finally:
            await ws.aclose()
