"""The WebSocket opening handshake (web/handshake.py) held to wsproto, which the
transport used before: the same requests are upgrades, the same ones are refused
with the same status, reason and headers, and the same 101 completes the others.
Then, on a real server, the headers wsproto could not read (it raised
``UnicodeDecodeError`` from the connection's task: no answer, a traceback in the
log) get an answer like any other request.

The common upgrade's head, read without h11 (``read_upgrade``), is held to h11:
whatever it reads, h11 reads the same way (the rest is left to h11); the heads
real clients send are read without h11, and every invalid upgrade is still
answered as before.
"""

from __future__ import annotations

import base64
import logging
import os

import h11
import pytest
import trio
import trio.testing
from hypothesis import given, settings
from hypothesis import strategies as st
from wsproto import ConnectionType, WSConnection
from wsproto.events import AcceptConnection, RejectConnection, RejectData
from wsproto.utilities import LocalProtocolError, RemoteProtocolError

from _rawws import PING, PONG, TIMEOUT, RawWebSocket, frame
from drifttrio import Config, open_server
from drifttrio.web import http11
from drifttrio.web.handshake import (
    BadUpgrade,
    Upgrade,
    accept_response,
    read_upgrade,
    reject_response,
    upgrade_of,
)
from drifttrio.web.websocket import WebSocket, WebSocketState
from drifttrio.web.wire import Wire

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


# -- the common upgrade's head, read without h11 -----------------------------------------

MAX_HEAD = 8192
#: Heads that are nothing like a plain upgrade's: h11 must read them.
_ODD_BYTES = "\x00\x01\x7f\r\n\t :\x80\xff"


#: What can make a head other than plain, each drawn on its own.
_ODDITIES = ("method", "version", "target", "fold", "bare-lf", "hosts", "body", "value", "name")


@st.composite
def raw_heads(draw: st.DrawFn) -> tuple[bytes, bool]:
    """A request head (and what follows it), mostly an upgrade's, with or without
    some of the things h11 reads differently or refuses: other methods and
    versions, odd targets, folded lines, bare LF, no or two Hosts, body headers,
    odd values or names. Also whether it is plain (none of them)."""
    odd = draw(st.sets(st.sampled_from(_ODDITIES), max_size=3))
    method = draw(st.sampled_from([b"POST", b"get", b"GET  "])) if "method" in odd else b"GET"
    version = (
        draw(st.sampled_from([b"HTTP/1.0", b"HTTP/2.0", b"http/1.1"]))
        if ("version" in odd)
        else b"HTTP/1.1"
    )
    target = draw(
        st.sampled_from(
            [b"/\xff", b"/a b", b"/a\tb", b""]
            if "target" in odd
            else [b"/room/r/connect", b"/room/r/connect?cbor=true&token=a.b", b"/a%20b", b"*"]
        )
    )
    # Some of a valid upgrade's headers (names in any case), plus others.
    kept = [
        (draw(st.sampled_from([name, name.title(), name.upper()])), value)
        for name, value in VALID
        if name != b"host" and draw(st.integers(0, 9)) > 0
    ]
    extra = draw(st.lists(st.tuples(names.filter(lambda n: n != b"host"), values), max_size=4))
    hosts = [(b"Host", b"127.0.0.1:8080")]
    if "hosts" in odd:
        hosts = hosts * draw(st.sampled_from([0, 2]))
    if "body" in odd:
        extra.append(
            draw(st.sampled_from([(b"Content-Length", b"0"), (b"Transfer-Encoding", b"chunked")]))
        )
    if "value" in odd:
        extra.append(
            (b"x-odd", draw(st.text(_ODD_BYTES, min_size=1, max_size=4)).encode("latin-1"))
        )
    if "name" in odd:
        extra.append((draw(st.sampled_from([b"x y", b"", b"x\x00", b"\xe9"])), b"v"))
    lines = [method + b" " + target + b" " + version]
    for name, value in draw(st.permutations(kept + extra + hosts)):
        before = draw(st.sampled_from([b"", b" ", b"\t"]))
        after = draw(st.sampled_from([b"", b" ", b" \t"]))
        lines.append(name + b":" + before + value + after)
    if "fold" in odd:
        lines.insert(draw(st.integers(1, len(lines))), draw(st.sampled_from([b" folded", b"\tx"])))
    separators = [b"\r\n"] * len(lines)
    if "bare-lf" in odd:
        separators[draw(st.integers(0, len(lines) - 1))] = b"\n"
    head = b"".join(line + sep for line, sep in zip(lines, separators, strict=True)) + b"\r\n"
    rest = draw(st.sampled_from([b"", b"\x81\x85abcdefghi", b"GET / HTTP/1.1\r\n\r\n"]))
    return head + rest, not odd


