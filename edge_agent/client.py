"""Requests to cloud cores: deadlines, failover, circuit breakers, local fallback.

Each request follows one path: the policy picks a cut and an endpoint order; the int8
head runs on the device; the crossing tensors go to the first usable endpoint; on a
timeout, a lost peer or an error reply the same tensors go to the next endpoint if the
deadline leaves time, and otherwise the device finishes the request itself with the int8
full model on the inputs it kept. Every request therefore ends in outputs — or, only if
local execution itself fails, in an explicit :class:`InferenceFailed`.

The circuit breaker (:class:`CircuitBreaker`) is pure state; the threads that drive it
(request workers, one probe thread per endpoint) live in :class:`EdgeClient`.
"""

from __future__ import annotations

import concurrent.futures as cf
import enum
import logging
import math
import random
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from contract.bundle import EDGE_CUT
from edge_agent.config import EdgeConfig
from edge_agent.errors import InferenceFailed, InvalidInput, Overloaded
from edge_agent.policy import Choice, Policy
from edge_agent.runtime import EdgeRuntime
from transport import wire
from transport.base import ClientLink
from transport.errors import LinkClosed, LinkTimeout, TransportError
from transport.messages import Reply, Request, Status

__all__ = [
    "LOCAL_PATH",
    "BreakerState",
    "CircuitBreaker",
    "EdgeClient",
    "InferResult",
    "RequestHandle",
]

log = logging.getLogger(__name__)

#: ``InferResult.path`` when the device finished a request after the cloud failed it.
LOCAL_PATH = "local"

# Error replies that say this endpoint cannot serve us at all (count toward its breaker);
# OVERLOADED and INVALID_INPUT are about one request, not the endpoint's health.
_ENDPOINT_FAULTS = {Status.UNAVAILABLE, Status.INTERNAL, Status.VERSION_MISMATCH,
                    Status.MODEL_NOT_FOUND, Status.CUT_NOT_FOUND, Status.UNAUTHORIZED}


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


@dataclass
class InferResult:
    """Outputs of one request and how they were produced.

    Attributes:
        path: the cut id the cloud served (``k3``, ``cloud``), ``edge`` when the policy
            ran everything on the device, or ``local`` when the device finished the
            request after the cloud failed it.
        cut: the cut the policy chose (differs from ``path`` after a fallback).
        endpoint: the endpoint that answered (None on the device).
        timings: milliseconds: ``head``, ``encode``, ``remote`` (send to reply), ``queue``
            and ``compute`` (cloud-reported), ``local``, ``total``.
        attempts: per endpoint tried, ``{"endpoint", "outcome"}``.
        deadline_missed: outputs arrived after the deadline (local fallback still
            answers: a late answer beats a lost request).
    """

    request_id: str
    outputs: dict[str, np.ndarray]
    path: str
    cut: str
    endpoint: str | None = None
    timings: dict[str, float] = field(default_factory=dict)
    attempts: list[dict[str, str]] = field(default_factory=list)
    deadline_missed: bool = False
    explored: bool = False
    bytes_sent: int = 0


class RequestHandle:
    """Work in flight: an id now, the outcome with :meth:`result` later."""

    def __init__(self, request_id: str, future: cf.Future[InferResult]) -> None:
        self.request_id = request_id
        self.future = future

    def result(self, timeout: float | None = None) -> InferResult:
        """Block until the request ends.

        Raises:
            InferenceFailed: neither the cloud nor the device produced outputs.
            TimeoutError: ``timeout`` passed first (the request keeps running).
        """
        try:
            return self.future.result(timeout)
        except cf.TimeoutError as e:
            raise TimeoutError(f"request {self.request_id} still running after {timeout}s") \
                from e

    def done(self) -> bool:
        return self.future.done()

    def add_done_callback(self, fn: Callable[[RequestHandle], Any]) -> None:
        self.future.add_done_callback(lambda _f: fn(self))


