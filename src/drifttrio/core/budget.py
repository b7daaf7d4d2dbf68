"""The server-wide budget of bytes retained by live rooms (``max_retained_bytes``).

Pure bookkeeping, no trio: every live room draws on the budget through its own
:class:`BudgetAccount`, which its :class:`~drifttrio.core.RoomState` keeps equal
to the bytes the room is charged for. A push that would take the total past the
limit first asks the owner to reclaim memory (the hub unloads idle rooms, whose
data stays in storage), and is refused only if that was not enough. Pushes that
do not grow a room always pass, so a full budget never freezes a room.
"""

from __future__ import annotations

from collections.abc import Callable

__all__ = ["BudgetAccount", "RetainedBudget"]


class RetainedBudget:
    """Retained bytes summed over live rooms, against a limit (0: unlimited).

    ``reclaim(needed, asking)`` is called when a push by ``asking`` would exceed the
    limit by ``needed`` bytes; it may close other accounts (unloading their rooms).
    """

    def __init__(
        self,
        limit: int = 0,
        reclaim: Callable[[int, BudgetAccount], object] = lambda needed, asking: None,
    ) -> None:
        self.limit = limit
        self.reclaim = reclaim
        #: Bytes charged by every open account.
        self.used = 0

    def account(self) -> BudgetAccount:
        """A new, empty account for one live room."""
        return BudgetAccount(self)

    def admits(self, growth: int, asking: BudgetAccount) -> bool:
        """Whether ``asking`` may grow by ``growth`` bytes (reclaiming first if needed)."""
        if growth <= 0 or not self.limit or self.used + growth <= self.limit:
            return True
        self.reclaim(self.used + growth - self.limit, asking)
        return self.used + growth <= self.limit

    def settle(self, asking: BudgetAccount) -> None:
        """After ``asking`` was charged without asking (a room loaded from storage):
        reclaim from other rooms whatever went past the limit."""
        if self.limit and self.used > self.limit:
            self.reclaim(self.used - self.limit, asking)


class BudgetAccount:
    """One live room's share of a :class:`RetainedBudget`."""

    def __init__(self, budget: RetainedBudget) -> None:
        self.budget = budget
        #: Bytes this room is charged for.
        self.bytes = 0
        self.closed = False

    def set(self, total: int) -> None:
        """Charge ``total`` bytes from now on (a room state loaded or reloaded)."""
        if not self.closed:
            self.budget.used += total - self.bytes
            self.bytes = total

    def add(self, delta: int) -> None:
        """Charge ``delta`` more bytes (negative: fewer)."""
        if not self.closed:
            self.budget.used += delta
            self.bytes += delta

    def admits(self, growth: int) -> bool:
        """Whether the budget has room for this room to grow by ``growth`` bytes."""
        budget = self.budget
        if growth <= 0 or budget.used + growth <= budget.limit or self.closed:
            return True  # (the common case, without a call)
        return budget.admits(growth, self)

    def close(self) -> None:
        """Give the bytes back (the room is unloaded); later charges are ignored."""
        if not self.closed:
            self.budget.used -= self.bytes
            self.bytes = 0
            self.closed = True
