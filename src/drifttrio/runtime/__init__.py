"""The trio runtime: room tasks, the hub, connections and configuration."""

from .config import Config as Config
from .hub import Hub as Hub
from .hub import Subscription as Subscription
from .hub import open_hub as open_hub
from .member import Member as Member
from .member import Outbox as Outbox
from .room import Room as Room

__all__ = ["Config", "Hub", "Member", "Outbox", "Room", "Subscription", "open_hub"]
