"""The transport's WebSocket (web/websocket.py) as a state machine, without a
socket: its Wire over memory streams, the client's frames written by hand, the
app's side through its Peer methods."""

from __future__ import annotations

import base64
import os
from dataclasses import dataclass

import trio
import trio.testing

from _rawws import CLOSE, TEXT, frame
from drifttrio import Config
from drifttrio.web.websocket import WebSocket, WebSocketState
from drifttrio.web.wire import Wire

CLOSE_1000 = frame(CLOSE, b"\x03\xe8")
FRAMES = [b"frames"]


@dataclass
class Peer:
    socket: WebSocket
    #: What the client sends / what the server wrote.
    to_server: trio.testing.MemorySendStream
    from_server: trio.testing.MemoryReceiveStream

    async def written(self) -> bytes:
        return bytes(await self.from_server.receive_some())

    async def nothing_more_written(self) -> bool:
        """Whether the server wrote nothing since: cut the stream off, read to its end."""
        await self.socket.wire.abort()
        return await self.from_server.receive_some() == b""


def upgraded() -> Peer:
    """A WebSocket whose upgrade request was read, not yet answered."""
    to_server, server_receive = trio.testing.memory_stream_one_way_pair()
    server_send, from_server = trio.testing.memory_stream_one_way_pair()
    key = base64.b64encode(os.urandom(16))
    wire = Wire(trio.StapledStream(server_send, server_receive), write_timeout=10)
    socket = WebSocket({"client": ("127.0.0.1", 1)}, key, wire, Config(), b"")
    return Peer(socket, to_server, from_server)


async def accepted() -> Peer:
    peer = upgraded()
    assert peer.socket.state is WebSocketState.HANDSHAKE
    await peer.socket.accept()
    assert peer.socket.state is WebSocketState.OPEN
    assert (await peer.written()).startswith(b"HTTP/1.1 101")
    return peer


async def test_the_peers_close_is_echoed_and_nothing_goes_out_after_it() -> None:
    peer = await accepted()
    await peer.to_server.send_all(CLOSE_1000)
    assert await peer.socket.receive() is None
    assert peer.socket.close_code == 1000
    assert peer.socket.state is WebSocketState.CLOSED
    assert (await peer.written())[:1] == b"\x88"  # our close frame
    assert await peer.socket.send(FRAMES) == 0
    await peer.socket.ping()
    assert await peer.nothing_more_written()


async def test_after_the_peers_end_of_stream_frames_still_go_out_until_we_close() -> None:
    peer = await accepted()
    await peer.to_server.send_all(frame(TEXT, b"hi"))
    await peer.to_server.aclose()
    assert await peer.socket.receive() == (b"hi", False)
    assert await peer.socket.receive() is None
    assert peer.socket.close_code == 1006
    assert peer.socket.state is WebSocketState.PEER_DONE
    assert await peer.socket.send(FRAMES) == len(b"frames")
    assert await peer.written() == b"frames"
    await peer.socket.close(1000, "")
    assert peer.socket.state is WebSocketState.CLOSED
    assert (await peer.written())[:1] == b"\x88"


async def test_closing_before_accept_rejects_the_handshake_and_a_late_accept_is_refused() -> None:
    peer = upgraded()
    await peer.socket.close(1000, "")
    assert peer.socket.state is WebSocketState.CLOSED
    assert (await peer.written()).startswith(b"HTTP/1.1 403")
    await peer.socket.accept()
    assert peer.socket.state is WebSocketState.CLOSED
    assert await peer.nothing_more_written()


async def test_after_our_close_nothing_else_goes_out_and_the_peers_close_ends_it() -> None:
    peer = await accepted()
    await peer.socket.close(1000, "")
    assert peer.socket.state is WebSocketState.CLOSING
    assert (await peer.written())[:1] == b"\x88"
    assert await peer.socket.send(FRAMES) == 0
    await peer.to_server.send_all(CLOSE_1000)
    assert await peer.socket.receive() is None
    assert peer.socket.close_code == 1000
    assert peer.socket.state is WebSocketState.CLOSED
    assert await peer.nothing_more_written()


async def test_a_second_accept_ends_the_connection() -> None:
    peer = await accepted()
    await peer.socket.accept()
    assert peer.socket.state is WebSocketState.CLOSED
    assert await peer.nothing_more_written()
