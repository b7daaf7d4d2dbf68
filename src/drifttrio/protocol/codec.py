"""Wire formats: JSON (text frames) and CBOR (binary frames).

One cattrs converter per wire format, built by :func:`make_converter`, with the
message unions tagged on ``"type"``. Decoding is strict (no coercion of ``5`` to
``"5"``) and every value is checked against :class:`DecodeLimits` before it can
reach a room, so nothing accepted here can break encoding for other members.

Byte strings: CBOR byte strings are kept as ``bytes``. In JSON output they are
written as an array of integers 0-255 (what upstream's server does).

What a message costs: decoding, checking, storing and encoding a value take time
in proportion to its *nodes* (values and map keys), whatever its size in bytes, and
none of it yields to the event loop. :func:`message_nodes` counts them from the
raw bytes first, at C speed for JSON and with a walk over CBOR item headers that
stops at the limit, so a message over ``max_nodes`` is refused before it is decoded,
and the count is what a client address is charged (see ``web/limits.py``).
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable
from typing import Any, Final, Literal, TypeGuard

import attrs
import cattrs
import cbor2
import orjson
from cattrs.gen import make_dict_unstructure_fn, override
from cattrs.strategies import configure_tagged_union

from .._errors import ProtocolError
from .messages import (
    Action,
    Append,
    ClientMessage,
    Compact,
    Get,
    Init,
    Ping,
    Pong,
    Push,
    PushEvent,
    Relay,
    Replace,
    ServerMessage,
    StreamSize,
    Value,
)

__all__ = [
    "CBOR",
    "JSON",
    "Codec",
    "DecodeLimits",
    "bytes_as_ints",
    "cbor_nodes",
    "check_value",
    "decode_cbor_client_message",
    "decode_client_message",
    "decode_json_client_message",
    "json_nodes",
    "make_converter",
    "message_nodes",
]

_MAX_SAFE_INT: Final = 2**53
#: A byte string counts one node per this many bytes (and one for itself): written
#: to JSON members as an array of integers, each byte costs about 1/64 of a node.
BYTES_PER_NODE: Final = 64


@attrs.frozen
class DecodeLimits:
    """Limits applied to every decoded client message."""

    max_depth: int = 64
    max_key_bytes: int = 1024
    #: Most nodes (values, map keys, byte-string weight) in one message.
    max_nodes: int = 10_000


def _tag(cls: type[Any]) -> str:
    return str(cls.TAG)


def _strict_str(value: object, _: object) -> str:
    if type(value) is not str:
        raise TypeError(f"expected a string, got {_json_type(value)}")
    return value


def _strict_int(value: object, _: object) -> int:
    if type(value) is not int:
        raise TypeError(f"expected an integer, got {_json_type(value)}")
    if not -_MAX_SAFE_INT <= value <= _MAX_SAFE_INT:
        raise ValueError("integer outside ±2^53")
    return value


def _json_type(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return f"the number {value!r}"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


def make_converter() -> cattrs.Converter:
    """A converter for the protocol's message classes, tagged on ``type``."""
    conv = cattrs.Converter(forbid_extra_keys=False)
    conv.register_structure_hook(str, _strict_str)
    conv.register_structure_hook(int, _strict_int)
    conv.register_structure_hook(Value, lambda v, _: v)
    conv.register_unstructure_hook(Value, lambda v: v)
    # ``more`` is only written on the chunks of a long init that others follow.
    conv.register_unstructure_hook(
        Init, make_dict_unstructure_fn(Init, conv, more=override(omit_if_default=True))
    )
    configure_tagged_union(Action, conv, tag_generator=_tag, tag_name="type")
    configure_tagged_union(ClientMessage, conv, tag_generator=_tag, tag_name="type")
    configure_tagged_union(ServerMessage, conv, tag_generator=_tag, tag_name="type")
    return conv


