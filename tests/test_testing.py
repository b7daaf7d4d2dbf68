"""drifttrio.testing and its pytest plugin: a real server in-process, on the mock clock.

Every test here runs the real hub, room tasks, storage and transports over
in-memory connections, under ``autojump_clock``: no sockets, no ports, no real
sleeps. Time-based behaviour is asserted in virtual seconds, and the tests that
let hours pass also assert that the real time stayed small.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import httpx
import pytest
import trio
import trio.testing
from trio_websocket import ConnectionClosed, ConnectionRejected

from drifttrio import CloseCode, Config, StorageError
from drifttrio.testing import (
    DriftClient,
    DriftTestServer,
    Message,
    connection_pair,
    open_test_server,
    settle,
)

pytest_plugins = ["drifttrio.testing.pytest_plugin"]

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE_APP = ROOT / "examples" / "testing_app"

#: Real seconds a test that lets hours of virtual time pass may take (generous for CI).
REAL_BUDGET = 5.0


def _push(key: str, value: object, action: str = "append") -> dict[str, object]:
    return {"type": "push", "key": key, "value": value, "action": {"type": action}}


async def _receive_until_closed(client: DriftClient) -> list[Message]:
    messages = []
    while True:
        try:
            messages.append(await client.receive())
        except ConnectionClosed:
            return messages


# -- the in-memory connection ------------------------------------------------------


async def test_connection_pair_is_a_well_behaved_trio_stream() -> None:
    async def unclogged() -> tuple[trio.abc.HalfCloseableStream, trio.abc.HalfCloseableStream]:
        return connection_pair()

    async def clogged() -> tuple[trio.abc.HalfCloseableStream, trio.abc.HalfCloseableStream]:
        # One byte of buffer, already full in both directions: every send waits.
        left, right = connection_pair(capacity=1)
        await left.send_all(b"x")
        await right.send_all(b"x")
        return left, right

    await trio.testing.check_half_closeable_stream(unclogged, clogged)


async def test_a_stalled_reader_makes_the_writer_wait(autojump_clock: trio.abc.Clock) -> None:
    client, server = connection_pair(capacity=10)
    client.pause_reading()
    await server.send_all(b"0123456789")  # fills the buffer
    with trio.move_on_after(1) as scope:
        await server.send_all(b"more")
    assert scope.cancelled_caught, "a full buffer must make send_all wait"
    client.resume_reading()
    assert await client.receive_some() == b"0123456789"


# -- the wire protocol, end to end -----------------------------------------------


@pytest.mark.parametrize("drift_transport", ["drifttrio", "hypercorn"])
async def test_push_get_ping_over_the_wire(
    drift_server: DriftTestServer, drift_room: str, autojump_clock: trio.abc.Clock
) -> None:
    alice = await drift_server.connect(drift_room)
    bob = await drift_server.connect(drift_room, cbor=True)
    await alice.get("chat")
    assert await alice.receive() == {"type": "init", "key": "chat", "data": []}

    await alice.push("chat", "hi")
    await alice.push("chat", "there")
    assert await alice.receive() == {"type": "push", "key": "chat", "value": "hi", "seq": 1}
    assert await alice.receive() == {"type": "push", "key": "chat", "value": "there", "seq": 2}
    assert await alice.receive() == {"type": "stream_size", "key": "chat", "size": 2}
    # bob asked for CBOR frames: byte strings survive, and he sees the same order.
    await bob.push("blob", b"\x00\xff", "replace")
    assert await bob.receive() == {"type": "push", "key": "chat", "value": "hi", "seq": 1}
    assert await bob.receive() == {"type": "push", "key": "chat", "value": "there", "seq": 2}
    assert await bob.receive() == {"type": "push", "key": "blob", "value": b"\x00\xff", "seq": 3}
    await bob.ping(7)
    assert await bob.receive() == {"type": "pong", "nonce": 7}
    assert bob.last_seq == 3
    assert trio.current_time() == drift_server.started_at, "nothing here waits on time"


async def test_http_routes_and_httpx_transport(
    drift_server: DriftTestServer, autojump_clock: trio.abc.Clock
) -> None:
    created = await drift_server.request("POST", "/new")
    assert created.status == 200
    info = created.json()
    assert info["socket_url"] == f"ws://drift.test/room/{info['room']}/connect"
    assert created.header("Access-Control-Allow-Origin") == "*"

    reply = await drift_server.send(info["room"], _push("k", 1))
    assert (reply.status, reply.json()) == (200, None)
    missing = await drift_server.send("no-such-room", _push("k", 1))
    assert missing.status == 404

    transport = drift_server.httpx_transport()
    async with httpx.AsyncClient(transport=transport, base_url="http://drift.test") as http:
        got = await http.get(f"/room/{info['room']}")
        assert got.status_code == 200
        assert got.json() == info
        sent = await http.post(f"/room/{info['room']}/send", json=_push("k", 2))
        assert sent.json() == {"type": "stream_size", "key": "k", "size": 2}

    # The socket_url from /new works as is.
    client = await drift_server.connect(info["socket_url"])
    await client.get("k")
    init = await client.receive()
    assert [entry["value"] for entry in init["data"]] == [1, 2]


async def test_unknown_room_is_rejected_before_the_upgrade(
    drift_server: DriftTestServer, autojump_clock: trio.abc.Clock
) -> None:
    with pytest.raises(ConnectionRejected) as caught:
        await drift_server.connect("no-such-room")
    assert caught.value.status_code == 404


@pytest.mark.parametrize("drift_config", [Config(new_rooms_per_minute=2)], ids=["2perminute"])
async def test_per_address_limits_see_the_client_address(
    drift_server: DriftTestServer, autojump_clock: trio.abc.Clock
) -> None:
    async def new_room_from(ip: str) -> int:
        response = await drift_server.request("POST", "/new", client_address=(ip, 50000))
        return response.status

    start = trio.current_time()
    assert [await new_room_from("10.0.0.1") for _ in range(3)] == [200, 200, 429]
    assert await new_room_from("10.0.0.2") == 200
    await trio.sleep_until(start + 29.9)
    assert await new_room_from("10.0.0.1") == 429
    await trio.sleep_until(start + 30.1)  # two per minute: a new one every 30 s
    assert await new_room_from("10.0.0.1") == 200


# -- slow clients -------------------------------------------------------------------


@pytest.mark.parametrize("drift_transport", ["hypercorn"])
@pytest.mark.parametrize("drift_config", [Config(outbox_messages=4)], ids=["outbox4"])
async def test_slow_client_is_disconnected_with_4008(
    drift_server: DriftTestServer, drift_room: str, autojump_clock: trio.abc.Clock
) -> None:
    slow = await drift_server.connect(drift_room, buffer_bytes=1024)
    fast = await drift_server.connect(drift_room)
    slow.stall()
    start = trio.current_time()
    for i in range(100):
        await drift_server.hub.push(drift_room, "k", i)
        await settle()  # the fast client keeps up: its outbox never holds more than one

    # The room kicked the slow member and went on: no virtual time passed.
    assert trio.current_time() == start
    members = (await drift_server.room_state(drift_room)).members
    assert sorted(m.close_code or 0 for m in members) == [0, CloseCode.SLOW_CLIENT]
    assert [m["seq"] for m in await fast.drain()] == list(range(1, 101))

    # hypercorn's write is stuck (the client reads nothing) until the client reads again;
    # then it gets what was buffered, in order, and the 4008 close.
    assert not slow.server_done.is_set()
    slow.resume()
    seqs = [message["seq"] for message in await _receive_until_closed(slow)]
    assert slow.close_code == CloseCode.SLOW_CLIENT
    assert seqs == list(range(1, len(seqs) + 1))
    assert len(seqs) < 100
    await settle()
    assert slow.server_done.is_set()
    assert (await drift_server.room_state(drift_room)).open_members == 1


@pytest.mark.parametrize(
    "drift_config", [Config(outbox_messages=4, write_timeout=5.0)], ids=["timeout5"]
)
async def test_stalled_client_is_cut_off_after_write_timeout(
    drift_server: DriftTestServer, drift_room: str, autojump_clock: trio.abc.Clock
) -> None:
    """drifttrio's own transport bounds every write: a stalled client is cut off."""
    slow = await drift_server.connect(drift_room, buffer_bytes=1024)
    slow.stall()
    start = trio.current_time()
    for i in range(100):
        await drift_server.hub.push(drift_room, "k", i)
    assert trio.current_time() == start, "pushes never wait for a slow member"

    await slow.server_done.wait()
    assert trio.current_time() - start == pytest.approx(5.0)
    slow.resume()
    reason = await slow.wait_closed()
    assert reason.code == 1006  # cut off: no close frame could be written
    await settle()
    assert (await drift_server.room_state(drift_room)).members == ()


