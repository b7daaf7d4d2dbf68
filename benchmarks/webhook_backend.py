"""A webhook backend that accepts every push at once (trio + h11): what the
"push webhook" row of throughput.py calls. It answers without checking the
signature, so the row measures drifttrio's side of a webhook (signing, the HTTP
client, the cap in flight), not a backend's work.

Prints ``webhook backend on http://127.0.0.1:PORT`` once it listens.
"""

from __future__ import annotations

import h11
import trio

ANSWER = b'{"accept": true}'
HEADERS = [("content-type", "application/json"), ("content-length", str(len(ANSWER)))]


async def serve(stream: trio.SocketStream) -> None:
    conn = h11.Connection(h11.SERVER)
    try:
        while True:
            while True:
                event = conn.next_event()
                if event is h11.NEED_DATA:
                    conn.receive_data(await stream.receive_some(65536))
                elif isinstance(event, h11.EndOfMessage):
                    break
                elif isinstance(event, h11.ConnectionClosed):
                    return
            answer = conn.send(h11.Response(status_code=200, headers=HEADERS))
            answer += conn.send(h11.Data(data=ANSWER)) + conn.send(h11.EndOfMessage())
            await stream.send_all(answer)
            conn.start_next_cycle()
    except (trio.BrokenResourceError, h11.ProtocolError):
        return


async def main() -> None:
    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(trio.serve_tcp, serve, 0)
        port = listeners[0].socket.getsockname()[1]
        print(f"webhook backend on http://127.0.0.1:{port}", flush=True)


if __name__ == "__main__":
    trio.run(main)
