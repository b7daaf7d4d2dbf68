"""A browser app built on the published npm client works against drifttrio unchanged.

``app.js`` imports ``Api``, ``DbConnection`` and ``StateListener`` from
``driftdb@1.0.12`` like any browser app, esbuild bundles it, and headless
Chromium runs it from its own origin (a static server on another port), using
the browser's own ``fetch`` (with CORS) and ``WebSocket``. ``drive.js`` types
into the page and clicks its buttons; what the test checks is what the pages
display, what a Python client on the wire received, and what the room retained.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import cbor2
import pytest
import trio
from trio_websocket import WebSocketConnection, open_websocket_url

from drifttrio import RunningServer

pytestmark = pytest.mark.browser

#: The ``drive`` fixture (tests/browser/conftest.py).
Drive = Callable[[RunningServer, list[dict[str, Any]]], Awaitable[dict[str, Any]]]


def _show(value: Any) -> str:
    """What app.js displays for a value: compact JSON, bytes as ``bytes(HEX)``."""

    def convert(v: Any) -> Any:
        if isinstance(v, bytes):
            return f"bytes({v.hex()})"
        if isinstance(v, dict):
            return {k: convert(x) for k, x in v.items()}
        if isinstance(v, list):
            return [convert(x) for x in v]
        return v

    return json.dumps(convert(value), separators=(",", ":"), ensure_ascii=False)


def _frames(page: dict[str, Any]) -> dict[str, int]:
    """The page's ``text=N binary=M`` frame counter, parsed."""
    counts = dict(part.split("=") for part in page["frames"].split())
    return {kind: int(n) for kind, n in counts.items()}


def _healthy(result: dict[str, Any]) -> None:
    for name, page in result["pages"].items():
        assert page["state_attr"] == "ready", (name, page["status"])
        assert page["errors"] == [], f"page {name} showed errors: {page['errors']}"
        assert page["latency"].endswith(" ms"), (name, page["latency"])
    assert all(not errs for errs in result["console_errors"].values()), result["console_errors"]


# -- Two pages in one room -------------------------------------------------------------

BYTES = bytes.fromhex("deadbeef00ff")
CHAT_A = {"text": "hello from a ✓", "n": 1}
CHAT_B = {"text": "hello from b", "n": 2}
STATE_A = {"color": "red", "by": "a"}
STATE_B = {"color": "blue", "by": "b"}


@pytest.mark.parametrize(
    ("mode_a", "mode_b"),
    [("json", "json"), ("cbor", "cbor"), ("cbor", "json")],
    ids=["json", "cbor", "cbor-to-json"],
)
async def test_two_pages(
    server: RunningServer, drive: Drive, artifacts: Path, mode_a: str, mode_b: str
) -> None:
    """Page a creates a room (Api.newRoom), page b joins it by id; both push to each other."""
    steps: list[dict[str, Any]] = [
        {"op": "open", "page": "a", "cbor": mode_a == "cbor"},
        {"op": "open", "page": "b", "cbor": mode_b == "cbor", "room_of": "a"},
        # a chat stream (subscribe + append), a -> b, then b -> a
        {"op": "push", "page": "a", "value": json.dumps(CHAT_A)},
        {"op": "wait_log", "page": "b", "count": 1},
        {"op": "wait_log", "page": "a", "count": 1},
        {"op": "push", "page": "b", "value": json.dumps(CHAT_B)},
        {"op": "wait_log", "page": "a", "count": 2},
        {"op": "wait_log", "page": "b", "count": 2},
        # shared state (StateListener: replace {v, i}), a -> b, then b -> a
        {"op": "set_state", "page": "a", "value": json.dumps(STATE_A)},
        {"op": "wait_state", "page": "b", "text": _show(STATE_A)},
        {"op": "set_state", "page": "b", "value": json.dumps(STATE_B)},
        {"op": "wait_state", "page": "a", "text": _show(STATE_B)},
    ]
    if mode_a == "cbor":  # only CBOR can carry a Uint8Array
        steps += [
            {"op": "push_bytes", "page": "a", "hex": BYTES.hex()},
            {"op": "wait_log", "page": "b", "count": 3},
            {"op": "wait_log", "page": "a", "count": 3},
        ]
    shot = artifacts / f"browser-two-pages-{mode_a}-{mode_b}.png"
    shot.unlink(missing_ok=True)
    steps.append({"op": "screenshot", "page": "b", "path": str(shot)})

    result = await drive(server, steps)
    _healthy(result)
    a, b = result["pages"]["a"], result["pages"]["b"]

    # a made the room through POST /new; b found it through GET /room/ID.
    room = a["room"]
    assert room
    assert b["room"] == room
    assert await server.hub.room_exists(room)
    assert (a["mode"], b["mode"]) == (mode_a, mode_b)

    # Each page saw both chat values, in the room's order, with their seqs
    # (the two StateListener replaces took seqs 3 and 4).
    expected = [f"#1 {_show(CHAT_A)}", f"#2 {_show(CHAT_B)}"]
    if mode_a == "cbor":
        expected_a = [*expected, f"#5 {_show({'bytes': BYTES})}"]
        # A JSON page gets bytes as an array of ints (drifttrio's JSON form of bytes).
        as_b = {"bytes": BYTES} if mode_b == "cbor" else {"bytes": list(BYTES)}
        expected_b = [*expected, f"#5 {_show(as_b)}"]
    else:
        expected_a = expected_b = expected
    assert [e["text"] for e in a["log"]] == expected_a
    assert [e["text"] for e in b["log"]] == expected_b
    assert [e["seq"] for e in a["log"]] == [1, 2, 5][: len(expected_a)]

    # Shared state: b's value is the last one, on both pages.
    assert a["state"] == _show(STATE_B)
    assert b["state"] == _show(STATE_B)

    # CBOR pages got only binary frames, JSON pages only text frames.
    for page, mode in ((a, mode_a), (b, mode_b)):
        frames = _frames(page)
        used, unused = ("binary", "text") if mode == "cbor" else ("text", "binary")
        assert frames[unused] == 0, page["frames"]
        assert frames[used] > 0, page["frames"]

    # The room retained what the browsers wrote.
    chat = await server.hub.get(room, "chat")
    values = [CHAT_A, CHAT_B] + ([{"bytes": BYTES}] if mode_a == "cbor" else [])
    assert [(sv.seq, sv.value) for sv in chat] == list(zip([1, 2, 5], values, strict=False))
    (state,) = await server.hub.get(room, "state")
    assert state.seq == 4
    assert isinstance(state.value, dict)
    assert state.value["v"] == STATE_B
    assert shot.stat().st_size > 0


