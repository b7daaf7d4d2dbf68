"""The bench's exceptions.

The tree (under :class:`drifttrio.DriftError`)::

    BenchError              the bench could not run: server unreachable, room not
    │                       created, upgrade refused, bad --pid (exit code 2)
    └── ConnectionLost      a WebSocket closed under the bench (code and reason kept)

Problems found while a scenario runs (loss, reordering, ``error`` messages, closes)
are not raised: they are counted in the scenario's result (exit code 1).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .._errors import DriftError

if TYPE_CHECKING:
    from ._model import ScenarioResult

__all__ = ["BenchError", "ConnectionLost"]


class BenchError(DriftError):
    """The bench could not run; the message says why, in one line.

    Raised out of :func:`run_bench`, it carries the ``scenario`` it stopped in and
    the results of the scenarios ``completed`` before.
    """

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.scenario: str | None = None
        self.completed: list[ScenarioResult] = []


class ConnectionLost(BenchError):
    """The WebSocket closed: by the server (``code``, ``reason``) or the network (1006)."""

    def __init__(self, code: int, reason: str = "") -> None:
        super().__init__(f"connection closed: {code}" + (f" {reason}" if reason else ""))
        self.code = code
        self.reason = reason
