"""The wire codecs: strict decoding of client messages, encoding of server messages."""

from __future__ import annotations

import json
import math
from typing import Any

import cbor2
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from drifttrio import ProtocolError
from drifttrio.protocol import (
    CBOR,
    JSON,
    Append,
    Compact,
    DecodeLimits,
    Error,
    Get,
    Init,
    Ping,
    Pong,
    Push,
    PushEvent,
    Relay,
    Replace,
    SeqValue,
    ServerMessage,
    StreamSize,
    decode_client_message,
    decode_json_client_message,
)


def push_json(value: str = "1", action: str = '{"type":"append"}', key: str = '"k"') -> str:
    return f'{{"type":"push","key":{key},"value":{value},"action":{action}}}'


def push_cbor(value: object, key: object = "k", action: object = None) -> bytes:
    return cbor2.dumps(
        {"type": "push", "key": key, "value": value, "action": action or {"type": "append"}}
    )


def rejected(data: str | bytes, limits: DecodeLimits | None = None) -> ProtocolError:
    args = (data,) if limits is None else (data, limits)
    with pytest.raises(ProtocolError) as info:
        decode_client_message(*args)
    err = info.value
    assert err.status == 400
    assert err.message, "an error needs a message the client can log"
    assert str(err) == err.message
    return err


# -- decoding every client message form ------------------------------------------------


@pytest.mark.parametrize(
    ("action", "expected"),
    [
        ('{"type":"relay"}', Relay()),
        ('{"type":"replace"}', Replace()),
        ('{"type":"append"}', Append()),
        ('{"type":"compact","seq":5}', Compact(5)),
    ],
)
def test_decode_push_with_each_action(action: str, expected: object) -> None:
    message = decode_client_message(push_json('{"a":[1,2.5,null,true,"x"]}', action))
    assert message == Push("k", {"a": [1, 2.5, None, True, "x"]}, expected)


@pytest.mark.parametrize("action", [Relay(), Replace(), Append(), Compact(3)])
def test_decode_push_with_each_action_from_cbor(action: Any) -> None:
    wire_action: dict[str, Any] = {"type": action.TAG}
    if isinstance(action, Compact):
        wire_action["seq"] = action.seq
    message = decode_client_message(push_cbor([1, b"\x00\xff"], action=wire_action))
    assert message == Push("k", [1, b"\x00\xff"], action)


def test_decode_push_any_key_including_empty() -> None:
    assert decode_client_message(push_json(key='""')) == Push("", 1, Append())
    assert decode_client_message(push_json(key='"a/b c\\u00e9"')).key == "a/b cé"


def test_decode_push_null_value() -> None:
    assert decode_client_message(push_json("null")) == Push("k", None, Append())


def test_decode_ignores_unknown_extra_fields() -> None:
    # Future clients may add fields; the known ones are still validated.
    data = '{"type":"push","key":"k","value":1,"action":{"type":"append","x":1},"extra":true}'
    assert decode_client_message(data) == Push("k", 1, Append())


def test_decode_get_seq_missing_means_zero() -> None:
    assert decode_client_message('{"type":"get","key":"k"}') == Get("k", 0)


def test_decode_get_seq_null_means_no_replay() -> None:
    assert decode_client_message('{"type":"get","key":"k","seq":null}') == Get("k", None)


def test_decode_get_with_seq() -> None:
    assert decode_client_message('{"type":"get","key":"k","seq":12}') == Get("k", 12)


def test_decode_get_from_cbor() -> None:
    assert decode_client_message(cbor2.dumps({"type": "get", "key": "k"})) == Get("k", 0)
    assert decode_client_message(cbor2.dumps({"type": "get", "key": "k", "seq": None})) == Get(
        "k", None
    )


def test_decode_ping_with_and_without_nonce() -> None:
    assert decode_client_message('{"type":"ping"}') == Ping(None)
    assert decode_client_message('{"type":"ping","nonce":7}') == Ping(7)
    assert decode_client_message('{"type":"ping","nonce":null}') == Ping(None)
    assert decode_client_message(cbor2.dumps({"type": "ping", "nonce": 3})) == Ping(3)


def test_decode_json_body_from_bytes() -> None:
    assert decode_json_client_message(b'{"type":"ping","nonce":1}') == Ping(1)
    with pytest.raises(ProtocolError, match="invalid JSON"):
        decode_json_client_message(b"\xff\xfe")
    with pytest.raises(ProtocolError, match="invalid JSON"):
        decode_json_client_message(b"")


