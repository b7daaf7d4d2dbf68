"""Drive drifttrio's timers with trio's MockClock: no real waiting.

A room with no members is unloaded from memory after ``room_idle_seconds``; its
data stays in storage and is loaded again on the next use. A room idle for
``room_ttl_seconds`` is deleted. With an autojumping mock clock, the two hours
below pass instantly. Run it: python examples/mock_clock.py
"""

import trio
import trio.testing

from drifttrio import Config, open_hub
from drifttrio.storage import MemoryStorage


async def main() -> None:
    config = Config(room_idle_seconds=60, room_ttl_seconds=3600)
    # Storage stamps room activity with its own clock (wall time by default);
    # give it trio's clock so that the TTL runs on the mock clock too.
    storage = MemoryStorage(clock=trio.current_time)
    async with open_hub(config, storage) as hub:
        room = await hub.create_room()
        await hub.push(room, "k", "kept in storage")  # loads the room: its task starts
        print(f"t={trio.current_time():.0f}s live rooms: {len(hub.rooms)}")

        await trio.sleep(59)
        print(f"t={trio.current_time():.0f}s live rooms: {len(hub.rooms)}")

        await trio.sleep(2)  # past the 60 idle seconds: the room task has ended
        print(f"t={trio.current_time():.0f}s live rooms: {len(hub.rooms)}")
        print("reloaded:", await hub.get(room, "k"))

        await trio.sleep(2 * 3600)  # idle for longer than the TTL: deleted
        print(f"t={trio.current_time():.0f}s room exists: {await hub.room_exists(room)}")


if __name__ == "__main__":
    # autojump_threshold=0: whenever every task is blocked, jump to the next deadline.
    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