def http11_header_ok(name: bytes, value: bytes) -> bool:
    """Whether h11 reads ``name: value`` as a header line."""
    try:
        h11.Request(method="GET", target="/", headers=[("host", "t"), (name, value)])
    except h11.LocalProtocolError:
        return False
    return True


def h11_reading(data: bytes) -> tuple[object, ...] | None:
    """What the transport's h11 path makes of a first request: its method, target,
    version, headers and what follows the head, or None if h11 refuses it."""
    conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD)
    conn.receive_data(data)
    try:
        event = conn.next_event()
    except h11.RemoteProtocolError:
        return None
    if not isinstance(event, h11.Request):
        return None
    headers = list(event.headers)
    return event.method, event.target, event.http_version, headers, bytes(conn.trailing_data[0])


@settings(max_examples=600)
@given(raw_heads())
def test_a_head_read_without_h11_is_read_as_h11_reads_it(drawn: tuple[bytes, bool]) -> None:
    data, plain = drawn
    head = read_upgrade(data, MAX_HEAD)
    theirs = h11_reading(data)
    if head is None:
        # Left to h11 (which refuses it, or reads something that is no valid
        # upgrade); a plain valid upgrade is never left to it.
        if plain and theirs is not None:
            try:
                upgrade = upgrade_of(b"GET", theirs[3])  # type: ignore[arg-type]
            except BadUpgrade:
                return
            assert upgrade is None, "a plain valid upgrade was left to h11"
        return
    assert theirs == (b"GET", head.target, b"1.1", head.headers, head.rest)
    upgrade = upgrade_of(b"GET", head.headers)
    assert upgrade is not None
    assert (head.upgrade.key, head.upgrade.subprotocols) == (upgrade.key, upgrade.subprotocols)
    names = {name for name, _ in head.headers}
    assert not names & {b"content-length", b"transfer-encoding"}


def _head(*lines: bytes) -> bytes:
    return b"\r\n".join(lines) + b"\r\n\r\n"


#: What real clients send (a browser's key and host made up).
CLIENT_HEADS = {
    "node-ws": _head(
        b"GET /room/ROOM/connect HTTP/1.1",
        b"Sec-WebSocket-Version: 13",
        b"Sec-WebSocket-Key: " + KEY,
        b"Connection: Upgrade",
        b"Upgrade: websocket",
        b"Host: 127.0.0.1:8080",
    ),
    "chrome": _head(
        b"GET /room/ROOM/connect?cbor=true HTTP/1.1",
        b"Host: localhost:8080",
        b"Connection: Upgrade",
        b"Pragma: no-cache",
        b"Cache-Control: no-cache",
        b"User-Agent: Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko)"
        b" Chrome/120.0.0.0 Safari/537.36",
        b"Upgrade: websocket",
        b"Origin: http://localhost:8080",
        b"Sec-WebSocket-Version: 13",
        b"Accept-Encoding: gzip, deflate, br",
        b"Accept-Language: en-US,en;q=0.9",
        b"Sec-WebSocket-Key: " + KEY,
        b"Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits",
    ),
    "firefox": _head(
        b"GET /room/ROOM/connect HTTP/1.1",
        b"Host: localhost:8080",
        b"User-Agent: Mozilla/5.0 (X11; Linux x86_64; rv:121.0) Gecko/20100101 Firefox/121.0",
        b"Accept: */*",
        b"Accept-Language: en-US,en;q=0.5",
        b"Accept-Encoding: gzip, deflate, br",
        b"Sec-WebSocket-Version: 13",
        b"Origin: http://localhost:8080",
        b"Sec-WebSocket-Extensions: permessage-deflate",
        b"Sec-WebSocket-Key: " + KEY,
        b"Connection: keep-alive, Upgrade",
        b"Sec-Fetch-Dest: empty",
        b"Sec-Fetch-Mode: websocket",
        b"Sec-Fetch-Site: same-origin",
        b"Pragma: no-cache",
        b"Cache-Control: no-cache",
        b"Upgrade: websocket",
    ),
    "python-websockets": _head(
        b"GET /room/ROOM/connect HTTP/1.1",
        b"Host: 127.0.0.1:8080",
        b"Upgrade: websocket",
        b"Connection: Upgrade",
        b"Sec-WebSocket-Key: " + KEY,
        b"Sec-WebSocket-Version: 13",
        b"Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits",
        b"User-Agent: Python/3.11 websockets/14.1",
    ),
    "wsproto": _head(
        b"GET /room/ROOM/connect HTTP/1.1",
        b"Host: 127.0.0.1",
        b"Upgrade: WebSocket",
        b"Connection: Upgrade",
        b"Sec-WebSocket-Key: " + KEY,
        b"Sec-WebSocket-Version: 13",
    ),
}


