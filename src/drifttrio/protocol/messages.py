"""Every message of the DriftDB protocol as a frozen attrs class.

Client → server: :class:`Push`, :class:`Get`, :class:`Ping`.
Server → client: :class:`PushEvent`, :class:`Init`, :class:`StreamSize`,
:class:`Pong`, :class:`Error`. Actions: :class:`Relay`, :class:`Replace`,
:class:`Append`, :class:`Compact`. The wire tag of each class is ``TAG``.
"""

from __future__ import annotations

from typing import ClassVar, NewType

import attrs

__all__ = [
    "Action",
    "Append",
    "ClientMessage",
    "Compact",
    "Error",
    "Get",
    "Init",
    "Ping",
    "Pong",
    "Push",
    "PushEvent",
    "Relay",
    "Replace",
    "SeqValue",
    "ServerMessage",
    "StreamSize",
    "Value",
]

#: Any JSON value, plus ``bytes`` (a CBOR byte string). Validated at decode.
Value = NewType("Value", object)


@attrs.frozen
class Relay:
    """Broadcast only; the retained stream is unchanged."""

    TAG: ClassVar[str] = "relay"


@attrs.frozen
class Replace:
    """The stream becomes ``[value@seq]``."""

    TAG: ClassVar[str] = "replace"


@attrs.frozen
class Append:
    """``value@seq`` is added to the end of the stream."""

    TAG: ClassVar[str] = "append"


@attrs.frozen
class Compact:
    """Values with seq ≤ ``seq`` are removed and ``value@seq`` is put in front."""

    TAG: ClassVar[str] = "compact"
    seq: int


Action = Relay | Replace | Append | Compact


@attrs.frozen
class Push:
    TAG: ClassVar[str] = "push"
    key: str
    value: Value
    action: Action


@attrs.frozen
class Get:
    """``seq=None`` means: subscribe, but send no ``init``."""

    TAG: ClassVar[str] = "get"
    key: str
    seq: int | None = 0


@attrs.frozen
class Ping:
    TAG: ClassVar[str] = "ping"
    nonce: int | None = None


ClientMessage = Push | Get | Ping


@attrs.frozen
class SeqValue:
    value: Value
    seq: int


@attrs.frozen
class PushEvent:
    """A broadcast: ``{"type": "push", "key", "value", "seq"}``."""

    TAG: ClassVar[str] = "push"
    key: str
    value: Value
    seq: int


@attrs.frozen
class Init:
    TAG: ClassVar[str] = "init"
    key: str
    data: tuple[SeqValue, ...]
    #: More ``init``s of this key follow for the same ``get`` (a long stream is
    #: sent in chunks); written only when true, so a whole init is unchanged.
    more: bool = attrs.field(default=False, repr=False)


@attrs.frozen
class StreamSize:
    TAG: ClassVar[str] = "stream_size"
    key: str
    size: int


@attrs.frozen
class Pong:
    TAG: ClassVar[str] = "pong"
    nonce: int | None = None


@attrs.frozen
class Error:
    TAG: ClassVar[str] = "error"
    message: str


ServerMessage = PushEvent | Init | StreamSize | Pong | Error
