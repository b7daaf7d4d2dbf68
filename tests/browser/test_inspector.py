"""The room inspector (/ui, served by drifttrio itself) in headless Chromium.

It opens a room that already holds values, shows its keys and retained streams,
updates live when a page on the npm client pushes, browses a key at an older
seq, and its push form delivers to that npm-client page.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from drifttrio import RunningServer
from drifttrio.core import StreamChange
from drifttrio.protocol.messages import Relay, Replace, SeqValue, Value

pytestmark = pytest.mark.browser

Drive = Callable[[RunningServer, list[dict[str, Any]]], Awaitable[dict[str, Any]]]


async def test_inspector_live_room(server: RunningServer, drive: Drive, artifacts: Path) -> None:
    hub = server.hub
    room = await hub.create_room()
    await hub.push(room, "chat", {"text": "first"})  # seq 1
    await hub.push(room, "chat", {"text": "second"})  # seq 2
    await hub.push(room, "settings", {"theme": "dark"}, Replace())  # seq 3
    shot = artifacts / "inspector.png"
    result = await drive(
        server,
        [
            {"op": "open", "page": "app", "room": room},  # the npm client
            {"op": "inspect", "page": "ui", "room": room},
            {"op": "wait_key", "page": "ui", "key": "chat", "retained": 2},
            {"op": "wait_key", "page": "ui", "key": "settings", "retained": 1},
            # Another client pushes: the inspector updates live.
            {"op": "push", "page": "app", "value": json.dumps({"text": "from npm"})},
            {"op": "wait_key", "page": "ui", "key": "chat", "retained": 3},
            # The inspector's push form reaches the npm-client page.
            {
                "op": "inspect_push",
                "page": "ui",
                "key": "chat",
                "action": "append",
                "value": json.dumps({"text": "from the inspector"}),
            },
            {"op": "wait_log_text", "page": "app", "text": "from the inspector"},
            {"op": "wait_key", "page": "ui", "key": "chat", "retained": 4},
            # Time travel: the chat stream as it was at its first retained seq.
            {"op": "time_travel", "page": "ui", "key": "chat", "index": 0},
            {"op": "screenshot", "page": "ui", "path": str(shot)},
        ],
    )
    ui = result["pages"]["ui"]
    assert ui["state_attr"] == "live", ui["status"]
    assert ui["room"] == room
    assert {k["key"]: k["retained"] for k in ui["keys"]} == {"chat": 4, "settings": 1}
    assert ui["at_seq"].startswith("seq 1 ")
    assert ui["stream_at"] == ['#1 {"text":"first"}']
    assert json.loads(ui["value_at"]) == {"text": "first"}
    assert any('"from npm"' in line for line in ui["live"])
    assert result["console_errors"] == {"app": [], "ui": []}
    app_log = [entry["text"] for entry in result["pages"]["app"]["log"]]
    assert app_log[-1] == '#5 {"text":"from the inspector"}'
    stored = await hub.get(room, "chat")
    assert [entry.value for entry in stored][-1] == {"text": "from the inspector"}
    assert shot.stat().st_size > 10_000


async def test_inspector_long_stream_and_compact(server: RunningServer, drive: Drive) -> None:
    """A stream longer than one init chunk arrives whole (several inits on join);
    later changes arrive as a push and the key's new length, and the page rebuilds
    the stream from them: here a compact from the inspector's own push form."""
    hub = server.hub
    room = await hub.create_room()
    values = [
        StreamChange("append", "log", SeqValue(Value({"i": i, "pad": "x" * 40}), i))
        for i in range(1, 3001)
    ]
    await hub.storage.commit(room, 3000, values)
    result = await drive(
        server,
        [
            {"op": "inspect", "page": "ui", "room": room},
            {"op": "wait_key", "page": "ui", "key": "log", "retained": 3000},
            {
                "op": "inspect_push",
                "page": "ui",
                "key": "log",
                "action": "compact",
                "seq": 2995,
                "value": json.dumps({"reset": True}),
            },
            # Messages arrive in order: once "fresh" shows, the compact was applied.
            {"op": "inspect_push", "page": "ui", "key": "fresh", "action": "append", "value": "1"},
            {"op": "wait_key", "page": "ui", "key": "fresh", "retained": 1},
            {"op": "time_travel", "page": "ui", "key": "log", "index": 0},
        ],
    )
    ui = result["pages"]["ui"]
    assert {k["key"]: k["retained"] for k in ui["keys"]} == {"log": 6, "fresh": 1}
    assert ui["stream_at"] == ['#2995 {"reset":true}']
    # The 3,000 values came in several inits: one live entry says so.
    inits = [e for e in ui["live_entries"] if e["type"] == "init"]
    assert [(e["key"], e["values"]) for e in inits] == [("log", 3000)]
    assert any("in " in line and "messages" in line for line in ui["live"] if " init " in line)
    assert result["console_errors"] == {"ui": []}
    assert [e.seq for e in await hub.get(room, "log")] == [2995, 2996, 2997, 2998, 2999, 3000]


