"""drifttrio behind a real nginx, configured with the snippet of
docs/single-machine.md (read from the page, so the two cannot drift apart).

nginx terminates TLS (a self-signed certificate made with ``openssl``) and
proxies to an in-process server trusting it. Through it: the published npm
client's main scenarios (tests/interop), and the per-address limit seeing each
client's own address (clients bound to 127.0.0.2 and 127.0.0.3).

Skips without nginx or openssl, unless ``DRIFTTRIO_REQUIRE_NGINX=1`` (set by
``.ci/run``): then it fails.
"""

from __future__ import annotations

import json
import logging
import os
import pwd
import re
import shutil
import socket
import ssl
import subprocess
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

pytest.register_assert_rewrite("interop.test_npm_client")

from _rawws import RawWebSocket  # noqa: E402
from drifttrio import Config, RunningServer, open_server  # noqa: E402
from interop import test_npm_client as npm  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
INTEROP_DIR = ROOT / "tests" / "interop"
TIMEOUT = 60.0  # a guard against hangs, never a way to wait for something


def require(tool: str, *fallbacks: str) -> str:
    """The tool's path, or skip (fail under ``DRIFTTRIO_REQUIRE_NGINX=1``)."""
    found = shutil.which(tool) or next((f for f in fallbacks if os.access(f, os.X_OK)), None)
    if found is None:
        if os.environ.get("DRIFTTRIO_REQUIRE_NGINX") == "1":
            pytest.fail(f"{tool} is required (DRIFTTRIO_REQUIRE_NGINX=1) but not installed")
        pytest.skip(f"{tool} is not installed (apt-get install nginx openssl)")
    return found


def docs_snippet() -> str:
    """The nginx block of docs/single-machine.md."""
    page = (ROOT / "docs" / "single-machine.md").read_text()
    blocks = re.findall(r"^```nginx\n(.*?)^```$", page, re.M | re.S)
    assert len(blocks) == 1, "docs/single-machine.md should hold one nginx block"
    return str(blocks[0])


def substitute(text: str, old: str, new: str) -> str:
    """``text`` with the one line holding ``old`` replaced: the page must still
    have it, or this test no longer tests the page."""
    lines = [line for line in text.splitlines() if old in line]
    assert len(lines) == 1, f"docs/single-machine.md: expected one line with {old!r}"
    indent = lines[0][: len(lines[0]) - len(lines[0].lstrip())]
    return text.replace(lines[0], indent + new if new else "", 1)


