"""Webhooks: ``HookRunner(WebhookHooks(...))`` against a real HTTP backend.

The backend is a small h11 server in the test's own trio run, on 127.0.0.1:0, so
deadlines, the in-flight cap and event retries run on trio's mock clock. The
moderated chat example's backend (stdlib, in a thread) runs on the real clock.
"""

from __future__ import annotations

import importlib.util
import logging
import re
import socket
import sys
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from functools import partial
from pathlib import Path
from typing import Any

import attrs
import h11
import orjson
import pytest
import trio
import trio.testing
from trio_websocket import ConnectionRejected

from _messages import next_of
from drifttrio import Config, ConfigError
from drifttrio.hooks import (
    Accept,
    Admit,
    Committed,
    ConnectRequest,
    Hooks,
    MemberJoined,
    PushRequest,
    Refuse,
    Replace,
    RoomCreated,
    configured_hooks,
)
from drifttrio.hooks._api import ADMIT_ALL
from drifttrio.hooks._runner import PUSH_HOOK_FAILED, HookRunner
from drifttrio.hooks.webhooks import (
    SIGNATURE_HEADER,
    WebhookBadAnswer,
    WebhookHooks,
    WebhookUnavailable,
    hooks_from_config,
    sign,
    verify_signature,
)
from drifttrio.server import TRANSPORTS
from drifttrio.storage.memory import MemoryStorage
from drifttrio.testing import open_test_server

SECRET = "test-secret-0123456789abcdef"
ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "moderated_chat" / "backend.py"


# -- a backend in the test's trio run --------------------------------------------------------


@attrs.frozen
class Call:
    path: str
    headers: dict[str, str]
    body: bytes
    at: float

    @property
    def json(self) -> Any:
        return orjson.loads(self.body)


Answer = tuple[int, bytes]
Handler = Callable[[Call], Awaitable[Answer]]


def answering(data: object, status: int = 200) -> Handler:
    async def handler(_call: Call) -> Answer:
        return status, orjson.dumps(data)

    return handler


@attrs.define
class Backend:
    """An HTTP/1.1 server (keep-alive) that records each call and answers with ``handler``."""

    handler: Handler
    url: str = ""
    calls: list[Call] = attrs.Factory(list)
    arrived: trio.Event = attrs.Factory(trio.Event)

    async def serve(self, stream: trio.SocketStream) -> None:
        conn = h11.Connection(h11.SERVER)
        try:
            while True:
                head: h11.Request | None = None
                body = bytearray()
                while True:
                    event = conn.next_event()
                    if event is h11.NEED_DATA:
                        conn.receive_data(await stream.receive_some(65536))
                    elif isinstance(event, h11.Request):
                        head = event
                    elif isinstance(event, h11.Data):
                        body += event.data
                    elif isinstance(event, h11.EndOfMessage):
                        break
                    else:  # the client closed the connection
                        return
                assert head is not None
                headers = {k.decode().lower(): v.decode() for k, v in head.headers}
                call = Call(head.target.decode(), headers, bytes(body), trio.current_time())
                self.calls.append(call)
                self.arrived.set()
                status, answer = await self.handler(call)
                response = h11.Response(
                    status_code=status,
                    headers=[
                        ("content-type", "application/json"),
                        ("content-length", str(len(answer))),
                    ],
                )
                await stream.send_all(conn.send(response) + conn.send(h11.Data(data=answer)))
                await stream.send_all(conn.send(h11.EndOfMessage()))
                conn.start_next_cycle()
        except (trio.BrokenResourceError, h11.RemoteProtocolError):
            return
        finally:
            await trio.aclose_forcefully(stream)

    async def wait_calls(self, count: int) -> None:
        while len(self.calls) < count:
            self.arrived = trio.Event()
            await self.arrived.wait()


@asynccontextmanager
async def backend(handler: Handler) -> AsyncIterator[Backend]:
    server = Backend(handler)
    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(partial(trio.serve_tcp, server.serve, 0, host="127.0.0.1"))
        server.url = f"http://127.0.0.1:{listeners[0].socket.getsockname()[1]}/hooks"
        yield server
        nursery.cancel_scope.cancel()


@asynccontextmanager
async def running(hooks: Hooks) -> AsyncIterator[HookRunner]:
    runner = HookRunner(hooks)
    async with runner.running(MemoryStorage()):
        yield runner


