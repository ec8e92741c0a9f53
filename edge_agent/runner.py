"""One request, end to end: head on the device, tensors to a cloud core, or the device.

Each request follows one path. With the cascade on, the device's int8 full model answers
first and its answer stands when it is confident enough. Otherwise the policy picks a
cut and an endpoint order (``edge``: the device's answer is used as it is); the int8
head runs on the device; the crossing tensors go to
the first usable endpoint; on a timeout, a lost peer or an error reply the same tensors
go to the next endpoint if the deadline leaves time, and otherwise the device finishes
the request itself without redoing work: from the cascade's answer if it has one, else
from the head's tensors with the cut's device tail if the bundle ships one, else with
the int8 full model on the inputs it kept. Every request therefore ends in outputs — or,
only if local execution itself fails, in an explicit :class:`InferenceFailed`.

Each step returns what it did: an :class:`~edge_agent.result.Attempt` per endpoint
tried, the outputs and their timings at the end. What an attempt teaches (bytes on the
wire, link speed, cloud queueing) goes to the agent's estimates as it happens.

Each request is one trace (when ``tracing.enabled``): a ``request`` span under the
application's traceparent, with ``head``, ``network`` (send to reply; its traceparent
travels on the wire so the cloud core's spans hang below it) and its ``encode``, and
``device`` for work finished on the device; every span names the cut and the version.
"""

from __future__ import annotations

import concurrent.futures as cf
import logging
import threading
import time
from collections import deque
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from contract.bundle import EDGE_CUT
from contract.deadline import Deadline
from contract.tracing import Span, Tracer, current_traceparent, tracer_for
from edge_agent.cascade import Cascade
from edge_agent.config import EdgeConfig
from edge_agent.endpoints import Endpoint, Flight
from edge_agent.errors import InferenceFailed
from edge_agent.policy import Choice, Policy
from edge_agent.result import DEVICE_PATH, FALLBACK_PATH, REMOTE_PATH, Attempt, InferResult
from edge_agent.runtime import EdgeRuntime
from transport.errors import LinkClosed, LinkTimeout, TransportError
from transport.messages import Reply, Request, Status

__all__ = ["MetricsSink", "RequestRunner", "StatsSnapshot", "Tally"]

log = logging.getLogger(__name__)

# Error replies that say this endpoint cannot serve us at all (count toward its breaker);
# OVERLOADED and INVALID_INPUT are about one request, not the endpoint's health.
_ENDPOINT_FAULTS = {Status.UNAVAILABLE, Status.INTERNAL, Status.VERSION_MISMATCH,
                    Status.MODEL_NOT_FOUND, Status.CUT_NOT_FOUND, Status.UNAUTHORIZED}
# A reply may arrive this long after the deadline the link enforces and still be waited
# for: the link's own timeout fires first and says why.
_GRACE_S = 0.25


class MetricsSink(Protocol):
    """Where request outcomes are reported (``edge_agent.metrics.EdgeMetrics``)."""

    def request(self, path: str, outcome: str, seconds: float) -> None: ...

    def failover(self, endpoint: str, reason: str) -> None: ...

    def cascade(self, outcome: str) -> None: ...

    def fallback(self, kind: str) -> None: ...


class _NoMetrics:
    def request(self, path: str, outcome: str, seconds: float) -> None:
        return None

    def failover(self, endpoint: str, reason: str) -> None:
        return None

    def cascade(self, outcome: str) -> None:
        return None

    def fallback(self, kind: str) -> None:
        return None


def _metric_path(path: str, cut: str) -> str:
    """The ``path`` label of the request metrics: the cut a cloud served, ``edge`` on the
    device by choice, ``local`` after a fallback (the label values predate the split of
    path and cut; dashboards keep working)."""
    if path == REMOTE_PATH:
        return cut
    return EDGE_CUT if path == DEVICE_PATH else "local"


