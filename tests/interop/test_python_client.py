"""drifttrio.client and the published npm client in one room: shared state,
reducer (with compaction by both sides) and presence agree."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import trio

from drifttrio import RunningServer
from drifttrio.client import Api, Presence, Reducer, SharedState, connect

pytestmark = pytest.mark.interop

#: The ``run_node`` fixture (tests/interop/conftest.py).
RunNode = Callable[..., Awaitable[dict[str, Any]]]


def reduce(state: dict[str, Any], action: dict[str, Any]) -> dict[str, Any]:
    if action.get("type") == "add":
        return {"total": state["total"] + action["n"], "log": [*state["log"], action["n"]]}
    return state


@pytest.mark.parametrize("cbor", [False, True], ids=["python-json", "python-cbor"])
async def test_python_and_npm_share_state_reducer_presence(
    server: RunningServer, run_node: RunNode, cbor: bool
) -> None:
    async with Api(server.url) as api:
        room = await api.new_room()
    node_result: dict[str, Any] = {}
    async with (
        connect(room.socket_url, cbor=cbor) as conn,
        SharedState(conn, "shared", None) as state,
        Reducer(conn, "log", reduce, {"total": 0, "log": []}, size_threshold=4) as reducer,
        Presence(conn, {"name": "Python"}, client_id="python", interval=0.2) as presence,
    ):

        async def node() -> None:
            node_result.update(await run_node("python_peer.js", server.url, room.room))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(node)
            for n in range(1, 6):
                await reducer.dispatch({"type": "add", "n": n})
            await state.set({"from": "python"})
            with trio.fail_after(30):
                await state.wait_for(lambda: state.value == {"from": "node"})
                await reducer.wait_for(lambda: len(reducer.confirmed_state["log"]) == 10)
                await presence.wait_for(lambda: "node" in presence.peers)
            assert presence.peers["node"] == {"name": "Node"}

    assert node_result["errors"] == []
    assert {"from": "python"} in node_result["seen_state"]
    # One order of actions for everyone, whoever compacted.
    assert node_result["reducer_state"] == reducer.confirmed_state
    assert sorted(reducer.confirmed_state["log"]) == [1, 2, 3, 4, 5, 101, 102, 103, 104, 105]
    assert reducer.confirmed_state["total"] == 15 + 515
    assert node_result["presence"] == {"python": {"name": "Python"}}
