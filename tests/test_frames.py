"""The client-frame reader, sans-IO: against wsproto's client back to back, and
against frames no client library would send (each with its RFC 6455 close code)."""

from __future__ import annotations

import os
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from wsproto.connection import Connection, ConnectionType
from wsproto.events import BytesMessage, CloseConnection, Message, Pong, TextMessage
from wsproto.events import Ping as WsPing
from wsproto.frame_protocol import CloseReason

from _rawws import BINARY, CLOSE, CONTINUATION, PING, PONG, TEXT, frame
from drifttrio.web.frames import (
    Close,
    FrameError,
    FrameReader,
    Ping,
    _unmask_python,
    close_frame,
    pong_frame,
    unmask,
)

LIMIT = 1 << 20
Event = tuple[bytes, bool] | Ping | Close


def read_all(data: bytes, chunks: list[int] | None = None, limit: int = LIMIT) -> list[Event]:
    """Feed ``data`` in pieces of the given sizes (the rest at once); every event out."""
    reader = FrameReader(limit)
    events: list[Event] = []
    pieces = []
    rest = data
    for size in chunks or ():
        pieces.append(rest[:size])
        rest = rest[size:]
    pieces.append(rest)
    for piece in pieces:
        reader.feed(piece)
        while (event := reader.next_event()) is not None:
            events.append(event)
    return events


def normal(events: list[Event]) -> list[object]:
    return [
        ("ping", e.payload)
        if isinstance(e, Ping)
        else ("close", e.code, e.reason)
        if isinstance(e, Close)
        else e[0]
        if e[1]
        else e[0].decode()  # a text message: its UTF-8 bytes
        for e in events
    ]


def client_bytes(*events: Message[str] | Message[bytes] | WsPing | Pong | CloseConnection) -> bytes:
    client = Connection(ConnectionType.CLIENT)
    return b"".join(client.send(event) for event in events)


sizes = st.sampled_from([0, 1, 125, 126, 127, 65535, 65536, 70000])
texts = st.builds(lambda n, c: c * n, st.integers(0, 70000), st.sampled_from(["a", "é", "€", "😀"]))


