"""Every core of one machine: ``drifttrio serve --workers N``.

A supervisor (:mod:`drifttrio.supervisor`) runs N worker processes on one
listening socket. Each room lives in exactly one worker (:func:`owner_of`, a
stable hash of its id), so its ordering point stays one task in one process;
a connection whose request names another worker's room is handed to it
(:class:`Shard`). See docs/deployment.md, "Every core of one machine".
"""

from ._shard import HANDOFF_SUPPORTED, Shard, WorkerUnavailable, owner_of, room_in_path

__all__ = ["HANDOFF_SUPPORTED", "Shard", "WorkerUnavailable", "owner_of", "room_in_path"]
