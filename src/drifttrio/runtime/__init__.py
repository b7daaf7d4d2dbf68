"""The trio runtime: room tasks, the hub, connections and configuration."""

from .config import Config as Config
from .connection import Connection as Connection
from .connection import Outbox as Outbox
from .hub import Hub as Hub
from .hub import Subscription as Subscription
from .hub import open_hub as open_hub
from .room import Room as Room

__all__ = ["Config", "Connection", "Hub", "Outbox", "Room", "Subscription", "open_hub"]
