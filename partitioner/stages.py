"""Where a partition run spends time and memory: wall time and peak RSS per stage.

Peak RSS from ``getrusage`` is a high-water mark for the whole process, so it cannot say
which stage caused it; a background thread samples the resident memory of this process
and its children (psutil) every few milliseconds instead and keeps the maximum per
stage. Stages with the same name (one per cut) add up their time and keep the highest
peak. Counters (calibrations run, cache hits) let tests and the bench see work that was
skipped without timing anything.

The meter of the running partition is reachable through :func:`current`, so the
quantizer and the cache can count their work without every call passing it along.
"""

from __future__ import annotations

import contextvars
import logging
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

log = logging.getLogger(__name__)

__all__ = ["Meter", "StageStat", "current", "fmt_bytes", "rss_bytes"]

_SAMPLE_S = 0.02


def rss_bytes() -> int:
    """Resident memory of this process plus its live children, in bytes."""
    import psutil

    me = psutil.Process()
    total = me.memory_info().rss
    for child in me.children(recursive=True):
        try:
            total += child.memory_info().rss
        except psutil.Error:  # a child that just ended
            continue
    return total


def fmt_bytes(n: float) -> str:
    """``1.23 GiB`` / ``456.7 MiB``."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


@dataclass
class StageStat:
    """One stage's totals: seconds, peak RSS seen while it ran, times entered."""

    name: str
    seconds: float = 0.0
    peak_rss: int = 0
    calls: int = 0
    depth: int = 0  # stages open around it when it first ran


class Meter:
    """Per-stage wall time and peak RSS, plus named counters.

    Use as a context manager around the run (starts and stops the sampler thread) and
    ``with meter.stage("calibrate"):`` around each stage.
    """

    def __init__(self, sample_s: float = _SAMPLE_S) -> None:
        self.stats: dict[str, StageStat] = {}
        self.counts: Counter[str] = Counter()
        self.facts: dict[str, int | float | str] = {}  # e.g. the memory estimate, batch
        self.peak_rss = 0
        self._sample_s = sample_s
        self._lock = threading.Lock()
        self._open: list[StageStat] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._token: contextvars.Token | None = None
        self.started = time.perf_counter()
        self.seconds = 0.0

    def __enter__(self) -> Meter:
        self._token = _CURRENT.set(self)
        self.started = time.perf_counter()
        self._sample()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self._sample()
        self.seconds = time.perf_counter() - self.started
        if self._token is not None:
            _CURRENT.reset(self._token)

    def _run(self) -> None:
        while not self._stop.wait(self._sample_s):
            self._sample()

    def _sample(self) -> None:
        try:
            rss = rss_bytes()
        except Exception as e:  # psutil missing or /proc unreadable: times still count
            log.debug("RSS sample failed: %s", e)
            return
        with self._lock:
            self.peak_rss = max(self.peak_rss, rss)
            for st in self._open:
                st.peak_rss = max(st.peak_rss, rss)

    @contextmanager
    def stage(self, name: str) -> Iterator[StageStat]:
        """Time ``name`` and attribute the RSS peak seen meanwhile to it (nestable: an
        outer stage sees its inner stages' peaks too)."""
        with self._lock:
            st = self.stats.setdefault(name, StageStat(name, depth=len(self._open)))
            st.calls += 1
            self._open.append(st)
        self._sample()
        t = time.perf_counter()
        try:
            yield st
        finally:
            self._sample()
            with self._lock:
                st.seconds += time.perf_counter() - t
                self._open.remove(st)
            log.debug("stage %s: %.2fs, peak %s", name, st.seconds, fmt_bytes(st.peak_rss))

    def count(self, what: str, n: int = 1) -> None:
        """Add ``n`` to counter ``what`` (e.g. "calibrations", "cache hits: quantize")."""
        with self._lock:
            self.counts[what] += n

    def export(self) -> dict:
        """Stage totals and counters as plain data (a worker process sends them back)."""
        with self._lock:
            return {"stages": [(s.name, s.seconds, s.peak_rss, s.calls, s.depth)
                               for s in self.stats.values()],
                    "counts": dict(self.counts)}

    def merge(self, exported: dict) -> None:
        """Add another meter's :meth:`export` (a worker's cuts): times and calls add up,
        peaks keep the highest (the worker's own RSS; this meter's whole-run peak
        already counts its live children)."""
        with self._lock:
            for name, seconds, peak, calls, depth in exported["stages"]:
                st = self.stats.setdefault(name, StageStat(name, depth=depth))
                st.seconds += seconds
                st.calls += calls
                st.peak_rss = max(st.peak_rss, peak)
            self.counts.update(exported["counts"])

    def table(self, title: str | None = None):
        """A rich table: stage, calls, seconds, share of the run, peak RSS."""
        from rich.table import Table

        t = Table(title=title, title_justify="left")
        for col in ("stage", "calls", "seconds", "share", "peak RSS"):
            t.add_column(col, justify="left" if col == "stage" else "right")
        total = self.seconds or max(time.perf_counter() - self.started, 1e-9)
        for st in self.stats.values():
            t.add_row("  " * st.depth + st.name, str(st.calls), f"{st.seconds:.1f}",
                      f"{st.seconds / total:.0%}", fmt_bytes(st.peak_rss))
        t.add_row("[b]run[/b]", "", f"{total:.1f}", "100%", fmt_bytes(self.peak_rss))
        if self.counts:
            t.caption = ", ".join(f"{k}: {v}" for k, v in sorted(self.counts.items()))
        return t


class _NullMeter(Meter):
    """The meter outside a partition run: stages cost nothing and nothing is sampled."""

    @contextmanager
    def stage(self, name: str) -> Iterator[StageStat]:
        yield StageStat(name)

    def count(self, what: str, n: int = 1) -> None:
        return None


_NULL = _NullMeter()
_CURRENT: contextvars.ContextVar[Meter] = contextvars.ContextVar("tiersplit_meter",
                                                                 default=_NULL)


def current() -> Meter:
    """The meter of the partition running in this context (a no-op one outside)."""
    return _CURRENT.get()
