"""The room hub in-process: no network, no sockets, the same rooms and rules.

Run it: python examples/in_process_hub.py
"""

import trio

from drifttrio import open_hub
from drifttrio.protocol import Compact, Relay, Replace


async def main() -> None:
    async with open_hub() as hub:
        room = await hub.create_room()

        # Receive every broadcast of the room, like a WebSocket connection would.
        async with hub.subscribe(room) as events:
            await hub.push(room, "chat", {"text": "hello"})  # action defaults to append
            size = await hub.push(room, "chat", {"text": "world"})
            print("stream size after second append:", size)
            await hub.push(room, "cursor", {"x": 10, "y": 20}, Relay())
            for _ in range(3):
                print("received:", await anext(events))

        # Replay the retained stream of a key (seq strictly greater than `since`).
        print("get chat:", await hub.get(room, "chat"))
        print("get chat since 1:", await hub.get(room, "chat", since=1))
        print("get cursor (relay keeps nothing):", await hub.get(room, "cursor"))

        # Compact: values with seq <= 2 are replaced by one value at seq 2.
        await hub.push(room, "chat", {"reset": ["hello", "world"]}, Compact(2))
        print("after compact:", await hub.get(room, "chat"))

        # Subscribe to some keys only; `since` asks for an init of each first.
        async with hub.subscribe(room, ["score"], since=0) as events:
            await hub.push(room, "chat", "not for this subscriber")
            await hub.push(room, "score", 3, Replace())
            print("keyed:", await anext(events))  # the init of "score"
            print("keyed:", await anext(events))  # the push of "score"


if __name__ == "__main__":
    trio.run(main)