# -- strictness ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "mentions"),
    [
        (push_json(key="5"), "key"),
        (push_json(key="null"), "key"),
        (push_json(key="true"), "key"),
        (push_json(action='"append"'), "action"),
        (push_json(action="null"), "action"),
        (push_json(action='{"type":"compact","seq":"3"}'), "seq"),
        (push_json(action='{"type":"compact","seq":true}'), "seq"),
        (push_json(action='{"type":"compact","seq":3.0}'), "seq"),
        (push_json(action='{"type":"compact","seq":null}'), "seq"),
        ('{"type":"get","key":"k","seq":false}', "seq"),
        ('{"type":"get","key":"k","seq":true}', "seq"),
        ('{"type":"get","key":"k","seq":1.5}', "seq"),
        ('{"type":"get","key":"k","seq":"1"}', "seq"),
        ('{"type":"get","key":7}', "key"),
        ('{"type":"ping","nonce":"x"}', "nonce"),
        ('{"type":"ping","nonce":true}', "nonce"),
        ('{"type":"ping","nonce":1.5}', "nonce"),
    ],
)
def test_wrong_field_types_are_rejected(data: str, mentions: str) -> None:
    err = rejected(data)
    assert mentions in err.message


@pytest.mark.parametrize(
    ("data", "mentions"),
    [
        ('{"type":"push","value":1,"action":{"type":"append"}}', "key"),
        ('{"type":"push","key":"k","action":{"type":"append"}}', "value"),
        ('{"type":"push","key":"k","value":1}', "action"),
        (push_json(action='{"type":"compact"}'), "seq"),
        ('{"type":"get"}', "key"),
        ('{"type":"get","seq":0}', "key"),
    ],
)
def test_missing_fields_are_rejected(data: str, mentions: str) -> None:
    err = rejected(data)
    assert mentions in err.message


@pytest.mark.parametrize("kind", ['"pong"', '"init"', '"PUSH"', '""', "5", "null"])
def test_unknown_message_type(kind: str) -> None:
    err = rejected(f'{{"type":{kind},"key":"k"}}')
    assert "unknown message type" in err.message
    assert "push, get or ping" in err.message


def test_missing_type() -> None:
    assert "unknown message type" in rejected('{"key":"k"}').message


@pytest.mark.parametrize("action", ['{"type":"bogus"}', '{"type":"Append"}', "{}"])
def test_unknown_action(action: str) -> None:
    err = rejected(push_json(action=action))
    assert "unknown action" in err.message
    assert "relay, replace, append or compact" in err.message


@pytest.mark.parametrize(
    ("data", "what"),
    [
        ("[1]", "an array"),
        ('"x"', "a string"),
        ("5", "number"),
        ("null", "null"),
        ("true", "boolean"),
    ],
)
def test_non_object_is_rejected(data: str, what: str) -> None:
    err = rejected(data)
    assert "must be an object" in err.message
    assert what in err.message


def test_non_object_cbor_is_rejected() -> None:
    assert "must be an object" in rejected(cbor2.dumps([1, 2])).message


@pytest.mark.parametrize("data", ["{", "", "not json", '{"type":"ping"', "{'type':'ping'}"])
def test_invalid_json(data: str) -> None:
    assert "invalid JSON" in rejected(data).message


@pytest.mark.parametrize("value", ["NaN", "Infinity", "-Infinity", "1e999", "-1e999"])
def test_nan_and_infinity_are_rejected(value: str) -> None:
    rejected(push_json(value))
    rejected(push_json(f"[{value}]"))


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_nan_and_infinity_in_cbor_are_rejected(value: float) -> None:
    assert "NaN" in rejected(push_cbor(value)).message
    assert "NaN" in rejected(push_cbor({"deep": [value]})).message


def test_lone_surrogate_escape_is_rejected() -> None:
    rejected(push_json('"\\ud800"'))
    rejected(push_json(key='"\\udc00x"'))
    rejected(push_json('{"a":"\\ud800"}'))


def test_lone_surrogate_character_is_rejected() -> None:
    rejected(push_json('"\ud800"'))


def test_surrogate_pair_escape_is_accepted() -> None:
    assert decode_client_message(push_json('"\\ud83d\\ude00"')).value == "\U0001f600"


