"""Progress of a partition run on stderr: one bar over the stages and cuts (with an ETA),
one line for the cut being worked on (its candidates as they are judged).

Disabled, it is a no-op that only logs each step at debug level.
"""

from __future__ import annotations

import logging

log = logging.getLogger(__name__)

__all__ = ["Steps"]


class Steps:
    """A rich progress display (stderr) or a no-op; one tick per finished step."""

    def __init__(self, enabled: bool) -> None:
        self._bar = None
        self._task = None
        self._cut = None
        if enabled:
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )

            self._bar = Progress(TextColumn("{task.description:<44}"), BarColumn(),
                                 TextColumn("{task.completed}/{task.total}"),
                                 TimeElapsedColumn(), TextColumn("ETA"),
                                 TimeRemainingColumn(), console=Console(stderr=True),
                                 transient=True)

    def __enter__(self) -> Steps:
        if self._bar is not None:
            self._bar.start()
            self._task = self._bar.add_task("export", total=2)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self._bar.stop()

    def total(self, n: int) -> None:
        """Steps in the whole run, once the number of cuts is known."""
        if self._bar is not None:
            self._bar.update(self._task, total=n)

    def __call__(self, desc: str, advance: int = 1) -> None:
        """A step finished (``advance`` 1) or the current one says what it does (0)."""
        if self._bar is not None:
            self._bar.update(self._task, description=desc, advance=advance)
        log.debug("partition step: %s", desc)

    def cut(self, cid: str, index: int, count: int) -> None:
        """Start the per-cut line for cut ``index`` of ``count``."""
        if self._bar is None:
            return
        if self._cut is not None:
            self._bar.remove_task(self._cut)
        self._cut = self._bar.add_task(f"  cut {cid} ({index}/{count})", total=None)

    def candidate(self, desc: str) -> None:
        """A candidate of the current cut was judged."""
        if self._bar is not None and self._cut is not None:
            self._bar.update(self._cut, description=f"  {desc}"[:60], advance=1)
        log.debug("partition candidate: %s", desc)