@pytest.mark.parametrize(
    "drift_config", [Config(outbox_messages=2, slow_client_policy="drop")], ids=["drop"]
)
async def test_drop_policy_tells_the_client_which_seqs_it_missed(
    drift_server: DriftTestServer, drift_room: str, autojump_clock: trio.abc.Clock
) -> None:
    client = await drift_server.connect(drift_room, buffer_bytes=256)
    client.stall()
    for i in range(1, 41):
        await drift_server.hub.push(drift_room, "k", i)
    await settle()
    [member] = (await drift_server.room_state(drift_room)).members
    assert member.dropped > 0
    assert not member.closed

    client.resume()
    before = await client.drain()
    await drift_server.hub.push(drift_room, "k", 41)  # the next frame brings the report
    after = await client.drain()
    seqs = [m["seq"] for m in before]
    assert seqs == list(range(1, len(seqs) + 1))
    first_missed = len(seqs) + 1
    assert after == [
        {
            "type": "error",
            "message": f"slow connection: {member.dropped} message(s) dropped "
            f"(seq {first_missed}..40)",
        },
        {"type": "push", "key": "k", "value": 41, "seq": 41},
    ]


# -- time: idle rooms, TTL ----------------------------------------------------------


@pytest.mark.parametrize("drift_config", [Config(room_idle_seconds=60)], ids=["idle60"])
async def test_idle_room_is_unloaded_after_room_idle_seconds(
    drift_server: DriftTestServer, drift_room: str, autojump_clock: trio.abc.Clock
) -> None:
    client = await drift_server.connect(drift_room)
    await client.push("k", "kept")
    assert (await client.receive())["seq"] == 1
    await trio.sleep(3600)  # a member keeps the room live, however long
    assert (await drift_server.room_state(drift_room)).live

    await client.aclose()
    left = trio.current_time()
    await trio.sleep_until(left + 59.9)
    assert (await drift_server.room_state(drift_room)).live
    await trio.sleep_until(left + 60.1)
    view = await drift_server.room_state(drift_room)
    assert not view.live
    assert view.values("k") == ["kept"]  # unloaded, not deleted
    again = await drift_server.connect(drift_room)
    await again.get("k")
    assert (await again.receive())["data"] == [{"value": "kept", "seq": 1}]