@dataclass(frozen=True, slots=True)
class StatsSnapshot:
    """Cumulative request statistics in Triton's terms: ``(count, ns)`` per phase.

    ``success``/``fail``: finished and failed requests, end to end. ``queue``: the cloud
    core's queueing. ``compute_input``: the head and encoding on the device.
    ``compute_infer``: the tail, in the cloud or on the device. ``compute_output``: the
    rest of a remote round trip (network, decoding). ``inference_count`` counts samples,
    ``execution_count`` requests; ``last_inference_ms`` is epoch milliseconds (0: none).
    """

    success: tuple[int, int] = (0, 0)
    fail: tuple[int, int] = (0, 0)
    queue: tuple[int, int] = (0, 0)
    compute_input: tuple[int, int] = (0, 0)
    compute_infer: tuple[int, int] = (0, 0)
    compute_output: tuple[int, int] = (0, 0)
    inference_count: int = 0
    execution_count: int = 0
    last_inference_ms: int = 0


def _add(pair: tuple[int, int], ms: float) -> tuple[int, int]:
    return pair[0] + 1, pair[1] + int(max(ms, 0.0) * 1e6)


class Tally:
    """Requests by path (``/status``) and their statistics (Triton's shape), forwarded to a
    metrics sink, and the latencies of the most recent ones (the percentiles an agent
    reports to the cloud). Thread-safe."""

    def __init__(self, metrics: MetricsSink | None = None, window: int = 512) -> None:
        self.metrics: MetricsSink = metrics or _NoMetrics()
        self._lock = threading.Lock()
        self._counts: dict[str, int] = {}
        self._stats = StatsSnapshot()
        self._recent: deque[float] = deque(maxlen=window)
        self._replies = [0, 0]  # cloud attempts answered, of which with an error status

    def answered(self, ok: bool, replied: bool) -> None:
        """Count a cloud attempt the cloud answered (``replied``), and whether with
        outputs: a version whose tails fail shows here even while the breaker keeps
        requests on the device."""
        if replied:
            with self._lock:
                self._replies[0] += 1
                self._replies[1] += not ok

    def replies(self) -> tuple[int, int]:
        """(cloud attempts answered, of which with an error status) since start."""
        with self._lock:
            return self._replies[0], self._replies[1]

    def percentiles(self) -> tuple[float, float]:
        """(p50, p99) in ms of the recent requests ((0, 0) before any)."""
        with self._lock:
            xs = sorted(self._recent)
        if not xs:
            return 0.0, 0.0
        return xs[len(xs) // 2], xs[min(len(xs) - 1, int(len(xs) * 0.99))]

    def reset_window(self) -> None:
        """Forget the recent latencies (after a version switch: the next report speaks
        for the new version only)."""
        with self._lock:
            self._recent.clear()

    def finished(self, res: InferResult, seconds: float) -> None:
        with self._lock:
            self._recent.append(seconds * 1e3)
        outcome = "fallback" if res.path == FALLBACK_PATH else "ok"
        self.metrics.request(_metric_path(res.path, res.cut), outcome, seconds)
        self._count(res.path)
        self._observe(res)
        if res.cascade is not None:
            self.metrics.cascade(res.cascade)
            self._count(f"cascade_{res.cascade}")
        if res.fallback is not None:
            self.metrics.fallback(res.fallback)
            self._count(f"fallback_{res.fallback}")

    def failed(self, path: str, cut: str, seconds: float) -> None:
        with self._lock:
            self._recent.append(seconds * 1e3)
        self.metrics.request(_metric_path(path, cut), "error", seconds)
        self._count("error")
        with self._lock:
            s = self._stats
            self._stats = StatsSnapshot(**{**_fields(s), "fail": _add(s.fail, seconds * 1e3),
                                           "last_inference_ms": time.time_ns() // 1_000_000})

    def _observe(self, res: InferResult) -> None:
        t = res.timings
        first = next(iter(res.outputs.values()), None)
        samples = int(first.shape[0]) if first is not None and first.ndim else 1
        with self._lock:
            s = self._stats
            new = {**_fields(s), "success": _add(s.success, t.get("total", 0.0)),
                   "inference_count": s.inference_count + samples,
                   "execution_count": s.execution_count + 1,
                   "last_inference_ms": time.time_ns() // 1_000_000,
                   "compute_input": _add(s.compute_input, t.get("head", 0.0)
                                         + t.get("encode", 0.0)),
                   "compute_infer": _add(s.compute_infer, sum(
                       t.get(k, 0.0) for k in ("compute", "local", "tail", "cascade")))}
            if "remote" in t:
                new["queue"] = _add(s.queue, t.get("queue", 0.0))
                new["compute_output"] = _add(s.compute_output, t["remote"] - sum(
                    t.get(k, 0.0) for k in ("encode", "queue", "compute")))
            self._stats = StatsSnapshot(**new)

    def stats(self) -> StatsSnapshot:
        with self._lock:
            return self._stats

    def _count(self, key: str) -> None:
        with self._lock:
            self._counts[key] = self._counts.get(key, 0) + 1

    def counts(self) -> dict[str, int]:
        with self._lock:
            return dict(self._counts)


def _fields(s: StatsSnapshot) -> dict[str, object]:
    return {name: getattr(s, name) for name in StatsSnapshot.__slots__}


class RequestRunner:
    """Runs requests (on the caller's thread) against a runtime, policy and endpoints.

    Args:
        runtime: the device's ORT sessions.
        policy: the placement policy; its estimates learn from every attempt.
        endpoints: name -> endpoint (residency already applied).
        cfg: the agent config (deadlines, retries, codec, identity).
        tally: where outcomes are counted.
    """

    def __init__(self, runtime: EdgeRuntime, policy: Policy, endpoints: Mapping[str, Endpoint],
                 cfg: EdgeConfig, tally: Tally) -> None:
        self.runtime = runtime
        self.policy = policy
        self.estimates = policy.estimates
        self.endpoints = endpoints
        self.cfg = cfg
        self.tally = tally
        bundle = runtime.bundle
        self._model, self._version, self._digest = bundle.name, bundle.version, bundle.digest
        self._outputs = [t.name for t in runtime.manifest.outputs]
        casc = cfg.policy.cascade
        self.cascade = Cascade(casc, self._outputs) if casc.enabled else None
        self.tracer: Tracer = tracer_for(cfg.tracing, "tiersplit-edge")

    def refresh_availability(self) -> None:
        """Tell the policy which endpoints are connected and not refused by a breaker."""
        for ep in self.endpoints.values():
            self.estimates.set_available(ep.name, ep.usable)

    def run(self, rid: str, x: dict[str, np.ndarray], deadline: Deadline, t0: float,
            force: str | None = None, traceparent: str | None = None) -> InferResult:
        """One request, from the policy's choice to outputs (``t0``: when it arrived;
        ``traceparent``: the application's trace, continued by the ``request`` span)."""
        attrs = {"tiersplit.model": self._model, "tiersplit.version": self._version,
                 "tiersplit.agent": self.cfg.agent_id}
        with self.tracer.active("request", traceparent, attrs) as span:
            res = self._run(rid, x, deadline, t0, force)
            span.set("tiersplit.cut", res.cut)
            span.set("tiersplit.path", res.path)
            return res

    @contextmanager
    def _step(self, name: str, cut: str, **attrs: object) -> Iterator[Span]:
        """A span for one step of the current request."""
        with self.tracer.active(name, current_traceparent(),
                                {"tiersplit.cut": cut, "tiersplit.version": self._version,
                                 **attrs}) as span:
            yield span

    def _run(self, rid: str, x: dict[str, np.ndarray], deadline: Deadline, t0: float,
             force: str | None) -> InferResult:
        batch = next(iter(x.values())).shape[0]
        timings: dict[str, float] = {}
        ran: _DeviceAnswer | None = None
        if self.cascade is not None and force is None:
            ran = self._cascade(x)
            timings["cascade"] = ran.ms
            if ran.accepted:
                return self._answer(rid, ran.outputs, DEVICE_PATH, EDGE_CUT,
                                    {**timings, "local": ran.ms}, (), deadline, t0,
                                    cascade="local", confidence=ran.score)
        casc = None if ran is None else "split"
        score = None if ran is None else ran.score
        self.refresh_availability()
        choice = self.policy.decide(batch, force)
        if choice.cut_id == EDGE_CUT:
            if ran is not None:  # the device's answer is here already
                return self._answer(rid, ran.outputs, DEVICE_PATH, EDGE_CUT,
                                    {**timings, "local": ran.ms}, (), deadline, t0,
                                    explored=choice.explored, cascade=casc, confidence=score)
            return self._local(rid, x, choice, DEVICE_PATH, {}, (), deadline, t0)
        try:
            with self._step("head", choice.cut_id):
                tensors, head_ms = self.runtime.run_head(choice.cut_id, x)
        except Exception as e:  # ORT failure of a head: the full model may still work
            log.warning("head %s failed (%s); finishing request locally", choice.cut_id,
                        type(e).__name__)
            failed = Attempt(None, choice.cut_id, f"head failed: {type(e).__name__}")
            if ran is not None:
                return self._answer(rid, ran.outputs, FALLBACK_PATH, choice.cut_id, timings,
                                    (failed,), deadline, t0, explored=choice.explored,
                                    cascade=casc, confidence=score, fallback="cascade")
            return self._local(rid, x, choice, FALLBACK_PATH, timings, (failed,), deadline,
                               t0)
        timings["head"] = head_ms
        attempts, reply = self._remote(rid, choice, tensors, batch, deadline)
        if reply is None:
            if ran is not None:  # the cascade's answer is here already: nothing to redo
                return self._answer(rid, ran.outputs, FALLBACK_PATH, choice.cut_id, timings,
                                    attempts, deadline, t0, explored=choice.explored,
                                    cascade=casc, confidence=score, fallback="cascade")
            return self._from_cut(rid, x, tensors, choice, timings, attempts, deadline, t0)
        answered = attempts[-1]
        timings.update(answered.timings)
        return self._answer(rid, dict(reply.tensors), REMOTE_PATH, choice.cut_id, timings,
                            attempts, deadline, t0, endpoint=answered.endpoint,
                            explored=choice.explored, bytes_sent=answered.bytes,
                            cascade=casc, confidence=score)

    def _cascade(self, x: dict[str, np.ndarray]) -> _DeviceAnswer:
        """The full model on the device and whether its answer may stand alone."""
        assert self.cascade is not None
        with self._step("device", EDGE_CUT, **{"tiersplit.step": "cascade"}):
            outputs, ms = self.runtime.run_full(x)
        accepted, score = self.cascade.accepts(outputs)
        return _DeviceAnswer(outputs, ms, accepted, score)

    def _answer(self, rid: str, outputs: dict[str, np.ndarray], path: str, cut: str,
                timings: dict[str, float], attempts: tuple[Attempt, ...], deadline: Deadline,
                t0: float, **extra: object) -> InferResult:
        """The request's result, counted."""
        timings = {**timings, "total": (time.monotonic() - t0) * 1e3}
        res = InferResult(rid, outputs, path, cut, timings=timings, attempts=attempts,
                          deadline_missed=deadline.expired(), version=self._version,
                          **extra)  # type: ignore[arg-type]
        self.tally.finished(res, timings["total"] / 1e3)
        return res

    def _from_cut(self, rid: str, x: dict[str, np.ndarray], tensors: dict[str, np.ndarray],
                  choice: Choice, timings: dict[str, float], attempts: tuple[Attempt, ...],
                  deadline: Deadline, t0: float) -> InferResult:
        """The cloud did not answer: finish from the head's tensors with the cut's device
        tail when the bundle ships one (the head is not run twice), else locally."""
        cut = choice.cut_id
        if self.runtime.has_tail(cut):
            try:
                with self._step("device", cut, **{"tiersplit.step": "tail"}):
                    outputs, tail_ms = self.runtime.run_tail(cut, tensors)
            except Exception as e:  # the full model may still work
                log.warning("device tail of %s failed (%s); running the full model", cut,
                            type(e).__name__)
            else:
                return self._answer(rid, outputs, FALLBACK_PATH, cut,
                                    {**timings, "tail": tail_ms}, attempts, deadline, t0,
                                    explored=choice.explored, fallback="device_tail")
        return self._local(rid, x, choice, FALLBACK_PATH, timings, attempts, deadline, t0)

    # ---- the cloud -----------------------------------------------------------------

    def _remote(self, rid: str, choice: Choice, tensors: dict[str, np.ndarray], batch: int,
                deadline: Deadline) -> tuple[tuple[Attempt, ...], Reply | None]:
        """Try the chosen endpoints in order; every attempt, and the reply if one came."""
        # time kept back to finish locally: the device tail's when the cut ships one
        cut = choice.cut_id
        local_ms = (self.runtime.tail_ms.get(cut, 0.0) * batch if self.runtime.has_tail(cut)
                    else self.policy.edge_ms(batch))
        reserve_ms = self.cfg.deadlines.local_reserve * local_ms
        attempts: list[Attempt] = []
        tried = 0
        for name in choice.endpoints:
            if tried >= self.cfg.retry.max_endpoints:
                break
            ep = self.endpoints.get(name)
            if ep is None:
                continue
            budget_ms = deadline.remaining_ms() - reserve_ms
            if budget_ms < self.cfg.deadlines.min_remote_ms:
                attempts.append(Attempt(name, choice.cut_id, "skipped: no time left"))
                break
            if not ep.link.connected or not ep.breaker.allow():
                attempts.append(Attempt(name, choice.cut_id, "skipped: unavailable"))
                continue
            tried += 1
            req = Request(request_id=rid if tried == 1 else f"{rid}.{tried}",
                          agent_id=self.cfg.agent_id, model=self._model, version=self._version,
                          digest=self._digest, cut=choice.cut_id,
                          deadline=Deadline.after_ms(budget_ms), tensors=tensors,
                          codec=choice.codec or self.cfg.wire_codec)
            attempt, reply = self._attempt(ep, req, budget_ms, batch)
            attempts.append(attempt)
            self.tally.answered(ok=reply is not None,
                                replied=reply is not None or attempt.outcome.startswith("status"))
            if reply is not None:
                return tuple(attempts), reply
            self.tally.metrics.failover(name, attempt.outcome.split(":")[0])
            self.estimates.set_available(name, ep.usable)
        return tuple(attempts), None

    def _attempt(self, ep: Endpoint, req: Request, budget_ms: float,
                 batch: int) -> tuple[Attempt, Reply | None]:
        """Send ``req`` to ``ep`` once; the attempt's record, and the reply on success.
        The ``network`` span covers send to reply; its traceparent travels with ``req``."""
        net = self.tracer.span("network", current_traceparent(), {
            "tiersplit.cut": req.cut, "tiersplit.version": req.version,
            "tiersplit.endpoint": ep.name, "tiersplit.request_id": req.request_id})
        req.traceparent = net.traceparent or ""  # the cloud core continues from here
        try:
            attempt, reply = self._send(ep, req, budget_ms, batch, net)
            if reply is None:
                net.error(attempt.outcome)
            return attempt, reply
        finally:
            net.end()

    def _send(self, ep: Endpoint, req: Request, budget_ms: float, batch: int,
              net: Span) -> tuple[Attempt, Reply | None]:
        flight = ep.enter(int(self.estimates.wire_bytes(req.cut) * batch))
        start_ns = time.time_ns()
        t_send = time.monotonic()
        encode_ms = 0.0
        token = None
        try:
            try:
                fut = ep.link.submit(req)
                encode_ms = (time.monotonic() - t_send) * 1e3
                self.tracer.record("encode", net.traceparent, start_ns,
                                   start_ns + int(encode_ms * 1e6),
                                   {"tiersplit.cut": req.cut, "tiersplit.codec": req.codec,
                                    "tiersplit.wire_bytes": req.wire_bytes})
                flight = self._learn_size(ep, req, flight, encode_ms, batch)
                # from here an overdue reply is evidence for concurrent decisions
                token = self.estimates.begin_transfer(ep.name, flight.own_bytes)
                reply = fut.result(timeout=budget_ms / 1e3 + _GRACE_S)
            except (cf.TimeoutError, LinkTimeout):
                return self._failed(ep, req, "timeout", breaker=True), None
            except LinkClosed:
                return self._failed(ep, req, "peer lost", breaker=True), None
            except TransportError as e:
                return self._failed(ep, req, f"transport: {e.reason}", breaker=True,
                                    detail=str(e)), None
        finally:
            if token is not None:
                self.estimates.end_transfer(token)
            solo = ep.leave(flight)
        elapsed = (time.monotonic() - t_send) * 1e3
        if not reply.ok:
            status = Status(reply.status)
            if status is Status.OVERLOADED:  # the queue is full: learn it, don't break
                self.estimates.observe_overload(ep.name, elapsed, self.policy.edge_ms(batch))
            return self._failed(ep, req, f"status: {status.name.lower()}",
                                breaker=status in _ENDPOINT_FAULTS, detail=reply.error), None
        missing = [n for n in self._outputs if n not in reply.tensors]
        if missing:
            return self._failed(ep, req, "status: bad reply", breaker=True,
                                detail=f"reply lacks outputs {missing}"), None
        ep.succeeded()
        down = sum(int(a.nbytes) for a in reply.tensors.values())
        self.estimates.observe_reply(ep.name, req.cut, up_bytes=flight.own_bytes,
                                     down_bytes=down, elapsed_ms=elapsed - encode_ms,
                                     queue_ms=reply.queue_ms, compute_ms=reply.compute_ms,
                                     solo=solo, batch=batch, ahead_bytes=flight.ahead_bytes)
        timings = {"encode": encode_ms, "remote": elapsed, "queue": reply.queue_ms,
                   "compute": reply.compute_ms}
        return Attempt(ep.name, req.cut, "ok", bytes=req.wire_bytes, timings=timings), reply

    def _learn_size(self, ep: Endpoint, req: Request, flight: Flight, encode_ms: float,
                    batch: int) -> Flight:
        """The link encoded ``req`` once and said how big it was: learn the size and the
        encode time, and account the real size as in flight."""
        if req.wire_bytes <= 0:  # failed before encoding: the future says why
            return flight
        if req.codec == self.cfg.wire_codec:  # other codecs are costed from the bundle's figures
            self.estimates.observe_wire(req.cut, req.wire_bytes, encode_ms, batch)
        return ep.resize(flight, req.wire_bytes)

    def _failed(self, ep: Endpoint, req: Request, outcome: str, *, breaker: bool,
                detail: str = "") -> Attempt:
        detail = detail[:200]
        ep.failed_with(outcome, detail, breaker=breaker)
        return Attempt(ep.name, req.cut, outcome, detail, req.wire_bytes)

    # ---- the device ------------------------------------------------------------------

    def _local(self, rid: str, x: dict[str, np.ndarray], choice: Choice, path: str,
               timings: dict[str, float], attempts: tuple[Attempt, ...], deadline: Deadline,
               t0: float) -> InferResult:
        """The whole model on the device: by choice (``device``) or as the fallback."""
        try:
            with self._step("device", choice.cut_id, **{"tiersplit.step": "full"}):
                outputs, local_ms = self.runtime.run_full(x)
        except Exception as e:
            self.tally.failed(path, choice.cut_id, time.monotonic() - t0)
            log.error("local execution failed for request %s: %s", rid, type(e).__name__)
            tried = ", ".join(f"{a.endpoint or 'device'}: {a.outcome}" for a in attempts)
            raise InferenceFailed(f"request {rid}: the cloud did not answer "
                                  f"({tried or 'not tried'}) and local execution failed: "
                                  f"{type(e).__name__}: {e}") from e
        return self._answer(rid, outputs, path, choice.cut_id, {**timings, "local": local_ms},
                            attempts, deadline, t0, explored=choice.explored,
                            fallback="full" if path == FALLBACK_PATH else None)


@dataclass(frozen=True, slots=True)
class _DeviceAnswer:
    """The cascade's run of the full model: outputs, time, verdict and score."""

    outputs: dict[str, np.ndarray]
    ms: float
    accepted: bool
    score: float | None
