"""Circuit breaker of one cloud endpoint: pure state, driven by request and probe threads.

After ``failures`` consecutive failures the endpoint is skipped for ``open_s`` seconds;
then one request (or a ping that gets through) decides whether it is healthy again. An
answer that says nothing about health (an OVERLOADED reply) frees the probe slot without
a verdict.
"""

from __future__ import annotations

import enum
import threading
import time
from collections.abc import Callable

__all__ = ["BreakerState", "CircuitBreaker"]


class BreakerState(enum.Enum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class CircuitBreaker:
    """Stops sending to an endpoint after ``failures`` consecutive failures.

    Open for ``open_s`` seconds, then half-open: one request (or a successful ping probe)
    is let through; success closes the breaker, failure opens it again. Thread-safe.
    """

    def __init__(self, failures: int, open_s: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.threshold = failures
        self.open_s = open_s
        self._clock = clock
        self._lock = threading.Lock()
        self._state = BreakerState.CLOSED
        self._failures = 0
        self._opened_at = 0.0
        self._probe_out = False
        self.opened = 0  # times opened (status/metrics)

    @property
    def state(self) -> BreakerState:
        with self._lock:
            return self._state

    def _elapsed(self) -> bool:
        return self._clock() - self._opened_at >= self.open_s

    def allow(self) -> bool:
        """May a request go to this endpoint now? (Claims the half-open probe slot.)"""
        with self._lock:
            if self._state is BreakerState.CLOSED:
                return True
            if self._state is BreakerState.OPEN and self._elapsed():
                self._state = BreakerState.HALF_OPEN
                self._probe_out = False
            if self._state is BreakerState.HALF_OPEN and not self._probe_out:
                self._probe_out = True
                return True
            return False

    def usable(self) -> bool:
        """Would :meth:`allow` let a request through (without claiming the slot)?"""
        with self._lock:
            if self._state is BreakerState.CLOSED:
                return True
            if self._state is BreakerState.OPEN:
                return self._elapsed()
            return not self._probe_out

    def record_success(self) -> None:
        with self._lock:
            self._state = BreakerState.CLOSED
            self._failures = 0
            self._probe_out = False

    def record_failure(self) -> None:
        with self._lock:
            self._failures += 1
            if self._state is BreakerState.HALF_OPEN or (
                    self._state is BreakerState.CLOSED and self._failures >= self.threshold):
                if self._state is not BreakerState.OPEN:
                    self.opened += 1
                self._state = BreakerState.OPEN
                self._opened_at = self._clock()
                self._probe_out = False

    def release(self) -> None:
        """The half-open probe ended without a verdict on the endpoint's health (e.g. an
        OVERLOADED reply): let the next request probe."""
        with self._lock:
            if self._state is BreakerState.HALF_OPEN:
                self._probe_out = False

    def probe_ok(self) -> None:
        """A ping got through: close an open breaker whose wait is over."""
        with self._lock:
            if self._state is BreakerState.CLOSED:
                self._failures = 0
            elif self._state is BreakerState.HALF_OPEN or self._elapsed():
                self._state = BreakerState.CLOSED
                self._failures = 0
                self._probe_out = False
