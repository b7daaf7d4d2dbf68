"""An outside checker's attacks on server-side room logic (issue 21): what a
malformed hook answer, a client pushing where it may not, or a crowd of
handshakes waiting on the authorize hook does to a real server.

Each failure must end as a clear refusal (HTTP status, ``error``, close code)
with at most one log line and no traceback; the server keeps serving others.
"""

from __future__ import annotations

import json
import logging
import os
import signal
from pathlib import Path

import httpx
import pytest
import trio
import trio.testing
from trio_websocket import ConnectionClosed, ConnectionRejected

import drifttrio
from _messages import next_of
from _procs import TIMEOUT, drifttrio_command, start_child
from drifttrio import CloseCode, Config
from drifttrio.hooks import (
    Admit,
    ConnectRequest,
    Event,
    Hooks,
    MemberJoined,
    MemberLeft,
    PushRequest,
    Refuse,
    RoomDeleted,
    RoomView,
)
from drifttrio.hooks.webhooks import WebhookHooks
from drifttrio.server import TRANSPORTS
from drifttrio.testing import DriftClient, open_test_server
from test_webhooks import SECRET, Call, backend

pytest_plugins = ["drifttrio.testing.pytest_plugin"]

transports = pytest.mark.parametrize("transport", TRANSPORTS)


async def _close_code(client: DriftClient) -> int | None:
    """Read until the server closes the connection; its close code (``None``: it
    stayed open for a minute)."""
    with trio.move_on_after(60):
        while True:
            try:
                await client.receive()
            except ConnectionClosed as closed:
                return None if closed.reason is None else closed.reason.code
    return None


# -- a malformed admission ------------------------------------------------------------------


class NonStringKeys(Hooks):
    """A buggy authorize hook: its key rules hold an int (a typo'd id, JSON decoded)."""

    def authorize(self, request: ConnectRequest) -> Admit:
        return Admit(identity="ann", keys=[7, "chat"])  # type: ignore[list-item]


def test_admit_refuses_key_rules_that_are_not_strings() -> None:
    with pytest.raises(TypeError, match="strings"):
        Admit(keys=[7])  # type: ignore[list-item]
    with pytest.raises(TypeError, match="strings"):
        Admit(keys={"chat", b"cursor/*"})  # type: ignore[arg-type]
    assert Admit(keys=["chat"]).may_write("chat")


@transports
async def test_an_admission_with_non_string_keys_is_a_failed_hook_not_a_crash(
    autojump_clock: trio.abc.Clock, transport: str, caplog: pytest.LogCaptureFixture
) -> None:
    # On 4d54db6 the Admit was taken as it was, and the first push's key check
    # raised AttributeError in the member's reader: a traceback, and (under the
    # test server) the whole server down.
    async with open_test_server(transport=transport, hooks=NonStringKeys()) as server:  # type: ignore[arg-type]
        room = await server.new_room()
        caplog.clear()
        with (
            caplog.at_level(logging.WARNING),
            pytest.raises(ConnectionRejected) as refused,
        ):
            await server.connect(room)
        assert refused.value.status_code == 503
        answer = await server.send(room, {"type": "push", "key": "k", "value": 1})
        assert answer.status == 503
        records = [r for r in caplog.records if r.levelno >= logging.WARNING]
        assert [r.name for r in records] == ["drifttrio.hooks", "drifttrio.hooks"]
        assert all(r.exc_info is None for r in records)
        # The server lives on: a request the hook is not asked about still works.
        assert await server.new_room()


# -- pushes to keys a connection may not write ---------------------------------------------


class ReadOnlyUsers(Hooks):
    """Admits everyone; ``?user=viewer`` may not write, the others only ``chat``."""

    def authorize(self, request: ConnectRequest) -> Admit:
        if request.query.get("user") == "viewer":
            return Admit(identity="viewer", write=False)
        return Admit(identity=request.query.get("user"), keys={"chat"})

    def on_push(self, push: PushRequest) -> Refuse | None:
        return Refuse("push refused: no shouting") if push.value == "SHOUT" else None


