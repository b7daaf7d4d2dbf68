"""The pure core: the room state machine. Imports no trio."""

from .refusals import PushRefusal as PushRefusal
from .refusals import PushRefused as PushRefused
from .room_state import PushOutcome as PushOutcome
from .room_state import RoomState as RoomState
from .room_state import Stream as Stream
from .room_state import StreamChange as StreamChange

__all__ = ["PushOutcome", "PushRefusal", "PushRefused", "RoomState", "Stream", "StreamChange"]
