"""Server-side room logic: authorize connections, screen and decide pushes, and
hear what happens in rooms, in Python (:class:`Hooks`) or over HTTP
(:class:`~drifttrio.hooks.webhooks.WebhookHooks`).

See the "Server-side logic" page of the docs.
"""

from ._api import Accept as Accept
from ._api import Admit as Admit
from ._api import AuthorizeDecision as AuthorizeDecision
from ._api import Committed as Committed
from ._api import ConnectRequest as ConnectRequest
from ._api import Event as Event
from ._api import HookRefused as HookRefused
from ._api import Hooks as Hooks
from ._api import MemberJoined as MemberJoined
from ._api import MemberLeft as MemberLeft
from ._api import PushDecision as PushDecision
from ._api import PushRequest as PushRequest
from ._api import Refuse as Refuse
from ._api import Replace as Replace
from ._api import RoomCreated as RoomCreated
from ._api import RoomDeleted as RoomDeleted
from ._api import RoomExpired as RoomExpired
from ._api import RoomView as RoomView
from ._api import Source as Source
from ._load import configured_hooks as configured_hooks
from ._load import load_hooks as load_hooks

__all__ = [
    "Accept",
    "Admit",
    "AuthorizeDecision",
    "Committed",
    "ConnectRequest",
    "Event",
    "HookRefused",
    "Hooks",
    "MemberJoined",
    "MemberLeft",
    "PushDecision",
    "PushRequest",
    "Refuse",
    "Replace",
    "RoomCreated",
    "RoomDeleted",
    "RoomExpired",
    "RoomView",
    "Source",
    "configured_hooks",
    "load_hooks",
]