@transports
@pytest.mark.parametrize("query", ["user=viewer", "user=ann"])
async def test_pushes_its_admission_forbids_count_as_consecutive_errors(
    autojump_clock: trio.abc.Clock, transport: str, query: str
) -> None:
    # A read-only room token's refused pushes count towards max_consecutive_errors
    # (closed with 4000); an admission that forbids the key is the same refusal, but
    # on 4d54db6 it was never counted: a client could push to a forbidden key as
    # fast as its rate limit allows, forever, each answered with an ``error``.
    config = Config(max_consecutive_errors=3)
    async with open_test_server(config, transport=transport, hooks=ReadOnlyUsers()) as server:  # type: ignore[arg-type]
        room = await server.new_room()
        async with await server.connect(room, query=query) as client:
            for i in range(2):
                await client.push("board", i, "replace")
                assert "not allowed" in (await next_of(client, "error"))["message"]
            await client.ping(1)  # a valid message in between resets the count
            assert (await next_of(client, "pong"))["nonce"] == 1
            for i in range(3):
                await client.push("board", i, "replace")
            assert await _close_code(client) == CloseCode.TOO_MANY_ERRORS


@transports
async def test_the_room_logic_refusing_pushes_never_closes_the_connection(
    autojump_clock: trio.abc.Clock, transport: str
) -> None:
    # The other side of the rule above: a push the hook refuses (an illegal move,
    # a moderated word) is the application's answer, not a misbehaving client.
    config = Config(max_consecutive_errors=3)
    async with open_test_server(config, transport=transport, hooks=ReadOnlyUsers()) as server:  # type: ignore[arg-type]
        room = await server.new_room()
        async with await server.connect(room, query="user=ann") as client:
            for _ in range(6):
                await client.push("chat", "SHOUT")
                assert (await next_of(client, "error"))["message"] == "push refused: no shouting"
            await client.push("chat", "hi")
            assert (await next_of(client, "push"))["value"] == "hi"


# -- handshakes waiting on the authorize hook -----------------------------------------------


class SlowGate(Hooks):
    """An authorize hook with a backend behind it: each call waits for ``release``."""

    def __init__(self) -> None:
        self.asked = 0
        self.waiting = 0
        self.release = trio.Event()

    async def authorize(self, request: ConnectRequest) -> None:
        self.asked += 1
        self.waiting += 1
        try:
            await self.release.wait()
        finally:
            self.waiting -= 1


@transports
async def test_the_connection_limits_are_checked_before_the_authorize_hook(
    autojump_clock: trio.abc.Clock, transport: str
) -> None:
    # On 4d54db6 the per-address connection limit was checked only after the
    # hook answered, so one address could hold any number of handshakes inside the
    # hook (with webhooks: every slot of webhook_max_in_flight, starving everyone
    # else's authorize and push calls). Handshakes in progress count as connections.
    gate = SlowGate()
    config = Config(max_connections_per_ip=2)
    async with open_test_server(config, transport=transport, hooks=gate) as server:  # type: ignore[arg-type]
        room = await server.new_room()
        admitted: list[DriftClient] = []
        refused: list[int] = []

        async def connect() -> None:
            try:
                client = await server.connect(room)
            except ConnectionRejected as exc:
                refused.append(exc.status_code or 0)
            else:
                admitted.append(client)

        async with trio.open_nursery() as nursery:
            for _ in range(5):
                nursery.start_soon(connect)
            await trio.testing.wait_all_tasks_blocked()
            assert refused == [503, 503, 503]
            assert gate.asked == gate.waiting == 2  # only what the limit lets in was asked
            gate.release.set()
        assert len(admitted) == 2
        for client in admitted:
            await client.aclose()


@transports
async def test_a_refused_or_failed_handshake_gives_its_slot_back(
    autojump_clock: trio.abc.Clock, transport: str
) -> None:
    config = Config(max_connections_per_ip=1)
    async with open_test_server(config, transport=transport, hooks=ReadOnlyUsers()) as server:  # type: ignore[arg-type]
        room = await server.new_room()
        for _ in range(3):
            with pytest.raises(ConnectionRejected) as refused:
                await server.connect("nosuchroom")
            assert refused.value.status_code == 404
        async with await server.connect(room, query="user=ann") as client:
            await client.push("chat", "hi")
            assert (await next_of(client, "push"))["value"] == "hi"
        async with await server.connect(room, query="user=ann") as client:
            await client.ping(1)
            assert (await next_of(client, "pong"))["nonce"] == 1


# -- kill -9 with a committed-push consumer behind ------------------------------------------

#: The hooks module the server imports (``--hooks audit_hooks:Audit``): an audit log
#: in a file, a line per committed push, fsynced before on_committed returns.
AUDIT_HOOKS = """
import json, os, sys
import trio
from drifttrio.hooks import Hooks

PATH = os.environ["AUDIT_FILE"]


def _seen():
    try:
        with open(PATH) as f:
            return {tuple(json.loads(line)[:2]) for line in f if line.endswith("\\n")}
    except FileNotFoundError:
        return set()


class Audit(Hooks):
    def __init__(self):
        self.seen = _seen()

    async def on_committed(self, pushes):
        with open(PATH, "a") as f:
            for p in pushes:
                f.write(json.dumps([p.room_id, p.seq, p.key, p.value]) + "\\n")
                self.seen.add((p.room_id, p.seq))
            f.flush()
            os.fsync(f.fileno())
        print(f"audited {len(self.seen)}", file=sys.stderr, flush=True)
        # A slow consumer (the first run): the backlog waits in the journal.
        await trio.sleep(float(os.environ.get("AUDIT_DELAY", "0")))
"""