def bytes_as_ints(value: object) -> object:
    """orjson's ``default`` for values headed to JSON: a byte string (from a CBOR
    client) is written as an array of integers 0-255; anything else is refused."""
    if isinstance(value, bytes | bytearray | memoryview):
        return list(bytes(value))
    raise TypeError(f"cannot encode {type(value).__name__}")


@attrs.frozen(eq=False)
class Codec:
    """One wire format: how server messages are encoded for a connection.

    Compared (and hashed) by identity: :data:`JSON` and :data:`CBOR` are the two.
    """

    name: Literal["json", "cbor"]
    binary: bool
    converter: cattrs.Converter = attrs.field(repr=False)
    _dump: Callable[[object], str | bytes] = attrs.field(repr=False, alias="dump")

    def encode(self, message: ServerMessage) -> str | bytes:
        return self._dump(self.unstructure(message))

    def encode_bytes(self, message: ServerMessage) -> bytes:
        """The message as bytes: UTF-8 JSON text, or CBOR."""
        data = self.unstructure(message)
        if self.binary:
            return cbor2.dumps(data)
        return orjson.dumps(data, default=bytes_as_ints)

    def unstructure(self, message: ServerMessage) -> dict[str, Any]:
        # The frequent messages by hand (same dict, same key order as the
        # converter's: a test compares them), the rest through cattrs.
        if type(message) is PushEvent:
            return {"key": message.key, "value": message.value, "seq": message.seq, "type": "push"}
        if type(message) is Pong:
            return {"nonce": message.nonce, "type": "pong"}
        if type(message) is StreamSize:
            return {"key": message.key, "size": message.size, "type": "stream_size"}
        data: dict[str, Any] = self.converter.unstructure(message, ServerMessage)
        return data


def _dump_json(data: object) -> str:
    return orjson.dumps(data, default=bytes_as_ints).decode()


def _dump_cbor(data: object) -> bytes:
    return cbor2.dumps(data)


JSON: Final = Codec("json", False, make_converter(), dump=_dump_json)
CBOR: Final = Codec("cbor", True, make_converter(), dump=_dump_cbor)


def _reject_tag(tag: object, *_: object) -> object:
    number = getattr(tag, "tag", tag)
    raise ProtocolError(f"CBOR tag {number} is not supported (only plain data and byte strings)")


def _uint8_array(value: object, *_: object) -> bytes:
    # RFC 8746 tag 64: how cbor-web (the npm client's CBOR library) sends a Uint8Array.
    if type(value) is not bytes:
        raise ProtocolError("CBOR tag 64 must wrap a byte string")
    return value


def _rejecting(number: int) -> Callable[..., object]:
    def reject(*_: object) -> object:
        raise ProtocolError(
            f"CBOR tag {number} is not supported (only plain data and byte strings)"
        )

    return reject


# Tags cbor2 would otherwise decode itself (dates, bignums, decimals, shared
# references, sets, ...): none of them is plain data both codecs can carry.
_SEMANTIC_DECODERS: Final[dict[int, Callable[..., object]]] = {
    number: _rejecting(number)
    for number in (
        0,
        1,
        2,
        3,
        4,
        5,
        25,
        28,
        29,
        30,
        35,
        36,
        37,
        52,
        54,
        100,
        256,
        258,
        260,
        261,
        1004,
        55799,
    )
}
_SEMANTIC_DECODERS[64] = _uint8_array


class _Undefined(Exception):
    """CBOR ``undefined`` (a JS ``undefined`` sent by cbor-web): stored as null."""


def check_value(value: object, limits: DecodeLimits = DecodeLimits()) -> None:
    """Raise :class:`ProtocolError` unless ``value`` is plain data within ``limits``.

    CBOR ``undefined`` inside arrays and maps is replaced by ``None`` in place.
    """
    try:
        _check_value(value, 1, limits)
    except _Undefined:
        raise ProtocolError("a value cannot be undefined") from None