def test_invalid_utf8_in_cbor_text_is_rejected() -> None:
    # A CBOR text string holding an encoded surrogate (not valid UTF-8).
    data = push_cbor("PLACEHOLDER").replace(b"\x6bPLACEHOLDER", b"\x63\xed\xa0\x80")
    assert b"\xed\xa0\x80" in data
    rejected(data)


@pytest.mark.parametrize("value", [2**53, -(2**53), 0, -1, 2**53 - 1])
def test_safe_integers_are_accepted(value: int) -> None:
    assert decode_client_message(push_json(str(value))).value == value
    assert decode_client_message(push_cbor(value)).value == value


@pytest.mark.parametrize("value", [2**53 + 1, -(2**53) - 1, 2**63 - 1, -(2**63)])
def test_integers_beyond_2_pow_53_are_rejected(value: int) -> None:
    assert "2^53" in rejected(push_json(str(value))).message
    assert "2^53" in rejected(push_json(f'{{"n":[{value}]}}')).message
    assert "2^53" in rejected(push_cbor(value)).message


@pytest.mark.parametrize("value", [2**64, -(2**64) - 5, 10**30])
def test_cbor_bignums_are_rejected(value: int) -> None:
    rejected(push_cbor(value))


def nested_lists(levels: int) -> str:
    return "[" * levels + "]" * levels


def test_depth_64_is_accepted_65_is_rejected() -> None:
    assert decode_client_message(push_json(nested_lists(64)))
    assert "deeper than 64" in rejected(push_json(nested_lists(65))).message
    objects = '{"a":' * 64 + "0" + "}" * 64  # 65 levels counting the 0
    assert "deeper than 64" in rejected(push_json(objects)).message


def test_depth_limit_applies_to_cbor() -> None:
    deep: object = []
    for _ in range(64):
        deep = [deep]
    rejected(push_cbor(deep))  # 65 levels
    assert decode_client_message(push_cbor(deep[0]))


def test_very_deep_input_is_rejected_not_crashing() -> None:
    rejected(push_json(nested_lists(100_000)))
    rejected(b"\xa4dtypedpushckeyakevalue" + b"\x81" * 100_000 + b"\x01")


def test_depth_limit_is_configurable() -> None:
    limits = DecodeLimits(max_depth=3)
    assert decode_client_message(push_json("[[0]]"), limits)
    assert "deeper than 3" in rejected(push_json("[[[0]]]"), limits).message


@pytest.mark.parametrize(
    ("key", "ok"),
    [
        ("a" * 1024, True),
        ("a" * 1025, False),
        ("é" * 512, True),  # 1024 UTF-8 bytes
        ("é" * 513, False),  # 1026 UTF-8 bytes, only 513 characters
        ("€" * 341, True),  # 1023 bytes
        ("€" * 342, False),  # 1026 bytes
    ],
)
def test_key_limit_is_in_utf8_bytes(key: str, ok: bool) -> None:
    quoted = json.dumps(key, ensure_ascii=False)
    for data in (
        push_json(key=quoted),
        f'{{"type":"get","key":{quoted}}}',
        push_cbor(1, key=key),
    ):
        if ok:
            assert decode_client_message(data).key == key
        else:
            assert "1024 bytes" in rejected(data).message


def test_key_limit_is_configurable() -> None:
    limits = DecodeLimits(max_key_bytes=4)
    assert decode_client_message(push_json(key='"abcd"'), limits)
    rejected(push_json(key='"abcde"'), limits)


@pytest.mark.parametrize("tag", [0, 1, 2, 3, 4, 5, 24, 30, 32, 258, 1234, 55799, 100000])
def test_cbor_tags_are_rejected(tag: int) -> None:
    payload: object = "2013-03-21T20:04:00Z" if tag == 0 else 5
    if tag in (2, 3, 24):
        payload = b"\x01"
    if tag in (4, 5, 30):
        payload = [1, 2]
    if tag == 258:
        payload = [1]
    err = rejected(push_cbor(cbor2.CBORTag(tag, payload)))
    assert "tag" in err.message


def test_cbor_tag_64_uint8array_is_a_byte_string() -> None:
    # cbor-web (the npm client's CBOR library) sends a Uint8Array as tag 64.
    message = decode_client_message(push_cbor(cbor2.CBORTag(64, b"\x01\x02")))
    assert message.value == b"\x01\x02"
    rejected(push_cbor(cbor2.CBORTag(64, "not bytes")))


