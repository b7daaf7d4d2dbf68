"""Server-side room logic (``drifttrio.hooks``): each hook and each failure mode, on
both transports, over the real app (in-process connections, mock clock).

A hook that raises, times out or answers nonsense refuses that request or push with
a clear error and one log line; it never closes the connection or the room, and
the next push goes through.
"""

from __future__ import annotations

import json
import logging
import secrets
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing
from trio_websocket import ConnectionRejected, open_websocket_url

from _messages import next_of
from _redis import RedisServer
from drifttrio import CloseCode, Config, ConfigError, ProtocolError, open_server
from drifttrio.hooks import (
    Accept,
    Admit,
    Committed,
    ConnectRequest,
    Event,
    HookRefused,
    Hooks,
    MemberJoined,
    MemberLeft,
    PushRequest,
    Refuse,
    Replace,
    RoomCreated,
    RoomDeleted,
    RoomView,
    load_hooks,
)
from drifttrio.runtime.hub import open_hub
from drifttrio.server import TRANSPORTS
from drifttrio.testing import open_test_server, settle

pytest_plugins = ["drifttrio.testing.pytest_plugin"]

transports = pytest.mark.parametrize("transport", TRANSPORTS)


# -- authorize ---------------------------------------------------------------------------


class Gate(Hooks):
    """Admits ``?user=NAME`` (writing only ``NAME/*`` and ``chat``), refuses others."""

    def __init__(self) -> None:
        self.asked: list[ConnectRequest] = []

    def authorize(self, request: ConnectRequest) -> Admit | Refuse:
        self.asked.append(request)
        user = request.query.get("user")
        if user is None:
            return Refuse("who are you?", 401)
        if user == "reader":
            return Admit(identity=user, write=False)
        return Admit(identity={"user": user}, keys={f"{user}/*", "chat"})


@transports
async def test_authorize_refuses_an_upgrade_with_its_status_and_reason(
    autojump_clock: trio.abc.Clock, transport: str
) -> None:
    gate = Gate()
    async with open_test_server(transport=transport, hooks=gate) as server:  # type: ignore[arg-type]
        room = await server.new_room()
        with pytest.raises(ConnectionRejected) as refused:
            await server.connect(room, headers=[("x-app", "1")])
        assert refused.value.status_code == 401
        assert b"who are you?" in (refused.value.body or b"")
        (asked,) = gate.asked
        assert asked.room_id == room
        assert asked.source == "websocket"
        assert asked.headers["x-app"] == "1"
        assert asked.client == "127.0.0.1"
        assert server.hub.metrics.rejected["hook"]._value.get() == 1
        # RFC 9110 15.5.2: a 401 carries a challenge.
        challenges = [v for k, v in refused.value.headers if k.lower() == b"www-authenticate"]
        assert challenges == [b'Bearer realm="drifttrio"']


@transports
async def test_admitted_identity_and_key_permissions_apply_to_pushes(
    autojump_clock: trio.abc.Clock, transport: str
) -> None:
    async with open_test_server(transport=transport, hooks=Gate()) as server:  # type: ignore[arg-type]
        room = await server.new_room()
        async with await server.connect(room, query="user=ann") as ann:
            await ann.push("ann/cursor", 1, "replace")
            assert (await next_of(ann, "push"))["value"] == 1
            await ann.push("bob/cursor", 2, "replace")
            error = await next_of(ann, "error")
            assert error["message"] == "push refused: not allowed to write key 'bob/cursor'"
            await ann.push("chat", "hi")
            assert (await next_of(ann, "push"))["value"] == "hi"  # still connected, in order
        async with await server.connect(room, query="user=reader") as reader:
            await reader.push("chat", "x")
            assert "not allowed" in (await next_of(reader, "error"))["message"]
            await reader.get("chat")
            init = await next_of(reader, "init")
            assert [e["value"] for e in init["data"]] == ["hi"]  # reads stay room-wide