async def test_inspector_shows_pushes_not_streams(server: RunningServer, drive: Drive) -> None:
    """On a key with 5,000 values, "Live messages" shows one entry per push (its
    new stream size beside it) and one for the join, never the stream; the keys
    panel keeps the stream and the size the server reported."""
    hub = server.hub
    room = await hub.create_room()
    values = [
        StreamChange("append", "log", SeqValue(Value({"i": i, "pad": "x" * 40}), i))
        for i in range(1, 5001)
    ]
    await hub.storage.commit(room, 5000, values)

    def push(key: str, action: str, value: object) -> dict[str, Any]:
        return {
            "op": "inspect_push",
            "page": "ui",
            "key": key,
            "action": action,
            "value": json.dumps(value),
        }

    result = await drive(
        server,
        [
            {"op": "open", "page": "app", "room": room},  # the npm client
            {"op": "inspect", "page": "ui", "room": room},
            {"op": "wait_key", "page": "ui", "key": "log", "retained": 5000},
            push("log", "append", {"i": 5001}),
            push("log", "append", {"i": 5002}),
            # A relay of a long stream's key: the page gets the sender's stream_size
            # reply, which must not be taken for a change.
            push("log", "relay", {"relayed": True}),
            {"op": "push", "page": "app", "value": json.dumps({"text": "from npm"})},
            {"op": "wait_key", "page": "ui", "key": "chat", "retained": 1},
            push("fresh", "append", 1),
            {"op": "wait_key", "page": "ui", "key": "fresh", "retained": 1},
            {"op": "time_travel", "page": "ui", "key": "log", "index": 5001},
        ],
    )
    ui = result["pages"]["ui"]
    assert result["console_errors"] == {"app": [], "ui": []}
    assert {k["key"]: k["retained"] for k in ui["keys"]} == {"log": 5002, "chat": 1, "fresh": 1}
    entries = ui["live_entries"]
    assert {e["type"] for e in entries} == {"init", "push"}, "stream_size is shown with its push"
    assert [(e["key"], e["values"]) for e in entries if e["type"] == "init"] == [("log", 5000)]
    # Newest first: one entry per push, with the stream's size after a change.
    assert [(e["key"], e["size"]) for e in entries if e["type"] == "push"] == [
        ("fresh", 1),
        ("chat", 1),
        ("log", None),
        ("log", 5002),
        ("log", 5001),
    ]
    assert max(e["length"] for e in entries) < 300, ui["live"]
    # The stream as the page rebuilt it: the relayed value is not in it.
    assert ui["at_seq"].startswith("seq 5002 (5002 of 5002)")
    assert json.loads(ui["value_at"]) == {"i": 5002}
    assert len(ui["stream_at"]) == 200
    assert len(await hub.get(room, "log")) == 5002


async def test_inspector_lists_relay_keys_used_before_it_opened(
    server: RunningServer, drive: Drive
) -> None:
    """Relay values are not retained, but the room remembers the keys relayed
    lately and the inspector lists them (with nothing retained)."""
    hub = server.hub
    room = await hub.create_room()
    await hub.push(room, "cursor", {"x": 10, "y": 20}, Relay())
    await hub.push(room, "chat", {"text": "hi"})
    result = await drive(
        server,
        [
            {"op": "inspect", "page": "ui", "room": room},
            {"op": "wait_key", "page": "ui", "key": "chat", "retained": 1},
            {"op": "wait_key", "page": "ui", "key": "cursor", "retained": 0},
        ],
    )
    ui = result["pages"]["ui"]
    assert result["console_errors"] == {"ui": []}
    assert {k["key"]: k["retained"] for k in ui["keys"]} == {"chat": 1, "cursor": 0}
    inits = {e["key"]: e["values"] for e in ui["live_entries"] if e["type"] == "init"}
    assert inits == {"chat": 1, "cursor": 0}