@pytest.mark.parametrize("value", [{1: 2}, {b"k": 1}, {"ok": {2.5: 1}}, {None: 1}])
def test_cbor_non_string_map_keys_are_rejected(value: object) -> None:
    rejected(push_cbor(value))


def test_cbor_non_string_message_keys_are_rejected() -> None:
    rejected(cbor2.dumps({1: 2, "type": "ping"}))


def test_cbor_byte_string_key_is_rejected() -> None:
    assert "key" in rejected(push_cbor(1, key=b"k")).message


def test_cbor_undefined_value_is_rejected() -> None:
    assert "undefined" in rejected(push_cbor(cbor2.undefined)).message
    rejected(cbor2.dumps({"type": "ping", "nonce": cbor2.undefined}))
    rejected(cbor2.dumps({"type": "get", "key": cbor2.undefined}))


def test_cbor_undefined_inside_a_value_becomes_null() -> None:
    # cbor-web encodes a JS `undefined` property; it is carried as null.
    message = decode_client_message(push_cbor({"v": cbor2.undefined, "l": [1, cbor2.undefined]}))
    assert message.value == {"v": None, "l": [1, None]}


@pytest.mark.parametrize("value", [cbor2.CBORSimpleValue(99), cbor2.CBORSimpleValue(0)])
def test_cbor_simple_values_are_rejected(value: object) -> None:
    rejected(push_cbor(value))


@pytest.mark.parametrize("data", [b"", b"\xff\xff", b"\xa1", b"\x5f\x41", b"\x9f\x01"])
def test_invalid_cbor(data: bytes) -> None:
    assert "CBOR" in rejected(data).message


def test_half_precision_and_float_cbor_values() -> None:
    assert decode_client_message(push_cbor(1.5)).value == 1.5
    assert (
        decode_client_message(
            b"\xa4dtypedpushckeyakevalue\xf9\x3e\x00faction\xa1dtypefappend"
        ).value
        == 1.5
    )


# -- encoding every server message ------------------------------------------------------

SERVER_MESSAGES: list[tuple[object, dict[str, Any]]] = [
    (
        PushEvent("k", {"a": [1, None]}, 6),
        {"type": "push", "key": "k", "value": {"a": [1, None]}, "seq": 6},
    ),
    (PushEvent("", None, 1), {"type": "push", "key": "", "value": None, "seq": 1}),
    (
        Init("k", (SeqValue(1, 5), SeqValue("x", 8))),
        {"type": "init", "key": "k", "data": [{"value": 1, "seq": 5}, {"value": "x", "seq": 8}]},
    ),
    (Init("k", ()), {"type": "init", "key": "k", "data": []}),
    (StreamSize("k", 3), {"type": "stream_size", "key": "k", "size": 3}),
    (Pong(7), {"type": "pong", "nonce": 7}),
    (Pong(None), {"type": "pong", "nonce": None}),
    (Error("human readable"), {"type": "error", "message": "human readable"}),
]


@pytest.mark.parametrize(("message", "expected"), SERVER_MESSAGES)
def test_encode_json(message: Any, expected: dict[str, Any]) -> None:
    frame = JSON.encode(message)
    assert isinstance(frame, str)
    assert json.loads(frame) == expected
    assert JSON.unstructure(message) == expected
    assert not JSON.binary


@pytest.mark.parametrize(("message", "expected"), SERVER_MESSAGES)
def test_encode_cbor(message: Any, expected: dict[str, Any]) -> None:
    frame = CBOR.encode(message)
    assert isinstance(frame, bytes)
    assert cbor2.loads(frame) == expected
    assert CBOR.binary


def test_pong_without_nonce_has_explicit_null() -> None:
    assert "nonce" in json.loads(JSON.encode(Pong(None)))
    assert "nonce" in cbor2.loads(CBOR.encode(Pong(None)))


def test_bytes_in_json_output_are_an_array_of_ints() -> None:
    message = PushEvent("k", {"b": b"\x00\x7f\xff", "l": [b""]}, 1)
    assert json.loads(JSON.encode(message))["value"] == {"b": [0, 127, 255], "l": [[]]}
    init = Init("k", (SeqValue(b"\x01", 2),))
    assert json.loads(JSON.encode(init))["data"] == [{"value": [1], "seq": 2}]


