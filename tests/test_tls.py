"""TLS served directly (``--certfile`` / ``--keyfile``): ``https://`` and ``wss://``
on both transports, with a certificate made at test time (trustme).

Real servers on 127.0.0.1:0; clients trust only the test CA. Failed handshakes
(plain HTTP, garbage, silence) end quietly while a TLS member keeps working; the
published npm client runs over ``wss://`` under Node; a setting that cannot work
is one line on stderr and exit 2 from the real command line.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import ssl
import subprocess
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, NamedTuple

import httpx
import pytest
import trio
import trustme
from cryptography.hazmat.primitives import serialization
from trio_websocket import WebSocketConnection

from _procs import TIMEOUT, child_env, drifttrio_command, start_child
from drifttrio import Config, ConfigError, RunningServer, open_server
from drifttrio.server import TRANSPORTS
from drifttrio.web.tls import server_ssl_context
from test_durability import connect, recv, send

INTEROP = Path(__file__).resolve().parent / "interop"


class Files(NamedTuple):
    ca: Path
    cert: Path
    key: Path
    other_key: Path  # a key that does not match ``cert``


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="module")
def files(ca: trustme.CA, tmp_path_factory: pytest.TempPathFactory) -> Files:
    folder = tmp_path_factory.mktemp("tls")
    issued = ca.issue_cert("127.0.0.1", "localhost")
    other = ca.issue_cert("localhost")
    paths = Files(*(folder / name for name in ("ca.pem", "cert.pem", "key.pem", "other.pem")))
    ca.cert_pem.write_to_path(str(paths.ca))
    for blob in issued.cert_chain_pems:
        blob.write_to_path(str(paths.cert), append=True)
    issued.private_key_pem.write_to_path(str(paths.key))
    other.private_key_pem.write_to_path(str(paths.other_key))
    return paths


@pytest.fixture(scope="module")
def trusting(ca: trustme.CA) -> ssl.SSLContext:
    """A client context that trusts the test CA, and nothing else."""
    return ssl.create_default_context(cadata=ca.cert_pem.bytes().decode())


@asynccontextmanager
async def serving(
    files: Files, trusting: ssl.SSLContext, transport: str, **settings: Any
) -> AsyncIterator[tuple[RunningServer, httpx.AsyncClient]]:
    config = Config(certfile=str(files.cert), keyfile=str(files.key), **settings)
    async with (
        open_server(config, transport=transport) as server,
        httpx.AsyncClient(
            base_url=server.url, verify=trusting, trust_env=False, timeout=TIMEOUT
        ) as client,
    ):
        yield server, client


@asynccontextmanager
async def member(url: str, trusting: ssl.SSLContext) -> AsyncIterator[WebSocketConnection]:
    """A WebSocket over TLS that is a member of its room (a ping answered)."""
    async with connect(url, trusting) as ws:
        await send(ws, {"type": "ping", "nonce": 1})
        assert await recv(ws) == {"type": "pong", "nonce": 1}
        yield ws


def relay(key: str, value: object) -> dict[str, Any]:
    return {"type": "push", "key": key, "value": value, "action": {"type": "relay"}}


# -- URLs, pushes, a big init -------------------------------------------------------------


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_room_urls_say_wss_and_https(
    files: Files, trusting: ssl.SSLContext, transport: str
) -> None:
    async with serving(files, trusting, transport, metrics_port=0) as (server, client):
        assert server.url.startswith("https://127.0.0.1:")
        assert server.ws_url == "wss://" + server.url.removeprefix("https://")
        created = (await client.post("/new")).json()
        room = created["room"]
        assert created == {
            "room": room,
            "socket_url": f"{server.ws_url}/room/{room}/connect",
            "http_url": f"{server.url}/room/{room}/send",
        }
        assert (await client.get(f"/room/{room}")).json() == created
        # The internal listener stays plain HTTP.
        assert server.metrics_url is not None
        assert server.metrics_url.startswith("http://")
        async with httpx.AsyncClient(trust_env=False, timeout=TIMEOUT) as plain:
            assert (await plain.get(f"{server.metrics_url}/healthz")).status_code == 200


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_websocket_over_tls_pushes_and_receives(
    files: Files, trusting: ssl.SSLContext, transport: str
) -> None:
    async with serving(files, trusting, transport) as (_server, client):
        info = (await client.post("/new")).json()
        async with (
            member(info["socket_url"], trusting) as a,
            member(info["socket_url"], trusting) as b,
        ):
            await send(a, relay("k", {"from": "a"}))
            assert (await recv(b))["value"] == {"from": "a"}
            assert (await recv(a))["value"] == {"from": "a"}
            # And from HTTPS to the sockets.
            sent = await client.post(info["http_url"], json=relay("k", {"from": "https"}))
            assert sent.status_code == 200
            assert (await recv(a))["value"] == {"from": "https"}
            assert (await recv(b))["value"] == {"from": "https"}


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_big_init_over_tls_arrives_whole(
    files: Files, trusting: ssl.SSLContext, transport: str
) -> None:
    """6 MB of retained values, asked for with ``get``: many ``init`` chunks, each
    several TLS records, arrive in order and whole."""
    values = [f"{i:04d}" + chr(ord("a") + i % 26) * 29_996 for i in range(200)]
    async with serving(files, trusting, transport) as (_server, client):
        info = (await client.post("/new")).json()
        async with member(info["socket_url"], trusting) as writer:
            for value in values:
                push = {"type": "push", "key": "big", "value": value, "action": {"type": "append"}}
                await send(writer, push)
                while (echo := await recv(writer))["type"] != "push":
                    pass  # stream_size
                assert echo["value"] == value  # the echo: applied
        async with member(info["socket_url"], trusting) as reader:
            await send(reader, {"type": "get", "key": "big", "seq": 0})
            got: list[str] = []
            frames = 0
            while len(got) < len(values):
                message = await recv(reader)
                assert message["type"] == "init"
                got += [entry["value"] for entry in message["data"]]
                frames += 1
            assert got == values
            assert frames > 10


# -- failed handshakes ----------------------------------------------------------------------


async def _closed_by_server(server: RunningServer, data: bytes) -> bytes:
    """Connect over plain TCP, send ``data``, and read until the server closes
    the connection; return what it sent."""
    stream = await trio.open_tcp_stream(server.host, server.port)
    received = b""
    try:
        if data:
            await stream.send_all(data)
        with trio.fail_after(TIMEOUT):
            while True:
                try:
                    chunk = await stream.receive_some(65536)
                except trio.BrokenResourceError:  # reset: closed too
                    break
                if not chunk:
                    break
                received += chunk
    finally:
        await stream.aclose()
    return received


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_failed_handshakes_end_quietly_and_others_keep_working(
    files: Files, trusting: ssl.SSLContext, transport: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    async with serving(files, trusting, transport, handshake_timeout=0.5) as (server, client):
        info = (await client.post("/new")).json()
        async with member(info["socket_url"], trusting) as ws:
            hostile = [
                b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",  # plain HTTP
                os.urandom(4096),  # garbage
                b"\x16\x03\x01\x00\x20" + b"\xff" * 32,  # a handshake record that is not one
                b"\x16\x03\x01\x40\x00hello",  # a record that promises 16 KiB and stalls
                b"",  # nothing at all: the handshake deadline ends it
            ]
            async with trio.open_nursery() as nursery:
                answers: list[bytes] = []

                async def one(data: bytes) -> None:
                    answers.append(await _closed_by_server(server, data))

                for data in hostile:
                    nursery.start_soon(one, data)
            assert len(answers) == len(hostile)
            # A client that does not trust the certificate aborts its handshake.
            untrusting = ssl.create_default_context(cadata=trustme.CA().cert_pem.bytes().decode())
            stream = await trio.open_tcp_stream(server.host, server.port)
            stranger = trio.SSLStream(stream, untrusting, server_hostname="127.0.0.1")
            with pytest.raises(trio.BrokenResourceError) as refused:
                await stranger.do_handshake()
            assert isinstance(refused.value.__cause__, ssl.SSLCertVerificationError)
            await stream.aclose()
            assert not any(answer.startswith(b"HTTP/") for answer in answers)
            # The member did not notice.
            await send(ws, relay("k", "still here"))
            assert (await recv(ws))["value"] == "still here"
        assert (await client.get("/healthz")).status_code == 200
    tracebacks = [r for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR]
    assert tracebacks == []


# -- the npm client ------------------------------------------------------------------------


@pytest.mark.interop
@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_npm_client_over_wss(files: Files, trusting: ssl.SSLContext, transport: str) -> None:
    """tests/interop/room_api.js (the published ``driftdb`` client, ``ws``, fetch)
    against an ``https://`` base URL, trusting the test CA through Node's
    ``NODE_EXTRA_CA_CERTS``."""
    node = shutil.which("node")
    if node is None or not (INTEROP / "node_modules" / "driftdb").is_dir():
        pytest.skip("needs node and tests/interop/node_modules (npm ci in tests/interop)")
    async with serving(files, trusting, transport) as (server, _client):
        with trio.fail_after(60):
            proc = await trio.run_process(
                [node, str(INTEROP / "room_api.js"), server.url],
                cwd=INTEROP,
                env={**os.environ, "NODE_EXTRA_CA_CERTS": str(files.ca)},
                capture_stdout=True,
                capture_stderr=True,
                check=False,
            )
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")
    result = json.loads(proc.stdout)
    room = result["created"]["room"]
    assert result["created"]["socket_url"] == f"{server.ws_url}/room/{room}/connect"
    assert result["created"]["socket_url"].startswith("wss://")
    assert result["delivered"] == {"seq": 1, "value": {"from": "http"}}
    assert result["errors"] == []


# -- settings that cannot work ------------------------------------------------------------


@pytest.mark.parametrize(
    ("cert", "key", "message"),
    [
        ("garbage", "key", "cannot load TLS certificate {cert}: no PEM certificate in it"),
        ("key", "key", "cannot load TLS certificate {cert}: no PEM certificate in it"),
        ("cert", "garbage", "cannot load TLS key {key}: no PEM private key in it"),
        (
            "cert",
            "other_key",
            "cannot load TLS certificate {cert}: it does not match the key {key}",
        ),
        (
            "cert",
            "encrypted",
            "cannot load TLS key {key}: it is encrypted; give an unencrypted copy"
            " (openssl pkey -in {key} -out key.pem)",
        ),
        ("folder", "key", "cannot load TLS certificate {cert}: Is a directory"),
        ("cert", "missing", "cannot load TLS key {key}: No such file or directory"),
    ],
)
def test_unusable_certificate_or_key_is_named(
    files: Files, tmp_path: Path, cert: str, key: str, message: str
) -> None:
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a PEM file\n")
    encrypted = tmp_path / "encrypted.pem"
    private = serialization.load_pem_private_key(files.key.read_bytes(), password=None)
    encrypted.write_bytes(
        private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"passphrase"),
        )
    )
    paths = {
        "cert": files.cert,
        "key": files.key,
        "other_key": files.other_key,
        "garbage": garbage,
        "encrypted": encrypted,
        "folder": tmp_path,
        "missing": tmp_path / "missing.pem",
    }
    certfile, keyfile = str(paths[cert]), str(paths[key])
    with pytest.raises(ConfigError) as caught:
        server_ssl_context(certfile, keyfile)
    assert str(caught.value) == message.format(cert=certfile, key=keyfile)


def test_certfile_and_keyfile_go_together() -> None:
    with pytest.raises(ConfigError, match=r"^keyfile is set but certfile is not: TLS needs both"):
        Config(keyfile="key.pem")
    with pytest.raises(ConfigError, match=r"^certfile is set but keyfile is not: TLS needs both"):
        Config(certfile="cert.pem")


def _serve(tmp_path: Path, *args: str, env: dict[str, str] | None = None) -> tuple[int, str]:
    """``drifttrio serve --port 0 ARGS`` that must fail at startup: exit code, stderr."""
    proc = subprocess.run(
        [*drifttrio_command(), "serve", "--port", "0", *args],
        cwd=tmp_path,
        env={**child_env(), **(env or {})},
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    return proc.returncode, proc.stderr


def test_cli_missing_key_file_is_one_line_and_exit_2(files: Files, tmp_path: Path) -> None:
    missing = tmp_path / "missing-key.pem"
    code, stderr = _serve(tmp_path, "--certfile", str(files.cert), "--keyfile", str(missing))
    assert (code, stderr) == (
        2,
        f"drifttrio: cannot load TLS key {missing}: No such file or directory\n",
    )
    assert not (tmp_path / "drifttrio.db").exists(), "checked before the store was opened"


def test_cli_mismatched_key_is_one_line_and_exit_2(files: Files, tmp_path: Path) -> None:
    code, stderr = _serve(
        tmp_path, "--certfile", str(files.cert), "--keyfile", str(files.other_key)
    )
    assert (code, stderr) == (
        2,
        f"drifttrio: cannot load TLS certificate {files.cert}: "
        f"it does not match the key {files.other_key}\n",
    )


def test_cli_certfile_without_keyfile_is_one_line_and_exit_2(files: Files, tmp_path: Path) -> None:
    code, stderr = _serve(tmp_path, env={"DRIFTTRIO_CERTFILE": str(files.cert)})
    assert (code, stderr) == (
        2,
        "drifttrio: certfile is set but keyfile is not: TLS needs both"
        " (--certfile and --keyfile)\n",
    )


async def test_cli_serves_https_and_says_so(
    files: Files, trusting: ssl.SSLContext, tmp_path: Path
) -> None:
    async with trio.open_nursery() as nursery:
        child = await start_child(
            nursery,
            [
                *drifttrio_command(),
                "serve",
                "--port",
                "0",
                "--store",
                "memory",
                "--certfile",
                str(files.cert),
                "--keyfile",
                str(files.key),
            ],
            tmp_path,
        )
        try:
            match = await child.wait_for_line(r"drifttrio listening on (https://127\.0\.0\.1:\d+) ")
            async with httpx.AsyncClient(verify=trusting, trust_env=False, timeout=TIMEOUT) as c:
                created = (await c.post(f"{match.group(1)}/new")).json()
            assert created["socket_url"].startswith("wss://127.0.0.1:")
            child.process.send_signal(signal.SIGTERM)
            with trio.fail_after(TIMEOUT):
                assert await child.process.wait() == 0, child.log
        finally:
            if child.process.poll() is None:
                child.process.kill()
