"""The React hooks of ``driftdb-react@1.0.12`` in headless Chromium against drifttrio.

``react/app.jsx`` is a React 18 app that uses every export of the package, bundled
in production mode with esbuild. ``react_drive.js`` opens three pages in one room
(two JSON, one CBOR) and does what users would: share a text, dispatch to a shared
reducer at once from every page, watch each other's presence and the latency,
reload, leave. Then joins while a page dispatches every 8, 50 and 100 ms (issue 17):
every connection that joins must end with the dispatching page's state.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from drifttrio import RunningServer

pytestmark = pytest.mark.browser

#: The ``react_drive`` fixture (tests/browser/conftest.py).
ReactDrive = Callable[[RunningServer, dict[str, Any]], Awaitable[dict[str, Any]]]

PACES_MS = [8, 50, 100]
#: Connections each of two pages opens at each pace.
JOINS_PER_PAGE = 10


@pytest.mark.parametrize("server", ["drifttrio", "hypercorn"], indirect=True)
async def test_react_hooks_in_three_pages(server: RunningServer, react_drive: ReactDrive) -> None:
    result = await react_drive(server, {"paces": PACES_MS, "joins": JOINS_PER_PAGE})
    room = result["room"]

    # Every connection that joined while alice dispatched has her whole state.
    assert [j["pace_ms"] for j in result["joins"]] == PACES_MS
    for joins in result["joins"]:
        assert joins["tried"] >= 2 * JOINS_PER_PAGE
        assert joins["expected_count"] > 0
        assert joins["truncated"] == 0, json.dumps(joins)
        assert set(joins["first_frames"]) <= {"init", "page"}, joins
        assert joins["counts"] == [joins["expected_count"]] * joins["tried"]
    assert "page" in result["joins"][0]["first_frames"]  # a whole page loaded at 8 ms

    # useLatency showed a round trip time in milliseconds on every page.
    assert all(0 <= int(ms) < 10_000 for ms in result["latency"]), result["latency"]

    # Concurrent dispatch from three pages converged to one order.
    concurrent = result["concurrent"]
    assert concurrent["counts"] == [concurrent["total"]] * 3
    assert concurrent["same"]

    # Reloading keeps the client id, the room, the shared text and the reducer.
    assert result["reload"] == {"same_client_id": True, "same_url": True, "state_equal": True}

    pages = result["pages"]
    assert set(pages) == {"alice", "bob"}  # carol left, and the others saw her go
    alice, bob = pages["alice"], pages["bob"]
    assert alice["client_id"] != bob["client_id"]
    for page in (alice, bob):
        assert f"_driftdb_room={room}" in page["url"]
        assert page["status"] == "connected"
        assert "Connected" in page["indicator"]
        assert page["shared_text"] == "hi from carol"
        assert page["count"] == result["joins"][-1]["expected_count"]
        # The QR code encodes the page's own URL, room included.
        assert page["qr_src"].startswith("https://api.jamsocket.live/qrcode?url=")
        assert f"_driftdb_room={room}" in page["qr_src"]
    assert alice["presence"] == ["bob"]
    assert bob["presence"] == ["alice"]
    assert result["qr_requests"]
    assert all(not errs for errs in result["console_errors"].values()), result["console_errors"]
