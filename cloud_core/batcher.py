"""Dynamic batching per queue key, in the style of Triton's dynamic batcher.

The core keys queues by (model, version, cut, per-sample shapes): requests are joined
along the batch dimension only, so two requests whose other dimensions differ (a dynamic
sequence axis, say) never share a batch.

Mechanism first (pure, tested without threads): :func:`take_batch` pops expired entries
and the next batch from a queue; :func:`ready_at` says when a partial batch should go.
The driver, :class:`Batcher`, runs one named dispatcher thread per queue and a sized
executor shared by all queues (with a single worker the dispatcher runs its batch itself:
it could not form another one before the only worker is free anyway, and the hand-off
to a pool thread would cost a thread switch per batch):

- A dispatcher forms a batch only once a worker slot is free, so while the backend is
  busy requests accumulate and the next batch is bigger (batching that adapts to load),
  and the per-queue bound turns overload into OVERLOADED replies, not memory growth.
- With a free worker, the first request of a batch waits at most ``max_delay`` for
  company, unless ``max_batch`` samples are already queued or no request has arrived for
  ``idle_gap`` (closed-loop senders arrive in bursts; after one, waiting is pure latency).
  With ``adaptive``, a queue where waiting has not gathered company lately stops waiting
  (:class:`WaitAdvisor`), so a lone sender is not taxed the queue delay on every call.
- Entries whose deadline (monotonic, :class:`contract.deadline.Deadline`) has passed
  are dropped when a batch is formed and answered DEADLINE_EXCEEDED through
  ``on_expired``.
- ``stop(grace)`` refuses new entries, flushes queues without waiting for company,
  lets running batches finish within the grace period, then fails what is left with
  UNAVAILABLE.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Hashable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from cloud_core.errors import Overloaded, Unavailable
from contract.deadline import Deadline

__all__ = ["Batcher", "Entry", "WaitAdvisor", "ready_at", "take_batch"]

log = logging.getLogger(__name__)


@dataclass(slots=True)
class Entry:
    """One queued request: ``items`` samples, its ``deadline``, an opaque payload."""

    items: int
    deadline: Deadline
    payload: Any
    enqueued: float = field(default_factory=time.monotonic)


def take_batch(queue: deque[Entry], now: float, max_batch: int
               ) -> tuple[list[Entry], list[Entry]]:
    """Pop the next batch from the head of ``queue``.

    Expired entries (deadline reached at ``now``, monotonic seconds) met on the way are
    popped too and returned separately. A batch holds whole requests, FIFO, at most ``max_batch``
    samples (a single request is never split).

    Returns:
        (batch, expired)
    """
    batch: list[Entry] = []
    expired: list[Entry] = []
    total = 0
    while queue:
        head = queue[0]
        if head.deadline.expired(now):
            expired.append(queue.popleft())
            continue
        if batch and total + head.items > max_batch:
            break
        batch.append(queue.popleft())
        total += head.items
        if total >= max_batch:
            break
    return batch, expired


def ready_at(queue: deque[Entry], max_batch: int, max_delay: float,
             idle_gap: float | None = None) -> float:
    """Monotonic time at which the head batch should be sent (now if it is full).

    A partial batch goes when its first request has waited ``max_delay``, or earlier once
    no request has arrived for ``idle_gap`` (the burst is over: waiting longer only adds
    latency). ``idle_gap=None`` waits the whole delay, like Triton's dynamic batcher.
    """
    if not queue:
        return float("inf")
    if sum(e.items for e in queue) >= max_batch:
        return 0.0
    due = queue[0].enqueued + max_delay
    if idle_gap is not None:
        due = min(due, queue[-1].enqueued + idle_gap)
    return due


class WaitAdvisor:
    """Learns, per queue, whether waiting for company pays off.

    Waiting ``max_delay`` for more requests only helps when other senders are active; with
    one sender (or sparse traffic) it is pure added latency. The advisor keeps a moving
    score of "the last waits gathered at least one more request"; below ``threshold`` a
    partial batch goes at once, except every ``probe_every``-th batch, which waits to
    find out whether company has appeared. Pure: no clock, no threads.
    """

    __slots__ = ("batches", "probe_every", "score", "threshold")

    def __init__(self, threshold: float = 0.1, probe_every: int = 16) -> None:
        self.threshold = threshold
        self.probe_every = probe_every
        self.score = 1.0
        self.batches = 0

    def should_wait(self) -> bool:
        self.batches += 1
        return self.score >= self.threshold or self.batches % self.probe_every == 0

    def record(self, gained: bool) -> None:
        self.score = 0.8 * self.score + 0.2 * (1.0 if gained else 0.0)


Key = Hashable
Execute = Callable[[Key, list[Entry]], None]


class _Queue:
    def __init__(self, key: Key, bound: int) -> None:
        self.key = key
        self.bound = bound
        self.entries: deque[Entry] = deque()
        self.items = 0  # samples in ``entries``
        self.cond = threading.Condition()
        self.running = 0  # batches of this queue executing now
        self.retired = False
        self.thread: threading.Thread | None = None
        self.advisor = WaitAdvisor()


class Batcher:
    """Queues by key, dispatcher threads, and a sized executor.

    Args:
        execute: runs one batch (called in an executor worker); must answer every entry.
        on_expired: answers one entry dropped for its deadline (any thread).
        on_failed: answers one entry that will never run (shutdown/retire), with the error.
        on_depth: reports a queue's depth after each change (metrics).
    """

    def __init__(self, *, max_batch: int, max_delay_s: float, max_queue: int, workers: int,
                 execute: Execute, on_expired: Callable[[Entry], None],
                 on_failed: Callable[[Entry, Exception], None],
                 idle_gap_s: float | None = None, adaptive: bool = False,
                 on_depth: Callable[[Key, int], None] = lambda k, n: None) -> None:
        self.max_batch = max_batch
        self.max_delay = max_delay_s
        self.idle_gap = idle_gap_s
        self.adaptive = adaptive
        self.waits = 0  # batches that waited for company (observability, tests)
        self.max_queue = max_queue
        self.workers = workers
        self._execute = execute
        self._on_expired = on_expired
        self._on_failed = on_failed
        self._on_depth = on_depth
        self._queues: dict[Key, _Queue] = {}
        self._lock = threading.Lock()
        self._slots = threading.Semaphore(workers)
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="cloud-worker")
        self._closing = False
        self._flush = False
        self._busy = 0  # batches executing, all queues
        self._busy_cond = threading.Condition()

    # -- submit ----------------------------------------------------------------------
    def submit(self, key: Key, entry: Entry) -> None:
        """Queue ``entry``; raises Overloaded when full, Unavailable when stopping."""
        if self._closing:
            raise Unavailable("cloud core is shutting down; send elsewhere or run locally")
        q = self._queue(key)
        with q.cond:
            if q.retired:
                raise Unavailable("that model version is being unloaded")
            if len(q.entries) >= q.bound:
                raise Overloaded(f"queue for {key} holds {len(q.entries)} requests "
                                 f"(max_queue {q.bound}); back off or run locally")
            q.entries.append(entry)
            q.items += entry.items
            depth = len(q.entries)
            # Wake the dispatcher only when it has something new to decide: the queue was
            # empty (it sleeps until an entry arrives) or a full batch is now waiting.
            # Other arrivals only push a partial batch's idle-gap deadline later, which it
            # finds on its own when its timed wait ends; waking it per request would cost
            # a thread switch per request.
            if depth == 1 or q.items >= self.max_batch:
                q.cond.notify()
        self._on_depth(key, depth)

    def _queue(self, key: Key) -> _Queue:
        q = self._queues.get(key)  # one atomic read: the common case takes no lock
        if q is not None and not q.retired:
            return q
        with self._lock:
            q = self._queues.get(key)
            if q is None or q.retired:
                q = _Queue(key, self.max_queue)
                self._queues[key] = q
                q.thread = threading.Thread(target=self._dispatch, args=(q,), daemon=True,
                                            name=_thread_name(key))
                q.thread.start()
            return q

    # -- load figures ----------------------------------------------------------------
    def depth(self) -> int:
        with self._lock:
            queues = list(self._queues.values())
        return sum(len(q.entries) for q in queues)

    def depths(self) -> dict[Key, int]:
        """Requests waiting, by queue key (a snapshot; metrics read it when scraped)."""
        with self._lock:
            queues = list(self._queues.values())
        return {q.key: len(q.entries) for q in queues}

    @property
    def busy(self) -> int:
        return self._busy

    # -- dispatcher ------------------------------------------------------------------
    def _dispatch(self, q: _Queue) -> None:
        while True:
            with q.cond:
                while not q.entries and not (q.retired or self._closing):
                    q.cond.wait()
                if not q.entries:
                    return
            # Wait for a free worker before choosing the batch: while all workers are busy
            # the queue grows and the next batch is larger.
            while not self._slots.acquire(timeout=0.05):
                if q.retired:
                    break
            else:
                self._send_one(q)
                continue
            return  # retired while waiting: entries were failed by retire()

    def _send_one(self, q: _Queue) -> None:
        with q.cond:
            may_wait = q.advisor.should_wait() if self.adaptive else True
            before = len(q.entries)
            waited = False
            while True:
                wake = ready_at(q.entries, self.max_batch, self.max_delay, self.idle_gap)
                now = time.monotonic()
                if wake <= now or self._flush or q.retired or not may_wait:
                    break
                waited = True
                q.cond.wait(wake - now)
            if waited:
                self.waits += 1
                q.advisor.record(len(q.entries) > before)
            batch, expired = take_batch(q.entries, time.monotonic(), self.max_batch)
            q.items -= sum(e.items for e in batch) + sum(e.items for e in expired)
            depth = len(q.entries)
            if batch:
                q.running += 1
        self._on_depth(q.key, depth)
        for e in expired:
            self._safe(self._on_expired, e)
        if not batch:
            self._slots.release()
            return
        with self._busy_cond:
            self._busy += 1
        if self.workers == 1:
            # One worker: the dispatcher could not form another batch before this one
            # ends anyway (it waits for the only slot), so it runs the batch itself and
            # saves a thread hand-off per batch.
            self._run(q, batch)
            return
        try:
            self._pool.submit(self._run, q, batch)
        except RuntimeError as e:  # executor already shut down
            self._finish(q)
            for entry in batch:
                self._safe(self._on_failed, entry, Unavailable(f"executor stopped: {e}"))

    def _run(self, q: _Queue, batch: list[Entry]) -> None:
        try:
            self._execute(q.key, batch)
        except Exception:  # execute answers its entries; this is a bug guard
            log.exception("batch execution for %s raised", q.key)
        finally:
            self._finish(q)

    def _finish(self, q: _Queue) -> None:
        with q.cond:
            q.running -= 1
            q.cond.notify_all()
        self._slots.release()
        with self._busy_cond:
            self._busy -= 1
            self._busy_cond.notify_all()

    def _safe(self, fn: Callable[..., None], *args: Any) -> None:
        try:
            fn(*args)
        except Exception:
            log.exception("reply callback failed")

    # -- retire / stop ---------------------------------------------------------------
    def retire(self, match: Callable[[Key], bool], timeout: float) -> None:
        """Close queues whose key matches (an unloaded version): queued entries fail with
        Unavailable, running batches finish (up to ``timeout``)."""
        with self._lock:
            victims = [q for k, q in self._queues.items() if match(k)]
            for q in victims:
                del self._queues[q.key]
        end = time.monotonic() + timeout
        for q in victims:
            with q.cond:
                q.retired = True
                left = list(q.entries)
                q.entries.clear()
                q.items = 0
                q.cond.notify_all()
            self._on_depth(q.key, 0)
            for e in left:
                self._safe(self._on_failed, e, Unavailable("model version unloaded"))
            with q.cond:
                while q.running and time.monotonic() < end:
                    q.cond.wait(max(0.0, end - time.monotonic()))

    def stop(self, grace: float) -> None:
        """Refuse new entries, run what is queued and in flight within ``grace`` seconds,
        fail the rest with Unavailable, and shut the executor down."""
        self._closing = True
        self._flush = True
        end = time.monotonic() + grace
        with self._lock:
            queues = list(self._queues.values())
        for q in queues:
            with q.cond:
                q.cond.notify_all()
        # Drain: queued entries keep being dispatched (without batching delay).
        while time.monotonic() < end:
            if not any(q.entries for q in queues) and self._busy == 0:
                break
            with self._busy_cond:
                self._busy_cond.wait(0.02)
        for q in queues:
            with q.cond:
                q.retired = True
                left = list(q.entries)
                q.entries.clear()
                q.items = 0
                q.cond.notify_all()
            for e in left:
                self._safe(self._on_failed, e,
                           Unavailable("cloud core shut down before this request ran"))
        for q in queues:
            if q.thread is not None:
                q.thread.join(timeout=1.0)
        self._pool.shutdown(wait=max(0.0, end - time.monotonic()) > 0, cancel_futures=False)


def _thread_name(key: Key) -> str:
    """``batcher-model/version/cut/shapes``, shapes written ``3x224x224``."""
    parts = key if isinstance(key, tuple) else (key,)
    return "batcher-" + "/".join(
        ",".join("x".join(map(str, s)) for s in p) if isinstance(p, tuple) else str(p)
        for p in parts)