@settings(max_examples=60, deadline=None)
@given(
    texts=st.lists(texts, max_size=4),
    blobs=st.lists(sizes.map(os.urandom), max_size=3),
    split=st.integers(1, 9),
    chunks=st.lists(st.integers(1, 40000), max_size=12),
)
def test_messages_from_wsproto_arrive_whole_however_the_bytes_are_cut(
    texts: list[str], blobs: list[bytes], split: int, chunks: list[int]
) -> None:
    events: list[Message[str] | Message[bytes] | WsPing | Pong] = []
    expected: list[object] = []
    for text in texts:
        # Fragmented in up to `split` frames, a ping and a pong in the middle.
        cut = max(1, len(text) // split)
        parts = [text[i : i + cut] for i in range(0, len(text), cut)] or [""]
        for i, part in enumerate(parts):
            events.append(TextMessage(data=part, message_finished=i == len(parts) - 1))
            if i == 0:
                events += [WsPing(payload=b"p"), Pong(payload=b"q")]
        ping_first = len(parts) > 1  # it arrives in the middle of the message
        expected += [("ping", b"p"), text] if ping_first else [text, ("ping", b"p")]
    for blob in blobs:
        events.append(BytesMessage(data=blob))
        expected.append(blob)
    data = client_bytes(*events, CloseConnection(code=1000, reason="bye"))
    expected.append(("close", 1000, "bye"))
    assert normal(read_all(data, chunks)) == expected


def test_nothing_is_read_after_the_close_frame() -> None:
    data = client_bytes(CloseConnection(code=4000)) + frame(TEXT, b"late")
    assert normal(read_all(data)) == [("close", 4000, "")]
    no_code = client_bytes(CloseConnection(code=CloseReason.NO_STATUS_RCVD))
    assert normal(read_all(no_code)) == [("close", None, "")]


def test_a_received_chunk_is_not_kept_once_read() -> None:
    reader = FrameReader(LIMIT)
    reader.feed(client_bytes(TextMessage(data="x" * 1000)))
    assert reader.next_event() == (b"x" * 1000, False)
    assert reader.next_event() is None
    assert reader._data == b""  # an idle connection keeps no 64 KiB read buffer


@pytest.mark.parametrize(
    ("data", "code"),
    [
        pytest.param(frame(TEXT, b"{}", mask=False), 1002, id="unmasked"),
        pytest.param(frame(TEXT, b"x", rsv1=True), 1002, id="rsv1"),
        pytest.param(bytes([0x80 | 0x20 | TEXT]) + frame(TEXT, b"x")[1:], 1002, id="rsv2"),
        pytest.param(frame(0x3, b"x"), 1002, id="reserved-data-opcode"),
        pytest.param(frame(0xB, b"x"), 1002, id="reserved-control-opcode"),
        pytest.param(frame(PING, b"x", fin=False), 1002, id="fragmented-ping"),
        pytest.param(frame(CLOSE, b"\x03\xe8", fin=False), 1002, id="fragmented-close"),
        pytest.param(frame(PING, b"x" * 126), 1002, id="control-over-125"),
        pytest.param(frame(CONTINUATION, b"x"), 1002, id="continuation-without-start"),
        pytest.param(frame(TEXT, b"a", fin=False) + frame(TEXT, b"b"), 1002, id="no-continuation"),
        pytest.param(
            bytes([0x81, 0x80 | 126]) + struct.pack("!H", 5) + b"\0" * 4 + b"x" * 5,
            1002,
            id="2-byte-length-too-small",
        ),
        pytest.param(
            bytes([0x82, 0x80 | 127]) + struct.pack("!Q", 65535) + b"\0" * 4,
            1002,
            id="8-byte-length-too-small",
        ),
        pytest.param(
            bytes([0x82, 0x80 | 127]) + struct.pack("!Q", 1 << 63) + b"\0" * 4,
            1002,
            id="8-byte-length-msb",
        ),
        pytest.param(frame(TEXT, b'"\xff"'), 1007, id="invalid-utf8"),
        pytest.param(
            frame(TEXT, b'"\xe2\x82', fin=False) + frame(CONTINUATION, b'\x28"'),
            1007,
            id="invalid-utf8-across-fragments",
        ),
        pytest.param(frame(CLOSE, b"\x03"), 1002, id="close-1-byte"),
        pytest.param(frame(CLOSE, struct.pack("!H", 999)), 1002, id="close-999"),
        pytest.param(frame(CLOSE, struct.pack("!H", 1004)), 1002, id="close-1004-reserved"),
        pytest.param(frame(CLOSE, struct.pack("!H", 1005)), 1002, id="close-1005-local"),
        pytest.param(frame(CLOSE, struct.pack("!H", 1006)), 1002, id="close-1006-local"),
        pytest.param(frame(CLOSE, struct.pack("!H", 1014)), 1002, id="close-1014-unassigned"),
        pytest.param(frame(CLOSE, struct.pack("!H", 2999)), 1002, id="close-2999-reserved"),
        pytest.param(frame(CLOSE, struct.pack("!H", 5000)), 1002, id="close-5000"),
        pytest.param(frame(CLOSE, struct.pack("!H", 1000) + b"\xff"), 1007, id="close-bad-utf8"),
    ],
)
def test_protocol_violations_raise_their_close_code(data: bytes, code: int) -> None:
    with pytest.raises(FrameError) as caught:
        read_all(data)
    assert caught.value.code == code
    assert caught.value.reason


@pytest.mark.parametrize("code", [1000, 1001, 1003, 1007, 1011, 1012, 1013, 3000, 4999])
def test_valid_close_codes_are_read(code: int) -> None:
    assert normal(read_all(frame(CLOSE, struct.pack("!H", code) + b"why"))) == [
        ("close", code, "why")
    ]


def test_a_huge_declared_frame_is_refused_on_its_header() -> None:
    reader = FrameReader(1000)
    reader.feed(frame(BINARY, b"", declared=2**40)[:14])  # the header alone
    with pytest.raises(FrameError) as caught:
        reader.next_event()
    assert caught.value.code == 1009


def test_the_limit_counts_the_whole_message_and_each_fragment() -> None:
    assert normal(read_all(frame(TEXT, b"x" * 100), limit=100)) == ["x" * 100]
    with pytest.raises(FrameError, match="too big") as caught:
        read_all(frame(TEXT, b"x" * 101), limit=100)
    assert caught.value.code == 1009
    # 60 + 64 (a non-final fragment's cost) > 100
    with pytest.raises(FrameError, match="too big"):
        read_all(frame(TEXT, b"x" * 60, fin=False) + frame(CONTINUATION, b""), limit=100)
    # A flood of empty continuation frames ends after limit / 64 of them.
    flood = frame(TEXT, b"", fin=False) + frame(CONTINUATION, b"", fin=False) * 20
    with pytest.raises(FrameError, match="too big"):
        read_all(flood, limit=1000)


@pytest.mark.parametrize(
    ("code", "reason"),
    [(1000, ""), (1002, "protocol error"), (4008, "slow client"), (1009, "é" * 100), (None, "")],
)
def test_close_frames_are_the_bytes_wsproto_sends(code: int | None, reason: str) -> None:
    server = Connection(ConnectionType.SERVER)
    expected = server.send(
        CloseConnection(code=CloseReason.NO_STATUS_RCVD if code is None else code, reason=reason)
    )
    assert close_frame(code, reason) == expected
    assert len(close_frame(code, reason)) <= 127


def test_local_only_close_codes_are_sent_as_1000() -> None:
    assert close_frame(1006, "x") == close_frame(1000, "x")
    assert close_frame(1005, "x") == close_frame(1000, "x")
    assert close_frame(1015, "") == close_frame(1000)


def test_pong_frames_are_the_bytes_wsproto_sends() -> None:
    server = Connection(ConnectionType.SERVER)
    assert pong_frame(b"hello") == server.send(Pong(payload=b"hello"))
    assert read_all(frame(PONG, b"ignored") + frame(PING, b"")) != []


@given(st.binary(max_size=300), st.binary(min_size=4, max_size=4))
def test_the_python_unmask_fallback_agrees(data: bytes, mask: bytes) -> None:
    assert _unmask_python(data, mask) == unmask(data, mask)
    assert unmask(unmask(data, mask), mask) == data
