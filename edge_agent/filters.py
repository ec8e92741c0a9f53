"""The filters every estimate of the agent goes through: robust and fast, or the latest.

A placement decision is only as good as the numbers behind it, and those numbers are
noisy (a GC pause, a retransmission) and sometimes change for real (a Wi-Fi link drops
from 50 to 0.5 Mbit/s). A plain smoother has to pick one: a median filter plus an EWMA
ignores outliers but needs a dozen samples to follow a 100x drop. :class:`RobustEwma`
does both with a change detector in front of the smoother:

* a sample inside the band around the estimate (within ``band`` times, either way) is
  smoothed in as before (median of the last ``window`` samples, then an EWMA);
* a sample outside the band is held back, not averaged in: one alone (an outlier) never
  moves the estimate;
* ``confirm`` consecutive samples outside the band on the same side, and within the
  band of one another, are a change: the estimate resets to their median and the
  smoothing restarts from there. Erratic noise (one sample 3x off, the next 10x) is not
  a level and does not reset anything.

A change is thus followed after ``confirm`` samples whatever its size, while a lone
outlier of any size is ignored. Until the filter has seen ``window`` samples it has no
level to depart from, and is a plain median-then-EWMA. :class:`LatestSample` is the
other extreme (the last sample is the estimate, as Neurosurgeon re-decides on every
measurement), kept for comparison (``policy.estimator: latest``).
"""

from __future__ import annotations

import math
import statistics
from collections import deque
from typing import Protocol

__all__ = ["Filter", "LatestSample", "RobustEwma"]


class Filter(Protocol):
    """What an estimate is: ``value`` (None before any sample) and how many it saw."""

    value: float | None
    count: int

    def update(self, sample: float, floor: float | None = None) -> float: ...

    def get(self, default: float) -> float: ...


class RobustEwma:
    """EWMA over the running median of in-band samples, reset by confirmed changes.

    Args:
        alpha: weight of a new (median-filtered) in-band sample.
        window: in-band samples in the median filter.
        initial: the value before any sample (a guess: the first sample replaces it).
        band: a sample above ``value * band + floor`` or below ``value / band - floor``
            is outside the band.
        confirm: consecutive out-of-band samples on one side that make a change (1 =
            every out-of-band sample resets: fast, no outlier rejection).
        floor: absolute slack of the band, in the sample's unit (timing noise for
            millisecond quantities; 0 for rates).
    """

    def __init__(self, alpha: float, window: int, initial: float | None = None, *,
                 band: float = 2.0, confirm: int = 2, floor: float = 0.0) -> None:
        if band <= 1.0 or confirm < 1:
            raise ValueError(f"band must be > 1 and confirm >= 1, got {band}, {confirm}")
        self.alpha = alpha
        self.band = band
        self.confirm = confirm
        self.floor = floor
        self._window: deque[float] = deque(maxlen=window)
        self._pending: list[float] = []
        self._side = 0
        self.value = initial
        self.count = 0
        #: changes detected so far (resets of the estimate to a new level)
        self.changes = 0

    def side(self, sample: float, floor: float | None = None) -> int:
        """+1 above the band, -1 below it, 0 inside (0 before a first sample); ``floor``
        overrides the band's absolute slack for this sample. The slack is the same both
        ways: the estimate carries the noise the requests meet too, so a sample below it
        by that much is no news either, and an estimate that followed fast samples
        sooner than slow ones would be biased towards an optimistic link."""
        if self.value is None or self.count == 0:
            return 0
        slack = self.floor if floor is None else floor
        if sample > self.value * self.band + slack:
            return 1
        if sample < self.value / self.band - slack:
            return -1
        return 0

    def update(self, sample: float, floor: float | None = None) -> float:
        """Take one sample; ``floor`` (the sample's unit) is the timing noise it may carry,
        when that is known per sample (it widens the band and the one-level test, so a
        delay of that size is never taken for a change)."""
        if not math.isfinite(sample):
            return self.value if self.value is not None else sample
        slack = self.floor if floor is None else max(floor, self.floor)
        side = self.side(sample, slack) if self.count >= (self._window.maxlen or 1) else 0
        if self.count == 0 or self.value is None:
            self._window.append(sample)
            self.value = sample
        elif side == 0:
            self._pending.clear()
            self._window.append(sample)
            med = statistics.median(self._window)
            self.value = self.alpha * med + (1 - self.alpha) * self.value
        else:
            if side != self._side:
                self._pending.clear()
            self._side = side
            self._pending.append(sample)
            lo, hi = min(self._pending), max(self._pending)
            while self._pending and hi > lo * self.band + slack:  # not one level
                self._pending.pop(0)
                lo, hi = min(self._pending), max(self._pending)
            if len(self._pending) >= self.confirm:
                self._window.clear()
                self._window.extend(self._pending)
                self.value = statistics.median(self._pending)
                self._pending.clear()
                self.changes += 1
        self.count += 1
        return self.value

    def get(self, default: float) -> float:
        return default if self.value is None else self.value

    @property
    def pending(self) -> int:
        """Out-of-band samples held back, waiting for confirmation."""
        return len(self._pending)


class LatestSample:
    """The last sample is the estimate: reacts at once, and to every outlier too."""

    def __init__(self, initial: float | None = None) -> None:
        self.value = initial
        self.count = 0
        self.changes = 0
        self.pending = 0

    def update(self, sample: float, floor: float | None = None) -> float:
        if math.isfinite(sample):
            self.value = sample
            self.count += 1
        return self.value if self.value is not None else sample

    def get(self, default: float) -> float:
        return default if self.value is None else self.value