@contextmanager
def refused_port() -> Iterator[int]:
    """A port nothing listens on (it was free a moment ago)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    yield port


def push(value: Any = "hi", identity: Any = None) -> PushRequest:
    return PushRequest("room1", "chat", "append", value, identity, "websocket")


def connect(**query: str) -> ConnectRequest:
    return ConnectRequest("room1", "websocket", "10.0.0.7", {"x-app": "1"}, query, None)


def warnings_of(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]


# -- the signature -------------------------------------------------------------------------


def documented_verify() -> Callable[[bytes, str, bytes], bool]:
    """The verification snippet of docs/server-side-logic.md, run as a backend would."""
    page = (ROOT / "docs" / "server-side-logic.md").read_text()
    (snippet,) = re.findall(r"```python\n(import hashlib.*?def verify\(.*?)```", page, re.S)
    namespace: dict[str, Any] = {}
    exec(snippet, namespace)
    verify: Callable[[bytes, str, bytes], bool] = namespace["verify"]
    return verify


verify_as_documented = documented_verify()


async def test_every_call_is_signed_and_a_wrong_secret_fails_verification() -> None:
    async with backend(answering({"accept": True})) as server:
        hooks = WebhookHooks(server.url, SECRET)
        async with running(hooks) as runner:
            assert await runner.screen_push(push(b"\x00\xff", identity={"u": 1})) == Accept()
    (call,) = server.calls
    assert call.path == "/hooks/push"
    assert call.headers["content-type"] == "application/json"
    header = call.headers[SIGNATURE_HEADER.lower()]
    assert verify_as_documented(SECRET.encode(), header, call.body)
    assert verify_signature(SECRET, header, call.body)
    assert not verify_as_documented(b"another-secret-0123456789", header, call.body)
    assert not verify_signature("another-secret-0123456789", header, call.body)
    assert not verify_signature(SECRET, header, call.body + b" ")
    # An old signature is a replay: refused past the tolerance.
    old = sign(SECRET, int(time.time()) - 301, call.body)
    assert not verify_signature(SECRET, old, call.body)
    assert call.json == {
        "hook": "push",
        "room_id": "room1",
        "key": "chat",
        "action": "append",
        "value": [0, 255],  # bytes, as JSON output writes them
        "identity": {"u": 1},
        "source": "websocket",
        "compact_seq": None,
        "client": "",
    }


async def test_a_backend_that_rejects_the_signature_refuses_the_push(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def strict(call: Call) -> Answer:
        ok = verify_as_documented(
            b"the-backend-has-another-secret", call.headers["drifttrio-signature"], call.body
        )
        return (200, b'{"accept": true}') if ok else (401, b'{"error": "bad signature"}')

    async with backend(strict) as server, running(WebhookHooks(server.url, SECRET)) as runner:
        assert await runner.screen_push(push()) == Refuse(PUSH_HOOK_FAILED, 503)
    (line,) = warnings_of(caplog)
    assert "WebhookBadAnswer" in line
    assert "answered 401" in line


# -- answers -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("answer", "decision"),
    [
        ({"allow": True}, Admit()),
        (
            {
                "allow": True,
                "identity": {"name": "alice"},
                "write": False,
                "keys": ["chat", "cursor/*"],
            },
            Admit({"name": "alice"}, write=False, keys=frozenset({"chat", "cursor/*"})),
        ),
        ({"allow": False}, Refuse()),
        ({"allow": False, "status": 401, "reason": "who are you?"}, Refuse("who are you?", 401)),
    ],
)
async def test_authorize_answers(answer: object, decision: Admit | Refuse) -> None:
    async with backend(answering(answer)) as server:
        hooks = WebhookHooks(server.url, SECRET, hooks=["authorize"])
        async with running(hooks) as runner:
            assert runner.authorizes
            assert not runner.screens_pushes
            assert await runner.authorize(connect(name="alice")) == decision
    assert server.calls[0].path == "/hooks/authorize"
    assert server.calls[0].json == {
        "hook": "authorize",
        "room_id": "room1",
        "source": "websocket",
        "client": "10.0.0.7",
        "headers": {"x-app": "1"},
        "query": {"name": "alice"},
        "claims": None,
    }


@pytest.mark.parametrize(
    ("answer", "decision"),
    [
        ({"accept": True}, Accept()),
        ({"accept": True, "expect_seq": 0}, Accept(expect_seq=0)),
        (
            {"accept": True, "value": {"text": "hi", "from": "bob"}},
            Replace({"text": "hi", "from": "bob"}),
        ),
        ({"accept": True, "value": None, "expect_seq": 7}, Replace(None, expect_seq=7)),
        ({"accept": False}, Refuse()),
        ({"accept": False, "reason": "not your turn"}, Refuse("not your turn")),
        ({"accept": False, "reason": "slow down", "status": 429}, Refuse("slow down", 429)),
    ],
)
async def test_push_answers(answer: object, decision: object) -> None:
    async with (
        backend(answering(answer)) as server,
        running(WebhookHooks(server.url, SECRET, hooks=["push"])) as runner,
    ):
        assert not runner.authorizes
        assert await runner.screen_push(push()) == decision


@pytest.mark.parametrize(
    ("status", "body"),
    [
        (500, b'{"accept": true}'),
        (302, b'{"accept": true}'),
        (200, b"accept"),
        (200, b""),
        (200, b"[true]"),
        (200, b'{"accept": "yes"}'),
        (200, b'{"accept": true, "expect_seq": -1}'),
        (200, b'{"accept": true, "expect_seq": true}'),
        (200, b'{"accept": false, "status": 200}'),
        (200, b'{"accept": false, "reason": 7}'),
        (200, b'{"accept": true, "value": "' + b"x" * 2000 + b'"}'),  # over max_answer_bytes
    ],
)
async def test_a_bad_push_answer_refuses_with_one_log_line(
    status: int, body: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    async def handler(_call: Call) -> Answer:
        return status, body

    async with backend(handler) as server:
        hooks = WebhookHooks(server.url, SECRET, max_answer_bytes=1000)
        async with running(hooks) as runner:
            assert await runner.screen_push(push()) == Refuse(PUSH_HOOK_FAILED, 503)
    assert len(warnings_of(caplog)) == 1


@pytest.mark.parametrize(
    "body",
    [
        b'{"allow": "yes"}',
        b'{"allow": true, "write": 1}',
        b'{"allow": true, "keys": "chat"}',
        b'{"allow": false, "status": 302}',
    ],
)
async def test_a_bad_authorize_answer_refuses_with_503(
    body: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    async def handler(_call: Call) -> Answer:
        return 200, body

    async with backend(handler) as server, running(WebhookHooks(server.url, SECRET)) as runner:
        refusal = await runner.authorize(connect())
    assert isinstance(refusal, Refuse)
    assert refusal.status == 503
    (line,) = warnings_of(caplog)
    assert "WebhookBadAnswer" in line


# -- the backend fails ---------------------------------------------------------------------


async def test_backend_down_refuses_by_default(caplog: pytest.LogCaptureFixture) -> None:
    with refused_port() as port:
        hooks = WebhookHooks(f"http://127.0.0.1:{port}", SECRET)
        async with running(hooks) as runner:
            assert await runner.screen_push(push()) == Refuse(PUSH_HOOK_FAILED, 503)
            refusal = await runner.authorize(connect())
    assert isinstance(refusal, Refuse)
    assert refusal.status == 503
    lines = warnings_of(caplog)
    assert len(lines) == 2
    assert all("WebhookUnavailable" in line for line in lines)


async def test_backend_down_allows_the_hooks_that_fail_open(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with refused_port() as port:
        hooks = WebhookHooks(f"http://127.0.0.1:{port}", SECRET, fail_open=["authorize", "push"])
        async with running(hooks) as runner:
            assert await runner.screen_push(push()) == Accept()
            assert await runner.authorize(connect()) is ADMIT_ALL
    lines = warnings_of(caplog)
    assert len(lines) == 2
    assert all("allowed (fail_open)" in line for line in lines)


@pytest.mark.parametrize("fail_open", [False, True])
async def test_a_backend_that_never_answers_times_out(
    fail_open: bool, autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    async def silent(_call: Call) -> Answer:
        await trio.sleep_forever()
        raise AssertionError("unreachable")

    async with backend(silent) as server:
        hooks = WebhookHooks(
            server.url, SECRET, timeout=2.0, fail_open=["push"] if fail_open else []
        )
        async with running(hooks) as runner:
            started = trio.current_time()
            decision = await runner.screen_push(push())
            took = trio.current_time() - started
    assert decision == (Accept() if fail_open else Refuse(PUSH_HOOK_FAILED, 503))
    # This module's deadline answered, not the runner's (push_timeout is later).
    assert took == pytest.approx(2.0, abs=0.01)
    assert hooks.push_timeout > 2.0
    (line,) = warnings_of(caplog)
    assert "no answer within 2 s" in line


async def test_calls_in_flight_never_exceed_the_cap(autojump_clock: trio.testing.MockClock) -> None:
    in_flight = most = 0

    async def slow(_call: Call) -> Answer:
        nonlocal in_flight, most
        in_flight += 1
        most = max(most, in_flight)
        await trio.sleep(0.1)
        in_flight -= 1
        return 200, b'{"accept": true}'

    decisions: list[object] = []
    async with backend(slow) as server:
        hooks = WebhookHooks(server.url, SECRET, timeout=5.0, max_in_flight=3)
        async with running(hooks) as runner:

            async def one() -> None:
                decisions.append(await runner.screen_push(push()))

            async with trio.open_nursery() as nursery:
                for _ in range(10):
                    nursery.start_soon(one)
    assert most == 3
    assert len(server.calls) == 10
    assert decisions == [Accept()] * 10


async def test_a_push_waits_for_a_slot_at_most_its_deadline(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    async def stuck(_call: Call) -> Answer:
        await trio.sleep_forever()
        raise AssertionError("unreachable")

    async with backend(stuck) as server:
        hooks = WebhookHooks(server.url, SECRET, timeout=2.0, max_in_flight=1)
        async with running(hooks) as runner, trio.open_nursery() as nursery:
            nursery.start_soon(runner.screen_push, push())  # holds the only slot
            await server.wait_calls(1)
            started = trio.current_time()
            assert await runner.screen_push(push()) == Refuse(PUSH_HOOK_FAILED, 503)
            assert trio.current_time() - started <= 2.0
    assert len(server.calls) == 1  # the backend never saw the second push
    lines = warnings_of(caplog)
    busy = "(all 1, or this address's share) stayed busy for 2 s"
    assert sum(busy in line for line in lines) == 1
    assert sum("no answer within 2 s" in line for line in lines) == 1  # the first push


# -- events and committed pushes -------------------------------------------------------------


async def test_an_event_is_retried_with_backoff(autojump_clock: trio.testing.MockClock) -> None:
    answers = iter([500, 503, 204])

    async def flaky(_call: Call) -> Answer:
        return next(answers), b""

    async with (
        backend(flaky) as server,
        running(WebhookHooks(server.url, SECRET, hooks=["event"])) as runner,
    ):
        assert runner.wants_events
        assert not runner.screens_pushes
        runner.emit(MemberJoined("room1", {"name": "alice"}, 3))
        await server.wait_calls(3)
    first, second, third = (call.at for call in server.calls)
    assert second - first == pytest.approx(0.5, abs=0.01)
    assert third - second == pytest.approx(1.0, abs=0.01)
    assert server.calls[0].path == "/hooks/event"
    assert server.calls[2].json == {
        "hook": "event",
        "event": "member_joined",
        "room_id": "room1",
        "identity": {"name": "alice"},
        "members": 3,
    }


async def test_an_event_that_keeps_failing_is_dropped_with_one_log_line(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    async def down_then_up(call: Call) -> Answer:
        return (200 if call.json["room_id"] == "second" else 500), b""

    async with (
        backend(down_then_up) as server,
        running(WebhookHooks(server.url, SECRET, hooks=["event"])) as runner,
    ):
        runner.emit(RoomCreated("first"))
        runner.emit(RoomCreated("second"))
        await server.wait_calls(4)
    assert [call.json["room_id"] for call in server.calls] == ["first"] * 3 + ["second"]
    (line,) = warnings_of(caplog)
    assert "on_event" in line
    assert "answered 500" in line


async def test_committed_pushes_are_posted_and_a_failure_raises_for_the_runner_to_retry() -> None:
    pushes = [
        Committed("room1", 4, "board", "replace", {"x": 1}),
        Committed("room1", 5, "log", "append", "e4"),
    ]
    status = 200

    async def handler(_call: Call) -> Answer:
        return status, b""

    async with backend(handler) as server:
        hooks = WebhookHooks(server.url, SECRET, hooks=["committed"])
        assert HookRunner(hooks).wants_commits
        async with hooks.lifespan():
            await hooks.on_committed(pushes)
            status = 500
            with pytest.raises(WebhookBadAnswer):
                await hooks.on_committed(pushes)
    assert server.calls[0].path == "/hooks/committed"
    assert server.calls[0].json == {
        "hook": "committed",
        "pushes": [
            {"room_id": "room1", "seq": 4, "key": "board", "action": "replace", "value": {"x": 1}},
            {"room_id": "room1", "seq": 5, "key": "log", "action": "append", "value": "e4"},
        ],
    }


async def test_outside_its_lifespan_a_call_fails_without_io() -> None:
    hooks = WebhookHooks("http://127.0.0.1:9/", SECRET, hooks=["committed"])
    with pytest.raises(WebhookUnavailable, match="not running"):
        await hooks.on_committed([])


# -- which hooks are called ----------------------------------------------------------------


def test_only_the_hooks_named_are_overridden() -> None:
    runner = HookRunner(WebhookHooks("http://backend", SECRET))
    assert (runner.authorizes, runner.screens_pushes) == (True, True)
    assert (runner.wants_events, runner.wants_commits, runner.decides) == (False, False, False)
    assert isinstance(runner.hooks, WebhookHooks)

    class Mine(WebhookHooks):
        """A subclass's own hooks are kept, whatever ``hooks`` names."""

        def on_event(self, event: object) -> None:
            return None

    mine = HookRunner(Mine("http://backend", SECRET, hooks=["push"]))
    assert (mine.authorizes, mine.screens_pushes, mine.wants_events) == (False, True, True)
    assert isinstance(mine.hooks, Mine)


