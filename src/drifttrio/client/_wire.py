"""Client-side encoding of the DriftDB messages (plain dicts on the wire)."""

from __future__ import annotations

import json
from typing import Any, Literal, TypeAlias

import cbor2

__all__ = ["ActionName", "Message", "decode", "encode", "push_message"]

#: A message as it is on the wire: a JSON object or a CBOR map.
Message: TypeAlias = dict[str, Any]

ActionName: TypeAlias = Literal["relay", "replace", "append", "compact"]


def _bytes_as_ints(value: object) -> object:
    if isinstance(value, bytes | bytearray | memoryview):
        return list(bytes(value))
    raise TypeError(f"cannot encode {type(value).__name__} as JSON")


def encode(message: Message, *, cbor: bool) -> str | bytes:
    """A CBOR binary frame or a JSON text frame (byte strings become arrays of ints)."""
    if cbor:
        return cbor2.dumps(message)
    return json.dumps(message, default=_bytes_as_ints, separators=(",", ":"))


def decode(frame: str | bytes) -> Message:
    """A text frame is JSON, a binary frame CBOR. Raises ``ValueError`` on garbage."""
    try:
        message = json.loads(frame) if isinstance(frame, str) else cbor2.loads(frame)
    except (ValueError, cbor2.CBORDecodeError) as exc:
        raise ValueError(f"undecodable frame: {exc}") from None
    if not isinstance(message, dict) or not isinstance(message.get("type"), str):
        raise ValueError(f"not a message: {message!r}")
    return message


def push_message(key: str, value: Any, action: ActionName, seq: int | None) -> Message:
    act: dict[str, Any] = {"type": action}
    if action == "compact":
        if seq is None:
            raise ValueError("a compact push needs seq")
        act["seq"] = seq
    elif seq is not None:
        raise ValueError(f"seq is only for compact, not {action}")
    return {"type": "push", "key": key, "value": value, "action": act}
