"""Interior cuts in worker processes, as many at once as the memory budget allows.

Once the full model is searched (its calibration ranges are on disk for every head),
the interior cuts depend on nothing but shared, read-only inputs: each one extracts its
own head and tail, searches its own precision and writes its own files. They run in
``spawn`` worker processes (no forked copy of the parent's ONNX Runtime threads); each
worker receives the shared :class:`partitioner.cutwork.CutWork` once, at start. The
parent collects the results in cut order, so the bundle, its specs and its figures are
the ones a sequential run produces; the workers' stage times, peaks and counters are
merged into the run's meter, and their progress reaches the run's progress bar through a
queue.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import pickle
import threading
from collections.abc import Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any

from partitioner import cache as _cache
from partitioner.cutwork import CutResult, CutWork, Progress, Task
from partitioner.errors import MemoryBudgetError
from partitioner.stages import Meter

log = logging.getLogger(__name__)

__all__ = ["run_cuts", "share"]

_work: CutWork | None = None
_queue: Any = None
_cache_at: tuple[Path, str] | None = None


class _QueueProgress:
    """A worker's progress, sent to the parent's bar."""

    def __init__(self, queue: Any) -> None:
        self._q = queue

    def __call__(self, desc: str, advance: int = 1) -> None:
        self._q.put(("step", desc, advance))

    def cut(self, cid: str, index: int, count: int) -> None:
        self._q.put(("cut", cid, index, count))

    def candidate(self, desc: str) -> None:
        self._q.put(("candidate", desc))


def _init(state: Path, queue: Any, cache_at: tuple[Path, str] | None, level: int) -> None:
    global _work, _queue, _cache_at
    logging.basicConfig(level=level)
    with state.open("rb") as f:
        _work = pickle.load(f)
    _queue, _cache_at = queue, cache_at


def _one(task: Task) -> tuple[CutResult, dict]:
    cut, cid, common, index, count = task
    assert _work is not None
    step = _QueueProgress(_queue)
    step.cut(cid, index, count)
    run_cache = None
    if _cache_at is not None:
        try:
            run_cache = _cache.PartitionCache(*_cache_at)
        except OSError as e:
            log.warning("cache directory %s unusable in a worker (%s)", _cache_at[0], e)
    meter = Meter()
    with meter, _cache.bound(run_cache):
        result = _work.run_cut(cut, cid, common, step)
    return result, meter.export()


def _drain(queue: Any, step: Progress) -> None:
    while True:
        msg = queue.get()
        if msg is None:
            return
        kind, *args = msg
        if kind == "step":
            step(*args)
        elif kind == "cut":
            step.cut(*args)
        else:
            step.candidate(*args)


def share(work: CutWork) -> Path | None:
    """Write ``work`` where the workers read it; None when it cannot be sent to another
    process (e.g. a user metric that is a lambda): then the cuts run here, in order.

    The shared state goes through a file, not the workers' start-up pipe: a model's
    worth of bytes in that pipe would block the parent for good if a worker died before
    reading it, and every worker would hold a second pickled copy meanwhile."""
    state = work.scratch / ".cut-work.pickle"
    try:
        with state.open("wb") as f:
            pickle.dump(work, f, protocol=pickle.HIGHEST_PROTOCOL)
    except (pickle.PicklingError, AttributeError, TypeError) as e:
        log.warning("cuts run one after another: their shared state cannot be sent to "
                    "worker processes (%s)", e)
        state.unlink(missing_ok=True)
        return None
    return state


def run_cuts(state: Path, tasks: Sequence[Task], jobs: int, step: Progress, meter: Meter,
             run_cache: _cache.PartitionCache | None) -> Iterator[CutResult]:
    """Run ``tasks`` on ``jobs`` worker processes over the work :func:`share` wrote to
    ``state``; yield their results in task order.

    Raises:
        MemoryBudgetError: a worker died (the system ran out of memory).
        PartitionError: whatever a cut raised, as the sequential run would.
    """
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    drain = threading.Thread(target=_drain, args=(queue, step), name="cut-progress",
                             daemon=True)
    drain.start()
    cache_at = None if run_cache is None else (run_cache.dir.parent, run_cache.dir.name)
    level = logging.getLogger().getEffectiveLevel()
    meter.count("cut workers", jobs)
    ex = ProcessPoolExecutor(max_workers=jobs, mp_context=ctx, initializer=_init,
                             initargs=(state, queue, cache_at, level))
    try:
        futures = [ex.submit(_one, t) for t in tasks]
        for fut in futures:
            try:
                result, stats = fut.result()
            except BrokenProcessPool as e:
                raise MemoryBudgetError(
                    f"a cut worker process died ({e}); the machine likely ran out of "
                    "memory — rerun with --jobs 1 or a --max-memory that fits") from e
            meter.merge(stats)
            yield result
    finally:
        ex.shutdown(wait=True, cancel_futures=True)
        queue.put(None)
        drain.join()
        queue.close()
        state.unlink(missing_ok=True)