def nginx_config(tmp: Path, listen_port: int, upstream: int, cert: Path, key: Path) -> str:
    """A whole nginx.conf for an unprivileged, foreground nginx in ``tmp``: the
    docs' snippet, with the test's ports and certificate."""
    site = docs_snippet()
    site = substitute(site, "listen 443 ssl;", f"listen 127.0.0.1:{listen_port} ssl;")
    site = substitute(site, "listen [::]:443 ssl;", "")
    site = substitute(site, "ssl_certificate ", f"ssl_certificate {cert};")
    site = substitute(site, "ssl_certificate_key ", f"ssl_certificate_key {key};")
    site = substitute(
        site, "proxy_pass http://127.0.0.1:8080;", f"proxy_pass http://127.0.0.1:{upstream};"
    )
    temp_paths = "\n".join(
        f"    {kind}_temp_path {tmp / kind};"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    # As root, nginx would run its workers as "nobody", who cannot enter tmp.
    user = f"user {pwd.getpwuid(os.geteuid()).pw_name};" if os.geteuid() == 0 else ""
    return f"""
daemon off;
{user}
worker_processes 1;
pid {tmp / "nginx.pid"};
error_log {tmp / "error.log"} info;
events {{ worker_connections 256; }}
http {{
    access_log {tmp / "access.log"};
{temp_paths}
{site}
}}
"""


def self_signed(tmp: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1, its own CA, and its key."""
    openssl = require("openssl")
    cert, key = tmp / "cert.pem", tmp / "key.pem"
    subprocess.run(
        [
            openssl,
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
        timeout=TIMEOUT,
    )
    return cert, key


@asynccontextmanager
async def nginx_in_front_of(server: RunningServer, tmp: Path) -> AsyncIterator[str]:
    """nginx proxying to ``server``; yields its ``https://`` base URL.

    The listening socket is made here and handed to nginx the way nginx hands
    sockets to its own new binary on an upgrade (``NGINX=fd;``): no port can be
    taken in between, and connections queue in its backlog until nginx accepts,
    so there is nothing to wait for.
    """
    binary = require("nginx", "/usr/sbin/nginx")
    cert, key = self_signed(tmp)
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(128)
    port = listener.getsockname()[1]
    config = tmp / "nginx.conf"
    config.write_text(nginx_config(tmp, port, server.port, cert, key))
    process = await trio.lowlevel.open_process(
        [binary, "-p", str(tmp), "-c", str(config), "-e", str(tmp / "error.log")],
        env={**os.environ, "NGINX": f"{listener.fileno()};"},
        pass_fds=(listener.fileno(),),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    listener.close()  # nginx has it; if nginx dies, connections are refused
    try:
        yield f"https://127.0.0.1:{port}"
        assert process.poll() is None, "nginx exited:\n" + (tmp / "error.log").read_text()
    finally:
        process.terminate()  # SIGTERM: nginx's fast shutdown
        with trio.fail_after(TIMEOUT):
            await process.wait()


def client_tls(tmp: Path) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=tmp / "cert.pem")


async def run_node(
    script: str, *args: str, ca: Path, env: Mapping[str, str] | None = None
) -> dict[str, Any]:
    """Run one interop scenario script (see tests/interop/conftest.py) trusting ``ca``."""
    node = shutil.which("node")
    if node is None or not (INTEROP_DIR / "node_modules" / "driftdb").is_dir():
        if os.environ.get("DRIFTTRIO_REQUIRE_NGINX") == "1":
            pytest.fail("node and tests/interop/node_modules are required")
        pytest.skip("node or tests/interop/node_modules is missing (npm ci in tests/interop)")
    with trio.fail_after(TIMEOUT):
        proc = await trio.run_process(
            [node, str(INTEROP_DIR / script), *args],
            cwd=INTEROP_DIR,
            env={**os.environ, "NODE_EXTRA_CA_CERTS": str(ca), **(env or {})},
            capture_stdout=True,
            capture_stderr=True,
            check=False,
        )
    stdout = proc.stdout.decode(errors="replace")
    assert proc.returncode == 0, f"node {script}:\n{proc.stderr.decode(errors='replace')}"
    lines = [line for line in stdout.splitlines() if line.strip()]
    assert len(lines) == 1, f"node {script} printed:\n{stdout}"
    result: dict[str, Any] = json.loads(lines[0])
    return result


# -- the npm client through nginx -----------------------------------------------------------


@pytest.mark.interop
async def test_npm_client_through_nginx(tmp_path: Path) -> None:
    """The main npm scenarios, with nginx's URL as the server's: the room URLs the
    server hands out must be nginx's own (``wss://``, its host and port)."""
    async with (
        open_server(Config(trusted_proxies="127.0.0.1")) as server,
        nginx_in_front_of(server, tmp_path) as url,
    ):
        proxied = RunningServer(url, server.host, server.port, server.hub)
        assert proxied.ws_url.startswith("wss://127.0.0.1:")

        async def node(script: str, *args: str, env: Mapping[str, str] | None = None) -> Any:
            return await run_node(script, *args, ca=tmp_path / "cert.pem", env=env)

        await npm.test_room_api(proxied, node)
        await npm.test_state_listener(proxied, node)
        await npm.test_http_connection(proxied, node)
        await npm.test_cbor_reconnect_doubled_query(proxied, node)
        await npm.test_total_order_with_concurrent_writers(proxied, node)


# -- the per-address limit sees each client -------------------------------------------------


async def upgrade_from(
    source: str, url: str, room: str, tls: ssl.SSLContext, expect: int, **headers: str
) -> RawWebSocket:
    """A WebSocket upgrade through nginx from the local address ``source``."""
    host, port = url.removeprefix("https://").split(":")
    sock = trio.socket.socket()
    await sock.bind((source, 0))
    await sock.connect((host, int(port)))
    stream = trio.SSLStream(trio.SocketStream(sock), tls, server_hostname=host)
    ws = RawWebSocket(stream)  # type: ignore[arg-type]
    await ws.handshake(f"/room/{room}/connect", headers, expect=expect)
    return ws


async def test_per_address_limit_counts_each_client_behind_nginx(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="drifttrio.connection")
    config = Config(trusted_proxies="127.0.0.1", max_connections_per_ip=2)
    async with (
        open_server(config) as server,
        nginx_in_front_of(server, tmp_path) as url,
    ):
        tls = client_tls(tmp_path)
        async with httpx.AsyncClient(verify=tls, trust_env=False, timeout=TIMEOUT) as client:
            room = (await client.post(f"{url}/new")).json()["room"]
        sockets = [
            await upgrade_from("127.0.0.2", url, room, tls, 101),
            await upgrade_from("127.0.0.2", url, room, tls, 101),
            # The third from 127.0.0.2 is over its limit, whatever it claims to be.
            await upgrade_from("127.0.0.2", url, room, tls, 503),
            await upgrade_from(
                "127.0.0.2", url, room, tls, 503, **{"X-Forwarded-For": "127.0.0.9"}
            ),
            # Another client is not: with the proxy's address, it would be.
            await upgrade_from("127.0.0.3", url, room, tls, 101),
        ]
        for ws in sockets:
            await ws.aclose()
    # One line per connection, at its end (all ended with the server).
    ended = [r for r in caplog.records if getattr(r, "fields", {}).get("event") == "close"]
    clients = sorted(r.fields["client"] for r in ended)  # type: ignore[attr-defined]
    assert clients == ["127.0.0.2", "127.0.0.2", "127.0.0.3"]
