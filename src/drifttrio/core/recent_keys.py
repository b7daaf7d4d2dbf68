"""The keys a room relayed lately, so a debug member joining later can list them.

A ``relay`` push is not retained, so nothing in the room's streams says its key
was ever used: a room inspector opened after the page's cursor started moving
would not list ``cursor`` at all. The room remembers its most recently relayed
keys here and a debug member gets an empty ``init`` for each on join.

Bounded twice, so a room costs little however its clients name their keys: the
:data:`MAX_KEYS` most recently relayed keys, and at most :data:`MAX_KEY_CHARS`
characters of key text in all (a thousand keys of 64 characters); past either,
the key relayed longest ago is forgotten. Each relay costs O(1): a dict lookup
and a move to the end. Pure: no trio, no I/O.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator

__all__ = ["MAX_KEYS", "MAX_KEY_CHARS", "RecentKeys"]

#: Most relay keys one room remembers.
MAX_KEYS = 1000
#: Most characters of relay keys one room remembers, all keys together.
MAX_KEY_CHARS = 65536


class RecentKeys:
    """The most recently used keys, oldest first, bounded by count and by length."""

    def __init__(self, max_keys: int = MAX_KEYS, max_chars: int = MAX_KEY_CHARS) -> None:
        self.max_keys = max_keys
        self.max_chars = max_chars
        #: key -> None, in order of last use (an OrderedDict: O(1) move and pop at
        #: either end, where a plain dict's oldest key can take a scan to find).
        self._keys: OrderedDict[str, None] = OrderedDict()
        self._chars = 0

    def add(self, key: str) -> None:
        """Note that ``key`` was used now; forget the oldest keys beyond the bounds."""
        keys = self._keys
        if key in keys:
            keys.move_to_end(key)
            return
        keys[key] = None
        self._chars += len(key)
        while len(keys) > self.max_keys or self._chars > self.max_chars:
            oldest, _ = keys.popitem(last=False)
            self._chars -= len(oldest)

    def __iter__(self) -> Iterator[str]:
        return iter(self._keys)

    def __len__(self) -> int:
        return len(self._keys)

    def __contains__(self, key: object) -> bool:
        return key in self._keys
