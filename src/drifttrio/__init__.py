"""drifttrio: a DriftDB-compatible real-time message relay server on Trio."""

__version__ = "0.1.0"

from ._errors import CloseCode as CloseCode
from ._errors import ConfigError as ConfigError
from ._errors import DriftError as DriftError
from ._errors import ProtocolError as ProtocolError
from ._errors import RoomNotFound as RoomNotFound
from ._errors import StorageError as StorageError
from .runtime.config import Config as Config
from .runtime.hub import Hub as Hub
from .runtime.hub import Subscription as Subscription
from .runtime.hub import open_hub as open_hub
from .server import RunningServer as RunningServer
from .server import open_server as open_server
from .server import serve as serve
from .web.app import DriftApp as DriftApp

__all__ = [
    "CloseCode",
    "Config",
    "ConfigError",
    "DriftApp",
    "DriftError",
    "Hub",
    "ProtocolError",
    "RoomNotFound",
    "RunningServer",
    "StorageError",
    "Subscription",
    "__version__",
    "open_hub",
    "open_server",
    "serve",
]
