"""Room ids are bearer tokens: logs and metric labels name a room by a tag instead."""

from __future__ import annotations

import hashlib
import secrets

__all__ = ["room_tag"]

# One random key per process: a tag is stable within a run (log lines about one
# room can be correlated) but reveals nothing of the id, not even a prefix, and
# cannot be checked against guessed ids by anyone without the key.
_KEY = secrets.token_bytes(16)


def room_tag(room_id: str) -> str:
    """A short, non-reversible tag for ``room_id`` (8 hex characters), for logs."""
    digest = hashlib.blake2b(room_id.encode(), key=_KEY, digest_size=4)
    return "r-" + digest.hexdigest()