# -- A page and a Python CBOR client ---------------------------------------------------

PAGE_BYTES = bytes.fromhex("00017f80ff")
PAGE_TEXT = {"text": "hi python", "list": [1, None, True], "x": 1.5}
PY_CHAT = {"from": "python", "bytes": bytes.fromhex("cafe00ff")}
PY_STATE = {"from": "python", "blob": b"\x01\x02\x03"}


async def _next_push(ws: WebSocketConnection) -> dict[str, Any]:
    """The next ``push`` on a CBOR connection (skipping stream_size); frames must be binary."""
    while True:
        raw = await ws.get_message()
        assert isinstance(raw, bytes), f"a CBOR connection got a text frame: {raw!r}"
        message: dict[str, Any] = cbor2.loads(raw)
        assert message["type"] != "error", message
        if message["type"] == "push":
            return message


@pytest.mark.parametrize("server", ["drifttrio", "hypercorn"], indirect=True)
async def test_page_and_python_cbor_client(
    server: RunningServer, drive: Drive, artifacts: Path, request: pytest.FixtureRequest
) -> None:
    """Uint8Arrays from the page arrive as bytes in Python, and Python's bytes as Uint8Arrays."""
    room = await server.hub.create_room()
    transport = request.node.callspec.params["server"]
    shot = artifacts / ("browser.png" if transport == "drifttrio" else f"browser-{transport}.png")
    shot.unlink(missing_ok=True)
    steps: list[dict[str, Any]] = [
        {"op": "open", "page": "p", "cbor": True, "room": room},
        {"op": "push_bytes", "page": "p", "hex": PAGE_BYTES.hex()},
        {"op": "push", "page": "p", "value": json.dumps(PAGE_TEXT)},
        # Python answers once it has both pushes.
        {"op": "wait_log", "page": "p", "count": 3},
        {"op": "wait_state", "page": "p", "text": _show(PY_STATE)},
        {"op": "screenshot", "page": "p", "path": str(shot)},
    ]
    url = f"{server.ws_url}/room/{room}/connect?cbor=true"
    result: dict[str, Any] = {}

    async def run_page() -> None:
        result.update(await drive(server, steps))

    with trio.fail_after(60):
        async with open_websocket_url(url) as ws, trio.open_nursery() as nursery:
            await ws.send_message(cbor2.dumps({"type": "get", "key": "chat", "seq": 0}))
            init = cbor2.loads(await ws.get_message())
            assert init == {"type": "init", "key": "chat", "data": []}
            nursery.start_soon(run_page)

            got = [await _next_push(ws), await _next_push(ws)]
            assert got == [
                {"type": "push", "key": "chat", "value": {"bytes": PAGE_BYTES}, "seq": 1},
                {"type": "push", "key": "chat", "value": PAGE_TEXT, "seq": 2},
            ]
            assert type(got[0]["value"]["bytes"]) is bytes

            await ws.send_message(
                cbor2.dumps(
                    {"type": "push", "key": "chat", "value": PY_CHAT, "action": {"type": "append"}}
                )
            )
            # The StateListener's wire format: {v: value, i: writer id}.
            await ws.send_message(
                cbor2.dumps(
                    {
                        "type": "push",
                        "key": "state",
                        "value": {"v": PY_STATE, "i": "python"},
                        "action": {"type": "replace"},
                    }
                )
            )

    _healthy(result)
    page = result["pages"]["p"]
    assert page["room"] == room
    assert page["mode"] == "cbor"
    # The page displays Uint8Arrays as bytes(HEX): these were Uint8Arrays in the page.
    assert [e["text"] for e in page["log"]] == [
        f"#1 {_show({'bytes': PAGE_BYTES})}",
        f"#2 {_show(PAGE_TEXT)}",
        f"#3 {_show(PY_CHAT)}",
    ]
    assert page["state"] == _show(PY_STATE)
    assert _frames(page)["text"] == 0
    assert shot.stat().st_size > 0