def _check_value(value: object, depth: int, limits: DecodeLimits) -> None:
    """Reject anything that is not plain data both codecs can carry."""
    if depth > limits.max_depth:
        raise ProtocolError(f"value nested deeper than {limits.max_depth} levels")
    t = type(value)
    if t is str or t is bool or value is None or t is bytes:
        return
    if value is cbor2.undefined:
        raise _Undefined
    if t is int:
        if not -_MAX_SAFE_INT <= value <= _MAX_SAFE_INT:  # type: ignore[operator]
            raise ProtocolError("integer outside ±2^53 cannot be represented exactly")
        return
    if t is float:
        if not math.isfinite(value):  # type: ignore[arg-type]
            raise ProtocolError("NaN and Infinity are not allowed")
        return
    if t is list:
        items: list[object] = value  # type: ignore[assignment]
        for i, item in enumerate(items):
            try:
                _check_value(item, depth + 1, limits)
            except _Undefined:
                items[i] = None
        return
    if t is dict:
        mapping: dict[object, object] = value  # type: ignore[assignment]
        for k, item in mapping.items():
            if type(k) is not str:
                raise ProtocolError("map keys must be strings")
            try:
                _check_value(item, depth + 1, limits)
            except _Undefined:
                mapping[k] = None
        return
    raise ProtocolError(f"unsupported value of type {t.__name__}")


def _load_json(data: str | bytes) -> object:
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise ProtocolError(f"invalid JSON: {exc}") from None


def _load_cbor(data: bytes, limits: DecodeLimits) -> object:
    try:
        stream = io.BytesIO(data)
        value = cbor2.CBORDecoder(
            stream,
            tag_hook=_reject_tag,
            semantic_decoders=_SEMANTIC_DECODERS,
            max_depth=limits.max_depth + 4,
            strict_hashable_types=True,
        ).decode()
        if stream.tell() != len(data):
            raise ProtocolError("invalid CBOR: trailing bytes after the message")
        return value
    except ProtocolError:
        raise
    except (cbor2.CBORDecodeError, ValueError, TypeError, OverflowError, MemoryError) as exc:
        cause = exc.__cause__ if isinstance(exc.__cause__, ProtocolError) else None
        if cause is not None:
            raise cause from None
        raise ProtocolError(f"invalid CBOR: {exc}") from None
    except RecursionError:
        raise ProtocolError("invalid CBOR: nested too deeply") from None
    except Exception as exc:
        raise ProtocolError(f"invalid CBOR: {exc}") from None


# -- what a message costs ----------------------------------------------------------

#: ``bytes.translate`` deletes these, leaving a JSON text's ``[``, ``{``, ``,`` and
#: ``:`` (one C pass; ``bytes.count`` four times is three times slower).
_NOT_JSON_STRUCTURE: Final = bytes(sorted(set(range(256)) - set(b"[{,:")))


def json_nodes(data: str | bytes, limit: int) -> int:
    """An upper bound on the nodes (values and keys) of a JSON text, or ``limit + 1``
    if it has more than ``limit``; linear C-speed passes, no decoding.

    Every node but the first follows a ``[``, ``{``, ``,`` or ``:``, so counting them
    is a bound. When that bound is over the limit, what strings hold is taken off
    it (a long string full of commas is one node), in passes whose Python part is
    bounded by the limit.
    """
    # (A lone surrogate passes here; the parser refuses it.)
    raw = data.encode("utf-8", "surrogatepass") if isinstance(data, str) else data
    bound = 1 + len(raw.translate(None, _NOT_JSON_STRUCTURE))
    if bound <= limit:
        return bound
    if b"\\" in raw:
        # Drop escapes that hide a quote, left to right as a JSON parser reads
        # them. (Outside strings a backslash is invalid JSON: the parser stops.)
        raw = raw.replace(b"\\\\", b"").replace(b'\\"', b"")
    if raw.count(b'"') // 2 > limit:
        return limit + 1  # each string is a node or a key
    inside = b"".join(raw.split(b'"')[1::2])
    return min(bound - len(inside.translate(None, _NOT_JSON_STRUCTURE)), limit + 1)


