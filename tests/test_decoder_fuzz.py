"""Property: whatever a client sends, the decoder returns a message or raises ProtocolError.

Inputs are arbitrary bytes and text, and arbitrary JSON-ish and CBOR-ish
structures shaped like messages (right and wrong types, lone surrogates,
NaN, huge integers, CBOR tags, undefined, deep nesting). Anything accepted
must encode for every member: as JSON and as CBOR.
"""

from __future__ import annotations

import json
from typing import Any

import cbor2
from hypothesis import HealthCheck, given, reject, settings
from hypothesis import strategies as st

from drifttrio import ProtocolError
from drifttrio.protocol import (
    CBOR,
    JSON,
    DecodeLimits,
    Get,
    Ping,
    Push,
    PushEvent,
    decode_client_message,
    decode_json_client_message,
)
from drifttrio.protocol.codec import _structure_with_cattrs, structure_client_message

SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
LIMITS = DecodeLimits(max_depth=8, max_key_bytes=16)

# Text including lone surrogates (which Python str can hold and JSON can escape).
any_text = st.text(st.characters(codec=None, exclude_categories=()), max_size=20)
any_int = st.one_of(
    st.integers(-(2**53) - 2, 2**53 + 2),
    st.integers(-(2**70), 2**70),
    st.sampled_from([2**53, 2**53 + 1, -(2**53) - 1, 2**64, -(2**64) - 1]),
)
any_float = st.floats(allow_nan=True, allow_infinity=True)
json_scalars = st.one_of(st.none(), st.booleans(), any_int, any_float, any_text)


def json_values(scalars: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.recursive(
        scalars,
        lambda inner: st.one_of(
            st.lists(inner, max_size=4), st.dictionaries(any_text, inner, max_size=4)
        ),
        max_leaves=20,
    )


cbor_scalars = st.one_of(
    json_scalars,
    st.binary(max_size=16),
    st.just(cbor2.undefined),
    st.sampled_from([cbor2.CBORSimpleValue(0), cbor2.CBORSimpleValue(99)]),
)


def cbor_values() -> st.SearchStrategy[Any]:
    return st.recursive(
        cbor_scalars,
        lambda inner: st.one_of(
            st.lists(inner, max_size=4),
            st.dictionaries(
                st.one_of(any_text, st.integers(), st.binary(max_size=4)), inner, max_size=4
            ),
            st.builds(cbor2.CBORTag, st.sampled_from([0, 1, 2, 3, 28, 29, 64, 258, 55799]), inner),
        ),
        max_leaves=20,
    )


def messages(values: st.SearchStrategy[Any]) -> st.SearchStrategy[dict[Any, Any]]:
    """Dicts shaped like client messages, with right and wrong field types."""
    kinds = st.one_of(st.sampled_from(["push", "get", "ping", "subscribe", ""]), values)
    actions = st.one_of(
        st.fixed_dictionaries(
            {"type": st.sampled_from(["relay", "replace", "append", "compact", "delete"])},
            optional={"seq": st.one_of(any_int, values)},
        ),
        values,
    )
    return st.fixed_dictionaries(
        {"type": kinds},
        optional={
            "key": st.one_of(any_text, values),
            "value": values,
            "action": actions,
            "seq": st.one_of(st.none(), any_int, values),
            "nonce": st.one_of(st.none(), any_int, values),
        },
    )


# A CBOR push map whose "value" is left open: append one encoded value after it.
CBOR_PUSH_PREFIX = b"\xa4" + b"".join(
    cbor2.dumps(part) for part in ("type", "push", "key", "k", "action", {"type": "relay"}, "value")
)


def decode(data: str | bytes, *, http: bool) -> object:
    try:
        if http:
            assert isinstance(data, bytes)
            return decode_json_client_message(data, LIMITS)
        return decode_client_message(data, LIMITS)
    except ProtocolError as exc:
        return exc


def check(data: str | bytes, *, http: bool = False) -> None:
    message = decode(data, http=http)
    if isinstance(message, ProtocolError):
        assert message.message
        assert message.status == 400
        return
    assert isinstance(message, Push | Get | Ping)
    if isinstance(message, Push):
        # Accepted means encodable for every member, JSON and CBOR alike.
        event = PushEvent(message.key, message.value, 1)
        json.loads(JSON.encode(event))
        cbor2.loads(CBOR.encode(event))
        assert len(message.key.encode()) <= LIMITS.max_key_bytes


@SETTINGS
@given(st.binary(max_size=256))
def test_arbitrary_bytes(data: bytes) -> None:
    check(data)
    check(data, http=True)


@SETTINGS
@given(any_text)
def test_arbitrary_text(data: str) -> None:
    check(data)


@SETTINGS
@given(messages(json_values(json_scalars)), st.booleans())
def test_json_shaped_messages(message: dict[str, Any], ascii_only: bool) -> None:
    # json.dumps writes NaN/Infinity and escapes lone surrogates: all must be refused.
    text = json.dumps(message, ensure_ascii=ascii_only)
    check(text)
    check(text.encode("utf-8", "surrogatepass"), http=True)


@SETTINGS
@given(messages(cbor_values()))
def test_cbor_shaped_messages(message: dict[Any, Any]) -> None:
    try:
        data = cbor2.dumps(message)
    except UnicodeEncodeError:  # cbor2 cannot write lone surrogates (test_codec covers them)
        reject()
    check(data)


@SETTINGS
@given(st.one_of(messages(json_values(json_scalars)), messages(cbor_values())))
def test_hand_structuring_returns_what_cattrs_returns(raw: dict[Any, Any]) -> None:
    # Common messages skip cattrs; whatever they come out as, cattrs agrees.
    try:
        message = structure_client_message(raw, LIMITS)
    except ProtocolError:
        return  # refusals still come from the checks and cattrs alone
    assert message == _structure_with_cattrs(raw["type"], raw)


@SETTINGS
@given(st.integers(0, 200), st.sampled_from(["[", '{"a":', '[{"b":']))
def test_deep_nesting_is_refused_or_accepted_never_crashing(depth: int, opener: str) -> None:
    value = opener * depth
    check('{"type":"push","key":"k","action":{"type":"relay"},"value":' + value)
    check(CBOR_PUSH_PREFIX + b"\x81" * depth + b"\x00")


@SETTINGS
@given(st.binary(max_size=64), st.integers(0, 2**64 - 1), st.sampled_from([0x5B, 0x7B, 0x9B, 0xBB]))
def test_cbor_huge_declared_lengths(tail: bytes, length: int, head: int) -> None:
    # A byte/text string, array or map header declaring up to 2^64 - 1 items.
    check(bytes([head]) + length.to_bytes(8, "big") + tail)
    check(CBOR_PUSH_PREFIX + bytes([head]) + length.to_bytes(8, "big") + tail)
