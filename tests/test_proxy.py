"""Trusted reverse proxies: who the client is behind one (``trusted_proxies``).

The header logic (:mod:`drifttrio.web.proxy`) is tested on plain ASGI scopes; then
the real server on 127.0.0.1:0, on both transports, with the client playing the
proxy (it connects from 127.0.0.1, the trusted address) and naming clients in
``X-Forwarded-For``; then the command line, as a subprocess.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from _procs import TIMEOUT, child_env, drifttrio_command, start_child
from _rawws import PING, PONG, RawWebSocket, frame
from drifttrio import Config, RunningServer, open_server
from drifttrio._errors import ConfigError
from drifttrio.server import TRANSPORTS
from drifttrio.web.proxy import TrustedProxies, parse_address
from drifttrio.web.transport import HttpConnections

# -- the headers, sans IO -------------------------------------------------------------------


def resolved(
    proxies: str,
    peer: str,
    headers: list[tuple[str, str]],
    kind: str = "http",
) -> tuple[str, str]:
    """``(client address, scheme)`` of a request from ``peer`` with ``headers``."""
    scope: dict[str, Any] = {
        "type": kind,
        "client": (peer, 5555),
        "scheme": "ws" if kind == "websocket" else "http",
        "headers": [(name.lower().encode(), value.encode()) for name, value in headers],
    }
    TrustedProxies(Config(trusted_proxies=proxies).trusted_networks).apply(scope)
    return scope["client"][0], scope["scheme"]


def test_untrusted_peer_headers_are_ignored() -> None:
    headers = [("X-Forwarded-For", "203.0.113.9"), ("X-Forwarded-Proto", "https")]
    assert resolved("", "127.0.0.1", headers) == ("127.0.0.1", "http")
    assert resolved("10.0.0.0/8", "192.0.2.1", headers) == ("192.0.2.1", "http")
    assert resolved("10.0.0.0/8", "10.1.2.3", headers) == ("203.0.113.9", "https")


def test_forwarded_for_is_walked_right_to_left() -> None:
    trusted = "127.0.0.1,10.0.0.0/8"
    # Whatever the client prepends, the first untrusted hop from the right is it.
    chain = [("X-Forwarded-For", "1.1.1.1, 127.0.0.1, 198.51.100.7, 10.0.0.5")]
    assert resolved(trusted, "127.0.0.1", chain) == ("198.51.100.7", "http")
    # Several header lines are one list, in order.
    lines = [("X-Forwarded-For", "1.1.1.1"), ("X-Forwarded-For", "198.51.100.7, 10.9.9.9")]
    assert resolved(trusted, "127.0.0.1", lines)[0] == "198.51.100.7"
    # Every hop trusted: the leftmost is the client (one on the proxies' network).
    assert resolved(trusted, "127.0.0.1", [("X-Forwarded-For", "10.0.0.2, 10.0.0.3")])[0] == (
        "10.0.0.2"
    )


@pytest.mark.parametrize(
    ("entry", "client"),
    [
        ("198.51.100.7:4711", "198.51.100.7"),
        ("2001:db8::7", "2001:db8::7"),
        ("[2001:db8::7]:4711", "2001:db8::7"),
        ("[2001:db8::7]", "2001:db8::7"),
        ("::ffff:198.51.100.7", "198.51.100.7"),
    ],
)
def test_forwarded_for_address_forms(entry: str, client: str) -> None:
    assert resolved("127.0.0.1", "127.0.0.1", [("X-Forwarded-For", entry)])[0] == client


@pytest.mark.parametrize(
    "value",
    ["", ",", "unknown", "_hidden", "198.51.100.7,", "not an address", "[2001:db8::7", "1.2.3.4.5"],
)
def test_malformed_forwarded_for_falls_back_to_the_peer(value: str) -> None:
    assert resolved("127.0.0.1", "127.0.0.1", [("X-Forwarded-For", value)])[0] == "127.0.0.1"


def test_malformed_hop_left_of_the_client_is_never_read() -> None:
    headers = [("X-Forwarded-For", "junk, [, 198.51.100.7")]
    assert resolved("127.0.0.1", "127.0.0.1", headers)[0] == "198.51.100.7"


def test_forwarded_proto() -> None:
    xfp = "X-Forwarded-Proto"
    assert resolved("127.0.0.1", "127.0.0.1", [(xfp, "https")]) == ("127.0.0.1", "https")
    assert resolved("127.0.0.1", "127.0.0.1", [(xfp, "HTTPS")])[1] == "https"
    # The nearest proxy's word counts: the rightmost value.
    assert resolved("127.0.0.1", "127.0.0.1", [(xfp, "https, http")])[1] == "http"
    assert resolved("127.0.0.1", "127.0.0.1", [(xfp, "gopher")])[1] == "http"
    # A WebSocket's scheme is ws / wss.
    assert resolved("127.0.0.1", "127.0.0.1", [(xfp, "https")], "websocket")[1] == "wss"
    assert resolved("127.0.0.1", "127.0.0.1", [(xfp, "http")], "websocket")[1] == "ws"


def test_rfc7239_forwarded() -> None:
    value = 'for=1.1.1.1, for="[2001:db8:cafe::17]:4711";proto=https;by=10.0.0.1, for=10.0.0.9'
    assert resolved("10.0.0.0/8", "10.0.0.1", [("Forwarded", value)]) == (
        "2001:db8:cafe::17",
        "https",
    )
    assert resolved("10.0.0.0/8", "10.0.0.1", [("Forwarded", "For=198.51.100.7;Proto=http")]) == (
        "198.51.100.7",
        "http",
    )
    for broken in ("for=", "for=unknown", 'for="198.51.100.7', "junk", "for=1.1.1.1;;"):
        assert resolved("10.0.0.0/8", "10.0.0.1", [("Forwarded", broken)]) == ("10.0.0.1", "http")


def test_forwarded_is_ignored_when_x_forwarded_headers_are_there() -> None:
    """A proxy writes one family and passes the other through: the client's."""
    headers = [("Forwarded", "for=6.6.6.6;proto=https"), ("X-Forwarded-For", "198.51.100.7")]
    assert resolved("127.0.0.1", "127.0.0.1", headers) == ("198.51.100.7", "http")
    headers = [("Forwarded", "for=6.6.6.6"), ("X-Forwarded-Proto", "https")]
    assert resolved("127.0.0.1", "127.0.0.1", headers) == ("127.0.0.1", "https")


