"""Room tokens and the API key are read from the network: any bytes at all get a
401 (or 403), never an exception, a dropped connection or a logged traceback.

First properties of the two parsers over arbitrary input, then the real server on
127.0.0.1:0 over both transports, spoken to over raw sockets so that the bytes
(latin-1 in headers, raw non-ASCII in the query) reach the server unaltered.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio
from hypothesis import example, given, settings
from hypothesis import strategies as st

from drifttrio import Config, ProtocolError, RunningServer, open_server
from drifttrio.server import TRANSPORTS
from drifttrio.web.app import _bearer_matches
from drifttrio.web.tokens import issue_room_token, verify_room_token

TIMEOUT = 10  # a guard against hangs, never a way to wait for something
SECRET = "test-secret"
KEY = "api-key"
ROOM = "r" * 22

# -- the parsers, over arbitrary input ------------------------------------------------------

#: Any str at all, lone surrogates included (hypothesis leaves them out by default).
_ANY_TEXT = st.text(st.characters(exclude_categories=()))
#: ASCII digits, then digits of other scripts: all of them pass str.isdigit().
_DIGITS = st.text(
    st.sampled_from(
        "0123456789\u00b2\u00b3\u00b9\u0661\u0662\u0663\u06f4\u07c0\u0966"
        "\u0a67\u0bee\u0e53\u0ed2\u1369\u17e0\u1811\U0001d7ce\U0001d7d7"
    ),
    max_size=25,
)
#: Tokens shaped like the real thing, with every part drawn from hostile alphabets.
_TOKEN_LIKE = st.builds(
    lambda letter, expiry, signature, dots: dots.join([letter, expiry, signature]),
    st.sampled_from(["r", "w", "x", "", "W", "\uff57"]),
    _DIGITS | st.integers(-(10**30), 10**30).map(str) | st.text(max_size=30),
    _ANY_TEXT,
    st.sampled_from([".", "..", "\u3002"]),
)


@settings(max_examples=500, deadline=None)
@given(
    secret=_ANY_TEXT.filter(bool),
    room=_ANY_TEXT,
    token=st.none() | _ANY_TEXT | _TOKEN_LIKE,
    now=st.floats(0, 1e13) | st.none(),
)
@example(secret=SECRET, room=ROOM, token="w.².x", now=None)  # a Unicode digit: isdigit() is True
@example(
    secret=SECRET, room=ROOM, token="w.\u0661\u0662\u0663.x", now=None
)  # Arabic-Indic digits: int() reads them
@example(secret=SECRET, room=ROOM, token="w.1.\udc80", now=None)  # a lone surrogate
@example(secret="\udcff", room="\ud800", token="w.1.AAAA", now=None)  # surrogate-escaped secret
@example(secret=SECRET, room=ROOM, token="w.1.é", now=None)  # non-ASCII signature
def test_verify_room_token_only_ever_refuses_with_401(
    secret: str, room: str, token: str | None, now: float | None
) -> None:
    refusal: ProtocolError | None = None
    try:
        access = verify_room_token(secret, room, token, now=now)
    except ProtocolError as exc:
        refusal = exc
    if refusal is not None:
        assert refusal.status == 401
        assert refusal.message in (
            "invalid or expired room token",
            "this room needs a token (token=... in the URL)",
        )
    else:
        # Only a real signature passes: nothing random may forge one.
        assert token is not None
        assert access in ("read", "write")
        assert token == issue_room_token(secret, room, access, 1, now=int(token.split(".")[1]) - 1)


@settings(max_examples=200, deadline=None)
@given(secret=_ANY_TEXT.filter(bool), room=_ANY_TEXT, access=st.sampled_from(["read", "write"]))
@example(secret="\udcff", room="\ud800", access="write")
def test_any_secret_and_room_round_trip(secret: str, room: str, access: Any) -> None:
    token = issue_room_token(secret, room, access, 60, now=1000)
    assert verify_room_token(secret, room, token, now=1000) == access


@pytest.mark.parametrize(
    "token",
    ["w.01060.{sig}", "w.1060.{sig}\n", "w.+1060.{sig}", "w. 1060.{sig}", "w.1_060.{sig}"],
)
def test_only_the_expiry_as_issued_is_accepted(token: str) -> None:
    """int() would read all of these as 1060: one spelling per token, the issued one."""
    issued = issue_room_token(SECRET, ROOM, "write", 60, now=1000)
    assert verify_room_token(SECRET, ROOM, issued, now=1000) == "write"
    with pytest.raises(ProtocolError):
        verify_room_token(SECRET, ROOM, token.format(sig=issued.split(".")[2]), now=1000)


def _scope(*headers: tuple[bytes, bytes]) -> dict[str, Any]:
    return {"type": "http", "headers": list(headers)}


@settings(max_examples=500, deadline=None)
@given(
    key=_ANY_TEXT.filter(bool),
    values=st.lists(st.binary(max_size=80) | st.just(b"Bearer \xff"), max_size=3),
    names=st.lists(st.sampled_from([b"authorization", b"x-other"]), min_size=3, max_size=3),
)
@example(key=KEY, values=[b"Bearer \xff"], names=[b"authorization"] * 3)
@example(key="cl\u00e9", values=[b"Bearer cl\xc3\xa9"], names=[b"authorization"] * 3)
@example(key="\udcff", values=[b"Bearer \xff"], names=[b"authorization"] * 3)
def test_bearer_matches_only_ever_answers(
    key: str, values: list[bytes], names: list[bytes]
) -> None:
    scope = _scope(*zip(names, values, strict=False))
    matched = _bearer_matches(scope, key)
    assert isinstance(matched, bool)
    first = next((value for name, value in scope["headers"] if name == b"authorization"), None)
    expected = key.encode("utf-8", "surrogatepass")
    if first is None or first.split(b" ", 1)[0].lower() != b"bearer":
        assert not matched
    elif matched:
        assert first.partition(b" ")[2].strip() == expected


@pytest.mark.parametrize(
    ("header", "matches"),
    [
        (b"Bearer api-key", True),
        (b"bearer   api-key  ", True),
        (b"Bearer api-keyX", False),
        (b"Basic api-key", False),
        (b"Bearer", False),
        (b"", False),
        (b"Bearer \xff", False),
        (b"Bearer api-key\xe9", False),
    ],
)
def test_bearer_matches_examples(header: bytes, matches: bool) -> None:
    assert _bearer_matches(_scope((b"authorization", header)), KEY) is matches
    assert _bearer_matches(_scope((b"x-other", b"Bearer api-key")), KEY) is False


def test_bearer_matches_a_non_ascii_key() -> None:
    assert _bearer_matches(_scope((b"authorization", b"Bearer cl\xc3\xa9")), "cl\u00e9")
    assert not _bearer_matches(_scope((b"authorization", b"Bearer cl\xe9")), "cl\u00e9")


# -- the real server --------------------------------------------------------------------------

#: Tokens (as query bytes) that reach the app and must get a 401 and nothing else.
JUNK_TOKENS = [
    b"w.%B2.x",  # percent-encoded latin-1 "\xb2": not UTF-8, decoded as U+FFFD
    b"w.%C2%B2.x",  # "²", a Unicode digit: str.isdigit() is True, int() fails
    b"w.%D9%A1%D9%A2%D9%A3.AAAAAAAAAAAAAAAAAAAAAA",  # Arabic-Indic digits: int() reads 123
    b"w.99999999999999999999999999999999.x",  # huge
    b"w.01767225600.AAAAAAAAAAAAAAAAAAAAAA",  # leading zero
    b"w.1.%FF%FE%ED%A0%80",  # percent-encoded junk (invalid UTF-8, an encoded surrogate)
    b"w.1767225600.%C3%A9%C3%A9",  # a non-ASCII signature
    b"..",  # empty parts
    b"w..",
    b"%00",
    b"%C3%A9",
]
#: Raw non-ASCII bytes in the request line: the HTTP parser (h11, on both transports)
#: refuses the request line with a 400 before any token is read.
RAW_TOKENS = [b"w.\xb2.x", b"w.1.\xff\xfe"]
#: Authorization headers that must get a 401 on POST /new and POST /room/ID/token.
JUNK_AUTHORIZATION = [
    b"Bearer \xff",
    b"Bearer \xc3\xa9\xc3\xa9",
    b"\xff\xfe \xff",
    b"Bearer ",
    b"Bearer",
    b"Basic YXBpLWtleQ==",
    b"Bearer " + b"\xe9" * 4000,
]


@asynccontextmanager
async def tokens_server(transport: str) -> AsyncIterator[RunningServer]:
    async with open_server(
        Config(room_token_secret=SECRET, api_key=KEY), transport=transport
    ) as server:
        yield server


async def raw_request(server: RunningServer, head: bytes, body: bytes = b"") -> tuple[int, Any]:
    """Send ``head`` (request line and headers, no blank line) and ``body`` on a fresh
    connection; the response status and its body (JSON decoded if it is JSON)."""
    stream = await trio.open_tcp_stream(server.host, server.port)
    async with stream:
        await stream.send_all(
            head
            + b"\r\nHost: 127.0.0.1\r\nContent-Length: "
            + str(len(body)).encode()
            + b"\r\n\r\n"
            + body
        )
        data = b""
        with trio.fail_after(TIMEOUT):
            while b"\r\n\r\n" not in data:
                chunk = await stream.receive_some(65536)
                assert chunk, data  # an answer, not a dropped connection
                data += chunk
            response, _, payload = data.partition(b"\r\n\r\n")
            headers = {
                name.strip().lower(): value.strip()
                for name, _, value in (line.partition(b":") for line in response.split(b"\r\n")[1:])
            }
            chunked = headers.get(b"transfer-encoding", b"").lower() == b"chunked"
            length = int(headers.get(b"content-length", b"0"))
            while (not payload.endswith(b"0\r\n\r\n")) if chunked else len(payload) < length:
                chunk = await stream.receive_some(65536)
                assert chunk, data
                payload += chunk
    if chunked:
        payload = _dechunk(payload)
    assert response.startswith(b"HTTP/1.1 "), data
    status = int(response.split(b" ", 2)[1])
    if headers.get(b"content-type") == b"application/json":
        return status, json.loads(payload)
    return status, payload


def _dechunk(data: bytes) -> bytes:
    body = b""
    while True:
        size_line, _, data = data.partition(b"\r\n")
        size = int(size_line, 16)
        if size == 0:
            return body
        body, data = body + data[:size], data[size + 2 :]


def upgrade(path: bytes) -> bytes:
    """The head of a WebSocket upgrade request for ``path``."""
    return (
        b"GET " + path + b" HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13"
    )


def no_tracebacks(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        f"{record.name}: {record.getMessage()}"
        for record in caplog.records
        if record.levelno >= logging.ERROR or record.exc_info
    ]


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_junk_tokens_get_401_on_http_and_websocket(
    transport: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    async with tokens_server(transport) as server:
        created = await raw_request(server, b"POST /new HTTP/1.1\r\nAuthorization: Bearer api-key")
        assert created[0] == 200, created
        room = created[1]["room"].encode()
        invalid = {"type": "error", "message": "invalid or expired room token"}
        for token in JUNK_TOKENS:
            query = b"?token=" + token
            assert await raw_request(server, b"GET /room/" + room + query + b" HTTP/1.1") == (
                401,
                invalid,
            ), token
            push = b'{"type":"ping"}'
            sent = await raw_request(
                server,
                b"POST /room/" + room + b"/send" + query + b" HTTP/1.1\r\n"
                b"Content-Type: application/json",
                push,
            )
            assert sent == (401, invalid), token
            refused = await raw_request(server, upgrade(b"/room/" + room + b"/connect" + query))
            assert refused == (401, invalid), token
        for token in RAW_TOKENS:
            query = b"?token=" + token
            assert (await raw_request(server, b"GET /room/" + room + query + b" HTTP/1.1"))[
                0
            ] == 400
            refused = await raw_request(server, upgrade(b"/room/" + room + b"/connect" + query))
            assert refused[0] == 400
        # The server kept serving: the real token still works, over HTTP and WebSocket.
        real = created[1]["http_url"].split("?", 1)[1].encode()
        pong = await raw_request(
            server,
            b"POST /room/"
            + room
            + b"/send?"
            + real
            + b" HTTP/1.1\r\nContent-Type: application/json",
            b'{"type":"ping"}',
        )
        assert pong[0] == 200
        assert pong[1]["type"] == "pong"
        accepted = await raw_request(server, upgrade(b"/room/" + room + b"/connect?" + real))
        assert accepted[0] == 101
    assert no_tracebacks(caplog) == []


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_junk_authorization_gets_401(
    transport: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    async with tokens_server(transport) as server:
        created = await raw_request(server, b"POST /new HTTP/1.1\r\nAuthorization: Bearer api-key")
        assert created[0] == 200, created
        room = created[1]["room"].encode()
        for header in JUNK_AUTHORIZATION:
            auth = b"\r\nAuthorization: " + header
            new = await raw_request(server, b"POST /new HTTP/1.1" + auth)
            assert new == (401, {"type": "error", "message": "POST /new needs the API key"}), header
            token = await raw_request(server, b"POST /room/" + room + b"/token HTTP/1.1" + auth)
            assert token == (
                401,
                {"type": "error", "message": "issuing room tokens needs the API key"},
            ), header
        again = await raw_request(server, b"POST /new HTTP/1.1\r\nAuthorization: Bearer api-key")
        assert again[0] == 200
    assert no_tracebacks(caplog) == []


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_non_ascii_api_key_works(transport: str) -> None:
    """A key configured with non-ASCII characters matches its UTF-8 bytes (and compare_digest
    no longer raises on it)."""
    async with open_server(Config(api_key="cl\u00e9"), transport=transport) as server:
        ok = await raw_request(server, b"POST /new HTTP/1.1\r\nAuthorization: Bearer cl\xc3\xa9")
        assert ok[0] == 200
        refused = await raw_request(server, b"POST /new HTTP/1.1\r\nAuthorization: Bearer cl\xe9")
        assert refused[0] == 401