@pytest.mark.parametrize("drift_store", ["memory", "sqlite"])
@pytest.mark.parametrize(
    "drift_config", [Config(room_ttl_seconds=3600, room_idle_seconds=60)], ids=["ttl1h"]
)
async def test_room_expires_after_its_ttl_in_virtual_time(
    drift_server: DriftTestServer, autojump_clock: trio.abc.Clock
) -> None:
    real_start = time.perf_counter()
    t0 = drift_server.started_at
    room = await drift_server.new_room()
    assert (await drift_server.send(room, _push("k", 1))).status == 200
    # Activity at t0, unloaded (and touched) at t0+60; the expiry pass runs every
    # 300 s (ttl / 4, at most 300), so the first pass past t0+60+3600 deletes it.
    await trio.sleep_until(t0 + 3899)
    assert (await drift_server.request("GET", f"/room/{room}")).status == 200
    await trio.sleep_until(t0 + 3901)
    assert (await drift_server.request("GET", f"/room/{room}")).status == 404

    assert trio.current_time() - t0 == pytest.approx(3901)
    assert time.perf_counter() - real_start < REAL_BUDGET


# -- reconnecting ---------------------------------------------------------------------


async def test_reconnecting_client_resumes_from_its_last_seq(
    drift_server: DriftTestServer, drift_room: str, autojump_clock: trio.abc.Clock
) -> None:
    alice = await drift_server.connect(drift_room)
    await alice.get("chat")
    assert (await alice.receive())["data"] == []
    for i in range(3):
        await drift_server.hub.push(drift_room, "chat", f"m{i}")
    assert [(await alice.receive())["value"] for _ in range(3)] == ["m0", "m1", "m2"]
    assert alice.last_seq == 3

    alice.drop()
    await settle()
    assert alice.close_code == 1006
    assert alice.server_done.is_set(), "the server notices a dropped connection at once"
    assert (await drift_server.room_state(drift_room)).members == ()
    for i in range(3, 5):
        await drift_server.hub.push(drift_room, "chat", f"m{i}")

    again = await drift_server.connect(drift_room)
    await again.get("chat", seq=alice.last_seq)
    init = await again.receive()
    assert init["data"] == [{"value": "m3", "seq": 4}, {"value": "m4", "seq": 5}]
    assert again.last_seq == 5


