"""The request front door: validate now, run on a sized pool of workers, report status.

:class:`EdgeClient` owns the threads — request workers and one probe thread per endpoint
— and the endpoints' live state; what happens to one request is
:class:`~edge_agent.runner.RequestRunner`'s job.
"""

from __future__ import annotations

import concurrent.futures as cf
import logging
import threading
import time
import uuid
from collections.abc import Mapping
from typing import Any

import numpy as np

from contract.deadline import Deadline
from edge_agent.breaker import CircuitBreaker
from edge_agent.config import EdgeConfig
from edge_agent.endpoints import Endpoint
from edge_agent.errors import InvalidInput, Overloaded
from edge_agent.policy import Policy
from edge_agent.probes import Prober
from edge_agent.result import InferResult, RequestHandle
from edge_agent.runner import MetricsSink, RequestRunner, Tally
from edge_agent.runtime import EdgeRuntime
from transport.base import ClientLink

__all__ = ["EdgeClient"]

log = logging.getLogger(__name__)

# Requests that may wait per worker before new ones are refused (Overloaded).
_QUEUE_PER_WORKER = 32


class EdgeClient:
    """Runs requests end to end on a sized pool of worker threads.

    Args:
        runtime: the device's ORT sessions.
        policy: the placement policy (its estimates are fed by every request and probe).
        links: endpoint name -> connected client link (residency already applied).
        cfg: the agent config.
        metrics: optional sink for counters (see ``edge_agent.metrics``).
    """

    def __init__(self, runtime: EdgeRuntime, policy: Policy, links: Mapping[str, ClientLink],
                 cfg: EdgeConfig, metrics: MetricsSink | None = None) -> None:
        self.runtime = runtime
        self.policy = policy
        self.cfg = cfg
        regions = {e.name: e.region for e in cfg.endpoints}
        self._eps = {
            name: Endpoint(name, regions.get(name, "default"), link,
                           CircuitBreaker(cfg.retry.breaker_failures, cfg.retry.breaker_open_s))
            for name, link in links.items()
        }
        self.tally = Tally(metrics)
        self.runner = RequestRunner(runtime, policy, self._eps, cfg, self.tally)
        self._prober = self._make_prober(policy)
        self._limit = cfg.runtime.workers * _QUEUE_PER_WORKER
        self._pool = cf.ThreadPoolExecutor(max_workers=cfg.runtime.workers,
                                           thread_name_prefix="edge-request")
        self._capacity = threading.BoundedSemaphore(self._limit)
        self._stop = threading.Event()
        self._started = False
        self._swap_lock = threading.Lock()

    # ---- lifecycle ---------------------------------------------------------------

    def start(self) -> None:
        """Start one probe thread per endpoint (RTT/bandwidth pings, breaker probes)."""
        if self._started:
            raise RuntimeError("EdgeClient already started")
        self._started = True
        if self.cfg.policy.probe_interval_s > 0:
            self._prober.start()

    def close(self, drain_s: float = 10.0) -> None:
        """Finish queued requests (up to ``drain_s``), stop probes, close links."""
        self._stop.set()
        done = threading.Event()
        threading.Thread(target=lambda: (self._pool.shutdown(wait=True), done.set()),
                         daemon=True, name="edge-drain").start()
        if not done.wait(drain_s):
            log.warning("requests still running after %.1fs of drain; closing links", drain_s)
            self._pool.shutdown(wait=False, cancel_futures=True)
        with self._swap_lock:
            self._prober.stop()
        for ep in self._eps.values():
            try:
                ep.link.close()
            except Exception:
                log.exception("closing link to %s failed", ep.name)

    # ---- submission --------------------------------------------------------------

    def submit(self, inputs: Mapping[str, np.ndarray], deadline_ms: float | None = None,
               request_id: str | None = None, cut: str | None = None, *,
               deadline: Deadline | None = None,
               traceparent: str | None = None) -> RequestHandle:
        """Validate the inputs now, run the request on a worker.

        The time budget is ``deadline`` when given (the HTTP API turns the request's
        timeout into one as it arrives), else ``deadline_ms`` from now, else
        ``deadlines.default_ms``. ``request_id`` (default: a fresh UUID) travels to the
        cloud and must be unique among this agent's requests in flight. ``cut`` forces
        that cut for this request (benchmarks and the demo's all-edge/all-cloud
        comparison); the caller checks that overrides are allowed. ``traceparent`` (W3C)
        makes the request's spans part of the caller's trace.

        Raises:
            InvalidInput: inputs do not match the model, or the budget is not a positive
                number (before any work is queued).
            Overloaded: too many requests are already waiting.
        """
        t0 = time.monotonic()
        if self._stop.is_set():
            raise Overloaded("the edge agent is stopping")
        runner = self.runner  # the request runs on this version even if a switch follows
        x = runner.runtime.validate_inputs(inputs)
        if cut is not None and cut not in runner.policy.cuts:
            raise InvalidInput(f"cut {cut!r} is not a cut of this bundle; expected one of "
                               f"{sorted(runner.policy.cuts)}")
        if deadline is None:
            deadline = self._deadline(deadline_ms, t0)
        rid = request_id or uuid.uuid4().hex
        if not self._capacity.acquire(blocking=False):
            raise Overloaded(f"more than {self._limit} requests queued")
        try:
            fut = self._pool.submit(runner.run, rid, x, deadline, t0, cut, traceparent)
        except RuntimeError as e:  # pool shut down between the check and here
            self._capacity.release()
            raise Overloaded("the edge agent is stopping") from e
        fut.add_done_callback(lambda _f: self._capacity.release())
        return RequestHandle(rid, fut)

    def swap(self, runtime: EdgeRuntime, policy: Policy) -> None:
        """Serve from another bundle version's runtime, between requests.

        Requests already submitted keep the runner (runtime, bundle digest) they were
        submitted with, so each finishes on the version it started on and its tail digest
        matches its head; new requests run on ``runtime``. The endpoints (links,
        breakers) are shared; a new ``policy`` (the cuts changed) gets its own probes.
        """
        runner = RequestRunner(runtime, policy, self._eps, self.cfg, self.tally)
        with self._swap_lock:
            old_policy = self.policy
            self.runtime, self.policy, self.runner = runtime, policy, runner
            if policy is not old_policy and not self._stop.is_set():
                self._prober.stop()
                self._prober = self._make_prober(policy)
                if self._started and self.cfg.policy.probe_interval_s > 0:
                    self._prober.start()
        self.tally.reset_window()

    def _make_prober(self, policy: Policy) -> Prober:
        return Prober(self._eps.values(), policy.estimates,
                      interval_s=self.cfg.policy.probe_interval_s,
                      timeout_s=max(1.0, min(5.0, self.cfg.deadlines.default_ms / 1e3)),
                      padded=self.cfg.policy.probe_bytes > 0)

    def links(self) -> list[ClientLink]:
        """The endpoints' links, connected ones first (the updater's channels)."""
        eps = sorted(self._eps.values(), key=lambda e: not e.link.connected)
        return [e.link for e in eps]

    def _deadline(self, deadline_ms: float | None, now: float) -> Deadline:
        budget = deadline_ms if deadline_ms is not None else self.cfg.deadlines.default_ms
        try:
            deadline = Deadline.after_ms(budget, now)
        except (TypeError, ValueError):
            deadline = None
        if deadline is None or deadline.remaining_ms(now) <= 0:
            raise InvalidInput(f"deadline_ms must be a positive number, got {deadline_ms}")
        return deadline

    def infer(self, inputs: Mapping[str, np.ndarray], deadline_ms: float | None = None) \
            -> InferResult:
        """Blocking convenience: submit and wait."""
        return self.submit(inputs, deadline_ms).result()

    # ---- introspection -----------------------------------------------------------

    def endpoint_status(self) -> dict[str, dict[str, Any]]:
        return {name: ep.status() for name, ep in self._eps.items()}

    def counts_by_path(self) -> dict[str, int]:
        """Finished requests by path (``remote``, ``device``, ``fallback``) and ``error``."""
        return self.tally.counts()
