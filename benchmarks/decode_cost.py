"""What one client message costs the event loop, by shape and number of nodes.

For each wire format (JSON text, CBOR binary) and each worst shape (many tiny
containers, numbers, small maps, empty strings; byte strings for CBOR), a push
of ``N`` nodes is taken through every step the server runs without yielding:

- ``count``: :func:`drifttrio.protocol.codec.message_nodes` (the pre-scan)
- ``decode``: :func:`decode_client_message` after it (parse + ``check_value``)
- ``apply``: ``RoomState.push`` with the default caps (sizes the value as CBOR)
- ``encode``: the broadcast frame for a JSON member and for a CBOR member, and
  the store's CBOR encoding of the value

and the best of ``--repeat`` runs is printed in milliseconds, with the total per
node in microseconds. The last table is the cost of *refusing* a 1 MiB message
over the node limit (only ``count`` runs). Run it alone on the machine:

    PYTHONPATH=src flock /tmp/bench.lock python benchmarks/decode_cost.py
    PYTHONPATH=src python benchmarks/decode_cost.py --nodes 1000 10000 --repeat 3
"""

from __future__ import annotations

import argparse
import gc
import time
from collections.abc import Callable
from typing import Any

import cbor2
import orjson

from drifttrio.core.room_state import RoomLimits, RoomState
from drifttrio.protocol.codec import (
    CBOR,
    JSON,
    DecodeLimits,
    decode_client_message,
    message_nodes,
)
from drifttrio.protocol.messages import PushEvent, Replace
from drifttrio.web.frames import FRAME_ENCODERS

MIB = 1024 * 1024
UNLIMITED = DecodeLimits(max_nodes=10**9)

SHAPES: dict[str, Callable[[int], Any]] = {
    "empty arrays": lambda n: [[] for _ in range(n)],
    "numbers": lambda n: list(range(n)),
    "small maps": lambda n: [{"a": 0} for _ in range(n // 2)],
    "empty strings": lambda n: [""] * n,
}


def push(value: Any) -> dict[str, Any]:
    return {"type": "push", "key": "k", "value": value, "action": {"type": "replace"}}


def best_ms(step: Callable[[], object], repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        step()
        best = min(best, time.perf_counter() - start)
    return best * 1000


def measure(data: str | bytes, repeat: int) -> dict[str, float]:
    nodes = message_nodes(data, 10**9)
    message = decode_client_message(data, UNLIMITED)
    value = message.value  # type: ignore[union-attr]
    limits = RoomLimits(max_keys=10_000, max_stream_values=10_000, max_room_bytes=64 * MIB)
    event = PushEvent("k", value, 1)
    row = {
        "nodes": nodes,
        "count": best_ms(lambda: message_nodes(data, 10**9), repeat),
        "decode": best_ms(lambda: decode_client_message(data, UNLIMITED, nodes=nodes), repeat),
        "apply": best_ms(lambda: RoomState(limits=limits).push("k", value, Replace()), repeat),
        "encode": best_ms(
            lambda: (
                FRAME_ENCODERS[JSON].encode(event),
                FRAME_ENCODERS[CBOR].encode(event),
                cbor2.dumps(value),
            ),
            repeat,
        ),
    }
    row["total"] = row["count"] + row["decode"] + row["apply"] + row["encode"]
    row["us_per_node"] = row["total"] * 1000 / max(nodes, 1)
    return row


def frames(shape: str, n: int) -> dict[str, str | bytes]:
    value = SHAPES[shape](n)
    return {"json": orjson.dumps(push(value)).decode(), "cbor": cbor2.dumps(push(value))}


def refusals() -> dict[str, str | bytes]:
    """1 MiB messages far over any node limit: what refusing each costs."""
    body = MIB - 100
    return {
        "json [[],[],...]": "[" + "[]," * (body // 3) + "[]]",
        'json ["","",...]': "[" + '"",' * (body // 3) + '""]',
        'json ["\\\\",...]': "[" + '"\\\\",' * (body // 5) + "0]",
        "json 1 MiB string of commas": '"' + "," * body + '"',
        "cbor [[],[],...]": b"\x9f" + b"\x80" * body + b"\xff",
        "cbor 1 MiB byte string": cbor2.dumps(bytes(body)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nodes", type=int, nargs="+", default=[1_000, 10_000, 50_000])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--limit", type=int, default=10_000, help="node limit for refusals")
    args = parser.parse_args()
    gc.collect()
    cols = ("nodes", "count", "decode", "apply", "encode", "total", "us_per_node")
    print(f"{'codec':5} {'shape':14} " + " ".join(f"{c:>11}" for c in cols))
    for shape in SHAPES:
        for n in args.nodes:
            for codec, data in frames(shape, n).items():
                row = measure(data, args.repeat)
                cells = " ".join(
                    f"{row[c]:>11.0f}" if c == "nodes" else f"{row[c]:>11.2f}" for c in cols
                )
                print(f"{codec:5} {shape:14} {cells}")
    for n in args.nodes:  # byte strings: JSON members get arrays of integers
        data = cbor2.dumps(push(bytes(n * 64)))
        row = measure(data, args.repeat)
        cells = " ".join(f"{row[c]:>11.0f}" if c == "nodes" else f"{row[c]:>11.2f}" for c in cols)
        print(f"cbor  {f'bytes {n * 64 // 1024} KiB':14} {cells}")
    print(f"\nrefusing a 1 MiB message over a limit of {args.limit} nodes (count only):")
    for name, data in refusals().items():
        ms = best_ms(lambda d=data: message_nodes(d, args.limit), args.repeat)  # type: ignore[misc]
        print(f"  {name:30} {ms:8.2f} ms  (counted {message_nodes(data, args.limit)})")


if __name__ == "__main__":
    main()