#: The folder this drifttrio is imported from, for the child's ``PYTHONPATH``.
SOURCE = str(Path(drifttrio.__file__).resolve().parents[1])
#: Pushes acknowledged (``/send`` answered 200) before the kill.
KILLED_AFTER = 200


async def test_sigkill_with_a_slow_on_committed_loses_no_committed_push(tmp_path: Path) -> None:
    """A server with a slow ``on_committed`` on SQLite is killed with SIGKILL while
    the consumer is far behind; restarted, it delivers every push acknowledged
    before the kill, each room's seqs in order (repeats allowed: at least once)."""
    (tmp_path / "audit_hooks.py").write_text(AUDIT_HOOKS)
    audit = tmp_path / "audit.jsonl"
    store = f"sqlite:///{tmp_path / 'journal.db'}"
    argv = [*drifttrio_command(), "serve", "--port", "0", "--store", store]
    argv += ["--hooks", "audit_hooks:Audit"]
    # The hooks module, and this checkout's drifttrio (not the installed one).
    env = {"AUDIT_FILE": str(audit), "PYTHONPATH": os.pathsep.join([str(tmp_path), SOURCE])}
    acked: list[int] = []
    async with trio.open_nursery() as nursery:
        child = await start_child(nursery, argv, tmp_path, {**env, "AUDIT_DELAY": "0.5"})
        try:
            url = (await child.wait_for_line(r"listening on (http://127\.0\.0\.1:\d+)")).group(1)
            async with httpx.AsyncClient(base_url=url, timeout=TIMEOUT) as client:
                rooms = [(await client.post("/new")).json()["http_url"] for _ in range(2)]

                async def send(room: str, first: int) -> None:
                    for value in range(first, first + KILLED_AFTER // 4):
                        body = {
                            "type": "push",
                            "key": "log",
                            "value": value,
                            "action": {"type": "append"},
                        }
                        answer = await client.post(room, json=body)
                        assert answer.status_code == 200, answer.text
                        acked.append(value)

                async with trio.open_nursery() as senders:
                    for n in range(4):
                        senders.start_soon(send, rooms[n % 2], n * 1000)
            await child.wait_for_line(r"audited \d+")  # the consumer has started
        finally:
            child.process.kill()  # SIGKILL: no shutdown, no last trim
        assert await child.process.wait() == -signal.SIGKILL
    assert len(acked) == KILLED_AFTER
    before = audit.read_text().count("\n")
    assert before < KILLED_AFTER, "the consumer was not behind: nothing tested"

    async with trio.open_nursery() as nursery:
        child = await start_child(nursery, argv, tmp_path, env)
        try:
            await child.wait_for_line(rf"audited {KILLED_AFTER}$")
        finally:
            child.process.terminate()
        await child.process.wait()
        assert "Traceback" not in child.log, child.log
    lines = [json.loads(line) for line in audit.read_text().splitlines()]
    assert {value for *_, value in lines} == set(acked)
    for room in {room for room, *_ in lines}:
        seqs = [seq for r, seq, *_ in lines if r == room]
        first_seen = list(dict.fromkeys(seqs))
        assert first_seen == sorted(first_seen), "delivered out of each room's order"
        assert first_seen == list(range(1, len(first_seen) + 1))


# -- a refusal without a reason -------------------------------------------------------------


class Unreasonable(Hooks):
    """A refusal whose reason is not text (an error object, ``None`` from a lookup)."""

    def on_push(self, push: PushRequest) -> Refuse | None:
        if push.value == "bad":
            return Refuse(reason=None)  # type: ignore[arg-type]
        return None


def test_refuse_needs_a_text_reason() -> None:
    with pytest.raises(TypeError, match="text"):
        Refuse(reason=None)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="text"):
        Refuse(reason={"code": 7})  # type: ignore[arg-type]