# -- storage faults ------------------------------------------------------------------


@pytest.mark.parametrize("drift_store", ["memory", "sqlite"])
async def test_failed_commit_consumes_no_seq(
    drift_server: DriftTestServer,
    drift_room: str,
    drift_client: DriftClient,
    autojump_clock: trio.abc.Clock,
) -> None:
    drift_server.storage.fail_next("commit")
    await drift_client.push("k", "lost")
    assert await drift_client.receive() == {
        "type": "error",
        "message": "storage unavailable: push not applied",
    }
    await drift_client.push("k", "kept")
    assert await drift_client.receive() == {"type": "push", "key": "k", "value": "kept", "seq": 1}

    drift_server.storage.fail_next("commit")
    reply = await drift_server.send(drift_room, _push("k", "lost again"))
    assert reply.status == 503
    drift_server.storage.fail_next("commit")
    with pytest.raises(StorageError):
        await drift_server.hub.push(drift_room, "k", "lost in-process")
    assert (await drift_server.room_state(drift_room)).values("k") == ["kept"]
    assert drift_server.storage.calls["commit"] == 4


async def test_nobody_sees_a_seq_before_it_is_committed(
    drift_server: DriftTestServer, drift_client: DriftClient, autojump_clock: trio.abc.Clock
) -> None:
    gate = drift_server.storage.hold("commit")
    await drift_client.push("k", 1)
    await settle()
    assert await drift_client.drain() == []
    gate.set()
    assert (await drift_client.receive())["seq"] == 1


# -- shutdown --------------------------------------------------------------------------


async def test_shutdown_closes_members_with_1001(
    drift_server: DriftTestServer, drift_client: DriftClient, autojump_clock: trio.abc.Clock
) -> None:
    await drift_server.shutdown()
    assert (await drift_client.wait_closed()).code == CloseCode.GOING_AWAY
    assert drift_server.open_connections == 0


async def test_open_test_server_without_the_plugin(autojump_clock: trio.abc.Clock) -> None:
    async with open_test_server(Config(room_idle_seconds=1)) as server:
        room = await server.new_room()
        async with await server.connect(room) as client:
            await client.ping()
            assert await client.receive() == {"type": "pong", "nonce": None}
        await trio.sleep(2)
        assert not (await server.room_state(room)).live
    assert server.open_connections == 0


async def test_leaving_the_server_block_with_a_stuck_client_does_not_hang(
    autojump_clock: trio.abc.Clock,
) -> None:
    config = Config(outbox_messages=2)
    with trio.fail_after(config.write_timeout + 1):
        async with open_test_server(config, transport="hypercorn") as server:
            room = await server.new_room()
            client = await server.connect(room, buffer_bytes=64)
            client.stall()
            for i in range(20):
                await server.hub.push(room, "k", i)
            await settle()
            assert not client.server_done.is_set(), "hypercorn's write is stuck on the client"
    assert client.server_done.is_set()
    assert server.open_connections == 0


_STUCK_UNDER_MOCK_CLOCK = """
import trio, trio.testing
from drifttrio import Config
from drifttrio.testing import open_test_server, settle

async def main():
    async with open_test_server(Config(outbox_messages=2), transport="hypercorn") as server:
        room = await server.new_room()
        client = await server.connect(room, buffer_bytes=64)
        client.stall()
        for i in range(20):
            await server.hub.push(room, "k", i)
        await settle()
    clock = trio.lowlevel.current_clock()
    print("done at", trio.current_time(), "threshold", clock.autojump_threshold)

trio.run(main, clock=trio.testing.MockClock())
"""


async def test_leaving_the_server_block_under_a_non_jumping_mock_clock() -> None:
    """Shutdown deadlines pass even on a mock clock that the test never jumps."""
    with trio.fail_after(60):  # real seconds: this test runs on the real clock
        result = await trio.run_process(
            [sys.executable, "-c", _STUCK_UNDER_MOCK_CLOCK],
            capture_stdout=True,
            capture_stderr=True,
            check=False,
            env=_env(),
        )
    assert result.returncode == 0, result.stderr.decode()
    assert b"threshold inf" in result.stdout, "the clock's setting is restored"


# -- the plugin, and the example application's suite ------------------------------


