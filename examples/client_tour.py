"""drifttrio.client: rooms, a connection, subscriptions, ping, and HTTP only."""

import trio

from drifttrio import open_server
from drifttrio.client import Api, Connected, HttpConnection, connect


async def main() -> None:
    async with open_server() as server:  # any DriftDB server URL works the same
        async with Api(server.url) as api:
            room = await api.new_room()

        async with connect(room.socket_url) as conn:  # cbor=True for CBOR frames
            await conn.push("chat", "hello")  # append (the default action)
            await conn.push("chat", "world")
            async with conn.subscribe("chat") as chat:  # retained first, then live
                await conn.push("chat", "live", "relay")
                for _ in range(3):
                    seq, value = await chat.__anext__()
                    print(f"chat {seq}: {value}")
            print("get since 1:", await conn.get("chat", since=1))
            latency = await conn.ping()
            print("ping answered:", latency >= 0)
            print("events:", [type(e).__name__ for e in conn.event_history])
            assert isinstance(conn.event_history[0], Connected)

        async with HttpConnection(room.http_url) as http:  # no WebSocket needed
            print("stream size:", await http.push("chat", "over http"))
            print("last value:", (await http.get("chat", since=2))[-1])


trio.run(main)
