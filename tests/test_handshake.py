"""The WebSocket opening handshake (web/handshake.py) held to wsproto, which the
transport used before: the same requests are upgrades, the same ones are refused
with the same status, reason and headers, and the same 101 completes the others.
Then, on a real server, the headers wsproto could not read (it raised
``UnicodeDecodeError`` from the connection's task: no answer, a traceback in the
log) get an answer like any other request.
"""

from __future__ import annotations

import base64
import logging
import os

import h11
import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st
from wsproto import ConnectionType, WSConnection
from wsproto.events import AcceptConnection, RejectConnection, RejectData
from wsproto.utilities import LocalProtocolError, RemoteProtocolError

from _rawws import PING, PONG, TIMEOUT, RawWebSocket, frame
from drifttrio import Config, open_server
from drifttrio.web.handshake import (
    BadUpgrade,
    Upgrade,
    accept_response,
    reject_response,
    upgrade_of,
)

Headers = list[tuple[bytes, bytes]]
KEY = b"dGhlIHNhbXBsZSBub25jZQ=="
VALID: Headers = [
    (b"host", b"t"),
    (b"upgrade", b"websocket"),
    (b"connection", b"Upgrade"),
    (b"sec-websocket-key", KEY),
    (b"sec-websocket-version", b"13"),
]


def wsproto_answer(method: bytes, headers: Headers) -> tuple[object, ...] | None:
    """What the transport answered before web/handshake.py: its upgrade test
    (http11._is_websocket_upgrade), then wsproto's checks and its 101."""
    upgrade = connection = b""
    for name, value in headers:
        if name == b"upgrade":
            upgrade = value.lower()
        elif name == b"connection":
            connection = value.lower()
    if method != b"GET" or upgrade != b"websocket" or b"upgrade" not in connection:
        return None
    ws = WSConnection(ConnectionType.SERVER)
    try:
        ws.initiate_upgrade_connection(headers, b"/room/r/connect")
    except RemoteProtocolError as exc:
        hint = exc.event_hint
        if isinstance(hint, RejectConnection):
            return ("refused", hint.status_code, str(exc), list(hint.headers))
        return ("refused", 400, str(exc), [])
    except (h11.LocalProtocolError, LocalProtocolError) as exc:
        return ("refused", 400, f"invalid upgrade request: {exc}", [])
    request = next(iter(ws.events()))
    return ("accepted", ws.send(AcceptConnection()), list(request.subprotocols))  # type: ignore[attr-defined]


def our_answer(method: bytes, headers: Headers) -> tuple[object, ...] | None:
    try:
        upgrade = upgrade_of(method, headers)
    except BadUpgrade as exc:
        return ("refused", exc.status, exc.reason, exc.headers)
    if upgrade is None:
        return None
    assert isinstance(upgrade, Upgrade)
    return ("accepted", accept_response(upgrade.key), upgrade.subprotocols)


#: Header values as h11 hands them over: no leading or trailing blanks, bytes
#: 0x21-0x7e and 0x80-0xff with single blanks between (non-ASCII included: obs-text).
_VALUE_CHARS = "\t ,;=-+/abeginprstuvwxyzUW0123456789\x80\xe9\xff"
values = st.one_of(
    st.sampled_from(
        [
            b"websocket",
            b"WebSocket",
            b"websockets",
            b"Upgrade",
            b"upgrade",
            b"keep-alive, Upgrade",
            b"keep-alive,upgrade",
            b"upgrade, close",
            b"notupgrade",
            b"Upgrade2",
            b"13",
            b"8",
            b"13, 8",
            b"",
            KEY,
            b"chat, superchat",
            b"permessage-deflate; client_max_window_bits",
        ]
    ),
    st.text(_VALUE_CHARS, max_size=12).map(lambda t: t.encode("latin-1").strip(b" \t")),
)
names = st.sampled_from(
    [
        b"host",
        b"upgrade",
        b"connection",
        b"sec-websocket-key",
        b"sec-websocket-version",
        b"sec-websocket-protocol",
        b"sec-websocket-extensions",
        b"origin",
    ]
)


@st.composite
def upgrade_requests(draw: st.DrawFn) -> tuple[bytes, Headers]:
    """A GET (mostly) whose headers are some of a valid upgrade's, plus others, in
    any order, as h11 hands them over (at most one Host; none: an HTTP/1.0 request)."""
    kept = [header for header in VALID if draw(st.booleans()) or draw(st.booleans())]
    extra = draw(st.lists(st.tuples(names, values), max_size=6))
    headers = draw(st.permutations(kept + extra))
    # h11 refuses a request with two Host headers before anything looks at it.
    hosts = [index for index, (name, _) in enumerate(headers) if name == b"host"]
    headers = [header for index, header in enumerate(headers) if index not in hosts[1:]]
    method = draw(st.sampled_from([b"GET", b"GET", b"GET", b"POST", b"HEAD"]))
    return method, headers


