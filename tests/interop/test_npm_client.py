"""The published npm client ``driftdb@1.0.12`` (Node 20, ``ws``) against drifttrio.

Each test starts a real server (127.0.0.1, a free port), runs one scenario
script from this folder with the client's own classes, and checks what the
script reports. The scripts are small; what they do is described at the top of
each one.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from typing import Any

import cbor2
import httpx
import pytest
import trio
from trio_websocket import WebSocketConnection, open_websocket_url

from drifttrio import RunningServer
from drifttrio.core import StreamChange
from drifttrio.protocol.messages import SeqValue, Value

pytestmark = pytest.mark.interop

#: The ``run_node`` fixture (tests/interop/conftest.py).
RunNode = Callable[..., Awaitable[dict[str, Any]]]


def _no_errors(result: dict[str, Any]) -> None:
    errors = result["errors"]
    if isinstance(errors, dict):
        errors = [e for errs in errors.values() for e in errs]
    assert errors == [], f"the server answered with error messages: {errors}"


# -- 1. Room API ---------------------------------------------------------------------


async def test_room_api(server: RunningServer, run_node: RunNode) -> None:
    result = await run_node("room_api.js", server.url)
    created = result["created"]
    room = created["room"]
    # A URL-safe token of at least 128 bits (22 base64url characters).
    assert re.fullmatch(r"[A-Za-z0-9_-]{22,}", room), room
    assert result["second_room"] != room
    assert created == {
        "room": room,
        "socket_url": f"{server.ws_url}/room/{room}/connect",
        "http_url": f"{server.url}/room/{room}/send",
    }
    assert result["fetched"] == created
    if server.hub is not None:
        assert await server.hub.room_exists(room)
    else:  # --workers: the rooms are in the worker processes
        async with httpx.AsyncClient(trust_env=False) as client:
            assert (await client.get(f"{server.url}/room/{room}")).status_code == 200

    # Unknown room: 404, and Api.getRoom (which never checks the status)
    # resolves to the error body, with no URLs in it.
    assert result["unknown_status"] == 404
    unknown = result["unknown"]
    assert unknown["type"] == "error"
    assert "not found" in unknown["message"]
    assert "socket_url" not in unknown

    # The URLs work: a push through http_url reached the socket on socket_url.
    assert result["http_reply"] is None
    assert result["delivered"] == {"seq": 1, "value": {"from": "http"}}
    _no_errors(result)


# -- 2. StateListener ----------------------------------------------------------------


async def test_state_listener(server: RunningServer, run_node: RunNode) -> None:
    result = await run_node("state.js", server.url)
    rand_a, rand_b = result["rand_id_a"], result["rand_id_b"]

    # B saw A's burst: increasing n, ending with the last value, then its own.
    seen_b = result["seen_b"]
    assert seen_b[-1] == {"n": 6, "who": "b"}
    from_a = [v["n"] for v in seen_b[:-1]]
    assert from_a[0] == 1
    assert from_a[-1] == 5
    assert from_a == sorted(set(from_a))
    assert all(v["who"] == "a" for v in seen_b[:-1])

    # A saw its own optimistic values (never its echoes), then B's.
    assert result["seen_a"] == [{"n": n, "who": "a"} for n in range(1, 6)] + [{"n": 6, "who": "b"}]

    # On the wire: replace pushes of {v, i}; the burst was debounced.
    pushes = result["pushes_seen_by_a"]
    assert [p["seq"] for p in pushes] == list(range(1, len(pushes) + 1))
    assert all(set(p["value"]) == {"v", "i"} for p in pushes)
    assert [p["value"]["i"] for p in pushes] == [rand_a] * (len(pushes) - 1) + [rand_b]
    assert len(pushes) - 1 < 5, "five rapid updates should have been debounced"

    # A late joiner got the current state; the stream holds only the last value.
    assert result["seen_c"] == [{"n": 6, "who": "b"}]
    assert result["retained"] == {
        "status": 200,
        "body": {
            "type": "init",
            "key": "shared-state",
            "data": [{"value": {"v": {"n": 6, "who": "b"}, "i": rand_b}, "seq": len(pushes)}],
        },
    }
    _no_errors(result)


# -- 3. Reducer and compaction -------------------------------------------------------


@pytest.mark.parametrize("threshold", [None, 10], ids=["default-threshold", "threshold-10"])
async def test_reducer_compacts(
    server: RunningServer, run_node: RunNode, threshold: int | None
) -> None:
    actions = 45
    env = {"ACTIONS": str(actions)}
    if threshold is not None:
        env["SIZE_THRESHOLD"] = str(threshold)
    limit = threshold or 30  # the client's default sizeThreshold
    result = await run_node("reducer.js", server.url, env=env)

    expected = {"total": actions * (actions + 1) // 2, "log": list(range(1, actions + 1))}
    assert result["writer_state"] == expected
    assert result["writer_confirmed_state"] == expected

    # The server reported the growing stream, past the threshold.
    assert max(result["stream_sizes"]) > limit

    # The client compacted: the retained stream is shorter than the number of
    # actions and starts with a {reset} holding the state at its seq.
    retained = result["retained"]
    assert retained["status"] == 200
    data = retained["body"]["data"]
    assert 1 <= len(data) <= limit < actions
    head = data[0]
    assert set(head["value"]) == {"reset"}
    assert head["seq"] > limit
    assert head["value"]["reset"]["log"] == list(range(1, head["seq"] + 1))
    # ... followed by the actions after it, in order.
    assert [(e["seq"], e["value"]["apply"]["n"]) for e in data[1:]] == [
        (s, s) for s in range(head["seq"] + 1, actions + 1)
    ]
    assert data[-1]["seq"] == actions

    # Compacts are broadcast at their (already seen) seq, after the 45 pushes.
    seqs = result["writer_push_seqs"]
    assert seqs[:actions] == list(range(1, actions + 1))
    assert seqs[actions:], "the writer sent no compact"
    assert all(limit < s <= actions for s in seqs[actions:])

    # A fresh Reducer rebuilds the same state from the compacted stream.
    assert result["fresh_init"][0]["data"] == data
    assert result["fresh_confirmed_seq"] == actions
    assert result["fresh_state"] == expected
    _no_errors(result)


# -- 4. PresenceListener -------------------------------------------------------------


async def test_presence(server: RunningServer, run_node: RunNode) -> None:
    result = await run_node("presence.js", server.url)
    first = result["first"]
    assert set(first["a_sees"]) == {"bob"}
    assert first["a_sees"]["bob"]["value"] == {"cursor": [3, 4], "name": "Bob"}
    assert set(first["b_sees"]) == {"alice"}
    assert first["b_sees"]["alice"]["value"] == {"cursor": [1, 2], "name": "Alice"}
    assert result["b_after_update"]["alice"]["value"] == {"cursor": [9, 9], "name": "Alice"}

    # relay on __presence with {client, value}; numbered, never retained.
    seqs = result["relay_seqs_a"]
    assert seqs == sorted(set(seqs))
    assert seqs[0] >= 1
    assert all(set(v) == {"client", "value"} for v in result["relay_values_b"])
    assert {v["client"] for v in result["relay_values_b"]} == {"alice", "bob"}
    assert result["init_data"] == [[], []]
    _no_errors(result)


# -- 5. CBOR mode and bytes ----------------------------------------------------------

BYTES = bytes([0, 1, 2, 127, 128, 200, 255])


async def _receive_cbor(ws: WebSocketConnection) -> Any:
    frame = await ws.get_message()
    assert isinstance(frame, bytes), f"a ?cbor=true member must get binary frames, got {frame!r}"
    return cbor2.loads(frame)


async def test_cbor_bytes(server: RunningServer, run_node: RunNode) -> None:
    async with httpx.AsyncClient(trust_env=False) as client:
        room = (await client.post(f"{server.url}/new")).json()["room"]
    url = f"{server.ws_url}/room/{room}/connect?cbor=true"
    async with open_websocket_url(url) as ws:
        with trio.fail_after(10):
            # A round trip: this Python member is in the room before Node pushes.
            await ws.send_message(cbor2.dumps({"type": "ping", "nonce": 1}))
            assert await _receive_cbor(ws) == {"type": "pong", "nonce": 1}

        result = await run_node("cbor.js", server.url, room)

        with trio.fail_after(10):
            push = await _receive_cbor(ws)
            assert push["type"] == "push"
            assert push["key"] == "binary"
            assert push["seq"] == result["seq"]
            assert push["value"]["bytes"] == BYTES
            assert type(push["value"]["bytes"]) is bytes
            assert push["value"]["text"] == "héllo ✓"

            # The retained value keeps the bytes too.
            await ws.send_message(cbor2.dumps({"type": "get", "key": "binary", "seq": 0}))
            init = await _receive_cbor(ws)
            assert init["type"] == "init"
            assert [e["value"]["bytes"] for e in init["data"]] == [BYTES]

    # cbor-web 8.1.0 encodes a Uint8Array as tag 64 (RFC 8746 uint8 typed
    # array) around a byte string: d8 40 43 01 02 ff. The server must take it.
    assert result["cbor_web_uint8array_hex"] == "d840430102ff"
    _no_errors(result)

    # The other CBOR client got a Uint8Array with the same bytes ...
    peer = result["cbor_peer"]
    assert peer["is_uint8array"] is True
    assert peer["bytes"] == list(BYTES)
    assert peer["text"] == "héllo ✓"
    assert peer["n"] == 1.5
    assert peer["list"] == [1, None, True]
    # ... and the JSON client the documented form: an array of ints 0-255.
    assert result["json_peer"] == {
        "bytes": list(BYTES),
        "text": "héllo ✓",
        "n": 1.5,
        "list": [1, None, True],
    }
    kinds = result["frame_kinds"]
    assert kinds["sender"]
    assert set(kinds["sender"]) == {"binary"}
    assert kinds["cbor_peer"]
    assert set(kinds["cbor_peer"]) == {"binary"}
    assert kinds["json_peer"]
    assert set(kinds["json_peer"]) == {"string"}


# -- 6. HttpConnection ---------------------------------------------------------------


async def test_http_connection(server: RunningServer, run_node: RunNode) -> None:
    result = await run_node("http.js", server.url)
    key = "via-http"
    replies = result["replies"]
    assert replies["append1"] is None  # a stream of one value: no stream_size
    assert replies["append2"] == {"type": "stream_size", "key": key, "size": 2}
    # relay leaves the stream as it was (two values)
    assert replies["relay"] in (None, {"type": "stream_size", "key": key, "size": 2})
    assert replies["get"] == {
        "type": "init",
        "key": key,
        "data": [{"value": {"n": 1}, "seq": 1}, {"value": {"n": 2}, "seq": 2}],
    }
    assert replies["get_since_1"] == {
        "type": "init",
        "key": key,
        "data": [{"value": {"n": 2}, "seq": 2}],
    }
    assert replies["get_unknown_key"] == {"type": "init", "key": "nothing-here", "data": []}
    assert replies["ping"] == {"type": "pong", "nonce": 7}
    assert replies["ping_no_nonce"] == {"type": "pong", "nonce": None}
    assert replies["replace"] is None

    # HttpConnection.send rejects on non-2xx answers.
    assert result["bad"]["ok"] is False
    assert "400" in result["bad"]["error"]
    assert result["unknown_room"]["ok"] is False
    assert "404" in result["unknown_room"]["error"]

    # Everything pushed over HTTP reached the WebSocket subscriber, in order.
    assert result["ws_pushes"] == [{"seq": n, "value": {"n": n}} for n in range(1, 5)]
    _no_errors(result)


# -- 7. Latency ----------------------------------------------------------------------


async def test_latency(server: RunningServer, run_node: RunNode) -> None:
    result = await run_node("latency.js", server.url)
    assert result["not_connected"] is None
    for mode in ("json", "cbor"):
        latencies = result[mode]
        assert len(latencies) == 3
        assert all(isinstance(ms, int | float) and 0 <= ms < 10_000 for ms in latencies), latencies
        assert result["pongs"][mode] == [{"type": "pong", "nonce": None}] * 3
    _no_errors(result)


# -- 8. Total order ------------------------------------------------------------------


async def test_total_order_with_concurrent_writers(
    server: RunningServer, run_node: RunNode
) -> None:
    writers, per_writer, subscribers = 4, 200, 3
    result = await run_node(
        "order.js",
        server.url,
        env={
            "WRITERS": str(writers),
            "PER_WRITER": str(per_writer),
            "SUBSCRIBERS": str(subscribers),
        },
    )
    total = writers * per_writer
    assert result["total"] == total
    receivers = result["receivers"]
    assert len(receivers) == writers + subscribers

    reference = receivers["sub0"]
    # seqs 1..N: no gap, no duplicate, nothing missing.
    assert [seq for seq, _ in reference] == list(range(1, total + 1))
    # every message exactly once
    values = [value for _, value in reference]
    assert sorted(values) == sorted(f"{w}:{i}" for w in range(writers) for i in range(per_writer))
    # each writer's messages in the order it sent them
    for w in range(writers):
        mine = [int(v.split(":")[1]) for v in values if v.startswith(f"{w}:")]
        assert mine == list(range(per_writer)), f"writer {w} reordered"
    # the writers really were concurrent: their messages interleave
    first_writers = {v.split(":")[0] for v in values[: total // 2]}
    assert len(first_writers) > 1
    # everybody (JSON and CBOR, subscribers and writers) saw the same sequence
    for name, seen in receivers.items():
        assert seen == reference, f"{name} saw a different sequence"
    _no_errors(result)


# -- 9. Reconnect in CBOR mode -------------------------------------------------------


async def test_cbor_reconnect_doubled_query(server: RunningServer, run_node: RunNode) -> None:
    result = await run_node("reconnect.js", server.url)
    raw = result["raw"]
    assert raw["url_query"] == "?cbor=true?cbor=true"
    assert raw["binary"] is True
    assert raw["message"] == {"type": "pong", "nonce": 42}

    # The client's own reconnect doubled the query, and the new socket is CBOR.
    assert result["first_url_query"] == "?cbor=true"
    assert result["second_url_query"] == "?cbor=true?cbor=true"
    assert result["statuses"] == [False, True]
    frames = result["frames_after_reconnect"]
    assert frames
    assert set(frames) == {"binary"}

    # Without re-sending its get it still receives, and its pushes arrive.
    assert result["client_seen"] == [{"seq": 1, "from": "peer"}, {"seq": 2, "from": "client"}]
    assert result["peer_seen"] == [
        {"seq": 1, "value": {"from": "peer"}},
        {"seq": 2, "value": {"from": "client", "bytes": [9, 8, 7]}},
    ]
    assert isinstance(result["latency_after_reconnect"], int | float)
    _no_errors(result)


@pytest.mark.parametrize("cbor", [False, True], ids=["json", "cbor"])
async def test_reducer_takes_a_stream_sent_as_several_inits(
    server: RunningServer, run_node: RunNode, cbor: bool
) -> None:
    """A stream longer than ``init_chunk_bytes`` reaches the client as several
    ``init``s of its key; the npm Reducer builds the same state as from one."""
    if server.hub is None:
        pytest.skip("writes the store directly: not with worker processes")
    values = 3000
    room = await server.hub.create_room()
    changes = [
        StreamChange(
            "append",
            "counter",
            SeqValue(Value({"apply": {"type": "add", "n": n, "pad": "p" * 40}, "i": "py"}), n),
        )
        for n in range(1, values + 1)
    ]
    await server.hub.storage.commit(room, values, changes)
    env = {"VALUES": str(values), "CBOR": "1" if cbor else "0"}
    result = await run_node("chunked_init.js", server.url, room, env=env)
    assert result["state"] == {"total": values * (values + 1) // 2, "count": values}
    assert result["confirmed_seq"] == values
    assert result["inits"] > 1, "the stream came in one init: nothing was chunked"
    assert result["init_seqs"] == list(range(1, values + 1))
    assert result["errors"] == []


# -- 10. Reducers joining a busy room (issue 17) ---------------------------------------


@pytest.mark.parametrize("pace_ms", [8, 50, 100])
async def test_reducers_joining_while_another_dispatches_get_the_whole_state(
    server: RunningServer, run_node: RunNode, pace_ms: int
) -> None:
    """A Reducer that subscribes while another client dispatches every ``pace_ms``
    ends with the dispatcher's state, never "initial state + the last actions"."""
    joins = 10
    result = await run_node(
        "reducer_join.js", server.url, env={"PACE_MS": str(pace_ms), "JOINS": str(joins)}
    )
    assert result["expected_count"] == result["dispatched"] > joins
    assert len(result["joins"]) == joins
    for join in result["joins"]:
        assert join["first_frame"] == "init", join
        assert join["first_action"] == 1, join
        assert join["count"] == result["dispatched"], join
        assert join["equal"], join
    assert result["truncated"] == 0
    _no_errors(result)
