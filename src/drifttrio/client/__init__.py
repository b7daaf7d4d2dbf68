"""A DriftDB client on trio: rooms, a connection that resumes where it left off,
the npm client's shared-state / reducer / presence patterns, and HTTP-only access.

    async with Api("http://127.0.0.1:8080") as api:
        room = await api.new_room()
    async with connect(room.socket_url) as conn:
        await conn.push("chat", "hello")
        async for seq, value in conn.subscribe("chat"):
            ...
"""

from ._backoff import Backoff as Backoff
from ._connection import Connection as Connection
from ._connection import StreamOpener as StreamOpener
from ._connection import Subscription as Subscription
from ._connection import connect as connect
from ._connection import open_tcp as open_tcp
from ._errors import ClientError as ClientError
from ._errors import ConnectFailed as ConnectFailed
from ._errors import ConnectionClosed as ConnectionClosed
from ._errors import HttpError as HttpError
from ._errors import QueueFull as QueueFull
from ._errors import UnsentPushes as UnsentPushes
from ._events import Connected as Connected
from ._events import ConnectionEvent as ConnectionEvent
from ._events import Disconnected as Disconnected
from ._events import Gap as Gap
from ._events import GaveUp as GaveUp
from ._events import Reconnecting as Reconnecting
from ._events import ServerError as ServerError
from ._events import Update as Update
from ._helpers import Presence as Presence
from ._helpers import Reducer as Reducer
from ._helpers import SharedState as SharedState
from ._http import Api as Api
from ._http import HttpConnection as HttpConnection
from ._http import RoomInfo as RoomInfo
from ._wire import ActionName as ActionName

__all__ = [
    "ActionName",
    "Api",
    "Backoff",
    "ClientError",
    "ConnectFailed",
    "Connected",
    "Connection",
    "ConnectionClosed",
    "ConnectionEvent",
    "Disconnected",
    "Gap",
    "GaveUp",
    "HttpConnection",
    "HttpError",
    "Presence",
    "QueueFull",
    "Reconnecting",
    "Reducer",
    "RoomInfo",
    "ServerError",
    "SharedState",
    "StreamOpener",
    "Subscription",
    "UnsentPushes",
    "Update",
    "connect",
    "open_tcp",
]