def test_public_names_resolve() -> None:
    import drifttrio.testing

    assert len(set(drifttrio.testing.__all__)) == len(drifttrio.testing.__all__)
    for name in drifttrio.testing.__all__:
        assert getattr(drifttrio.testing, name) is not None, name
    with pytest.raises(AttributeError):
        _ = drifttrio.testing.no_such_name  # type: ignore[attr-defined]


def test_loading_the_plugin_costs_nothing() -> None:
    """Every pytest run with drifttrio installed loads the plugin: it imports no server."""
    code = (
        "import sys, drifttrio.testing.pytest_plugin; "
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in "
        "('trio', 'hypercorn', 'trio_websocket', 'h11', 'wsproto', 'cbor2') "
        "or m.startswith(('drifttrio.runtime', 'drifttrio.web', 'drifttrio.testing._'))); "
        "print(heavy); sys.exit(1 if heavy else 0)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=_env(), check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


def _env(extra_path: Path | None = None) -> dict[str, str]:
    env = dict(os.environ)
    paths = [str(ROOT / "src"), str(extra_path or ""), env.get("PYTHONPATH", "")]
    env["PYTHONPATH"] = os.pathsep.join(p for p in paths if p)
    return env


async def _pytest(*args: str, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    with trio.fail_after(120):
        result = await trio.run_process(
            [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", *args],
            capture_stdout=True,
            capture_stderr=True,
            check=False,
            cwd=cwd,
            env=env,
        )
    return subprocess.CompletedProcess(
        result.args, result.returncode, result.stdout.decode(), result.stderr.decode()
    )


_PLUGIN_TESTS = """
import trio

async def test_with_clock(drift_server, drift_client, autojump_clock):
    await trio.sleep(86400)
    await drift_client.ping(1)
    assert (await drift_client.receive())["nonce"] == 1

async def test_without_clock(drift_server):
    pass
"""


async def test_plugin_is_opt_in_and_coexists_with_its_entry_point(tmp_path: Path) -> None:
    (tmp_path / "pytest.ini").write_text("[pytest]\ntrio_mode = true\nfilterwarnings = error\n")
    (tmp_path / "test_plugin_use.py").write_text(_PLUGIN_TESTS)
    # An installed drifttrio registers the plugin as an entry point named like the
    # module, so `-p drifttrio.testing.pytest_plugin` on top of it is not a conflict.
    site = tmp_path / "site"
    dist = site / "drifttrio_ep_probe-0.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: drifttrio-ep-probe\nVersion: 0\n")
    (dist / "entry_points.txt").write_text(
        "[pytest11]\ndrifttrio.testing.pytest_plugin = drifttrio.testing.pytest_plugin\n"
    )
    runs = [
        (_env(), ["-p", "drifttrio.testing.pytest_plugin"]),  # opted in
        (_env(site), ["-p", "drifttrio.testing.pytest_plugin"]),  # opted in, and installed
        (_env(site), []),  # installed: the entry point loads it
    ]
    for env, args in runs:
        result = await _pytest(*args, "-q", str(tmp_path), cwd=tmp_path, env=env)
        out = result.stdout
        assert "1 failed, 1 passed" in out, out + result.stderr
        assert "drift_server runs on trio's mock clock" in out, out


async def test_example_app_suite_passes_in_virtual_time(tmp_path: Path) -> None:
    """CI runs the example application's own suite; each test takes little real time."""
    report = tmp_path / "report.xml"
    result = await _pytest(
        str(EXAMPLE_APP),
        "-p",
        "drifttrio.testing.pytest_plugin",
        f"--junitxml={report}",
        "-q",
        cwd=ROOT,
        env=_env(),
    )
    assert result.returncode == 0, result.stdout + result.stderr
    cases = ET.parse(report).getroot().iter("testcase")
    timings = {case.get("name", "?"): float(case.get("time", "nan")) for case in cases}
    print("\nexamples/testing_app real time per test:")
    for name, seconds in timings.items():
        print(f"  {seconds * 1000:8.1f} ms  {name}")
    assert len(timings) >= 4
    assert max(timings.values()) < REAL_BUDGET, timings


def test_docs_show_the_example_app_verbatim() -> None:
    page = (ROOT / "docs" / "testing.md").read_text()
    pattern = r"^`examples/testing_app/([\w.]+)`:\n\n```python\n(.*?)^```$"
    blocks = re.findall(pattern, page, re.M | re.S)
    assert {name for name, _ in blocks} == {"presence.py", "test_app.py"}
    for name, code in blocks:
        assert code == (EXAMPLE_APP / name).read_text(), f"docs/testing.md is out of date: {name}"
