"""The worst an attacker can do *within* the message-cost limits: the attacks of
``benchmarks/hostile.py`` (which this script extends, and needs beside it) with
messages just under ``max_message_nodes`` of the dearest shape, sent as fast as
the server reads them from four connections of one address, so the per-address
budgets decide the pace.

    PYTHONPATH=src flock /tmp/bench.lock python benchmarks/hostile_at_limit.py
    python benchmarks/hostile_at_limit.py --only cbor --seconds 5 --src /tmp/base/src

Same options and report as ``hostile.py``; only the attack table differs.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path

import cbor2
import trio

sys.path.insert(0, str(Path(__file__).parent))

import hostile

#: Empty arrays per message: with the envelope, just under the default limit
#: of 10,000 nodes (JSON counts an empty array as two: its ``[`` and a ``,``).
CBOR_ARRAYS = 9_980
JSON_ARRAYS = 4_990


async def _flood_rooms(
    port: int, tally: hostile.Tally, make: Callable[[], tuple[int, bytes]], query: str = ""
) -> None:
    """``hostile._flood`` on four connections, each in a room of its own: the
    attacker then decodes one echo per message, not four (it shares its process,
    and so its event loop, with the canary)."""
    rooms = [await hostile.new_room(port) for _ in range(4)]
    async with trio.open_nursery() as nursery:
        for room in rooms:
            nursery.start_soon(hostile._flood, port, room, tally, make, query, 1)


async def attack_at_limit_cbor(port: int, room: str, tally: hostile.Tally) -> None:
    """Relays of ~10,000 empty arrays (CBOR, the dearest shape per node), 4 connections."""
    frame = (0x2, cbor2.dumps(hostile._push([[] for _ in range(CBOR_ARRAYS)])))
    await _flood_rooms(port, tally, lambda: frame, "?cbor=true")


async def attack_at_limit_json(port: int, room: str, tally: hostile.Tally) -> None:
    """Relays of ~5,000 empty arrays (JSON: ~10,000 counted nodes), 4 connections."""
    frame = (0x1, json.dumps(hostile._push([[]] * JSON_ARRAYS)).encode())
    await _flood_rooms(port, tally, lambda: frame)


async def attack_at_limit_replace(port: int, room: str, tally: hostile.Tally) -> None:
    """``replace`` of ~10,000 empty arrays under a new key each time (stored, so
    also sized and encoded for the store), 4 connections."""
    body = cbor2.dumps("value") + cbor2.dumps([[] for _ in range(CBOR_ARRAYS)])
    keys = iter(range(10**9))

    def make() -> tuple[int, bytes]:
        # Splice the value in: encoding it per message would cost the attacker's
        # loop (the canary's too), not the server's.
        head = cbor2.dumps({"type": "push", "key": f"k{next(keys)}", "action": {"type": "replace"}})
        return 0x2, bytes([0xA4]) + head[1:] + body

    await _flood_rooms(port, tally, make, "?cbor=true")


hostile.ATTACKS.clear()
hostile.ATTACKS.update(
    {
        "at_limit_cbor": attack_at_limit_cbor,
        "at_limit_json": attack_at_limit_json,
        "at_limit_replace": attack_at_limit_replace,
    }
)

if __name__ == "__main__":
    hostile.main()
