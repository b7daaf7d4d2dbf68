"""Pass-through hooks for the "cost of server-side logic" rows of throughput.py.

Each accepts every push unchanged: the rows measure what calling the hook costs
the server, nothing the hook itself does. Loaded by ``drifttrio serve --hooks
hook_rows:NAME`` (throughput.py puts this directory on the server's PYTHONPATH).
"""

from __future__ import annotations

from drifttrio.hooks import Hooks, PushRequest, RoomView


class SyncPush(Hooks):
    """A plain ``on_push`` that accepts everything."""

    def on_push(self, push: PushRequest) -> None:
        return None


class AsyncPush(Hooks):
    """An ``async`` ``on_push`` that accepts everything (runs under its deadline)."""

    async def on_push(self, push: PushRequest) -> None:
        return None


class Decide(Hooks):
    """A ``decide`` (in the room task, in the room's order) that accepts everything."""

    def decide(self, room: RoomView, push: PushRequest) -> None:
        return None