@transports
async def test_a_refusal_without_a_text_reason_is_a_failed_hook(
    autojump_clock: trio.abc.Clock, transport: str, caplog: pytest.LogCaptureFixture
) -> None:
    # On 4d54db6 the client got {"type": "error", "message": null} (and /send a
    # JSON error with a null message): no text to show, and no log line either.
    async with open_test_server(transport=transport, hooks=Unreasonable()) as server:  # type: ignore[arg-type]
        room = await server.new_room()
        with caplog.at_level(logging.WARNING, logger="drifttrio.hooks"):
            async with await server.connect(room) as client:
                await client.push("k", "bad")
                error = await next_of(client, "error")
                assert error["message"] == "push refused: the server's room logic failed"
            push = {"type": "push", "key": "k", "value": "bad", "action": {"type": "replace"}}
            answer = await server.send(room, push)
        assert answer.status == 503
        assert json.loads(answer.body)["message"] == "push refused: the server's room logic failed"
        records = [r for r in caplog.records if r.name == "drifttrio.hooks"]
        assert len(records) == 2
        assert all(r.exc_info is None for r in records)


# -- BaseException out of a hook -------------------------------------------------------------


class Exits(Hooks):
    """A rule calling ``sys.exit()`` (a library's idea of a fatal error)."""

    def decide(self, room: RoomView, push: PushRequest) -> None:
        if push.value == "exit":
            raise SystemExit(3)


async def test_a_hook_calling_sys_exit_refuses_the_push_and_the_server_lives_on(
    autojump_clock: trio.abc.Clock,
) -> None:
    async with open_test_server(hooks=Exits()) as server:
        room = await server.new_room()
        async with await server.connect(room) as client:
            await client.push("k", "exit")
            assert "failed" in (await next_of(client, "error"))["message"]
            await client.push("k", "fine")
            assert (await next_of(client, "push"))["value"] == "fine"


# -- one address against the webhook's slots -------------------------------------------------


async def test_one_address_cannot_take_every_webhook_slot(
    autojump_clock: trio.abc.Clock,
) -> None:
    async def slow_for_one_address(call: Call) -> tuple[int, bytes]:
        if call.json["client"] == "10.0.0.1":
            await trio.sleep_forever()  # a backend slowed down by this address's requests
        return 200, b'{"allow": true}'

    async with backend(slow_for_one_address) as api:
        hooks = WebhookHooks(api.url, SECRET, hooks=["authorize"], max_in_flight=2, timeout=2.0)
        async with open_test_server(hooks=hooks) as server, trio.open_nursery() as nursery:
            room = await server.new_room()

            async def attacker(port: int) -> None:
                with pytest.raises(ConnectionRejected):
                    await server.connect(room, client_address=("10.0.0.1", port))

            for port in (1001, 1002):
                nursery.start_soon(attacker, port)
            # The first handshake holds the address's one slot (a share of 2) in the
            # backend; the second waits for it, not for the victim's slot.
            await api.wait_calls(1)
            await trio.testing.wait_all_tasks_blocked()
            async with await server.connect(room, client_address=("10.0.0.2", 2001)) as victim:
                await victim.ping(1)
                assert (await next_of(victim, "pong"))["nonce"] == 1


# -- members of a deleted room ----------------------------------------------------------------


class Presence(Hooks):
    """Records membership and room events (a presence or billing consumer)."""

    def __init__(self) -> None:
        self.events: list[Event] = []
        self.changed = trio.Event()

    def authorize(self, request: ConnectRequest) -> Admit:
        return Admit(identity=request.query.get("user"))

    def on_event(self, event: Event) -> None:
        self.events.append(event)
        self.changed.set()
        self.changed = trio.Event()

    async def wait_for(self, kind: type[Event], count: int) -> None:
        with trio.fail_after(60):
            while sum(isinstance(e, kind) for e in self.events) < count:
                await self.changed.wait()


async def test_members_of_a_deleted_room_are_told_to_have_left(
    autojump_clock: trio.abc.Clock,
) -> None:
    # On 4d54db6 delete_room closed the inbox before the members' Leave reached it:
    # MemberJoined without a MemberLeft, so a presence count never went down.
    presence = Presence()
    async with open_test_server(hooks=presence) as server:
        room = await server.new_room()
        ann = await server.connect(room, query="user=ann")
        bob = await server.connect(room, query="user=bob")
        await presence.wait_for(MemberJoined, 2)
        await server.hub.delete_room(room)
        for client in (ann, bob):
            assert await _close_code(client) == CloseCode.ROOM_DELETED
        await presence.wait_for(RoomDeleted, 1)
        await presence.wait_for(MemberLeft, 2)
    left = [e for e in presence.events if isinstance(e, MemberLeft)]
    assert sorted(e.identity for e in left) == ["ann", "bob"]
    assert sorted(e.members for e in left) == [0, 1]
    assert all(e.room_id == room for e in left)