def test_cbor_byte_strings_round_trip_as_bytes() -> None:
    value = {"bin": b"\x00\x01\xfe\xff", "nested": [b"abc", {"x": b""}]}
    message = decode_client_message(push_cbor(value))
    assert message.value == value
    echoed = cbor2.loads(CBOR.encode(PushEvent("k", message.value, 1)))
    assert echoed["value"] == value
    assert type(echoed["value"]["bin"]) is bytes


# -- properties --------------------------------------------------------------------------

SAFE_INTS = st.integers(min_value=-(2**53), max_value=2**53)
FLOATS = st.floats(allow_nan=False, allow_infinity=False)
JSON_SCALARS = st.none() | st.booleans() | SAFE_INTS | FLOATS | st.text()


def json_values(scalars: st.SearchStrategy[object] = JSON_SCALARS) -> st.SearchStrategy[object]:
    return st.recursive(
        scalars,
        lambda children: (
            st.lists(children, max_size=5)
            | st.dictionaries(st.text(max_size=8), children, max_size=5)
        ),
        max_leaves=25,
    )


KEYS = st.text(max_size=40)


@settings(max_examples=150, deadline=None)
@given(key=KEYS, value=json_values())
def test_json_round_trip(key: str, value: object) -> None:
    wire = orjson.dumps({"type": "push", "key": key, "value": value, "action": {"type": "append"}})
    message = decode_client_message(wire.decode())
    assert message == Push(key, value, Append())
    assert decode_json_client_message(wire) == message
    out = orjson.loads(JSON.encode(PushEvent(key, message.value, 9)))
    assert out == {"type": "push", "key": key, "value": value, "seq": 9}


@settings(max_examples=150, deadline=None)
@given(key=KEYS, value=json_values(JSON_SCALARS | st.binary(max_size=10)))
def test_cbor_round_trip_keeps_bytes(key: str, value: object) -> None:
    message = decode_client_message(push_cbor(value, key=key))
    assert message == Push(key, value, Append())
    assert cbor2.loads(CBOR.encode(PushEvent(key, message.value, 2)))["value"] == value


def bytes_as_lists(value: object) -> object:
    if isinstance(value, bytes):
        return list(value)
    if isinstance(value, list):
        return [bytes_as_lists(v) for v in value]
    if isinstance(value, dict):
        return {k: bytes_as_lists(v) for k, v in value.items()}
    return value


@settings(max_examples=150, deadline=None)
@given(value=json_values(JSON_SCALARS | st.binary(max_size=10)))
def test_anything_accepted_from_cbor_encodes_as_json(value: object) -> None:
    message = decode_client_message(push_cbor(value))
    out = json.loads(JSON.encode(PushEvent("k", message.value, 1)))
    assert out["value"] == bytes_as_lists(value)


def decode_or_error(data: str | bytes) -> object:
    try:
        return decode_client_message(data)
    except ProtocolError as exc:
        return exc


SERVER_MESSAGES = st.one_of(
    st.builds(PushEvent, KEYS, json_values(JSON_SCALARS | st.binary(max_size=10)), SAFE_INTS),
    st.builds(Pong, st.none() | SAFE_INTS),
    st.builds(StreamSize, KEYS, SAFE_INTS),
    st.builds(Error, st.text()),
)


@given(message=SERVER_MESSAGES)
def test_messages_unstructured_by_hand_encode_as_cattrs_would(message: Any) -> None:
    for codec in (JSON, CBOR):
        by_cattrs = codec.converter.unstructure(message, ServerMessage)
        assert list(codec.unstructure(message).items()) == list(by_cattrs.items())
        assert codec.encode(message) == codec._dump(by_cattrs)


@settings(max_examples=150, deadline=None)
@given(data=st.binary(max_size=64))
def test_arbitrary_cbor_bytes_never_crash(data: bytes) -> None:
    result = decode_or_error(data)
    if isinstance(result, ProtocolError):
        assert result.message
        assert result.status == 400
    else:
        assert isinstance(result, Push | Get | Ping)


@settings(max_examples=150, deadline=None)
@given(text=st.text(max_size=64))
def test_arbitrary_text_never_crashes(text: str) -> None:
    result = decode_or_error(text)
    if isinstance(result, ProtocolError):
        assert result.message
        assert result.status == 400
    else:
        assert isinstance(result, Push | Get | Ping)
