"""What a message costs to decode: node limits and per-address budgets, against
the real server on 127.0.0.1:0 (issue 15).

A message of a million tiny containers used to hold the event loop for seconds,
stalling every room; ``POST /room/ID/send`` had no rate limit at all. Messages are
now counted (in nodes) before they are decoded, and every client address pays for
its messages, bytes and nodes across all its connections, HTTP included.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import cbor2
import httpx
import orjson
import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st

from _rawws import BINARY, TEXT, RawWebSocket, frame
from drifttrio import RunningServer
from drifttrio.protocol.codec import BYTES_PER_NODE, cbor_nodes, json_nodes
from drifttrio.server import TRANSPORTS
from drifttrio.web.limits import ClientBudgets
from test_hostile import new_room, serving

MIB = 1024 * 1024
HONEST = "127.0.0.2"  # another loopback address: a budget of its own


@asynccontextmanager
async def member(
    server: RunningServer, room: str, query: str = "", source: str | None = None
) -> AsyncIterator[RawWebSocket]:
    """A raw WebSocket member of ``room``, from ``source`` (an address) if given."""
    if source is None:
        ws = await RawWebSocket.connect(server.host, server.port)
    else:
        ws = RawWebSocket(
            await trio.open_tcp_stream(server.host, server.port, local_address=source)
        )
    try:
        await ws.handshake(f"/room/{room}/connect{query}")
        yield ws
    finally:
        await ws.aclose()


def push(value: Any, key: str = "k", action: str = "relay") -> dict[str, Any]:
    # "value" last, so a test can splice a prebuilt value in place of the final null.
    return {"type": "push", "key": key, "action": {"type": action}, "value": value}


def containers_json() -> bytes:
    """A 1 MiB JSON push of ~350,000 empty arrays."""
    head = orjson.dumps(push(None))[: -len(b"null}")]
    n = (MIB - 200) // 3
    return head + b"[" + b"[]," * (n - 1) + b"[]]}"


def containers_cbor() -> bytes:
    """A 1 MiB CBOR push of ~1,000,000 empty arrays (an indefinite-length array)."""
    head = cbor2.dumps(push(None))[:-1]  # drop the final null
    return head + b"\x9f" + b"\x80" * (MIB - 200) + b"\xff"


async def round_trips(ws: RawWebSocket, times: list[float], done: trio.Event) -> None:
    """Push and wait for the echo, back to back, until ``done``: the round trips."""
    n = 0
    while not done.is_set():
        n += 1
        start = time.perf_counter()
        await ws.send_json(push(n))
        reply = await ws.recv()
        times.append(time.perf_counter() - start)
        assert reply["type"] == "push", reply
        assert reply["value"] == n


# -- the node limit ------------------------------------------------------------------


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize(
    ("opcode", "query", "build"),
    [(TEXT, "", containers_json), (BINARY, "?cbor=true", containers_cbor)],
    ids=["json", "cbor"],
)
async def test_a_million_tiny_containers_is_refused_before_it_is_decoded(
    opcode: int, query: str, build: Any, transport: str
) -> None:
    """Refused with an error naming the limit, and another room's client is served
    throughout (it took seconds of event-loop time per message before)."""
    attack = frame(opcode, build())  # built (and masked) before anything is timed
    async with serving(transport) as (server, client):
        quiet, noisy = await new_room(client), await new_room(client)
        async with (
            member(server, quiet, source=HONEST) as honest,
            member(server, noisy, query) as attacker,
        ):
            times: list[float] = []
            done = trio.Event()
            async with trio.open_nursery() as nursery:
                nursery.start_soon(round_trips, honest, times, done)
                reasons = []
                for _ in range(5):
                    await attacker.send(attack)
                    reply = await attacker.recv()
                    assert reply["type"] == "error"
                    reasons.append(reply["message"])
                done.set()
            # Refused for its nodes; later ones may find the address's budget spent.
            assert "max_message_nodes" in reasons[0]
            assert all("max_message_nodes" in r or "over its budget" in r for r in reasons)
            # The attacker is still connected, and still served.
            await attacker.send(frame(opcode, _encode(query, push(1))))
            assert (await attacker.recv())["type"] == "push"
    assert times
    assert max(times) < 0.25, f"honest round trips up to {max(times):.3f} s"


def _encode(query: str, message: object) -> bytes:
    return cbor2.dumps(message) if "cbor" in query else orjson.dumps(message)


async def test_legit_values_are_counted_by_their_nodes_not_their_bytes() -> None:
    """5,000 numbers and a 200 KB string full of commas are accepted (with an
    array twice the node limit refused, next test, at a fraction of their size)."""
    async with serving() as (server, client):
        room = await new_room(client)
        async with member(server, room) as ws, member(server, room, "?cbor=true") as cb:
            numbers = list(range(5_000))
            commas = "a, b: [c], {d}" * 15_000  # 210 KB: ~45,000 commas, colons, brackets
            for value in (numbers, commas):
                await ws.send_json(push(value))
                assert (await ws.recv())["value"] == value
                assert (await cb.recv())["value"] == value
                await cb.send(frame(BINARY, cbor2.dumps(push(value))))
                assert (await cb.recv())["value"] == value
                assert (await ws.recv())["value"] == value


async def test_a_value_over_the_node_limit_is_refused_at_a_fraction_of_the_size() -> None:
    async with serving() as (server, client):
        room = await new_room(client)
        async with member(server, room) as ws, member(server, room, "?cbor=true") as cb:
            over = [0] * 20_000  # 40 KB
            await ws.send_json(push(over))
            reply = await ws.recv()
            assert reply["type"] == "error"
            assert "more than 10000 values" in reply["message"]
            await cb.send(frame(BINARY, cbor2.dumps(push(over))))
            assert "max_message_nodes" in (await cb.recv())["message"]


async def test_byte_strings_count_at_their_json_cost() -> None:
    """A byte string counts a node per 64 bytes (a JSON member gets it as an array
    of integers, ~3.6x its size): 256 KiB passes, 1 MB is refused before anyone
    is sent a 3.6 MB frame."""
    async with serving() as (server, client):
        room = await new_room(client)
        async with member(server, room) as json_member, member(server, room, "?cbor=true") as ws:
            small = bytes(range(256)) * 1024
            await ws.send(frame(BINARY, cbor2.dumps(push(small))))
            assert (await ws.recv())["value"] == small
            assert (await json_member.recv())["value"] == list(small)
            await ws.send(frame(BINARY, cbor2.dumps(push(bytes(MIB - 200)))))
            reply = await ws.recv()
            assert reply["type"] == "error"
            assert "max_message_nodes" in reply["message"]
            # The JSON member got nothing more: its next frame is this pong.
            await json_member.send_json({"type": "ping", "nonce": 7})
            assert await json_member.recv() == {"type": "pong", "nonce": 7}


async def test_the_node_limit_is_configurable_and_applies_to_send() -> None:
    async with serving(max_message_nodes=100) as (_, client):
        room = await new_room(client)
        ok = await client.post(f"/room/{room}/send", content=json.dumps(push([0] * 80)))
        assert ok.status_code == 200
        refused = await client.post(f"/room/{room}/send", content=json.dumps(push([0] * 100)))
        assert refused.status_code == 400
        assert "more than 100 values" in refused.json()["message"]


# -- per-address budgets --------------------------------------------------------------


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_send_over_the_address_rate_gets_429_with_retry_after(transport: str) -> None:
    async with serving(transport, address_messages_per_second=0.01, address_messages_burst=5) as (
        _,
        client,
    ):
        room = await new_room(client)
        body = json.dumps(push(1))
        for _ in range(5):
            assert (await client.post(f"/room/{room}/send", content=body)).status_code == 200
        response = await client.post(f"/room/{room}/send", content=body)
        assert response.status_code == 429
        assert response.json()["type"] == "error"
        retry = response.headers["retry-after"]
        assert retry.isdigit()
        assert 90 <= int(retry) <= 100  # one message at 0.01/s, rounded up


async def test_send_is_rate_limited_per_address_like_one_websocket_connection() -> None:
    """Whatever the connections it comes over (a new one per request here)."""
    async with serving(rate_limit_per_second=0.01, rate_limit_burst=3) as (server, client):
        room = await new_room(client)
        body = json.dumps({"type": "ping", "nonce": 1})
        responses = []
        for _ in range(4):
            async with httpx.AsyncClient(base_url=server.url, trust_env=False) as fresh:
                responses.append(await fresh.post(f"/room/{room}/send", content=body))
        assert [r.status_code for r in responses] == [200, 200, 200, 429]
        assert 90 <= int(responses[-1].headers["retry-after"]) <= 100


async def test_the_address_budget_is_shared_by_its_connections_and_send() -> None:
    """Four connections and /send from one address share one budget of 10 messages:
    the 11th waits (it is neither answered nor refused), /send gets 429; another
    address has its own."""
    async with serving(
        address_messages_per_second=0.001, address_messages_burst=10, rate_limit_per_second=0
    ) as (server, client):
        room = await new_room(client)
        async with (
            member(server, room) as a,
            member(server, room) as b,
            member(server, room) as c,
            member(server, room) as d,
        ):
            for ws in (a, b, c):
                for nonce in range(3):
                    await ws.send_json({"type": "ping", "nonce": nonce})
                    assert await ws.recv() == {"type": "pong", "nonce": nonce}
            await d.send_json({"type": "ping", "nonce": 9})
            assert await d.recv() == {"type": "pong", "nonce": 9}  # the 10th
            await d.send_json({"type": "ping", "nonce": 10})  # the 11th: it waits
            body = json.dumps({"type": "ping", "nonce": 1})
            assert (await client.post(f"/room/{room}/send", content=body)).status_code == 429
            async with member(server, room, source=HONEST) as other:
                await other.send_json({"type": "ping", "nonce": 1})
                assert await other.recv() == {"type": "pong", "nonce": 1}
            with trio.move_on_after(0.2) as waited:
                reply = await d.recv()
            assert waited.cancelled_caught, f"answered while over its budget: {reply}"


async def test_messages_over_the_address_budget_are_paced_not_dropped() -> None:
    """A flood over its address's budget is read no faster than the budget: every
    message is answered, in order, none refused (the npm client ignores ``error``:
    a dropped append would be lost without a word), and the connection stays open."""
    rate, count = 400, 600
    async with serving(
        address_messages_per_second=rate, address_messages_burst=1, rate_limit_per_second=0
    ) as (server, client):
        room = await new_room(client)
        async with member(server, room) as ws:
            started = trio.current_time()
            await ws.send(
                b"".join(frame(TEXT, b'{"type":"ping","nonce":%d}' % n) for n in range(count))
            )
            replies = [await ws.recv() for _ in range(count)]
            elapsed = trio.current_time() - started
    assert replies == [{"type": "pong", "nonce": n} for n in range(count)]
    assert elapsed >= 0.8 * (count - 1) / rate, f"{count} messages in {elapsed:.3f} s"


async def test_node_budget_paces_big_messages() -> None:
    """The address's node budget, not only its message count, paces a client: the
    second big push waits for the budget, then is applied; nothing is refused."""
    async with serving(address_nodes_per_second=8_000, address_nodes_burst=5_000) as (
        server,
        client,
    ):
        room = await new_room(client)
        async with member(server, room) as ws, member(server, room) as small:
            await small.send_json({"type": "ping", "nonce": 0})  # a member: no join hold
            assert await small.recv() == {"type": "pong", "nonce": 0}
            await ws.send_json(push([0] * 4_000))
            assert (await ws.recv())["type"] == "push"
            assert (await small.recv())["type"] == "push"
            started = trio.current_time()
            await ws.send_json(push([1] * 4_000))
            reply = await ws.recv()
            assert reply["type"] == "push", reply
            assert reply["value"] == [1] * 4_000
            waited = trio.current_time() - started
            assert waited >= 0.2, waited  # ~3,000 nodes owed at 8,000/s
            assert (await small.recv())["value"] == [1] * 4_000


def test_charge_message_counts_only_what_the_address_can_pay_for() -> None:
    now = [0.0]
    budgets = ClientBudgets(messages=(1.0, 2.0), work=(100.0, 100.0), clock=lambda: now[0])
    counted: list[int] = []

    def count() -> int:
        counted.append(1)
        return 60

    assert budgets.charge_message("a", 10, count) == (0.0, 60)
    wait, nodes = budgets.charge_message("a", 10, count)  # a message left, 40 nodes
    assert (nodes, round(wait, 2)) == (60, 0.2)
    assert budgets.charge_message("a", 10, count) == (1.0, 0)  # no message left: no count
    assert len(counted) == 2
    # The refused message was received all the same: it is owed.
    now[0] = 1.0
    assert budgets.charge_message("a", 10, count) == (1.0, 0)
    now[0] = 3.0
    assert budgets.charge_message("a", 10, count) == (0.0, 60)


def test_debit_message_charges_as_debt_and_says_how_long_to_wait() -> None:
    now = [0.0]
    budgets = ClientBudgets(messages=(1.0, 2.0), work=(50.0, 100.0), clock=lambda: now[0])
    counted: list[int] = []

    def count() -> int:
        counted.append(1)
        return 60

    assert budgets.debit_message("a", 10, count) == (0.0, 60)
    wait, nodes = budgets.debit_message("a", 10, count)  # 20 nodes owed at 50/s
    assert (nodes, round(wait, 2)) == (60, 0.4)
    # No message left: the third is owed, not counted until its turn.
    assert budgets.debit_message("a", 10, count) == (1.0, -1)
    assert len(counted) == 2
    now[0] = 1.0  # its turn: the caller counts it, then owes its nodes
    assert round(budgets.debit_work("a", 60), 2) == round((60 + 20 - 50) / 50, 2)
    assert budgets.debit_message("b", 10, count) == (0.0, 60)  # another address


# -- the counts ------------------------------------------------------------------------

_json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**53), 2**53) | st.text(),
    lambda inner: st.lists(inner) | st.dictionaries(st.text(), inner),
    max_leaves=30,
)


def _nodes(value: object) -> int:
    if isinstance(value, list):
        return 1 + sum(_nodes(v) for v in value)
    if isinstance(value, dict):
        return 1 + sum(1 + _nodes(v) for v in value.values())
    if isinstance(value, bytes):
        return 1 + len(value) // BYTES_PER_NODE
    return 1


@settings(max_examples=300, deadline=None)
@given(_json_values)
def test_json_count_is_a_bound_that_ignores_strings(value: object) -> None:
    data = orjson.dumps(value)
    nodes = _nodes(value)
    for text in (data, data.decode()):
        assert json_nodes(text, 10**9) >= nodes
        assert json_nodes(text, nodes - 1) == nodes  # over: limit + 1
        # Commas, colons and brackets inside strings are never held against it.
        assert json_nodes(text, 2 * nodes) <= 2 * nodes


@settings(max_examples=300, deadline=None)
@given(
    st.recursive(
        st.none() | st.booleans() | st.integers(-(2**64), 2**64 - 1) | st.text() | st.binary(),
        lambda inner: st.lists(inner) | st.dictionaries(st.text(), inner),
        max_leaves=30,
    )
)
def test_cbor_count_is_exact(value: object) -> None:
    data = cbor2.dumps(value)
    nodes = _nodes(value)
    assert cbor_nodes(data, 10**9) == nodes
    assert cbor_nodes(data, nodes) == nodes
    assert cbor_nodes(data, nodes - 1) == nodes  # over: limit + 1
