"""``drifttrio rooms``: list, inspect, export, import and delete stored rooms.

Export format (JSON Lines): a ``room`` line, then a ``stream`` line per key, then
an ``entry`` line per retained value, seq ascending::

    {"type":"room","room":"ID","seq":7}
    {"type":"stream","key":"chat","compacted":0}
    {"type":"entry","key":"chat","seq":3,"value":{"text":"hi"}}
    {"type":"entry","key":"blob","seq":5,"cbor":"oWFhQ..."}

A value that JSON cannot carry exactly (bytes, NaN) is written as base64 CBOR
in ``cbor`` instead of ``value``. These commands work on the store directly.
The ones that only read may run beside a server (SQLite's WAL gives them a
consistent snapshot); the ones that write take the store lock first, so they
are refused while a server holds a SQLite store (``storage/lock.py``).
"""

from __future__ import annotations

import base64
import time
from collections.abc import Iterable, Iterator
from typing import Any

import cbor2
import orjson

from ._errors import ConfigError
from .core.room_state import Stream
from .protocol.messages import SeqValue, Value
from .storage import RoomSnapshot, Storage

__all__ = ["dump_lines", "inspect_room", "list_rooms", "parse_lines"]


def _value_fields(value: Value) -> dict[str, Any]:
    try:
        text = orjson.dumps(value)
        if orjson.loads(text) == value:
            return {"value": value}
    except TypeError:
        pass
    return {"cbor": base64.b64encode(cbor2.dumps(value)).decode()}


def dump_lines(room_id: str, snapshot: RoomSnapshot) -> Iterator[str]:
    """The JSON Lines export of one room."""
    yield orjson.dumps({"type": "room", "room": room_id, "seq": snapshot.seq}).decode()
    for key, stream in sorted(snapshot.streams.items()):
        yield orjson.dumps({"type": "stream", "key": key, "compacted": stream.compacted}).decode()
    for key, stream in sorted(snapshot.streams.items()):
        for entry in stream.entries:
            line = {"type": "entry", "key": key, "seq": entry.seq, **_value_fields(entry.value)}
            yield orjson.dumps(line).decode()


def parse_lines(lines: Iterable[str]) -> tuple[str, RoomSnapshot]:
    """Read an export back: the room id it names and its snapshot."""
    room_id: str | None = None
    seq = 0
    streams: dict[str, Stream] = {}
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = orjson.loads(line)
            kind = record["type"]
            if kind == "room":
                room_id, seq = str(record["room"]), int(record["seq"])
            elif kind == "stream":
                streams.setdefault(record["key"], Stream()).compacted = int(record["compacted"])
            elif kind == "entry":
                if "cbor" in record:
                    value = cbor2.loads(base64.b64decode(record["cbor"]))
                else:
                    value = record["value"]
                entry = SeqValue(Value(value), int(record["seq"]))
                streams.setdefault(record["key"], Stream()).entries.append(entry)
            else:
                raise ValueError(f"unknown line type {kind!r}")
        except (ValueError, KeyError, TypeError, orjson.JSONDecodeError) as exc:
            raise ConfigError(f"line {number}: not a room export line ({exc})") from None
    if room_id is None:
        raise ConfigError("no room line in the export")
    for stream in streams.values():
        stream.entries.sort(key=lambda e: e.seq)
    top = max((e.seq for s in streams.values() for e in s.entries), default=0)
    return room_id, RoomSnapshot(max(seq, top), streams)


async def list_rooms(storage: Storage) -> list[dict[str, Any]]:
    """Every stored room: id, seq, last activity (ISO 8601, UTC)."""
    return [
        {"room": info.room_id, "seq": info.seq, "last_active": _iso(info.last_active)}
        for info in await storage.list_rooms()
    ]


def inspect_room(room_id: str, snapshot: RoomSnapshot) -> dict[str, Any]:
    """A summary of one room: its seq and, per key, how much is retained."""
    keys = {
        key: {
            "values": len(stream.entries),
            "first_seq": stream.entries[0].seq if stream.entries else None,
            "last_seq": stream.entries[-1].seq if stream.entries else None,
            "compacted": stream.compacted,
        }
        for key, stream in sorted(snapshot.streams.items())
    }
    return {"room": room_id, "seq": snapshot.seq, "keys": keys}


def _iso(stamp: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(stamp))
