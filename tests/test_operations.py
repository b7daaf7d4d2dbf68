"""Operations: metrics, health and readiness, structured logs, the drain on SIGTERM,
and the ``drifttrio rooms`` admin commands."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import cbor2
import httpx
import pytest
import trio
from prometheus_client.parser import text_string_to_metric_families
from trio_websocket import ConnectionClosed, WebSocketConnection, open_websocket_url

from drifttrio import Config, RunningServer, open_server
from drifttrio._logging import StructuredFormatter
from drifttrio.admin import dump_lines, parse_lines
from drifttrio.cli import main
from drifttrio.core.room_state import Stream
from drifttrio.protocol.messages import SeqValue, Value
from drifttrio.runtime.hub import Hub
from drifttrio.storage import MemoryStorage, RoomSnapshot, SqliteStorage, Storage
from drifttrio.web.ops import OpsApp

ROOT = Path(__file__).resolve().parent.parent

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def _parse(text: str) -> Samples:
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def _get(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


async def _scrape(server: RunningServer) -> Samples:
    assert server.metrics_url is not None
    async with httpx.AsyncClient() as http:
        response = await http.get(f"{server.metrics_url}/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    return _parse(response.text)


@pytest.fixture
async def server() -> AsyncIterator[RunningServer]:
    async with open_server(Config(metrics_port=0)) as running:
        yield running


async def _new_room(server: RunningServer) -> str:
    async with httpx.AsyncClient() as http:
        room: str = (await http.post(f"{server.url}/new")).json()["room"]
    return room


async def _receive(ws: WebSocketConnection) -> Any:
    message = await ws.get_message()
    return cbor2.loads(message) if isinstance(message, bytes) else json.loads(message)


async def _close_code(ws: WebSocketConnection) -> int | None:
    """Read until the server closes the socket; its close code."""
    try:
        while True:
            await ws.get_message()
    except ConnectionClosed as closed:
        return closed.reason.code
    finally:
        # trio-websocket 0.12 leaks its socket when the server closed first.
        await ws._stream.aclose()


async def _wait_for(server: RunningServer, check: Any) -> Samples:
    """Scrape until ``check(samples)`` holds (the server closes sockets asynchronously)."""
    with trio.fail_after(5):
        while True:
            samples = await _scrape(server)
            if check(samples):
                return samples
            await trio.sleep(0.01)


# -- metrics ----------------------------------------------------------------------------


async def test_metrics_move_under_a_scripted_session(server: RunningServer) -> None:
    with trio.fail_after(20):
        await _scripted_session(server)


async def _scripted_session(server: RunningServer) -> None:
    before = await _scrape(server)
    room = await _new_room(server)
    url = f"{server.ws_url}/room/{room}/connect"
    async with (
        open_websocket_url(url) as a,
        open_websocket_url(url + "?cbor=true") as b,
    ):
        during = await _wait_for(
            server, lambda s: _get(s, "drifttrio_connections", transport="drifttrio", codec="cbor")
        )
        assert _get(during, "drifttrio_connections", transport="drifttrio", codec="json") == 1
        for n in range(3):
            push = {"type": "push", "key": "k", "value": n, "action": {"type": "relay"}}
            await a.send_message(json.dumps(push))
        for n in range(3):
            push = {"type": "push", "key": "c", "value": n, "action": {"type": "append"}}
            await a.send_message(json.dumps(push))
        await a.send_message(json.dumps({"type": "get", "key": "c", "seq": 0}))
        await a.send_message(json.dumps({"type": "ping", "nonce": 7}))
        await a.send_message("not json")
        seen: list[str] = []
        while len(seen) < 6 + 1 + 1 + 1 + 2:  # 6 pushes, stream_size x2, init, pong, error
            seen.append((await _receive(a))["type"])
        for _ in range(6):
            assert (await _receive(b))["type"] == "push"
        after = await _scrape(server)

    def delta(name: str, **labels: str) -> float:
        return _get(after, name, **labels) - _get(before, name, **labels)

    assert delta("drifttrio_messages_in_total", kind="relay") == 3
    assert delta("drifttrio_messages_in_total", kind="append") == 3
    assert delta("drifttrio_messages_in_total", kind="get") == 1
    assert delta("drifttrio_messages_in_total", kind="ping") == 1
    assert delta("drifttrio_messages_in_total", kind="invalid") == 1
    assert delta("drifttrio_errors_total", reason="invalid") == 1
    assert delta("drifttrio_messages_out_total", kind="push") == 12  # 6 broadcasts x 2
    assert delta("drifttrio_messages_out_total", kind="stream_size") == 2
    assert delta("drifttrio_messages_out_total", kind="init") == 1
    assert delta("drifttrio_messages_out_total", kind="pong") == 1
    assert delta("drifttrio_connections_opened_total", transport="drifttrio", codec="json") == 1
    assert delta("drifttrio_bytes_in_total", codec="json") > 100
    assert delta("drifttrio_bytes_out_total", codec="cbor") > 0
    assert delta("drifttrio_broadcast_fanout_count") == 6
    assert delta("drifttrio_broadcast_fanout_sum") == 12
    assert delta("drifttrio_commit_seconds_count") >= 1
    assert delta("drifttrio_room_batch_commands_sum") == 10  # 2 joins, 6 pushes, get, ping
    assert _get(after, "drifttrio_rooms_live") == 1
    assert _get(after, "drifttrio_rooms_stored") >= 1
    assert ("drifttrio_room_inbox_depth", frozenset({("stat", "max")})) in after

    closed = await _wait_for(
        server,
        lambda s: (
            _get(s, "drifttrio_connections", transport="drifttrio", codec="json") == 0
            and _get(s, "drifttrio_connections", transport="drifttrio", codec="cbor") == 0
        ),
    )
    assert _get(closed, "drifttrio_connections_closed_total", code="1000", reason="client") == 2


async def test_slow_clients_and_rejections_are_counted() -> None:
    config = Config(
        metrics_port=0, outbox_messages=2, max_connections_per_room=1, max_message_bytes=1000
    )
    async with open_server(config) as server:
        room = await server.hub.create_room()
        url = f"{server.ws_url}/room/{room}/connect"
        async with open_websocket_url(url) as ws:
            # A second socket to the room is over the per-room cap: 503.
            headers = {
                "connection": "upgrade",
                "upgrade": "websocket",
                "sec-websocket-version": "13",
                "sec-websocket-key": "dGhlIHNhbXBsZSBub25jZQ==",
            }
            async with httpx.AsyncClient() as http:
                refused = await http.get(f"{server.url}/room/{room}/connect", headers=headers)
                assert refused.status_code == 503
            async with httpx.AsyncClient() as http:
                too_big = await http.post(f"{server.url}/room/{room}/send", content=b"x" * 2000)
                assert too_big.status_code == 413
            # 50 pushes in one room batch overflow an outbox of 2 at once: close 4008.
            with trio.fail_after(10):
                async with trio.open_nursery() as nursery:
                    for n in range(50):
                        nursery.start_soon(server.hub.push, room, "k", n)
                assert await _close_code(ws) == 4008
        samples = await _wait_for(
            server,
            lambda s: _get(
                s, "drifttrio_connections_closed_total", code="4008", reason="slow_client"
            ),
        )
    assert _get(samples, "drifttrio_slow_client_disconnects_total") == 1
    assert _get(samples, "drifttrio_rejected_requests_total", limit="max_connections_per_room") == 1
    assert _get(samples, "drifttrio_rejected_requests_total", limit="max_message_bytes") == 1


# -- health, readiness, where /metrics is served ----------------------------------------------


async def test_health_readiness_and_metrics_placement(server: RunningServer) -> None:
    assert server.metrics_url is not None
    async with httpx.AsyncClient() as http:
        for base in (server.url, server.metrics_url):
            assert (await http.get(f"{base}/healthz")).json() == {"status": "ok"}
            assert (await http.get(f"{base}/readyz")).json() == {"ready": True}
        # /metrics is off the public listener unless public_metrics is set.
        assert (await http.get(f"{server.url}/metrics")).status_code == 404
        # The internal listener serves nothing else.
        assert (await http.get(f"{server.metrics_url}/new")).status_code == 404
        server.hub.close_all()  # the drain has begun
        ready = await http.get(f"{server.metrics_url}/readyz")
        assert ready.status_code == 503
        assert ready.json() == {"ready": False, "reason": "draining"}
        metrics = _parse((await http.get(f"{server.metrics_url}/metrics")).text)
        assert _get(metrics, "drifttrio_draining") == 1


async def test_public_metrics_and_no_inspector() -> None:
    async with (
        open_server(Config(public_metrics=True, inspector=False)) as server,
        httpx.AsyncClient() as http,
    ):
        assert server.metrics_url is None
        assert (await http.get(f"{server.url}/metrics")).status_code == 200
        assert (await http.get(f"{server.url}/ui/")).status_code == 404


async def test_inspector_files_are_served() -> None:
    async with open_server(Config()) as server, httpx.AsyncClient(base_url=server.url) as http:
        page = await http.get("/ui/")
        assert page.status_code == 200
        assert "inspector.js" in page.text
        assert "default-src 'self'" in page.headers["content-security-policy"]
        assert page.headers["referrer-policy"] == "no-referrer"
        redirect = await http.get("/ui?room=abc")
        assert redirect.status_code == 308
        assert redirect.headers["location"] == "ui/?room=abc"
        script = await http.get("/ui/inspector.js")
        assert script.headers["content-type"].startswith("text/javascript")
        assert "debug" in script.text
        assert (await http.get("/ui/secret.txt")).status_code == 404
        assert (await http.post("/ui/")).status_code == 405


async def test_readyz_fails_when_the_store_is_unreachable() -> None:
    storage = SqliteStorage(":memory:", threads=False)
    hub = Hub(Config(), storage)
    await storage.aclose()
    app = OpsApp(hub)

    async def get(path: str) -> tuple[int, Any]:
        sent: list[Any] = []

        async def receive() -> dict[str, Any]:
            return {"type": "http.request", "body": b"", "more_body": False}

        async def send(message: Any) -> None:
            sent.append(message)

        await app({"type": "http", "method": "GET", "path": path}, receive, send)
        return sent[0]["status"], json.loads(sent[1]["body"])

    assert await get("/healthz") == (200, {"status": "ok"})
    assert await get("/readyz") == (503, {"ready": False, "reason": "store unreachable"})


# -- structured logs ----------------------------------------------------------------------


async def test_connection_log_line(server: RunningServer, caplog: pytest.LogCaptureFixture) -> None:
    """One line per connection, at its end, at DEBUG (the metrics count them at INFO)."""
    caplog.set_level(logging.DEBUG, logger="drifttrio.connection")
    room = await _new_room(server)
    async with open_websocket_url(f"{server.ws_url}/room/{room}/connect") as ws:
        await ws.send_message(json.dumps({"type": "ping", "nonce": 1}))
        await ws.get_message()
    with trio.fail_after(5):
        # The server logs the close after the client has seen it: poll the records.
        while not [r for r in caplog.records if r.name == "drifttrio.connection"]:  # noqa: ASYNC110
            await trio.sleep(0.01)
    (closed,) = (r for r in caplog.records if r.name == "drifttrio.connection")
    assert closed.levelno == logging.DEBUG
    fields = closed.fields  # type: ignore[attr-defined]
    assert fields["event"] == "close"
    assert fields["codec"] == "json"
    assert fields["transport"] == "drifttrio"
    assert fields["client"] == "127.0.0.1"
    assert fields["messages_in"] == 1
    assert fields["messages_out"] == 1
    assert fields["bytes_in"] > 0
    assert fields["code"] == 1000
    assert fields["reason"] == "client"
    assert fields["duration_s"] >= 0
    for style in ("text", "kv", "json"):
        line = StructuredFormatter(style).format(closed)
        assert room not in line  # only the tag
        assert str(fields["room"]) in line


async def test_no_connection_log_line_at_info(
    server: RunningServer, caplog: pytest.LogCaptureFixture
) -> None:
    """At the default level a connection costs no log line (the metrics count it)."""
    caplog.set_level(logging.INFO, logger="drifttrio.connection")
    room = await _new_room(server)
    async with open_websocket_url(f"{server.ws_url}/room/{room}/connect") as ws:
        await ws.send_message(json.dumps({"type": "ping", "nonce": 1}))
        await ws.get_message()
    # The line would be written with the close's count, in the same step.
    await _wait_for(
        server,
        lambda s: _get(s, "drifttrio_connections_closed_total", code="1000", reason="client") > 0,
    )
    assert not [r for r in caplog.records if r.name == "drifttrio.connection"]


def test_log_formats() -> None:
    record = logging.LogRecord("drifttrio.x", logging.INFO, __file__, 1, "hello %s", ("you",), None)
    record.fields = {"room": "r-1234", "n": 2, "detail": "two words"}
    as_json = json.loads(StructuredFormatter("json").format(record))
    assert as_json["msg"] == "hello you"
    assert as_json["room"] == "r-1234"
    assert as_json["level"] == "info"
    kv = StructuredFormatter("kv").format(record)
    assert 'msg="hello you"' in kv
    assert "room=r-1234 n=2" in kv
    assert 'detail="two words"' in kv
    assert (
        StructuredFormatter("text")
        .format(record)
        .endswith('drifttrio.x: hello you room=r-1234 n=2 detail="two words"')
    )


# -- drain on SIGTERM ---------------------------------------------------------------------


async def _read_until(stream: Any, needle: bytes, buffer: bytearray) -> bytes:
    """Read ``stream`` into ``buffer`` until a line containing ``needle``; return it."""
    while True:
        for line in bytes(buffer).splitlines():
            if needle in line:
                return line
        chunk = await stream.receive_some(65536)
        if not chunk:
            raise AssertionError(f"stream ended before {needle!r}:\n{buffer.decode()}")
        buffer += chunk


async def test_sigterm_drains_with_connected_clients(tmp_path: Path) -> None:
    db = tmp_path / "drain.db"
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT / "src"),
        "DRIFTTRIO_RATE_LIMIT_PER_SECOND": "0",
    }
    command = [
        sys.executable,
        "-m",
        "drifttrio.cli",
        "serve",
        "--port",
        "0",
        "--store",
        f"sqlite:///{db}",
        "--log-format",
        "json",
        "--log-level",
        "debug",  # the connections' own lines (below)
        "--shutdown-timeout",
        "5",
    ]
    stderr = bytearray()
    proc = await trio.lowlevel.open_process(command, stderr=subprocess.PIPE, env=env)
    try:
        assert proc.stderr is not None
        with trio.fail_after(20):
            line = await _read_until(proc.stderr, b"listening on", stderr)
        url = json.loads(line)["msg"].split()[3]
        async with httpx.AsyncClient() as http:
            room = (await http.post(f"{url}/new")).json()["room"]
        acked: dict[int, dict[str, int]] = {}
        codes: list[int | None] = []
        enough = trio.Event()

        async def client(n: int) -> None:
            ws_url = f"ws{url[4:]}/room/{room}/connect"
            async with open_websocket_url(ws_url) as ws:
                sent = 0
                try:
                    while True:
                        value = {"client": n, "n": sent}
                        push = {"type": "push", "key": "log", "value": value}
                        push["action"] = {"type": "append"}
                        await ws.send_message(json.dumps(push))
                        sent += 1
                        # Read until our own push comes back: that is its acknowledgement.
                        while True:
                            message = json.loads(await ws.get_message())
                            if message["type"] == "push":
                                acked[message["seq"]] = message["value"]
                                if message["value"] == value:
                                    break
                        if len(acked) >= 300:
                            enough.set()
                except ConnectionClosed as exc:
                    codes.append(exc.reason.code)
            # trio-websocket 0.12 leaks its socket when the server closed first.
            await ws._stream.aclose()

        with trio.fail_after(30):
            async with trio.open_nursery() as nursery:
                for n in range(4):
                    nursery.start_soon(client, n)
                await enough.wait()
                proc.send_signal(signal.SIGTERM)
                started = trio.current_time()
            with trio.fail_after(10):
                assert await proc.wait() == 0
            took = trio.current_time() - started
            while chunk := await proc.stderr.receive_some(65536):
                stderr += chunk
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()

    assert codes == [1001] * 4, stderr.decode()
    assert took < 7  # within --shutdown-timeout, and then some
    storage = SqliteStorage(db, threads=False)
    snapshot = await storage.load_room(room)
    await storage.aclose()
    assert snapshot is not None
    stored = {entry.seq: entry.value for entry in snapshot.streams["log"].entries}
    for seq, value in acked.items():
        assert stored.get(seq) == value, f"acknowledged push seq {seq} was not persisted"
    lines = [json.loads(raw) for raw in stderr.decode().splitlines() if raw.startswith("{")]
    closes = [entry for entry in lines if entry.get("event") == "close"]
    assert len(closes) == 4
    assert {entry["reason"] for entry in closes} == {"shutdown"}
    assert all(room not in raw for raw in stderr.decode().splitlines())


# -- drifttrio rooms ---------------------------------------------------------------------


def _snapshot() -> RoomSnapshot:
    return RoomSnapshot(
        9,
        {
            "chat": Stream([SeqValue(Value({"text": "hi"}), 1), SeqValue(Value([1, 2.5]), 4)]),
            "blob": Stream([SeqValue(Value(b"\x00\xff"), 5)]),
            "doc": Stream([SeqValue(Value({"reset": [1, 2]}), 7), SeqValue(Value("x"), 8)], 7),
            "nan": Stream([SeqValue(Value(float("inf")), 9)]),
        },
    )


@pytest.mark.parametrize("backend", ["memory", "sqlite"])
async def test_export_import_round_trip(backend: str, tmp_path: Path) -> None:
    storage: Storage = (
        MemoryStorage() if backend == "memory" else SqliteStorage(tmp_path / "r.db", threads=False)
    )
    original = _snapshot()
    await storage.import_room("orig", original)
    loaded = await storage.load_room("orig")
    assert loaded is not None
    lines = list(dump_lines("orig", loaded))
    room_id, parsed = parse_lines(lines)
    assert room_id == "orig"
    await storage.import_room("copy", parsed)
    copy = await storage.load_room("copy")
    assert copy is not None
    assert list(dump_lines("orig", copy)) == lines
    assert copy.seq == 9
    assert copy.streams["blob"].entries[0].value == b"\x00\xff"
    assert copy.streams["doc"].compacted == 7
    # Importing again replaces the room rather than adding to it.
    await storage.import_room("copy", RoomSnapshot(1, {}))
    again = await storage.load_room("copy")
    assert again is not None
    assert again.streams == {}
    assert [info.room_id for info in await storage.list_rooms()] == ["copy", "orig"]
    await storage.aclose()


def test_rooms_commands(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    store = f"sqlite:///{tmp_path / 'admin.db'}"

    async def seed() -> None:
        storage = SqliteStorage(tmp_path / "admin.db", threads=False)
        await storage.import_room("room-a", _snapshot())
        await storage.aclose()

    trio.run(seed)

    def run(*args: str) -> str:
        assert main(["rooms", "--store", store, *args]) == 0
        return capsys.readouterr().out

    listed = [json.loads(line) for line in run("list").splitlines()]
    assert [(r["room"], r["seq"]) for r in listed] == [("room-a", 9)]
    inspected = json.loads(run("inspect", "room-a"))
    assert inspected["keys"]["chat"] == {
        "values": 2,
        "first_seq": 1,
        "last_seq": 4,
        "compacted": 0,
    }
    exported = tmp_path / "room-a.jsonl"
    run("export", "room-a", "-o", str(exported))
    run("import", str(exported), "--room", "room-b")
    assert run("export", "room-b").splitlines()[1:] == exported.read_text().splitlines()[1:]
    run("delete", "room-a")
    assert [json.loads(line)["room"] for line in run("list").splitlines()] == ["room-b"]
    assert main(["rooms", "--store", store, "inspect", "room-a"]) == 1
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"type":"entry"}\n')
    assert main(["rooms", "--store", store, "import", str(bad)]) == 2
