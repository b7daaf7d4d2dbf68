"""Reconnect delays: exponential backoff with jitter, on trio's clock."""

from __future__ import annotations

import random
from collections.abc import Iterator

import attrs

__all__ = ["Backoff"]


def _non_negative(_inst: object, attr: attrs.Attribute[float], value: float) -> None:
    if value < 0:
        raise ValueError(f"{attr.name} must not be negative, got {value!r}")


@attrs.frozen
class Backoff:
    """Delay before reconnect attempt *n* (0-based): ``min(initial * factor**n, maximum)``,
    then reduced by up to ``jitter`` of itself (``jitter=0.5``: a delay in [d/2, d]).

    ``max_attempts`` failed attempts in a row end the connection (``None``: never).
    ``rng`` makes the jitter reproducible in tests.
    """

    initial: float = attrs.field(default=0.5, validator=_non_negative)
    factor: float = attrs.field(default=2.0, validator=_non_negative)
    maximum: float = attrs.field(default=30.0, validator=_non_negative)
    jitter: float = attrs.field(default=0.5, validator=_non_negative)
    max_attempts: int | None = None
    rng: random.Random = attrs.field(factory=random.Random, eq=False, repr=False)

    def __attrs_post_init__(self) -> None:
        if self.jitter > 1:
            raise ValueError(f"jitter must be between 0 and 1, got {self.jitter!r}")

    def base(self, attempt: int) -> float:
        """The delay before jitter."""
        return min(self.initial * self.factor**attempt, self.maximum)

    def delays(self) -> Iterator[float]:
        """The successive delays (endless, or ``max_attempts`` long)."""
        attempt = 0
        while self.max_attempts is None or attempt < self.max_attempts:
            base = self.base(attempt)
            yield base - base * self.jitter * self.rng.random()
            attempt += 1
