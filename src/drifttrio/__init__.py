"""drifttrio: a DriftDB-compatible real-time message relay server on Trio."""

__version__ = "0.1.0"

import importlib
from typing import TYPE_CHECKING, Any

from ._errors import CapacityError as CapacityError
from ._errors import CloseCode as CloseCode
from ._errors import ConfigError as ConfigError
from ._errors import DriftError as DriftError
from ._errors import ProtocolError as ProtocolError
from ._errors import PushConflict as PushConflict
from ._errors import RoomNotFound as RoomNotFound
from ._errors import StorageError as StorageError

if TYPE_CHECKING:
    from .runtime.config import Config as Config
    from .runtime.hub import Hub as Hub
    from .runtime.hub import Subscription as Subscription
    from .runtime.hub import open_hub as open_hub
    from .server import RunningServer as RunningServer
    from .server import open_server as open_server
    from .server import serve as serve
    from .web.app import DriftApp as DriftApp

# Imported on first use, so that ``import drifttrio.protocol`` / ``drifttrio.core``
# (the pure layers) do not pull in trio through this package's __init__.
_LAZY: dict[str, str] = {
    "Config": "drifttrio.runtime.config",
    "Hub": "drifttrio.runtime.hub",
    "Subscription": "drifttrio.runtime.hub",
    "open_hub": "drifttrio.runtime.hub",
    "RunningServer": "drifttrio.server",
    "open_server": "drifttrio.server",
    "serve": "drifttrio.server",
    "DriftApp": "drifttrio.web.app",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'drifttrio' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})


__all__ = [
    "CapacityError",
    "CloseCode",
    "Config",
    "ConfigError",
    "DriftApp",
    "DriftError",
    "Hub",
    "ProtocolError",
    "PushConflict",
    "RoomNotFound",
    "RunningServer",
    "StorageError",
    "Subscription",
    "__version__",
    "open_hub",
    "open_server",
    "serve",
]