@dataclass
class _Endpoint:
    name: str
    region: str
    link: ClientLink
    breaker: CircuitBreaker
    lock: threading.Lock = field(default_factory=threading.Lock)
    inflight: int = 0
    inflight_bytes: int = 0  # wire bytes of requests sent and not yet answered
    sends: int = 0
    ok: int = 0
    failed: int = 0
    last_error: str = ""


class _Metrics:
    """What :class:`EdgeClient` reports; the agent plugs Prometheus in (no-op default)."""

    def request(self, path: str, outcome: str, seconds: float) -> None: ...

    def failover(self, endpoint: str, reason: str) -> None: ...


class EdgeClient:
    """Runs requests end to end on a sized pool of worker threads.

    Args:
        runtime: the device's ORT sessions.
        policy: the placement policy (fed with every observation made here).
        links: endpoint name -> connected client link (residency already applied).
        cfg: the agent config.
        metrics: optional sink for counters (see ``edge_agent.metrics``).
    """

    def __init__(self, runtime: EdgeRuntime, policy: Policy, links: Mapping[str, ClientLink],
                 cfg: EdgeConfig, metrics: _Metrics | None = None) -> None:
        self.runtime = runtime
        self.policy = policy
        self.cfg = cfg
        self.metrics = metrics or _Metrics()
        regions = {e.name: e.region for e in cfg.endpoints}
        self._eps = {
            name: _Endpoint(name, regions.get(name, "default"), link,
                            CircuitBreaker(cfg.retry.breaker_failures, cfg.retry.breaker_open_s))
            for name, link in links.items()
        }
        bundle = runtime.bundle
        self._model, self._version, self._digest = bundle.name, bundle.version, bundle.digest
        self._outputs = [t.name for t in runtime.manifest.outputs]
        self._pool = cf.ThreadPoolExecutor(max_workers=cfg.runtime.workers,
                                           thread_name_prefix="edge-request")
        self._capacity = threading.BoundedSemaphore(cfg.runtime.workers * 32)
        self._stop = threading.Event()
        self._probes: list[threading.Thread] = []
        self._counts_lock = threading.Lock()
        self.counts: dict[str, int] = {}
        self._wire_samples: dict[str, int] = {}
        self._started = False

    # ---- lifecycle ---------------------------------------------------------------

    def start(self) -> None:
        """Start one probe thread per endpoint (RTT/bandwidth pings, breaker probes)."""
        if self._started:
            raise RuntimeError("EdgeClient already started")
        self._started = True
        if self.cfg.policy.probe_interval_s <= 0:
            return
        for ep in self._eps.values():
            t = threading.Thread(target=self._probe_loop, args=(ep,), daemon=True,
                                 name=f"edge-probe-{ep.name}")
            t.start()
            self._probes.append(t)

    def close(self, drain_s: float = 10.0) -> None:
        """Finish queued requests (up to ``drain_s``), stop probes, close links."""
        self._stop.set()
        done = threading.Event()
        threading.Thread(target=lambda: (self._pool.shutdown(wait=True), done.set()),
                         daemon=True, name="edge-drain").start()
        if not done.wait(drain_s):
            log.warning("requests still running after %.1fs of drain; closing links", drain_s)
            self._pool.shutdown(wait=False, cancel_futures=True)
        for t in self._probes:
            t.join(timeout=5)
        for ep in self._eps.values():
            try:
                ep.link.close()
            except Exception:
                log.exception("closing link to %s failed", ep.name)

    # ---- submission --------------------------------------------------------------

    def submit(self, inputs: Mapping[str, np.ndarray], deadline_ms: float | None = None,
               request_id: str | None = None, cut: str | None = None) -> RequestHandle:
        """Validate the inputs now, run the request on a worker.

        ``request_id`` (default: a fresh UUID) travels to the cloud and must be unique
        among this agent's requests in flight. ``cut`` forces that cut for this request
        (benchmarks and the demo's all-edge/all-cloud comparison); the caller checks
        that overrides are allowed.

        Raises:
            InvalidInput: inputs do not match the model (before any work is queued).
            Overloaded: too many requests are already waiting.
        """
        if self._stop.is_set():
            raise Overloaded("the edge agent is stopping")
        x = self.runtime.validate_inputs(inputs)
        if cut is not None and cut not in self.policy.cuts:
            raise InvalidInput(f"cut {cut!r} is not a cut of this bundle; expected one of "
                               f"{sorted(self.policy.cuts)}")
        budget = float(deadline_ms if deadline_ms is not None else self.cfg.deadlines.default_ms)
        if not math.isfinite(budget) or budget <= 0:
            raise InvalidInput(f"deadline_ms must be a positive number, got {deadline_ms}")
        rid = request_id or uuid.uuid4().hex
        if not self._capacity.acquire(blocking=False):
            raise Overloaded(f"more than {self.cfg.runtime.workers * 32} requests queued")
        deadline = time.monotonic() + budget / 1e3
        try:
            fut = self._pool.submit(self._process, rid, x, deadline, time.monotonic(), cut)
        except RuntimeError as e:  # pool shut down between the check and here
            self._capacity.release()
            raise Overloaded("the edge agent is stopping") from e
        fut.add_done_callback(lambda _f: self._capacity.release())
        return RequestHandle(rid, fut)

    def infer(self, inputs: Mapping[str, np.ndarray], deadline_ms: float | None = None) \
            -> InferResult:
        """Blocking convenience: submit and wait."""
        return self.submit(inputs, deadline_ms).result()

    # ---- one request -------------------------------------------------------------

    def _refresh_availability(self) -> None:
        for ep in self._eps.values():
            self.policy.set_available(ep.name, ep.link.connected and ep.breaker.usable())

    def _process(self, rid: str, x: dict[str, np.ndarray], deadline: float,
                 t0: float, force: str | None = None) -> InferResult:
        batch = next(iter(x.values())).shape[0]
        self._refresh_availability()
        choice = self.policy.decide(batch, force)
        timings: dict[str, float] = {}
        attempts: list[dict[str, str]] = []
        if choice.cut_id == EDGE_CUT:
            return self._finish_local(rid, x, choice, EDGE_CUT, timings, attempts, deadline, t0)
        try:
            tensors, timings["head"] = self.runtime.run_head(choice.cut_id, x)
        except Exception as e:  # ORT failure of a head: the full model may still work
            log.warning("head %s failed (%s); finishing request locally", choice.cut_id,
                        type(e).__name__)
            attempts.append({"endpoint": "-", "outcome": f"head failed: {type(e).__name__}"})
            return self._finish_local(rid, x, choice, LOCAL_PATH, timings, attempts, deadline,
                                      t0)
        reply_res = self._remote(rid, choice, tensors, batch, deadline, timings, attempts)
        if reply_res is not None:
            reply, ep_name = reply_res
            total = (time.monotonic() - t0) * 1e3
            timings["total"] = total
            self._count(choice.cut_id)
            self.metrics.request(choice.cut_id, "ok", total / 1e3)
            return InferResult(rid, dict(reply.tensors), choice.cut_id, choice.cut_id,
                               ep_name, timings, attempts, time.monotonic() > deadline,
                               choice.explored,
                               int(self.policy.wire_bytes(choice.cut_id) * batch))
        return self._finish_local(rid, x, choice, LOCAL_PATH, timings, attempts, deadline, t0)

    def _remote(self, rid: str, choice: Choice, tensors: dict[str, np.ndarray], batch: int,
                deadline: float, timings: dict[str, float],
                attempts: list[dict[str, str]]) -> tuple[Reply, str] | None:
        reserve_ms = self.cfg.deadlines.local_reserve * self.policy.edge_ms(batch)
        tried = 0
        sample_wire = self._want_wire_sample(choice.cut_id)
        for name in choice.endpoints:
            if tried >= self.cfg.retry.max_endpoints:
                break
            ep = self._eps.get(name)
            if ep is None:
                continue
            budget_ms = (deadline - time.monotonic()) * 1e3 - reserve_ms
            if budget_ms < self.cfg.deadlines.min_remote_ms:
                attempts.append({"endpoint": name, "outcome": "skipped: no time left"})
                break
            if not ep.link.connected or not ep.breaker.allow():
                attempts.append({"endpoint": name, "outcome": "skipped: unavailable"})
                continue
            tried += 1
            req = Request(request_id=rid if tried == 1 else f"{rid}.{tried}",
                          agent_id=self.cfg.agent_id, model=self._model, version=self._version,
                          digest=self._digest, cut=choice.cut_id,
                          deadline=time.time() + budget_ms / 1e3, tensors=tensors,
                          codec=self.cfg.codec)
            if sample_wire:
                sample_wire = False
                self._sample_wire(choice.cut_id, req, batch, timings)
            outcome = self._send(ep, req, budget_ms, batch, timings)
            if isinstance(outcome, Reply):
                attempts.append({"endpoint": name, "outcome": "ok"})
                return outcome, name
            label, detail = outcome
            attempts.append({"endpoint": name, "outcome": label, "detail": detail})
            self.metrics.failover(name, label.split(":")[0])
            self.policy.set_available(name, ep.link.connected and ep.breaker.usable())
        return None

    def _send(self, ep: _Endpoint, req: Request, budget_ms: float, batch: int,
              timings: dict[str, float]) -> Reply | tuple[str, str]:
        """One attempt; the Reply on success, else (outcome label, detail)."""
        own_bytes = int(self.policy.wire_bytes(req.cut) * batch)
        with ep.lock:
            solo = ep.inflight == 0
            sends_before = ep.sends
            ahead_bytes = ep.inflight_bytes
            ep.inflight += 1
            ep.inflight_bytes += own_bytes
            ep.sends += 1
        t_send = time.monotonic()
        try:
            try:
                fut = ep.link.submit(req)
                reply = fut.result(timeout=budget_ms / 1e3 + 0.25)
            except (cf.TimeoutError, LinkTimeout):
                return self._fail(ep, "timeout", breaker=True)
            except LinkClosed:
                return self._fail(ep, "peer lost", breaker=True)
            except TransportError as e:
                return self._fail(ep, f"transport: {e.reason}", breaker=True, detail=str(e))
        finally:
            with ep.lock:
                ep.inflight -= 1
                ep.inflight_bytes -= own_bytes
                solo = solo and ep.sends == sends_before + 1
        elapsed = (time.monotonic() - t_send) * 1e3
        if not reply.ok:
            status = Status(reply.status)
            if status is Status.OVERLOADED:  # the queue is full: learn it, don't break
                self.policy.observe_overload(ep.name, elapsed, batch)
            return self._fail(ep, f"status: {status.name.lower()}",
                              breaker=status in _ENDPOINT_FAULTS, detail=reply.error)
        missing = [n for n in self._outputs if n not in reply.tensors]
        if missing:
            return self._fail(ep, "status: bad reply", breaker=True,
                              detail=f"reply lacks outputs {missing}")
        ep.breaker.record_success()
        with ep.lock:
            ep.ok += 1
        down = sum(int(a.nbytes) for a in reply.tensors.values())
        network = elapsed - self.policy.encode_ms(req.cut) * batch
        self.policy.observe_reply(ep.name, req.cut, up_bytes=own_bytes, down_bytes=down,
                                  elapsed_ms=network, queue_ms=reply.queue_ms,
                                  compute_ms=reply.compute_ms, solo=solo, batch=batch,
                                  ahead_bytes=ahead_bytes)
        timings.update(remote=elapsed, queue=reply.queue_ms, compute=reply.compute_ms)
        return reply

    def _fail(self, ep: _Endpoint, outcome: str, *, breaker: bool,
              detail: str = "") -> tuple[str, str]:
        if breaker:
            ep.breaker.record_failure()
        else:
            ep.breaker.release()
        detail = detail[:200]
        with ep.lock:
            ep.failed += 1
            ep.last_error = f"{outcome} {detail}".strip()
        log.info("request to %s failed: %s", ep.name, outcome)
        return outcome, detail

    def _want_wire_sample(self, cut_id: str) -> bool:
        """Measure exact wire bytes for the first requests of a cut, then 1 in 8."""
        with self._counts_lock:
            n = self._wire_samples.get(cut_id, 0)
            self._wire_samples[cut_id] = n + 1
        return n < 3 or n % 8 == 0

    def _sample_wire(self, cut_id: str, req: Request, batch: int,
                     timings: dict[str, float]) -> None:
        t = time.perf_counter()
        try:
            nbytes = wire.wire_bytes(wire.encode(req))
        except TransportError:
            return  # the link will report the same problem on submit
        ms = (time.perf_counter() - t) * 1e3
        timings["encode"] = ms
        self.policy.observe_wire(cut_id, nbytes, ms, batch)

    def _finish_local(self, rid: str, x: dict[str, np.ndarray], choice: Choice, path: str,
                      timings: dict[str, float], attempts: list[dict[str, str]],
                      deadline: float, t0: float) -> InferResult:
        try:
            outputs, timings["local"] = self.runtime.run_full(x)
        except Exception as e:
            total = (time.monotonic() - t0) * 1e3
            self.metrics.request(path, "error", total / 1e3)
            self._count("error")
            log.error("local execution failed for request %s: %s", rid, type(e).__name__)
            raise InferenceFailed(f"request {rid}: the cloud did not answer "
                                  f"({attempts or 'not tried'}) and local execution failed: "
                                  f"{type(e).__name__}: {e}") from e
        total = (time.monotonic() - t0) * 1e3
        timings["total"] = total
        self._count(path)
        self.metrics.request(path, "ok" if path == EDGE_CUT else "fallback", total / 1e3)
        return InferResult(rid, outputs, path, choice.cut_id, None, timings, attempts,
                           time.monotonic() > deadline, choice.explored)

    def _count(self, path: str) -> None:
        with self._counts_lock:
            self.counts[path] = self.counts.get(path, 0) + 1

    # ---- probes ------------------------------------------------------------------

    def _probe_loop(self, ep: _Endpoint) -> None:
        """Ping ``ep`` while its link is idle: an empty ping (RTT) then a padded one
        (bandwidth). A failed ping counts against the breaker; a good one may close it."""
        rng = random.Random(hash(ep.name))
        interval = self.cfg.policy.probe_interval_s
        while not self._stop.is_set():
            try:
                if ep.link.connected and ep.inflight == 0:
                    self._probe(ep)
            except Exception:  # a probe must never kill its thread
                log.exception("probe of %s failed unexpectedly", ep.name)
            self._stop.wait(interval * (0.75 + 0.5 * rng.random()))

    def _probe(self, ep: _Endpoint) -> None:
        timeout = max(1.0, min(5.0, self.cfg.deadlines.default_ms / 1e3))
        for payload in (0, self.policy.probe_bytes(ep.name)):
            with ep.lock:
                if ep.inflight:
                    return
                ep.sends += 1  # a request now in flight must not count as solo
            try:
                res = ep.link.ping(payload_bytes=payload, timeout=timeout)
            except TransportError as e:
                ep.breaker.record_failure()
                with ep.lock:
                    ep.last_error = f"ping: {e.reason}"
                return
            ep.breaker.probe_ok()
            queue = res.load.queue_ms if res.load is not None else None
            self.policy.observe_ping(ep.name, payload, res.rtt_ms, queue)
            if payload == 0 and not self.cfg.policy.probe_bytes:
                return

    # ---- introspection -----------------------------------------------------------

    def endpoint_status(self) -> dict[str, dict[str, Any]]:
        out = {}
        for ep in self._eps.values():
            out[ep.name] = {"region": ep.region, "connected": ep.link.connected,
                            "breaker": ep.breaker.state.value, "breaker_opened": ep.breaker.opened,
                            "inflight": ep.inflight, "ok": ep.ok, "failed": ep.failed,
                            "last_error": ep.last_error}
        return out

    def counts_by_path(self) -> dict[str, int]:
        with self._counts_lock:
            return dict(self.counts)
