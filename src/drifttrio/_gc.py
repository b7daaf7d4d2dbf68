"""Full garbage collections of a ``drifttrio serve`` process, paced.

CPython collects its oldest generation whenever it has grown by a quarter since the
last full collection. A server whose connections all arrive at once (a deploy, a
network blip) grows by a quarter again and again: in a 10,000-client storm that was
16 full collections of 0.1-1 s each, every one a pause of the whole event loop and
together about a third of the storm's CPU. A connection leaves no cyclic garbage
when it ends (its objects are freed by reference counting: RSS over thousands of
connections opened and closed grows the same with the collector off), so the full
collections find little; they only cost.

:func:`paced_full_collections` leaves the young generations to CPython and runs the
full collection itself: at most every :data:`FULL_INTERVAL` seconds, and further
apart when one takes long, so that they take at most :data:`FULL_SHARE` of the time.
It is for the server process (``drifttrio serve``): an application that embeds
drifttrio owns its process and its collector.
"""

from __future__ import annotations

import gc
import logging
import time
from typing import Final

import trio

__all__ = ["FULL_INTERVAL", "FULL_SHARE", "paced_full_collections"]

log = logging.getLogger("drifttrio")

#: Seconds between two full collections, at least.
FULL_INTERVAL: Final = 60.0
#: The share of the time full collections may take, at most (a collection of d
#: seconds is followed by at least d / FULL_SHARE seconds without one).
FULL_SHARE: Final = 0.01
#: A gen-2 threshold CPython never reaches: its automatic full collections stop.
_NEVER: Final = 2**31 - 1


async def paced_full_collections(
    *,
    interval: float = FULL_INTERVAL,
    share: float = FULL_SHARE,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run until cancelled: CPython's own full collections off (from the moment it
    has started, see ``nursery.start``), ours paced. What was running at the start
    (modules, settings) is frozen out of every scan. On exit the collector is as it
    was."""
    young, middle, old = gc.get_threshold()
    gc.freeze()
    gc.set_threshold(young, middle, _NEVER)
    try:
        task_status.started()
        wait = interval
        while True:
            await trio.sleep(wait)
            started = time.perf_counter()
            found = gc.collect(2)
            took = time.perf_counter() - started
            wait = max(interval, took / share)
            log.debug("full collection: %d unreachable in %.3f s", found, took)
    finally:
        gc.set_threshold(young, middle, old)
        gc.unfreeze()
