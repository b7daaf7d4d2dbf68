"""Test applications against a real drifttrio, deterministically.

:func:`open_test_server` runs the real server (hub, room tasks, storage, the
ASGI app and its transport) in-process; clients reach it over in-memory
connections, so there are no sockets and no ports, and everything that waits
follows trio's clock: under ``trio.testing.MockClock`` hours pass in
milliseconds. The pytest plugin ``drifttrio.testing.pytest_plugin`` wraps it in
fixtures.
"""

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._client import ActionName as ActionName
    from ._client import DriftClient as DriftClient
    from ._client import Message as Message
    from ._client import settle as settle
    from ._http import HttpResponse as HttpResponse
    from ._server import DriftTestServer as DriftTestServer
    from ._server import MemberInfo as MemberInfo
    from ._server import RoomView as RoomView
    from ._server import TransportName as TransportName
    from ._server import open_test_server as open_test_server
    from ._storage import FaultyStorage as FaultyStorage
    from ._storage import Operation as Operation
    from ._storage import StoreName as StoreName
    from ._storage import make_storage as make_storage
    from ._streams import Endpoint as Endpoint
    from ._streams import connection_pair as connection_pair

# Imported on first use: the pytest plugin in this package is loaded by every
# pytest run where drifttrio is installed, and must not pull in the server.
_LAZY: dict[str, str] = {
    "ActionName": "._client",
    "DriftClient": "._client",
    "Message": "._client",
    "settle": "._client",
    "HttpResponse": "._http",
    "DriftTestServer": "._server",
    "MemberInfo": "._server",
    "RoomView": "._server",
    "TransportName": "._server",
    "open_test_server": "._server",
    "FaultyStorage": "._storage",
    "Operation": "._storage",
    "StoreName": "._storage",
    "make_storage": "._storage",
    "Endpoint": "._streams",
    "connection_pair": "._streams",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'drifttrio.testing' has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})


__all__ = [
    "ActionName",
    "DriftClient",
    "DriftTestServer",
    "Endpoint",
    "FaultyStorage",
    "HttpResponse",
    "MemberInfo",
    "Message",
    "Operation",
    "RoomView",
    "StoreName",
    "TransportName",
    "connection_pair",
    "make_storage",
    "open_test_server",
    "settle",
]
