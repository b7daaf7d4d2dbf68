"""Conditional pushes: a check-and-set on a key, decided where the room is ordered.

Run it: python examples/conditional_push.py
"""

import trio

from drifttrio import PushConflict, open_hub
from drifttrio.protocol import Replace


async def main() -> None:
    async with open_hub() as hub:
        room = await hub.create_room()

        # Applied only if the key's last retained seq is the expected one (0: none).
        await hub.push(room, "score", 1, Replace(), expect_seq=0)
        try:
            await hub.push(room, "score", 2, Replace(), expect_seq=0)
        except PushConflict as exc:
            print("refused:", exc)

        # Read, add one, push expecting the seq read; on a conflict, read again.
        async def increment(key: str) -> None:
            while True:
                values = await hub.get(room, key)
                seq, count = (values[-1].seq, values[-1].value) if values else (0, 0)
                try:
                    await hub.push(room, key, count + 1, Replace(), expect_seq=seq)
                    return
                except PushConflict:
                    continue  # another push changed the key since we read it

        async with trio.open_nursery() as nursery:
            for _ in range(20):
                nursery.start_soon(increment, "counter")
        print("counter after 20 concurrent increments:", (await hub.get(room, "counter"))[-1])


if __name__ == "__main__":
    trio.run(main)
