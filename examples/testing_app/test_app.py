"""The presence service's tests: a real drifttrio in-process, on a mock clock.

Run them: pytest examples/testing_app -p drifttrio.testing.pytest_plugin
"""

from __future__ import annotations

import pytest
import trio
from presence import ONLINE_KEY, PRESENCE_KEY, PresenceTracker

from drifttrio.testing import DriftClient, DriftTestServer


@pytest.fixture
async def tracker(
    drift_server: DriftTestServer, drift_room: str, nursery: trio.Nursery
) -> PresenceTracker:
    tracker = PresenceTracker(drift_server.hub, drift_room, timeout=5, sweep_every=1)
    await nursery.start(tracker.run)
    return tracker


async def announce(client: DriftClient, name: str, value: object = None) -> None:
    await client.push(PRESENCE_KEY, {"client": name, "value": value}, "relay")


async def keep_announcing(client: DriftClient, name: str) -> None:
    while True:
        await announce(client, name)
        await trio.sleep(1)


async def watch(server: DriftTestServer, room: str) -> DriftClient:
    """A client that receives only the ``online`` key (no replay)."""
    watcher = await server.connect(room, explicit=True)
    await watcher.get(ONLINE_KEY, seq=None)
    return watcher


async def next_online(watcher: DriftClient) -> list[str]:
    message = await watcher.receive()
    assert message["type"] == "push"
    assert message["key"] == ONLINE_KEY
    return [entry["client"] for entry in message["value"]]


async def test_a_client_that_announces_itself_is_online(
    drift_server: DriftTestServer,
    drift_room: str,
    tracker: PresenceTracker,
    autojump_clock: trio.abc.Clock,
) -> None:
    watcher = await watch(drift_server, drift_room)
    alice = await drift_server.connect(drift_room)
    await announce(alice, "alice", {"cursor": [3, 4]})
    message = await watcher.receive()
    assert message["value"] == [{"client": "alice", "value": {"cursor": [3, 4]}}]
    assert trio.current_time() == drift_server.started_at  # no waiting involved


async def test_a_silent_client_goes_offline_after_the_timeout(
    drift_server: DriftTestServer,
    drift_room: str,
    tracker: PresenceTracker,
    nursery: trio.Nursery,
    autojump_clock: trio.abc.Clock,
) -> None:
    watcher = await watch(drift_server, drift_room)
    alice = await drift_server.connect(drift_room)
    bob = await drift_server.connect(drift_room)
    start = trio.current_time()
    await announce(alice, "alice")  # once, then silence
    assert await next_online(watcher) == ["alice"]
    nursery.start_soon(keep_announcing, bob, "bob")
    assert await next_online(watcher) == ["alice", "bob"]

    # Last heard at `start`, she is dropped by the first sweep more than 5 s later.
    assert await next_online(watcher) == ["bob"]
    assert trio.current_time() - start == 6


async def test_a_late_joiner_gets_the_list_from_its_get(
    drift_server: DriftTestServer,
    drift_room: str,
    tracker: PresenceTracker,
    autojump_clock: trio.abc.Clock,
) -> None:
    alice = await drift_server.connect(drift_room)
    await announce(alice, "alice")
    await trio.sleep(2)
    late = await drift_server.connect(drift_room)
    await late.get(ONLINE_KEY)
    init = await late.receive()
    assert init["type"] == "init"
    assert [entry["value"] for entry in init["data"]] == [[{"client": "alice", "value": None}]]


async def test_a_dropped_connection_times_out_like_a_silent_client(
    drift_server: DriftTestServer,
    drift_room: str,
    tracker: PresenceTracker,
    autojump_clock: trio.abc.Clock,
) -> None:
    watcher = await watch(drift_server, drift_room)
    alice = await drift_server.connect(drift_room)
    await announce(alice, "alice")
    assert await next_online(watcher) == ["alice"]
    alice.drop()  # no close frame: the network went away
    assert await next_online(watcher) == []
    assert trio.current_time() - drift_server.started_at == 6


async def test_the_list_is_published_again_after_a_failed_commit(
    drift_server: DriftTestServer,
    drift_room: str,
    tracker: PresenceTracker,
    autojump_clock: trio.abc.Clock,
) -> None:
    watcher = await watch(drift_server, drift_room)
    alice = await drift_server.connect(drift_room)
    drift_server.storage.fail_next("commit")
    await announce(alice, "alice")
    # A relay consumes a seq, so it is committed too: this one fails, and the
    # sender is told. The service never hears of it.
    assert await alice.receive() == {
        "type": "error",
        "message": "storage unavailable: push not applied",
    }
    await trio.sleep(10)
    assert tracker.last_seen == {}

    # This relay is committed; the service's own replace that follows fails.
    drift_server.storage.fail_next("commit", skip=1)
    await announce(alice, "alice")
    start = trio.current_time()
    assert await next_online(watcher) == ["alice"]
    assert trio.current_time() - start == 1  # published again by the next sweep


async def test_ten_minutes_of_presence_publish_only_changes(
    drift_server: DriftTestServer,
    drift_room: str,
    tracker: PresenceTracker,
    nursery: trio.Nursery,
    autojump_clock: trio.abc.Clock,
) -> None:
    watcher = await watch(drift_server, drift_room)
    for name in ("alice", "bob"):
        client = await drift_server.connect(drift_room, explicit=True)  # sends, reads nothing
        nursery.start_soon(keep_announcing, client, name)
    await trio.sleep(600)
    assert await next_online(watcher) in (["alice"], ["bob"])  # whoever was heard first
    assert await next_online(watcher) == ["alice", "bob"]
    assert await watcher.drain() == []  # ten minutes later: nothing else was published
    state = await drift_server.room_state(drift_room)
    assert state.values(ONLINE_KEY) == [
        [{"client": "alice", "value": None}, {"client": "bob", "value": None}]
    ]
    assert state.seq > 2 * 600  # every announcement went through the room