# -- configuration -------------------------------------------------------------------------


def test_hooks_from_config() -> None:
    assert hooks_from_config(Config()) is None
    config = Config.from_env(
        {
            "DRIFTTRIO_WEBHOOK_URL": "https://backend.example/drifttrio/",
            "DRIFTTRIO_WEBHOOK_SECRET": SECRET,
            "DRIFTTRIO_WEBHOOK_HOOKS": "push, event",
            "DRIFTTRIO_WEBHOOK_TIMEOUT_SECONDS": "0.5",
            "DRIFTTRIO_WEBHOOK_MAX_IN_FLIGHT": "8",
            "DRIFTTRIO_WEBHOOK_FAIL_OPEN": "push",
        }
    )
    hooks = hooks_from_config(config)
    assert hooks is not None
    assert hooks.url == "https://backend.example/drifttrio"
    assert hooks.enabled == {"push", "event"}
    assert hooks.fail_open == {"push"}
    assert (hooks.timeout, hooks.max_in_flight) == (0.5, 8)
    assert hooks.max_answer_bytes == config.max_message_bytes
    assert "secret" not in repr(config).lower().replace("webhook_secret", "")


@pytest.mark.parametrize(
    ("settings", "error"),
    [
        ({"webhook_url": "http://b", "webhook_secret": "short"}, "at least 16 characters"),
        ({"webhook_url": "http://b"}, "at least 16 characters"),
        ({"webhook_secret": SECRET}, "webhook_url is not"),
        ({"webhook_url": "ftp://b", "webhook_secret": SECRET}, "http:// or https://"),
        ({"webhook_url": "b", "webhook_secret": SECRET}, "http:// or https://"),
        (
            {"webhook_url": "http://b", "webhook_secret": SECRET, "webhook_hooks": "push,autorize"},
            "autorize",
        ),
        (
            {"webhook_url": "http://b", "webhook_secret": SECRET, "webhook_fail_open": "event"},
            "event",
        ),
    ],
)
def test_bad_webhook_settings_stop_the_start(settings: dict[str, str], error: str) -> None:
    with pytest.raises(ConfigError, match=error):
        hooks_from_config(Config(**settings))


