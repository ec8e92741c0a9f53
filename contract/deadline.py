"""Deadlines as one value: a point on this process's monotonic clock.

A deadline crosses a process boundary only as the *budget left* (milliseconds), the way
gRPC sends a timeout rather than a time of day: the sender writes
:meth:`Deadline.remaining_ms` at encode time and the receiver re-anchors it on its own
monotonic clock with :meth:`Deadline.after_ms`. No wall clock is ever compared across
machines, so a device whose clock is off by minutes (before NTP sync, say) loses nothing.
The one-way network delay is not subtracted on receipt: the receiver's deadline is a
little generous, and the sender still enforces its own.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

__all__ = ["Deadline"]


@dataclass(frozen=True, slots=True)
class Deadline:
    """An instant on ``time.monotonic()``'s clock, local to this process.

    Attributes:
        at: the monotonic time (seconds) after which an answer is useless.
    """

    at: float

    @classmethod
    def after_ms(cls, budget_ms: float, now: float | None = None) -> Deadline:
        """The deadline ``budget_ms`` from ``now`` (default: this instant).

        Raises:
            ValueError: the budget is not a finite number.
        """
        budget = float(budget_ms)
        if not math.isfinite(budget):
            raise ValueError(f"a time budget must be a finite number of ms, got {budget_ms!r}")
        return cls((time.monotonic() if now is None else now) + budget / 1e3)

    def remaining_ms(self, now: float | None = None) -> float:
        """Milliseconds left (negative once passed): what goes on the wire."""
        return (self.at - (time.monotonic() if now is None else now)) * 1e3

    def expired(self, now: float | None = None) -> bool:
        """Whether the deadline has passed."""
        return (time.monotonic() if now is None else now) >= self.at

    def earliest(self, other: Deadline | None) -> Deadline:
        """The sooner of two deadlines (``None`` means no other deadline)."""
        return self if other is None or self.at <= other.at else other
