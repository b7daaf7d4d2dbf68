"""drifttrio's own transport: HTTP/1.1 keep-alive over one raw connection."""

from __future__ import annotations

import json

import trio

from drifttrio import Config, open_server

TIMEOUT = 10  # a guard against hangs, never a way to wait for something


async def read_response(stream: trio.SocketStream, buffer: bytearray) -> tuple[int, bytes]:
    """One HTTP/1.1 response with a content-length, from ``buffer`` and the stream."""
    while b"\r\n\r\n" not in buffer:
        buffer += await stream.receive_some(65536)
    head, _, rest = bytes(buffer).partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    length = next(
        int(line.split(b":", 1)[1])
        for line in head.split(b"\r\n")[1:]
        if line.lower().startswith(b"content-length:")
    )
    while len(rest) < length:
        rest += await stream.receive_some(65536)
    buffer[:] = rest[length:]
    return status, rest[:length]


async def test_keep_alive_serves_requests_whose_body_the_app_did_not_read() -> None:
    async with open_server(Config()) as server:
        stream = await trio.open_tcp_stream(server.host, server.port)
        async with stream:
            buffer = bytearray()
            with trio.fail_after(TIMEOUT):
                await stream.send_all(b"POST /new HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\n\r\n")
                status, body = await read_response(stream, buffer)
                assert status == 200
                room = json.loads(body)["room"]
                # GET without a body, a POST /new with a body nobody reads, then a GET:
                # all on the same connection.
                for request in (
                    f"GET /room/{room} HTTP/1.1\r\nHost: t\r\n\r\n".encode(),
                    b"POST /new HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n\r\nhello",
                    f"GET /room/{room} HTTP/1.1\r\nHost: t\r\n\r\n".encode(),
                ):
                    await stream.send_all(request)
                    status, body = await read_response(stream, buffer)
                    assert status == 200, body