def test_python_hooks_and_webhooks_together_stop_the_start() -> None:
    both = Config(webhook_url="http://b", webhook_secret=SECRET, hooks="app.logic:hooks")
    with pytest.raises(ConfigError, match="not both"):
        hooks_from_config(both)
    with pytest.raises(ConfigError, match="not both"):
        configured_hooks(both)


def test_the_settings_choose_the_hooks() -> None:
    assert configured_hooks(Config()) is None
    webhooks = configured_hooks(Config(webhook_url="http://b", webhook_secret=SECRET))
    assert isinstance(webhooks, WebhookHooks)
    with pytest.raises(ConfigError, match="webhook_url is not"):
        configured_hooks(Config(webhook_secret=SECRET))


# -- the moderated chat example ------------------------------------------------------------


@pytest.fixture
def chat_backend() -> Iterator[str]:
    """examples/moderated_chat/backend.py, serving in a thread on a free port."""
    spec = importlib.util.spec_from_file_location("moderated_chat_backend", EXAMPLE)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    server = module.make_server(0, SECRET.encode())
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
        del sys.modules[spec.name]


async def test_moderated_chat_backend(chat_backend: str) -> None:
    with trio.fail_after(10):
        async with running(WebhookHooks(chat_backend, SECRET)) as runner:
            assert await runner.authorize(connect()) == Refuse("say who you are: ?name=...", 401)
            admitted = await runner.authorize(connect(name="alice"))
            assert admitted == Admit("alice", keys=frozenset({"chat"}))
            assert await runner.screen_push(push({"text": "hello all"}, "alice")) == Replace(
                {"text": "hello all", "from": "alice"}
            )
            refused = await runner.screen_push(push({"text": "buy SPAM now"}, "alice"))
            assert refused == Refuse("message refused: mind your language")
        async with running(WebhookHooks(chat_backend, "not-the-backend-secret")) as runner:
            assert await runner.screen_push(push({"text": "hi"}, "alice")) == Refuse(
                PUSH_HOOK_FAILED, 503
            )


