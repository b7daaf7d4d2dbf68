"""Shared state, a reducer and presence: the npm client's patterns, from Python."""

from typing import Any

import trio

from drifttrio import open_server
from drifttrio.client import Api, Presence, Reducer, SharedState, connect


def count(state: dict[str, int], action: dict[str, Any]) -> dict[str, int]:
    return {"total": state["total"] + action["add"]}


async def main() -> None:
    async with open_server() as server:
        async with Api(server.url) as api:
            url = (await api.new_room()).socket_url
        async with (
            connect(url) as alice,
            connect(url) as bob,
            SharedState(alice, "title", "untitled") as alice_title,
            SharedState(bob, "title", "untitled") as bob_title,
            Reducer(alice, "counter", count, {"total": 0}, size_threshold=5) as alice_counter,
            Reducer(bob, "counter", count, {"total": 0}, size_threshold=5) as bob_counter,
            Presence(alice, {"cursor": [1, 2]}, client_id="alice") as alice_here,
            Presence(bob, {"cursor": [3, 4]}, client_id="bob") as bob_here,
        ):
            await alice_title.set("Meeting notes")
            await bob_title.wait_for(lambda: bob_title.value == "Meeting notes")
            print("bob sees the title:", bob_title.value)

            for _ in range(10):
                await alice_counter.dispatch({"add": 1})
            await bob_counter.wait_for(lambda: bob_counter.confirmed_state["total"] == 10)
            print("bob's counter:", bob_counter.state)
            print("compacted:", len(await bob.get("counter")) < 10)

            await alice_here.wait_for(lambda: "bob" in alice_here.peers)
            await bob_here.wait_for(lambda: "alice" in bob_here.peers)
            print("alice sees:", alice_here.peers)


trio.run(main)