@settings(max_examples=400)
@given(upgrade_requests())
def test_an_upgrade_is_checked_and_answered_as_wsproto_did(request: tuple[bytes, Headers]) -> None:
    method, headers = request
    ours = our_answer(method, headers)
    try:
        theirs = wsproto_answer(method, headers)
    except UnicodeDecodeError:
        # wsproto could not read a header (non-ASCII Connection or Sec-WebSocket-*
        # value, a Host that is not IDNA): ours answers anyway, as tested below.
        assert ours is not None
        return
    assert ours == theirs


def test_the_common_upgrade_is_accepted_with_rfc_6455s_example_answer() -> None:
    upgrade = upgrade_of(b"GET", VALID)
    assert upgrade is not None
    assert upgrade.key == KEY
    # RFC 6455 1.3: the example key's accept token.
    assert accept_response(upgrade.key) == (
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n"
    )


@pytest.mark.parametrize(
    ("status", "headers", "body"),
    [
        (403, [], b""),
        (404, [(b"content-type", b"application/json")], b'{"type":"error"}'),
        (
            503,
            [(b"content-type", b"application/json"), (b"access-control-allow-origin", b"*")],
            b"x" * 300,
        ),
    ],
)
def test_a_refusal_is_wsprotos_answer_and_says_the_connection_closes(
    status: int, headers: Headers, body: bytes
) -> None:
    ws = WSConnection(ConnectionType.SERVER)
    ws.initiate_upgrade_connection(VALID, b"/")
    list(ws.events())
    length = [(b"content-length", str(len(body)).encode())]
    theirs = ws.send(RejectConnection(status_code=status, headers=headers + length, has_body=True))
    theirs += ws.send(RejectData(data=body, body_finished=True))

    def parsed(data: bytes) -> tuple[int, Headers, bytes]:
        client = h11.Connection(h11.CLIENT)
        client.send(h11.Request(method="GET", target="/", headers=[("host", "t")]))
        client.receive_data(data)
        response = client.next_event()
        assert isinstance(response, h11.Response)
        received = b""
        while isinstance(event := client.next_event(), h11.Data):
            received += event.data
        assert isinstance(event, h11.EndOfMessage)
        return response.status_code, list(response.headers), received

    ours = parsed(reject_response(status, headers, body))
    assert ours[0] == parsed(theirs)[0] == status
    assert ours[1] == [*parsed(theirs)[1], (b"connection", b"close")]
    assert ours[2] == parsed(theirs)[2] == body


@pytest.mark.parametrize(
    "header",
    [(b"x-evil", b"a\r\nset-cookie: b"), (b"x-evil\n", b"a"), (b"x:evil", b"a"), (b"", b"a")],
)
def test_a_refusal_never_writes_a_header_that_breaks_the_head(header: tuple[bytes, bytes]) -> None:
    with pytest.raises(ValueError, match="invalid header"):
        reject_response(403, [header], b"")


# -- on a real server ---------------------------------------------------------------------


def raw_upgrade(path: str, extra: list[tuple[bytes, bytes]], host: bytes) -> bytes:
    key = base64.b64encode(os.urandom(16))
    lines = [
        b"GET " + path.encode() + b" HTTP/1.1",
        b"Host: " + host,
        b"Upgrade: websocket",
        b"Connection: Upgrade",
        b"Sec-WebSocket-Key: " + key,
        b"Sec-WebSocket-Version: 13",
        *(name + b": " + value for name, value in extra),
    ]
    return b"\r\n".join(lines) + b"\r\n\r\n"


@pytest.mark.parametrize(
    ("extra", "host", "status"),
    [
        pytest.param([(b"Connection", b"Upgrade, \xff")], b"t", 101, id="connection-obs-text"),
        pytest.param([(b"Connection", b"\xffupgrade")], b"t", 400, id="no-upgrade-token"),
        pytest.param([(b"Sec-WebSocket-Protocol", b"chat, \xe9")], b"t", 101, id="protocol"),
        pytest.param([(b"Sec-WebSocket-Extensions", b"\xff")], b"t", 101, id="extensions"),
        # The Host of a WebSocket upgrade is not used: any value h11 takes will do.
        pytest.param([], b"\xff.example", 101, id="host-not-idna"),
    ],
)
async def test_non_ascii_upgrade_headers_get_an_answer_not_a_traceback(
    extra: list[tuple[bytes, bytes]], host: bytes, status: int, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    async with open_server(Config()) as server:
        room = await server.hub.create_room()
        ws = await RawWebSocket.connect(server.host, server.port)
        try:
            await ws.send(raw_upgrade(f"/room/{room}/connect", extra, host))
            with trio.fail_after(TIMEOUT):
                while b"\r\n\r\n" not in ws.buffer:
                    assert await ws._fill(), "closed without an answer"
            assert ws.buffer.startswith(b"HTTP/1.1 %d " % status), bytes(ws.buffer)
            if status == 101:
                ws.buffer = ws.buffer.partition(b"\r\n\r\n")[2]
                await ws.send(frame(PING, b"still here"))
                assert await ws.recv_frame() == (PONG, b"still here")
        finally:
            await ws.aclose()
    assert not [r for r in caplog.records if r.exc_info], "a client caused a traceback"