def _item_lengths() -> tuple[int, ...]:
    """For each initial byte, the length of a one-node item it starts (0 when the
    length depends on what follows: strings of 24 bytes or more)."""
    lengths = []
    for head in range(256):
        major, info = head >> 5, head & 31
        width = (1 << (info - 24)) if 24 <= info < 28 else 0  # 1, 2, 4 or 8 bytes
        if major in (2, 3):  # strings: header, then the payload
            lengths.append(1 + info if info < 24 else 1 if info >= 28 else 0)
        elif major == 7 and info >= 28:
            lengths.append(1)  # break (0xff) or reserved: the decoder refuses the latter
        else:
            lengths.append(1 + width)  # numbers, simple values, containers, tags
    return tuple(lengths)


_ITEM_LENGTHS: Final = _item_lengths()


def cbor_nodes(data: bytes, limit: int) -> int:
    """The nodes of a CBOR message (every item header, tags and breaks included; a
    byte string also counts one per :data:`BYTES_PER_NODE` bytes), or ``limit + 1``
    if there are more than ``limit``: the walk stops there.

    Only headers are read, string payloads are skipped by their length, so the cost
    is bounded by the limit, not by the size of the message. Malformed input is not
    detected here: the decoder refuses it (and reads no more items than counted).
    """
    lengths = _ITEM_LENGTHS
    end = len(data)
    pos = 0
    nodes = 0
    while pos < end and nodes <= limit:
        head = data[pos]
        step = lengths[head]
        nodes += 1
        if step:
            pos += step
            continue
        # A string of 24 bytes or more: its length follows the initial byte.
        width = 1 << ((head & 31) - 24)
        size = int.from_bytes(data[pos + 1 : pos + 1 + width], "big")
        pos += 1 + width + size
        if head >> 5 == 2:
            nodes += size // BYTES_PER_NODE
    return min(nodes, limit + 1)


def message_nodes(data: str | bytes, limit: int) -> int:
    """The nodes of one client frame (``str``: JSON, ``bytes``: CBOR), at most
    ``limit + 1`` (meaning "over the limit"): what decoding it would cost."""
    return json_nodes(data, limit) if isinstance(data, str) else cbor_nodes(data, limit)


def _too_many_nodes(limits: DecodeLimits) -> ProtocolError:
    return ProtocolError(
        f"message has more than {limits.max_nodes} values and keys (max_message_nodes)"
    )


_CONVERTER: Final = JSON.converter


def decode_client_message(
    data: str | bytes, limits: DecodeLimits = DecodeLimits(), *, nodes: int | None = None
) -> ClientMessage:
    """Decode one client frame: ``str`` is JSON (a text frame), ``bytes`` is CBOR.

    Raises :class:`ProtocolError` with a message fit to send back to the client. A
    message over ``limits.max_nodes`` is refused before it is decoded; ``nodes`` is
    its :func:`message_nodes` count if the caller already took it (to charge it).
    """
    if nodes is None:
        nodes = message_nodes(data, limits.max_nodes)
    if nodes > limits.max_nodes:
        raise _too_many_nodes(limits)
    raw = _load_json(data) if isinstance(data, str) else _load_cbor(data, limits)
    return structure_client_message(raw, limits)


def decode_cbor_client_message(
    data: bytes, limits: DecodeLimits = DecodeLimits(), *, nodes: int | None = None
) -> ClientMessage:
    """Decode a client message sent as CBOR (a binary frame); ``nodes`` as for
    :func:`decode_client_message` (here from :func:`cbor_nodes`)."""
    if nodes is None:
        nodes = cbor_nodes(data, limits.max_nodes)
    if nodes > limits.max_nodes:
        raise _too_many_nodes(limits)
    return structure_client_message(_load_cbor(data, limits), limits)


