"""The bounded set of keys a room relayed lately (core/recent_keys.py): pure, synchronous."""

from __future__ import annotations

from drifttrio.core.recent_keys import MAX_KEY_CHARS, MAX_KEYS, RecentKeys


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