@pytest.mark.parametrize("client", list(CLIENT_HEADS))
async def test_real_clients_upgrades_are_served_without_h11(
    client: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """h11 is still imported for everything else: the common upgrades never reach it."""

    def no_h11(*args: object, **kwargs: object) -> None:
        raise AssertionError("an h11 connection was made for a common upgrade")

    async with open_server(Config()) as server:
        room = await server.hub.create_room()
        monkeypatch.setattr(http11.h11, "Connection", no_h11)
        head = CLIENT_HEADS[client].replace(b"ROOM", room.encode())
        assert read_upgrade(head, MAX_HEAD) is not None
        ws = await RawWebSocket.connect(server.host, server.port)
        try:
            # The client's first frame right behind its head: read once accepted.
            await ws.send(head + frame(PING, b"early"))
            with trio.fail_after(TIMEOUT):
                while b"\r\n\r\n" not in ws.buffer:
                    assert await ws._fill(), "closed without an answer"
            assert ws.buffer.startswith(b"HTTP/1.1 101 "), bytes(ws.buffer)
            ws.buffer = ws.buffer.partition(b"\r\n\r\n")[2]
            assert await ws.recv_frame() == (PONG, b"early")
        finally:
            await ws.aclose()


_UPGRADE_LINES = (
    b"Upgrade: websocket",
    b"Connection: Upgrade",
    b"Sec-WebSocket-Key: " + KEY,
    b"Sec-WebSocket-Version: 13",
)


@pytest.mark.parametrize(
    ("head", "status"),
    [
        pytest.param(_head(b"GET PATH HTTP/1.1", b"Host: t", *_UPGRADE_LINES), 101, id="valid"),
        pytest.param(
            _head(b"GET PATH HTTP/1.1", b"Host: t", *_UPGRADE_LINES[:3]), 400, id="no-version"
        ),
        pytest.param(
            _head(
                b"GET PATH HTTP/1.1", b"Host: t", *_UPGRADE_LINES[:3], b"Sec-WebSocket-Version: 8"
            ),
            426,
            id="version-8",
        ),
        pytest.param(
            _head(
                b"GET PATH HTTP/1.1",
                b"Host: t",
                _UPGRADE_LINES[0],
                b"Connection: xupgradex",
                *_UPGRADE_LINES[2:],
            ),
            400,
            id="no-upgrade-token",
        ),
        pytest.param(
            _head(b"GET PATH HTTP/1.1", b"Host: t", *_UPGRADE_LINES[2:]),
            None,
            id="not-an-upgrade",
        ),
        pytest.param(
            _head(b"GET PATH HTTP/1.1", b"Host: t", b"Host: u", *_UPGRADE_LINES),
            400,
            id="two-hosts",
        ),
        pytest.param(_head(b"GET PATH HTTP/1.1", *_UPGRADE_LINES), 400, id="no-host"),
        pytest.param(_head(b"GET PATH HTTP/1.0", *_UPGRADE_LINES), 400, id="http-1.0-no-host"),
        pytest.param(_head(b"GET PATH HTTP/1.0", b"Host: t", *_UPGRADE_LINES), 101, id="http-1.0"),
        pytest.param(
            _head(b"GET PATH HTTP/1.1", b"Host: t", *_UPGRADE_LINES, b"X-Folded: a", b" b"),
            101,
            id="folded-line",
        ),
        pytest.param(
            b"GET PATH HTTP/1.1\nHost: t\n" + b"\n".join(_UPGRADE_LINES) + b"\n\n",
            101,
            id="bare-lf",
        ),
        pytest.param(
            _head(b"GET PATH HTTP/1.1", b"Host: t", *_UPGRADE_LINES, b"Bad Name: x"),
            400,
            id="bad-header-name",
        ),
        pytest.param(
            _head(b"GET PATH HTTP/1.1", b"Host: t", *_UPGRADE_LINES, b"Content-Length: 0"),
            101,
            id="empty-body",
        ),
        pytest.param(
            _head(
                b"GET PATH HTTP/1.1",
                b"Host: t",
                *_UPGRADE_LINES,
                b"Content-Length: 1",
                b"Transfer-Encoding: chunked",
            ),
            400,
            id="content-length-and-transfer-encoding",
        ),
        pytest.param(_head(b"POST PATH HTTP/1.1", b"Host: t", *_UPGRADE_LINES), None, id="post"),
        pytest.param(
            _head(b"GET PATH HTTP/1.1", b"Host: t", *_UPGRADE_LINES, b"X-Big: " + b"x" * 17000),
            431,
            id="too-large",
        ),
    ],
)
async def test_every_upgrade_gets_the_answer_it_got_from_h11(
    head: bytes, status: int | None
) -> None:
    """Read without h11 or not, an upgrade is answered as the h11 path answers it
    (``None``: not an upgrade, so an ordinary request: not 101)."""
    async with open_server(Config()) as server:
        room = await server.hub.create_room()
        ws = await RawWebSocket.connect(server.host, server.port)
        try:
            await ws.send(head.replace(b"PATH", f"/room/{room}/connect".encode()))
            with trio.fail_after(TIMEOUT):
                while b"\r\n\r\n" not in ws.buffer:
                    assert await ws._fill(), "closed without an answer"
            answer = bytes(ws.buffer)
        finally:
            await ws.aclose()
    if status is None:
        assert not answer.startswith(b"HTTP/1.1 101 "), answer
    else:
        assert answer.startswith(b"HTTP/1.1 %d " % status), answer


class _PartlyTaken(Wire):
    """A wire whose socket takes only the first bytes of a write at once."""

    __slots__ = ("taken",)

    def write_now(self, data: bytes) -> bool | None:
        self.taken, self.owed = data[:10], data[10:]
        return False


async def test_the_101_goes_out_whole_when_the_socket_takes_only_part_of_it_at_once() -> None:
    """The 101 is written without waiting where it can; what the socket did not take
    at once follows straight away (the client sends nothing until it has it all)."""
    ours, theirs = trio.testing.memory_stream_pair()
    wire = _PartlyTaken(ours, 1.0)
    upgrade = upgrade_of(b"GET", VALID)
    assert upgrade is not None
    ws = WebSocket({"client": ("127.0.0.1", 1)}, upgrade.key, wire, Config(), b"")
    await ws.accept()
    answer = accept_response(KEY)
    assert wire.taken == answer[:10]
    received = b""
    with trio.fail_after(TIMEOUT):
        while len(received) < len(answer) - 10:
            received += await theirs.receive_some()
    assert received == answer[10:]
    assert ws.state is WebSocketState.OPEN


def test_two_upgrades_share_their_common_header_names() -> None:
    """A connection's scope lives as long as it: the common names are one object
    each, not a copy per connection."""
    first = read_upgrade(CLIENT_HEADS["chrome"], MAX_HEAD)
    second = read_upgrade(CLIENT_HEADS["chrome"].replace(b"?cbor=true", b""), MAX_HEAD)
    assert first is not None
    assert second is not None
    assert all(a is b for (a, _), (b, _) in zip(first.headers, second.headers, strict=True))