@transports
async def test_authorize_covers_http_room_requests(
    autojump_clock: trio.abc.Clock, transport: str
) -> None:
    gate = Gate()
    async with open_test_server(transport=transport, hooks=gate) as server:  # type: ignore[arg-type]
        room = await server.new_room()
        assert gate.asked == []  # POST /new is not a room request
        answer = await server.send(room, {"type": "get", "key": "chat", "seq": 0})
        assert answer.status == 401
        assert answer.header("www-authenticate") == 'Bearer realm="drifttrio"'
        push = {"type": "push", "key": "bob/x", "value": 1, "action": {"type": "append"}}
        refused = await server.request("POST", f"/room/{room}/send?user=ann", json_body=push)
        assert refused.status == 403
        assert "not allowed to write key 'bob/x'" in refused.json()["message"]
        push["key"] = "ann/x"
        ok = await server.request("POST", f"/room/{room}/send?user=ann", json_body=push)
        assert ok.status == 200
        assert gate.asked[-1].source == "http"


class Broken(Hooks):
    authorize_timeout = 1.0
    push_timeout = 1.0

    def __init__(self, mode: str) -> None:
        self.mode = mode

    async def authorize(self, request: ConnectRequest) -> Any:
        if self.mode == "raise":
            raise RuntimeError("backend bug")
        if self.mode == "slow":
            await trio.sleep(10)
        return "yes"  # nonsense

    async def on_push(self, push: PushRequest) -> Any:
        if push.value == "raise":
            raise RuntimeError("backend bug")
        if push.value == "slow":
            await trio.sleep(10)
        if push.value == "nonsense":
            return 42
        if push.value == "unsendable":
            return Replace({1, 2})
        return None