def decode_json_client_message(
    data: bytes, limits: DecodeLimits = DecodeLimits(), *, nodes: int | None = None
) -> ClientMessage:
    """Decode a client message sent as JSON (a text frame's UTF-8 bytes, an HTTP
    ``/send`` body); ``nodes`` as
    for :func:`decode_client_message` (here from :func:`json_nodes`)."""
    if nodes is None:
        nodes = json_nodes(data, limits.max_nodes)
    if nodes > limits.max_nodes:
        raise _too_many_nodes(limits)
    return structure_client_message(_load_json(data), limits)


def structure_client_message(raw: object, limits: DecodeLimits) -> ClientMessage:
    if type(raw) is not dict:
        raise ProtocolError(f"a message must be an object, got {_json_type(raw)}")
    kind = raw.get("type")
    if kind not in ("push", "get", "ping"):
        raise ProtocolError(f"unknown message type {kind!r} (expected push, get or ping)")
    if kind == "push":
        if "value" not in raw:
            raise ProtocolError("push: missing field 'value'")
        check_value(raw["value"], limits)
        action = raw.get("action")
        if type(action) is dict and action.get("type") not in (
            "relay",
            "replace",
            "append",
            "compact",
        ):
            raise ProtocolError(
                f"push: unknown action {action.get('type')!r} "
                "(expected relay, replace, append or compact)"
            )
    message = _structure_common(kind, raw)
    if message is None:
        message = _structure_with_cattrs(kind, raw)
    key = getattr(message, "key", None)
    if key is not None and (
        len(key) > limits.max_key_bytes
        or (len(key) * 4 > limits.max_key_bytes and len(key.encode()) > limits.max_key_bytes)
    ):
        raise ProtocolError(f"key longer than {limits.max_key_bytes} bytes")
    return message


def _structure_with_cattrs(kind: str, raw: dict[str, object]) -> ClientMessage:
    try:
        message: ClientMessage = _CONVERTER.structure(raw, ClientMessage)  # type: ignore[arg-type]
    except cattrs.BaseValidationError as exc:
        detail = "; ".join(cattrs.transform_error(exc, path=str(kind)))
        raise ProtocolError(f"invalid {kind} message: {detail}") from None
    except (KeyError, TypeError, ValueError) as exc:
        raise ProtocolError(f"invalid {kind} message: {exc}") from None
    return message


_SIMPLE_ACTIONS: Final[dict[object, Action]] = {
    "relay": Relay(),
    "replace": Replace(),
    "append": Append(),
}


def _safe_int(value: object) -> TypeGuard[int]:
    return type(value) is int and -_MAX_SAFE_INT <= value <= _MAX_SAFE_INT


def _structure_common(kind: str, raw: dict[str, object]) -> ClientMessage | None:
    """The usual, valid messages, structured by hand: what cattrs would return for
    them, at a fraction of the cost (it was a tenth of the server's time). ``None``
    for anything else, which cattrs structures, or refuses with its own error.

    Called after :func:`structure_client_message`'s checks: ``value`` is checked
    and an action's ``type`` is one of the four.
    """
    if kind == "push":
        key = raw.get("key")
        action = raw.get("action")
        if type(key) is not str or type(action) is not dict:
            return None
        simple = _SIMPLE_ACTIONS.get(action["type"])
        if simple is not None:
            return Push(key, Value(raw["value"]), simple)
        seq = action.get("seq")
        return Push(key, Value(raw["value"]), Compact(seq)) if _safe_int(seq) else None
    if kind == "get":
        key = raw.get("key")
        seq = raw.get("seq", 0)
        if type(key) is not str or not (seq is None or _safe_int(seq)):
            return None
        return Get(key, seq)
    nonce = raw.get("nonce")
    return Ping(nonce) if nonce is None or _safe_int(nonce) else None
