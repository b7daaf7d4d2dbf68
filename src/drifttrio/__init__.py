"""drifttrio: a DriftDB-compatible real-time message relay server on Trio."""

__version__ = "0.1.0"

from ._errors import CloseCode as CloseCode  # noqa: E402
from ._errors import ConfigError as ConfigError  # noqa: E402
from ._errors import DriftError as DriftError  # noqa: E402
from ._errors import ProtocolError as ProtocolError  # noqa: E402
from ._errors import RoomNotFound as RoomNotFound  # noqa: E402
from ._errors import StorageError as StorageError  # noqa: E402
from .runtime.config import Config as Config  # noqa: E402
from .runtime.hub import Hub as Hub  # noqa: E402
from .runtime.hub import Subscription as Subscription  # noqa: E402
from .runtime.hub import open_hub as open_hub  # noqa: E402
from .server import RunningServer as RunningServer  # noqa: E402
from .server import open_server as open_server  # noqa: E402
from .server import serve as serve  # noqa: E402
from .web.app import DriftApp as DriftApp  # noqa: E402

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
