"""The DriftDB wire protocol: message classes and codecs. Imports no trio."""

from .codec import CBOR as CBOR
from .codec import JSON as JSON
from .codec import Codec as Codec
from .codec import DecodeLimits as DecodeLimits
from .codec import decode_client_message as decode_client_message
from .codec import decode_json_client_message as decode_json_client_message
from .messages import Action as Action
from .messages import Append as Append
from .messages import ClientMessage as ClientMessage
from .messages import Compact as Compact
from .messages import Error as Error
from .messages import Get as Get
from .messages import Init as Init
from .messages import Ping as Ping
from .messages import Pong as Pong
from .messages import Push as Push
from .messages import PushEvent as PushEvent
from .messages import Relay as Relay
from .messages import Replace as Replace
from .messages import SeqValue as SeqValue
from .messages import ServerMessage as ServerMessage
from .messages import StreamSize as StreamSize

__all__ = [
    "CBOR",
    "JSON",
    "Action",
    "Append",
    "ClientMessage",
    "Codec",
    "Compact",
    "DecodeLimits",
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
    "decode_client_message",
    "decode_json_client_message",
]