@transports
@pytest.mark.parametrize("mode", ["raise", "slow", "nonsense"])
async def test_a_failing_authorize_hook_answers_503_with_one_log_line(
    autojump_clock: trio.abc.Clock,
    transport: str,
    mode: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    async with open_test_server(transport=transport, hooks=Broken(mode)) as server:  # type: ignore[arg-type]
        room = await server.new_room()
        caplog.clear()
        with (
            caplog.at_level(logging.WARNING, logger="drifttrio.hooks"),
            pytest.raises(ConnectionRejected) as refused,
        ):
            await server.connect(room)
        assert refused.value.status_code == 503
        records = [r for r in caplog.records if r.name == "drifttrio.hooks"]
        assert len(records) == 1
        assert records[0].exc_info is None
        assert "authorize" in records[0].getMessage()


@transports
async def test_a_failing_push_hook_refuses_that_push_only(
    autojump_clock: trio.abc.Clock, transport: str, caplog: pytest.LogCaptureFixture
) -> None:
    hooks = Broken("ok")
    hooks.authorize = lambda request: None  # type: ignore[method-assign, assignment]
    async with open_test_server(transport=transport, hooks=hooks) as server:  # type: ignore[arg-type]
        room = await server.new_room()
        async with await server.connect(room) as client:
            with caplog.at_level(logging.WARNING, logger="drifttrio.hooks"):
                for bad, text in [
                    ("raise", "failed"),
                    ("slow", "timed out"),
                    ("nonsense", "failed"),
                    ("unsendable", "failed"),
                ]:
                    await client.push("k", bad)
                    error = await next_of(client, "error")
                    assert text in error["message"], bad
                await client.push("k", "fine")
                assert (await next_of(client, "push"))["value"] == "fine"
            records = [r for r in caplog.records if r.name == "drifttrio.hooks"]
            assert len(records) == 4
            assert all(r.exc_info is None for r in records)
        assert server.hub.rooms[room].state.seq == 1  # refused pushes took no seq


# -- on_push -------------------------------------------------------------------------------


class Moderator(Hooks):
    """Refuses banned words, stamps the sender's name into chat messages."""

    def authorize(self, request: ConnectRequest) -> Admit:
        return Admit(identity=request.query.get("user", "anonymous"))

    async def on_push(self, push: PushRequest) -> Accept | Replace | Refuse:
        await trio.sleep(0.01)  # an async hook: the room never waits for it
        if "darn" in str(push.value):
            return Refuse("push refused: mind your language")
        if push.key == "chat":
            return Replace({"text": push.value, "from": push.identity})
        return Accept()


@transports
async def test_on_push_refuses_and_replaces_in_each_connections_order(
    autojump_clock: trio.abc.Clock, transport: str
) -> None:
    async with open_test_server(transport=transport, hooks=Moderator()) as server:  # type: ignore[arg-type]
        room = await server.new_room()
        async with (
            await server.connect(room, query="user=ann") as ann,
            await server.connect(room, query="user=bob") as bob,
        ):
            await bob.get("chat")
            await next_of(bob, "init")
            for text in ["one", "darn", "two", "three"]:
                await ann.push("chat", text)
            assert (await next_of(ann, "error"))["message"] == "push refused: mind your language"
            seen = [(await next_of(bob, "push"))["value"] for _ in range(3)]
            assert seen == [{"text": t, "from": "ann"} for t in ["one", "two", "three"]]
            # over HTTP too, with the status the hook chose
            push = {"type": "push", "key": "chat", "value": "darn", "action": {"type": "append"}}
            answer = await server.send(room, push)
            assert answer.status == 403
            assert "mind your language" in answer.json()["message"]


async def test_in_process_pushes_are_trusted(autojump_clock: trio.abc.Clock) -> None:
    async with open_hub(hooks=Moderator()) as hub:
        room = await hub.create_room()
        await hub.push(room, "chat", "darn")  # on_push is for clients
        (entry,) = await hub.get(room, "chat")
        assert entry.value == "darn"


# -- decide: in the room's order ------------------------------------------------------------


class TicTacToe(Hooks):
    """Each move is an append to ``moves``: legal only on a free cell, players alternate."""

    def decide(self, room: RoomView, push: PushRequest) -> Refuse | None:
        if push.key != "moves":
            return None
        moves = [value for _, value in room.values("moves")]
        cell = push.value.get("cell") if isinstance(push.value, dict) else None
        if cell not in range(9) or any(m["cell"] == cell for m in moves):
            return Refuse("illegal move")
        player = "x" if len(moves) % 2 == 0 else "o"
        if push.value.get("player") != player:
            return Refuse(f"not your turn: {player} plays")
        return None


@transports
async def test_decide_judges_concurrent_moves_against_the_state_the_other_left(
    autojump_clock: trio.abc.Clock, transport: str
) -> None:
    async with open_test_server(transport=transport, hooks=TicTacToe()) as server:  # type: ignore[arg-type]
        room = await server.new_room()
        async with await server.connect(room) as x, await server.connect(room) as also_x:
            # Two clients claim the same cell at once: exactly one move is legal.
            await x.push("moves", {"cell": 4, "player": "x"})
            await also_x.push("moves", {"cell": 4, "player": "x"})
            await settle()
            moves = [e.value for e in server.hub.rooms[room].state.get("moves")]
            assert moves == [{"cell": 4, "player": "x"}]
            errors = [m for c in (x, also_x) for m in await c.drain() if m["type"] == "error"]
            assert [e["message"] for e in errors] == ["illegal move"]
            answer = await server.send(
                room,
                {
                    "type": "push",
                    "key": "moves",
                    "value": {"cell": 0, "player": "x"},
                    "action": {"type": "append"},
                },
            )
            assert answer.status == 403
            assert answer.json()["message"] == "not your turn: o plays"


async def test_decide_applies_to_in_process_pushes(autojump_clock: trio.abc.Clock) -> None:
    async with open_hub(hooks=TicTacToe()) as hub:
        room = await hub.create_room()
        await hub.push(room, "moves", {"cell": 0, "player": "x"})
        with pytest.raises(HookRefused, match="not your turn"):
            await hub.push(room, "moves", {"cell": 1, "player": "x"})


class RaisingRule(Hooks):
    def decide(self, room: RoomView, push: PushRequest) -> None:
        if push.value == "boom":
            raise ValueError("bug in the rule")


async def test_a_raising_decide_refuses_the_push_and_the_room_lives_on(
    autojump_clock: trio.abc.Clock, caplog: pytest.LogCaptureFixture
) -> None:
    async with open_test_server(hooks=RaisingRule()) as server:
        room = await server.new_room()
        async with await server.connect(room) as client:
            with caplog.at_level(logging.WARNING, logger="drifttrio.hooks"):
                await client.push("k", "boom")
                assert "failed" in (await next_of(client, "error"))["message"]
            await client.push("k", "fine")
            assert (await next_of(client, "push"))["seq"] == 1
        assert [r.name for r in caplog.records].count("drifttrio.hooks") == 1


async def test_decide_is_refused_on_a_shared_store_at_start_up() -> None:
    from drifttrio.hooks._runner import HookRunner
    from drifttrio.storage.base import SharedStorage

    def nothing(*args: object) -> None:
        pass

    class FakeShared:  # only isinstance is asked
        load_room = follow = unfollow = push_batch = read_events = nothing

    assert isinstance(FakeShared(), SharedStorage)
    with pytest.raises(ConfigError, match="expect_seq"):
        HookRunner(TicTacToe()).check_store(FakeShared())  # type: ignore[arg-type]


# -- events ----------------------------------------------------------------------------------


class Recorder(Hooks):
    def __init__(self) -> None:
        self.events: list[Event] = []
        self.arrived = trio.Event()

    def authorize(self, request: ConnectRequest) -> Admit:
        return Admit(identity=request.query.get("user"))

    async def on_event(self, event: Event) -> None:
        self.events.append(event)
        self.arrived.set()


@transports
async def test_room_and_membership_events(autojump_clock: trio.abc.Clock, transport: str) -> None:
    recorder = Recorder()
    async with open_test_server(transport=transport, hooks=recorder) as server:  # type: ignore[arg-type]
        room = await server.new_room()
        async with (
            await server.connect(room, query="user=ann"),
            await server.connect(room, query="user=bob"),
        ):
            await settle()
        await settle()
        await server.hub.delete_room(room)
        await settle()
        assert recorder.events == [
            RoomCreated(room),
            MemberJoined(room, "ann", 1),
            MemberJoined(room, "bob", 2),
            MemberLeft(room, "bob", 1),
            MemberLeft(room, "ann", 0),
            RoomDeleted(room),
        ]


async def test_a_stuck_event_consumer_never_slows_the_room(autojump_clock: trio.abc.Clock) -> None:
    class Stuck(Hooks):
        async def on_event(self, event: Event) -> None:
            await trio.sleep_forever()

    async with open_test_server(hooks=Stuck()) as server:
        room = await server.new_room()
        for _ in range(5000):  # more than the queue holds: dropped, counted
            server.hub.hooks.emit(RoomCreated(room))  # type: ignore[union-attr]
        async with await server.connect(room) as client:
            await client.push("k", 1)
            assert (await next_of(client, "push"))["seq"] == 1
        assert server.hub.hooks.dropped_events > 0  # type: ignore[union-attr]


async def test_delete_room_closes_its_members_with_4004(autojump_clock: trio.abc.Clock) -> None:
    async with open_test_server() as server:
        room = await server.new_room()
        async with await server.connect(room) as client:
            await client.push("k", 1)
            await next_of(client, "push")
            await server.hub.delete_room(room)
            reason = await client.wait_closed()
            assert reason.code == CloseCode.ROOM_DELETED
        assert not await server.hub.room_exists(room)


# -- loading and the cost of nothing ----------------------------------------------------------


class Named(Hooks):
    pass


NAMED = Named()
NOT_HOOKS = 42


def test_load_hooks_takes_an_instance_a_class_or_a_factory() -> None:
    assert load_hooks(f"{__name__}:NAMED") is NAMED
    assert isinstance(load_hooks(f"{__name__}:Named"), Named)
    for bad, why in [
        ("nocolon", "module:attribute"),
        ("no_such_module_xyz:x", "cannot import"),
        (f"{__name__}:missing", "no attribute"),
        (f"{__name__}:NOT_HOOKS", "int, not a drifttrio.hooks.Hooks"),
    ]:
        with pytest.raises(ConfigError, match=why):
            load_hooks(bad)


def test_config_names_hooks_by_import_path(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DRIFTTRIO_HOOKS", f"{__name__}:NAMED")
    config = Config.from_env()
    assert config.hooks == f"{__name__}:NAMED"
    from drifttrio.runtime.hub import Hub

    assert Hub(config).hooks is not None
    assert Hub(config).hooks.hooks is NAMED  # type: ignore[union-attr]
    assert Hub(Config()).hooks is None


def test_only_overridden_hooks_are_called() -> None:
    from drifttrio.hooks._runner import HookRunner

    runner = HookRunner(Moderator())
    assert (runner.authorizes, runner.screens_pushes, runner.decides) == (True, True, False)
    assert (runner.wants_events, runner.wants_commits) == (False, False)


def test_refuse_needs_an_error_status() -> None:
    with pytest.raises(ValueError, match="error status"):
        Refuse("x", 200)
    assert isinstance(HookRefused(Refuse("no")), ProtocolError)


def test_admit_key_rules() -> None:
    admit = Admit(keys=["chat", "ann/*"])
    assert admit.may_write("chat")
    assert admit.may_write("ann/cursor")
    assert not admit.may_write("chat2")
    assert not admit.may_write("bob/cursor")
    assert not Admit(write=False).may_write("chat")
    with pytest.raises(TypeError):
        Admit(keys="chat")  # type: ignore[arg-type]


class WriteOnce(Hooks):
    """The key ``once`` may be written while it holds nothing (a conditional push)."""

    def on_push(self, push: PushRequest) -> Accept:
        return Accept(expect_seq=0) if push.key == "once" else Accept()


@transports
async def test_on_push_makes_a_push_conditional(
    autojump_clock: trio.abc.Clock, transport: str
) -> None:
    async with open_test_server(transport=transport, hooks=WriteOnce()) as server:  # type: ignore[arg-type]
        room = await server.new_room()
        async with await server.connect(room) as client:
            await client.push("once", "first", "replace")
            assert (await next_of(client, "push"))["seq"] == 1
            await client.push("once", "second", "replace")
            error = await next_of(client, "error")
            assert error["message"].startswith("conflict: key 'once' changed")
        push = {"type": "push", "key": "once", "value": "x", "action": {"type": "replace"}}
        answer = await server.send(room, push)
        assert answer.status == 409
        assert server.hub.rooms[room].state.seq == 1


# -- committed pushes, through a server ------------------------------------------------------


class Audit(Hooks):
    def __init__(self, fail_first: int = 0) -> None:
        self.seen: list[Committed] = []
        self.fail_first = fail_first
        self.changed = trio.Event()

    async def on_committed(self, pushes: Sequence[Committed]) -> None:
        if self.fail_first:
            self.fail_first -= 1
            raise RuntimeError("the audit database is down")
        self.seen.extend(pushes)
        self.changed.set()
        self.changed = trio.Event()

    async def wait_for(self, count: int) -> None:
        while len(self.seen) < count:
            await self.changed.wait()


@pytest.mark.parametrize("store", ["memory", "sqlite"])
async def test_committed_pushes_reach_the_hook_in_order_despite_failures(
    autojump_clock: trio.abc.Clock, store: str, tmp_path: Path
) -> None:
    audit = Audit(fail_first=2)
    async with open_test_server(store=store, tmp_path=tmp_path, hooks=audit) as server:  # type: ignore[arg-type]
        room = await server.new_room()
        async with await server.connect(room) as client:
            await client.push("cursor", {"x": 1}, "relay")  # not retained: not committed
            await client.push("chat", "a")
            await client.push("chat", "b")
            await client.push("title", "t", "replace")
            await audit.wait_for(3)
    assert [(c.room_id, c.seq, c.key, c.action, c.value) for c in audit.seen] == [
        (room, 2, "chat", "append", "a"),
        (room, 3, "chat", "append", "b"),
        (room, 4, "title", "replace", "t"),
    ]


async def test_committed_pushes_survive_a_restart_on_sqlite(
    autojump_clock: trio.abc.Clock, tmp_path: Path
) -> None:
    class Down(Hooks):
        def __init__(self) -> None:
            self.attempts = 0
            self.retried = trio.Event()

        async def on_committed(self, pushes: Sequence[Committed]) -> None:
            self.attempts += 1
            if self.attempts == 3:
                self.retried.set()
            raise RuntimeError("down for the whole first run")

    down = Down()
    async with open_test_server(store="sqlite", tmp_path=tmp_path, hooks=down) as server:
        room = await server.new_room()
        await server.hub.push(room, "chat", "kept while the consumer is down")
        await down.retried.wait()
    audit = Audit()
    async with open_test_server(store="sqlite", tmp_path=tmp_path, hooks=audit) as server:  # type: ignore[arg-type]
        await audit.wait_for(1)
    assert [(c.room_id, c.value) for c in audit.seen] == [(room, "kept while the consumer is down")]


# -- on the Redis store --------------------------------------------------------------------


class NodeHooks(Recorder):
    """Identity from the query, chat stamped, events and committed pushes recorded."""

    def __init__(self) -> None:
        super().__init__()
        self.committed: list[Committed] = []
        self.got_commits = trio.Event()

    def on_push(self, push: PushRequest) -> Replace:
        return Replace({"text": push.value, "from": push.identity})

    async def on_committed(self, pushes: Sequence[Committed]) -> None:
        self.committed.extend(pushes)
        self.got_commits.set()


async def test_hooks_on_the_redis_store(redis_server: RedisServer) -> None:
    hooks = NodeHooks()
    store = f"{redis_server.url}?prefix=hooks{secrets.token_hex(6)}"
    async with open_server(Config(store=store), hooks=hooks) as server:
        room = await server.hub.create_room()
        url = f"{server.ws_url}/room/{room}/connect?user=ann"
        with trio.fail_after(20):
            async with open_websocket_url(url) as ws:
                await ws.send_message(
                    json.dumps(
                        {"type": "push", "key": "chat", "value": "hi", "action": {"type": "append"}}
                    )
                )
                echo = json.loads(await ws.get_message())
                assert echo["value"] == {"text": "hi", "from": "ann"}
                await hooks.got_commits.wait()
    assert [(c.room_id, c.seq, c.value) for c in hooks.committed] == [
        (room, 1, {"text": "hi", "from": "ann"})
    ]
    assert MemberJoined(room, "ann", 1) in hooks.events


async def test_decide_refuses_to_start_on_the_redis_store(redis_server: RedisServer) -> None:
    store = f"{redis_server.url}?prefix=hooks{secrets.token_hex(6)}"
    with pytest.raises(ConfigError, match="expect_seq"):
        async with open_hub(Config(store=store), hooks=TicTacToe()):
            pass


class Careless(Hooks):
    """Admits with an identity no webhook or event could carry; replaces values with
    ones larger than a client may send."""

    def authorize(self, request: ConnectRequest) -> Admit:
        if request.query.get("who") == "set":
            return Admit(identity={"tags": {"a", "b"}})
        return Admit(identity="ok")

    def on_push(self, push: PushRequest) -> Replace | None:
        return Replace("x" * 2048) if push.value == "inflate" else None


@transports
async def test_what_a_hook_hands_over_is_held_to_the_clients_rules(
    autojump_clock: trio.abc.Clock, transport: str, caplog: pytest.LogCaptureFixture
) -> None:
    config = Config(max_message_bytes=1024)
    async with open_test_server(config, transport=transport, hooks=Careless()) as server:  # type: ignore[arg-type]
        room = await server.new_room()
        with caplog.at_level(logging.WARNING, logger="drifttrio.hooks"):
            with pytest.raises(ConnectionRejected) as refused:
                await server.connect(room, query="who=set")
            assert refused.value.status_code == 503
            async with await server.connect(room) as client:
                await client.push("k", "inflate")
                assert "failed" in (await next_of(client, "error"))["message"]
                await client.push("k", "small")
                assert (await next_of(client, "push"))["value"] == "small"
        messages = [r.getMessage() for r in caplog.records if r.name == "drifttrio.hooks"]
        assert len(messages) == 2
        assert "identity that is not plain data" in messages[0]
        assert "over 1024" in messages[1]


class CheckAndSet(Hooks):
    """A counter only ever raised by one: the hook reads the room through its hub and
    makes the push conditional on what it read (the pattern that works on Redis)."""

    async def on_push(self, push: PushRequest) -> Accept | Refuse:
        assert self.hub is not None
        values = await self.hub.get(push.room_id, push.key)
        last = values[-1] if values else None
        current = last.value if last is not None else 0
        if push.value != current + 1:
            return Refuse(f"counter is {current}")
        return Accept(expect_seq=last.seq if last is not None else 0)


async def test_a_hook_reads_the_room_through_its_hub(autojump_clock: trio.abc.Clock) -> None:
    async with open_test_server(hooks=CheckAndSet()) as server:
        room = await server.new_room()
        async with await server.connect(room) as client:
            await client.push("n", 1, "replace")
            assert (await next_of(client, "push"))["value"] == 1
            await client.push("n", 3, "replace")
            assert (await next_of(client, "error"))["message"] == "counter is 1"
            await client.push("n", 2, "replace")
            assert (await next_of(client, "push"))["value"] == 2


# -- deleting a room over HTTP (the API key) -------------------------------------------------


@transports
async def test_delete_room_over_http_needs_the_api_key(
    autojump_clock: trio.abc.Clock, transport: str
) -> None:
    recorder = Recorder()
    config = Config(api_key="the-api-key")
    auth = [("authorization", "Bearer the-api-key")]
    async with open_test_server(config, transport=transport, hooks=recorder) as server:  # type: ignore[arg-type]
        created = await server.request("POST", "/new", headers=auth)
        room = created.json()["room"]
        async with await server.connect(room, query="user=ann") as client:
            refused = await server.request("DELETE", f"/room/{room}")
            assert refused.status == 401
            assert refused.header("www-authenticate") == 'Bearer realm="drifttrio"'
            wrong = await server.request(
                "DELETE", f"/room/{room}", headers=[("authorization", "Bearer nope")]
            )
            assert wrong.status == 401
            deleted = await server.request("DELETE", f"/room/{room}", headers=auth)
            assert deleted.status == 200
            assert deleted.json() == {"room": room, "deleted": True}
            assert (await client.wait_closed()).code == CloseCode.ROOM_DELETED
        again = await server.request("DELETE", f"/room/{room}", headers=auth)
        assert again.status == 404
        assert (await server.request("GET", f"/room/{room}")).status == 404
        await settle()
        assert recorder.events[-2:] == [MemberLeft(room, "ann", 0), RoomDeleted(room)]
        other = (await server.request("POST", "/new", headers=auth)).json()["room"]
        put = await server.request("PUT", f"/room/{other}")
        assert put.status == 405
        assert put.header("allow") == "GET, HEAD, DELETE"


async def test_delete_room_over_http_without_an_api_key_is_forbidden(
    autojump_clock: trio.abc.Clock,
) -> None:
    async with open_test_server() as server:
        room = await server.new_room()
        answer = await server.request("DELETE", f"/room/{room}")
        assert answer.status == 403
        assert "API key" in answer.json()["message"]
        assert await server.hub.room_exists(room)