def test_parse_address() -> None:
    assert parse_address(" 10.0.0.1 ") == "10.0.0.1"
    assert parse_address("2001:DB8:0::7") == "2001:db8::7"
    assert parse_address("10.0.0.1:80:80") is None
    assert parse_address("") is None


def test_trusted_peer_forms() -> None:
    proxies = TrustedProxies(
        Config(trusted_proxies=" 127.0.0.1 , 10.0.0.0/8,::1,").trusted_networks
    )
    assert proxies.trusts("127.0.0.1")
    assert proxies.trusts("10.200.0.1")
    assert proxies.trusts("::1")
    assert proxies.trusts("::ffff:10.0.0.1")  # a dual-stack listener's IPv4 peer
    assert not proxies.trusts("127.0.0.2")
    assert not proxies.trusts("unknown")
    assert not TrustedProxies().trusts("127.0.0.1")


# -- the setting ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (
            "127.0.0.1,localhost",
            "trusted_proxies: 'localhost' is not an IP address or network"
            " (for example 127.0.0.1,10.0.0.0/8,::1)",
        ),
        (
            "10.0.0.300",
            "trusted_proxies: '10.0.0.300' is not an IP address or network"
            " (for example 127.0.0.1,10.0.0.0/8,::1)",
        ),
        (
            "10.0.0.1/8",
            "trusted_proxies: '10.0.0.1/8' has host bits set (did you mean 10.0.0.0/8?)",
        ),
        ("*", "trusted_proxies: '*' is not an IP address or network"),
    ],
)
def test_bad_trusted_proxies_name_the_entry(value: str, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        Config.from_env({"DRIFTTRIO_TRUSTED_PROXIES": value})
    assert str(caught.value).startswith(message)


def test_the_old_setting_stops_the_server() -> None:
    with pytest.raises(ConfigError, match="set DRIFTTRIO_TRUSTED_PROXIES"):
        Config.from_env({"DRIFTTRIO_TRUST_FORWARDED_PROTO": "1"})
    with pytest.raises(ConfigError, match="no longer supported"):
        Config.from_env({"DRIFTTRIO_TRUST_FORWARDED_PROTO": "0"})


def test_http_phase_cap_exempts_trusted_proxies_only() -> None:
    trusted = TrustedProxies(Config(trusted_proxies="10.0.0.1").trusted_networks)
    slots = HttpConnections(total=3, per_ip=1, trusted=trusted)
    assert slots.admit("192.0.2.1")
    assert not slots.admit("192.0.2.1")  # per address
    assert slots.admit("10.0.0.1")
    assert slots.admit("10.0.0.1")  # a trusted proxy: past the per-address cap
    assert not slots.admit("10.0.0.1")  # ... but not past the total
    slots.release("10.0.0.1")
    assert slots.admit("10.0.0.1")


# -- the real server ------------------------------------------------------------------------


@pytest.fixture(params=TRANSPORTS)
def transport(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    return name


@asynccontextmanager
async def serving(transport: str, **settings: Any) -> AsyncIterator[tuple[RunningServer, str]]:
    """A server (memory store) and a room in it."""
    async with (
        open_server(Config(**settings), transport=transport) as server,
        httpx.AsyncClient(base_url=server.url, trust_env=False, timeout=TIMEOUT) as client,
    ):
        response = await client.post("/new")
        assert response.status_code == 200
        yield server, response.json()["room"]


async def upgrade(
    server: RunningServer, room: str, forwarded_for: str, expect: int
) -> RawWebSocket:
    """A WebSocket upgrade from 127.0.0.1 naming ``forwarded_for`` as its client."""
    ws = await RawWebSocket.connect(server.host, server.port)
    await ws.handshake(f"/room/{room}/connect", {"X-Forwarded-For": forwarded_for}, expect=expect)
    return ws


async def test_per_address_connection_cap_counts_forwarded_clients(transport: str) -> None:
    settings = {"max_connections_per_ip": 1, "trusted_proxies": "127.0.0.1"}
    async with serving(transport, **settings) as (server, room):
        sockets = [
            await upgrade(server, room, "198.51.100.1", 101),
            await upgrade(server, room, "198.51.100.2", 101),
            # A client naming itself someone else, in front of the proxy's entry: no use.
            await upgrade(server, room, "198.51.100.2, 198.51.100.1", 503),
        ]
        for ws in sockets:
            await ws.aclose()


async def test_without_trust_every_forwarded_client_is_the_proxy(transport: str) -> None:
    async with serving(transport, max_connections_per_ip=1) as (server, room):
        sockets = [
            await upgrade(server, room, "198.51.100.1", 101),
            await upgrade(server, room, "198.51.100.2", 503),
        ]
        for ws in sockets:
            await ws.aclose()


async def test_new_rooms_limit_and_budgets_count_forwarded_clients(transport: str) -> None:
    settings = {
        "new_rooms_per_minute": 1.0,
        "address_messages_per_second": 0.01,
        "address_messages_burst": 1,
    }
    async with (
        open_server(
            Config(trusted_proxies="127.0.0.0/8", **settings), transport=transport
        ) as server,
        httpx.AsyncClient(base_url=server.url, trust_env=False, timeout=TIMEOUT) as client,
    ):

        async def new(client_address: str) -> int:
            headers = {"X-Forwarded-For": client_address}
            return (await client.post("/new", headers=headers)).status_code

        async def send(room: str, client_address: str) -> int:
            response = await client.post(
                f"/room/{room}/send",
                json={"type": "ping"},
                headers={"X-Forwarded-For": client_address},
            )
            return response.status_code

        assert await new("198.51.100.1") == 200
        assert await new("198.51.100.1") == 429
        assert await new("198.51.100.2") == 200
        room = (await client.post("/new", headers={"X-Forwarded-For": "198.51.100.3"})).json()[
            "room"
        ]
        # One message of burst per address: the second from .1 waits, .2 is served.
        assert await send(room, "198.51.100.1") == 200
        assert await send(room, "198.51.100.1") == 429
        assert await send(room, "198.51.100.2") == 200


async def test_control_frames_are_charged_to_the_forwarded_client() -> None:
    """The transport charges pings to the address the app resolved (one scope):
    with one message of budget per address, two clients behind the proxy each get
    their pong; counted as the proxy, the second ping would get none."""
    settings = {
        "trusted_proxies": "127.0.0.1",
        "address_messages_per_second": 0.01,
        "address_messages_burst": 1,
    }
    async with serving("drifttrio", **settings) as (server, room):
        sockets = [
            await upgrade(server, room, "198.51.100.1", 101),
            await upgrade(server, room, "198.51.100.2", 101),
        ]
        for ws in sockets:
            await ws.send(frame(PING, b"hi"))
            assert await ws.recv_frame() == (PONG, b"hi")
            await ws.aclose()


async def test_connection_log_line_names_the_forwarded_client(
    transport: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="drifttrio.connection")
    async with serving(transport, trusted_proxies="127.0.0.1") as (server, room):
        ws = await upgrade(server, room, "2001:db8::7", 101)
        await ws.aclose()
    # Written when the connection ends: it has, with the server.
    ended = [r for r in caplog.records if getattr(r, "fields", {}).get("event") == "close"]
    assert [r.fields["client"] for r in ended] == ["2001:db8::7"]  # type: ignore[attr-defined]


async def test_http_phase_cap_is_total_only_for_a_trusted_proxy() -> None:
    """Idle connections from 127.0.0.1 fill the per-address HTTP-phase cap (2): the
    next request gets 503, unless 127.0.0.1 is a trusted proxy (then up to the total,
    4: the exact counting is unit-tested above)."""
    settings = {"max_http_connections_per_ip": 2, "max_http_connections": 4}
    for proxies, idle_count, status in (("", 2, 503), ("127.0.0.1", 3, 200)):
        async with open_server(Config(trusted_proxies=proxies, **settings)) as server:
            idle = [await trio.open_tcp_stream(server.host, server.port) for _ in range(idle_count)]
            assert await status_of_get(server) == status
            for stream in idle:
                await stream.aclose()


async def status_of_get(server: RunningServer) -> int:
    """The status of ``GET /`` on a new connection, kept open while asked."""
    stream = await trio.open_tcp_stream(server.host, server.port)
    try:
        await stream.send_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        head = b""
        with trio.fail_after(TIMEOUT):
            while b"\r\n" not in head:
                data = await stream.receive_some(4096)
                assert data, "closed without an answer"
                head += data
        return int(head.split()[1])
    finally:
        await stream.aclose()


# -- the command line -----------------------------------------------------------------------


def run_cli(tmp_path: Path, *args: str, env: dict[str, str] | None = None) -> tuple[int, str]:
    import subprocess

    result = subprocess.run(
        [*drifttrio_command(), *args],
        env={**child_env(), **(env or {})},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )
    return result.returncode, result.stderr


@pytest.mark.parametrize(
    ("args", "env", "line"),
    [
        (
            ["--trusted-proxies", "127.0.0.1,nginx"],
            {},
            "drifttrio: trusted_proxies: 'nginx' is not an IP address or network"
            " (for example 127.0.0.1,10.0.0.0/8,::1)",
        ),
        (
            [],
            {"DRIFTTRIO_TRUSTED_PROXIES": "10.0.0.1/8"},
            "drifttrio: trusted_proxies: '10.0.0.1/8' has host bits set (did you mean 10.0.0.0/8?)",
        ),
        (
            [],
            {"DRIFTTRIO_TRUST_FORWARDED_PROTO": "true"},
            "drifttrio: DRIFTTRIO_TRUST_FORWARDED_PROTO is no longer supported: it believed"
            " X-Forwarded-Proto from any client; set DRIFTTRIO_TRUSTED_PROXIES to your"
            " reverse proxy's address instead (for example 127.0.0.1)",
        ),
    ],
    ids=["flag", "host-bits", "old-setting"],
)
def test_cli_refuses_bad_proxy_settings_in_one_line(
    tmp_path: Path, args: list[str], env: dict[str, str], line: str
) -> None:
    code, stderr = run_cli(tmp_path, "serve", "--port", "0", "--store", "memory", *args, env=env)
    assert (code, stderr) == (2, line + "\n")


async def test_cli_flag_names_the_client_in_the_log(tmp_path: Path) -> None:
    """``drifttrio serve --trusted-proxies``: a WebSocket through the "proxy" is
    logged with the client it forwards for."""
    argv = [*drifttrio_command(), "serve", "--port", "0", "--store", "memory"]
    async with trio.open_nursery() as nursery:
        flags = ["--trusted-proxies", "127.0.0.1", "--log-level", "debug"]
        child = await start_child(nursery, [*argv, *flags], tmp_path)
        try:
            match = await child.wait_for_line(r"listening on http://127\.0\.0\.1:(\d+)")
            port = int(match.group(1))
            async with httpx.AsyncClient(trust_env=False, timeout=TIMEOUT) as client:
                room = (await client.post(f"http://127.0.0.1:{port}/new")).json()["room"]
            ws = await RawWebSocket.connect("127.0.0.1", port)
            await ws.handshake(f"/room/{room}/connect", {"X-Forwarded-For": "203.0.113.7"})
            await ws.aclose()
            # One line per connection, at DEBUG, when it ends.
            await child.wait_for_line(r"connection closed .*client=203\.0\.113\.7")
        finally:
            child.process.terminate()
            with trio.fail_after(TIMEOUT):
                await child.process.wait()
