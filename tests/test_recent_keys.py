"""The keys a room relayed lately: the bounded set (core/recent_keys.py, pure,
tested synchronously), and what a debug member of a room shared through Redis
gets on join (the room task is tested in test_runtime.py)."""

from __future__ import annotations

import secrets

import trio

from _redis import RedisServer
from drifttrio import Config
from drifttrio.core.recent_keys import MAX_KEY_CHARS, MAX_KEYS, RecentKeys
from drifttrio.protocol import Init, PushEvent, Relay
from drifttrio.runtime.hub import open_hub
from drifttrio.storage.redis import RedisStorage


def test_keeps_the_most_recently_used_keys_oldest_first() -> None:
    keys = RecentKeys(max_keys=3)
    for key in ["a", "b", "c", "a", "d"]:
        keys.add(key)
    # "a" was used again, so "b" is the oldest and the one forgotten.
    assert list(keys) == ["c", "a", "d"]
    assert "b" not in keys
    assert len(keys) == 3


def test_bounded_by_the_length_of_the_keys() -> None:
    keys = RecentKeys(max_keys=100, max_chars=10)
    keys.add("aaaa")
    keys.add("bbbb")
    keys.add("cccc")  # 12 characters: the oldest goes
    assert list(keys) == ["bbbb", "cccc"]
    keys.add("b" * 11)  # longer than the bound by itself: nothing is kept
    assert list(keys) == []
    keys.add("dd")
    assert list(keys) == ["dd"]


def test_defaults() -> None:
    keys = RecentKeys()
    for i in range(MAX_KEYS + 5):
        keys.add(str(i))
    assert len(keys) == MAX_KEYS
    assert next(iter(keys)) == "5"
    keys = RecentKeys()
    keys.add("x" * MAX_KEY_CHARS)
    keys.add("y")
    assert list(keys) == ["y"]


async def test_a_node_remembers_relays_from_other_nodes(redis_server: RedisServer) -> None:
    """Node a has the room loaded; b relays on ``cursor``. A debug member joining on
    either node is told of ``cursor`` (an empty init)."""
    url = f"{redis_server.url}?prefix=t{secrets.token_hex(6)}"
    async with (
        open_hub(Config(), RedisStorage(url)) as a,
        open_hub(Config(), RedisStorage(url)) as b,
    ):
        room = await a.create_room()
        async with a.subscribe(room) as events:
            await b.push(room, "cursor", {"x": 1}, Relay())
            with trio.fail_after(20):
                async for message in events:
                    if isinstance(message, PushEvent):
                        break
            for hub in (a, b):
                async with hub.subscribe(room, debug=True) as debug:
                    with trio.fail_after(20):
                        assert await anext(debug) == Init("cursor", ())