# -- end to end: a server on each transport, its webhooks on a real backend ------------------


def _moderating(bad_signature: bool = False) -> Handler:
    async def handler(call: Call) -> Answer:
        if bad_signature or not verify_as_documented(SECRET.encode(), _sig(call), call.body):
            return 401, b'{"error": "bad signature"}'
        body = call.json
        if call.path.endswith("/authorize"):
            name = body["query"].get("name")
            if name is None:
                return 200, orjson.dumps({"allow": False, "status": 401, "reason": "say who"})
            return 200, orjson.dumps({"allow": True, "identity": name})
        if call.path.endswith("/push"):
            value = body["value"]
            if value == "nonsense":
                return 200, b"[1, 2]"
            if value == "spam":
                return 200, orjson.dumps({"accept": False, "reason": "no spam"})
            stamped = {"text": value, "from": body["identity"]}
            return 200, orjson.dumps({"accept": True, "value": stamped})
        return 200, b"{}"

    return handler


def _sig(call: Call) -> str:
    return call.headers.get(SIGNATURE_HEADER.lower(), "")


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_webhooks_decide_for_a_real_server(transport: str) -> None:
    async with backend(_moderating()) as server_side:
        hooks = WebhookHooks(server_side.url, SECRET, hooks="authorize,push")
        async with open_test_server(transport=transport, hooks=hooks) as server:  # type: ignore[arg-type]
            room = await server.new_room()
            with pytest.raises(ConnectionRejected) as refused:
                await server.connect(room)
            assert refused.value.status_code == 401
            async with await server.connect(room, query="name=ann") as ann:
                for value in ["hi", "spam", "nonsense", "bye"]:
                    await ann.push("chat", value)
                assert (await next_of(ann, "push"))["value"] == {"text": "hi", "from": "ann"}
                assert (await next_of(ann, "error"))["message"] == "no spam"
                assert (await next_of(ann, "error"))["message"] == PUSH_HOOK_FAILED
                assert (await next_of(ann, "push"))["value"] == {"text": "bye", "from": "ann"}
            answer = await server.request(
                "POST",
                f"/room/{room}/send?name=bob",
                json_body={
                    "type": "push",
                    "key": "chat",
                    "value": "spam",
                    "action": {"type": "append"},
                },
            )
            assert answer.status == 403
            assert answer.json()["message"] == "no spam"


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_a_backend_rejecting_the_signature_refuses_upgrades(transport: str) -> None:
    async with backend(_moderating(bad_signature=True)) as server_side:
        hooks = WebhookHooks(server_side.url, SECRET, hooks="authorize,push")
        async with open_test_server(transport=transport, hooks=hooks) as server:  # type: ignore[arg-type]
            room = await server.new_room()
            with pytest.raises(ConnectionRejected) as refused:
                await server.connect(room, query="name=ann")
            assert refused.value.status_code == 503


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize("fail_open", ["", "authorize,push"])
async def test_backend_down_on_a_real_server(transport: str, fail_open: str) -> None:
    with refused_port() as port:
        hooks = WebhookHooks(
            f"http://127.0.0.1:{port}", SECRET, hooks="authorize,push", fail_open=fail_open
        )
        async with open_test_server(transport=transport, hooks=hooks) as server:  # type: ignore[arg-type]
            room = await server.new_room()
            if not fail_open:
                with pytest.raises(ConnectionRejected) as refused:
                    await server.connect(room)
                assert refused.value.status_code == 503
                return
            async with await server.connect(room) as client:
                await client.push("chat", "hi")
                assert (await next_of(client, "push"))["value"] == "hi"
