"""The cloud core: transports -> (auth, done by links) -> validate -> batcher -> backend.

:class:`CloudCore` is the in-process API (``tiersplit cloud serve``, the demo and the
benchmarks wrap it). It implements :class:`transport.base.ServerHandler`: links call
``on_request`` from their I/O thread, so it only validates and enqueues; compute happens
in the batcher's sized executor and each request is answered as soon as its batch ends.

Every request ends in exactly one reply. Invalid ones are answered with their status
(mapped from the typed error in one place, :func:`cloud_core.errors.status_for`), counted
by reason, and never reach a backend.
"""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from cloud_core.backends import make_backend_factory
from cloud_core.batcher import Batcher, Entry
from cloud_core.config import CloudConfig
from cloud_core.errors import (
    BackendError,
    CloudError,
    ConfigError,
    DeadlineExceeded,
    Unavailable,
    status_for,
)
from cloud_core.metrics import UNKNOWN, CloudMetrics
from cloud_core.repository import LoadedVersion, Repository
from cloud_core.validate import (
    Target,
    Validated,
    check_request,
    forget_version,
    resolve_target,
)
from contract.tracing import Span, tracer_for, wall_ns
from transport.base import Responder, ServerLink
from transport.messages import Directive, Fetch, LoadReport, Reply, Report, Request, Status

__all__ = ["CloudCore"]

log = logging.getLogger(__name__)


class _Job:
    __slots__ = ("request", "responder", "valid")

    def __init__(self, request: Request, responder: Responder, valid: Validated) -> None:
        self.request, self.responder, self.valid = request, responder, valid


def _send(responder: Responder, reply: Reply) -> None:
    try:
        responder.send(reply)
    except Exception as e:  # the link may be closing; the agent will time out and retry
        log.warning("reply %s not sent: %s", reply.request_id, e)


def _send_all(pairs: list[tuple[Responder, Reply]]) -> None:
    """A batch's replies. Responders of a link that has a batch path (a ``channel``
    attribute with ``send_many``, as the ZeroMQ and MQTT links give) are answered through
    it, all of one link's at once: encoded in one loop and handed to the link's I/O
    thread with one wake-up. Any other responder gets its own ``send``."""
    groups: dict[int, tuple[Any, list[tuple[Responder, Reply]]]] = {}
    for responder, reply in pairs:
        channel = getattr(responder, "channel", None)
        if channel is None:
            _send(responder, reply)
            continue
        group = groups.get(id(channel))
        if group is None:
            groups[id(channel)] = (channel, [(responder, reply)])
        else:
            group[1].append((responder, reply))
    for channel, items in groups.values():
        try:
            channel.send_many(items)
        except Exception as e:  # the link may be closing; the agents will time out
            log.warning("%d replies not sent: %s", len(items), e)


class CloudCore:
    """One cloud core: repository, batcher, links and HTTP endpoint.

    Args:
        config: the validated ``cloud.yaml``.
        links: server links to use instead of building them from ``config.transports``
            (tests and embedding; they are started and stopped by the core).
    """

    def __init__(self, config: CloudConfig, links: list[ServerLink] | None = None) -> None:
        self.config = config
        self.metrics = CloudMetrics()
        self._links: list[ServerLink] = list(links or [])
        self._link_kinds: list[str] = []
        self._given_links = links is not None
        self._state = "new"  # new -> starting -> running -> draining -> stopped
        self._lock = threading.Lock()
        self._queue_ms = 0.0  # EWMA of recent queue times, for load reports
        self._inflight = 0
        self._count_lock = threading.Lock()
        self._children: dict[tuple[str, str, str], tuple[Any, ...]] = {}  # per batch
        self._depth_gauges: dict[tuple[Any, ...], Any] = {}  # labelled gauge children
        self._depth_keys: set[tuple[Any, ...]] = set()  # queue keys whose gauge exists
        self._http: Any = None
        self._admin: Any = None
        self._tokens: Any = None
        self._tracer = tracer_for(config.tracing, "tiersplit-cloud")
        key = None
        if config.signing_public_key is not None:
            from transport import keys
            from transport.errors import KeyFileError

            try:
                key = keys.load_ed25519_public(config.signing_public_key)
            except KeyFileError as e:
                raise ConfigError(f"signing_public_key: {e}") from e
        self.repository = Repository(config.repository, key,
                                     allow_unsigned=config.allow_unsigned,
                                     backend_factory=make_backend_factory(config.backend))
        self._init_rollout()
        b = config.batching
        self.batcher = Batcher(max_batch=b.max_batch, max_delay_s=b.max_queue_delay_ms / 1e3,
                               max_queue=b.max_queue, workers=config.executor_workers,
                               idle_gap_s=b.idle_gap_s, adaptive=b.adaptive_delay,
                               execute=self._execute, on_expired=self._expired,
                               on_failed=self._failed, on_depth=self._depth)

    def _init_rollout(self) -> None:
        """Model distribution and rollout plans: a small pool of their own, off the
        inference batcher, so downloads never delay a request's compute."""
        from cloud_core.distribution import Distributor
        from cloud_core.rollout import STATES, FleetStats, PlanStore, RolloutManager

        cfg = self.config.rollout
        m = self.metrics
        self.distributor = Distributor(
            self.config.repository,
            on_refused=lambda reason: m.distribution_refused.labels(reason=reason).inc(),
            on_served=m.distribution_bytes.inc)
        state_file = cfg.state_file or self.config.repository / ".rollouts.json"
        self.rollout = RolloutManager(
            PlanStore(state_file), FleetStats(cfg.window_s),
            digest_of=self._rollout_digest, loaded_digest=self._loaded_digest,
            active=lambda name: (lv.version if (lv := self.repository.active(name)) else None),
            on_change=lambda plan: m.rollout_state.labels(model=plan.model).set(
                STATES[plan.state]),
            on_loaded=lambda plans: self._loader.submit(self._load_plan_versions))
        for plan in self.rollout.plans.values():
            m.rollout_state.labels(model=plan.model).set(STATES[plan.state])
        self._control_pool = ThreadPoolExecutor(max_workers=2, initializer=_lower_priority,
                                                thread_name_prefix="cloud-control")
        self._loader = ThreadPoolExecutor(max_workers=1, initializer=_lower_priority,
                                          thread_name_prefix="cloud-rollout-load")

    def _load_plan_versions(self) -> None:
        """Load the versions the persisted plans still send agents to (a restarted core
        must serve both the stable and the target version, whatever its config lists)."""
        for plan in list(self.rollout.plans.values()):
            wanted = [plan.stable] + ([plan.target] if plan.state != "rolled_back" else [])
            for version in wanted:
                try:
                    self.repository.load(plan.model, version)
                except CloudError as e:
                    log.error("rollout of %s needs %s, which cannot be loaded: %s",
                              plan.model, version, e)

    def _rollout_digest(self, name: str, version: str) -> str:
        from cloud_core.errors import RolloutError

        lv = next((x for x in self.repository.all_loaded()
                   if (x.name, x.version) == (name, version)), None)
        if lv is not None:
            return lv.digest
        try:  # verify and warm up at a lower CPU priority: requests keep the CPU
            return self._loader.submit(self.load_model, name, version).result()["digest"]
        except CloudError as e:
            raise RolloutError(f"cannot roll out {name}:{version}: {e}") from e

    def _loaded_digest(self, digest: str) -> tuple[str, str] | None:
        for lv in self.repository.all_loaded():
            if lv.digest == digest:
                return lv.name, lv.version
        return None

    # -- life cycle ------------------------------------------------------------------
    def start(self) -> None:
        """Load the configured models, bind the links, start HTTP. Raises on failure
        (and releases whatever was started)."""
        with self._lock:
            if self._state != "new":
                raise RuntimeError(f"CloudCore already {self._state}")
            self._state = "starting"
        started: list[ServerLink] = []
        try:
            for ref in self.config.models:
                for v in self.repository.expand(ref.name, ref.versions):
                    self.repository.load(ref.name, v)
                if ref.pin:
                    self.repository.pin(ref.name, ref.pin)
            self._load_plan_versions()
            self.metrics.models_loaded.set(len(self.repository.all_loaded()))
            if not self._given_links:
                from transport import make_server_link

                self._links = [make_server_link(c) for c in self.config.transports]
                self._link_kinds = [c.kind for c in self.config.transports]
            else:
                self._link_kinds = [type(x).__name__.lower().replace("serverlink", "")
                                    for x in self._links]
            for link in self._links:
                link.start(self)
                started.append(link)
            self._start_http()
        except BaseException:
            self._state = "stopped"
            for server in (self._admin, self._http):
                if server is not None:
                    server.stop()
            for link in reversed(started):
                try:
                    link.stop()
                except Exception:  # cleanup of a failed start
                    log.exception("stopping link after failed start")
            self.batcher.stop(0)
            self.repository.close()
            raise
        self._state = "running"
        log.info("cloud core ready: %s http=%s admin=%s", self.endpoints_by_kind,
                 self.http_url, self.admin_url)

    def _start_http(self) -> None:
        from cloud_core.admin import AuditLog, Authenticator, FailureLimiter, TokenStore
        from cloud_core.http import HttpServer, make_admin_app, make_app

        if self.config.http.enabled:
            h = self.config.http
            self._http = HttpServer(make_app(self), h.host, h.port, name="cloud-http")
            self._http.start()
        a = self.config.admin
        if not a.enabled:
            return
        self._tokens = TokenStore(a.token_file) if a.token_file is not None else None
        auth = Authenticator(self._tokens, FailureLimiter(a.auth_failures_per_minute),
                             mtls=a.client_ca is not None)
        tls = None
        if a.server_cert is not None and a.server_key is not None:
            tls = {"cert": a.server_cert, "key": a.server_key, "client_ca": a.client_ca}
        self._admin = HttpServer(make_admin_app(self, auth, AuditLog(a.audit_log)), a.host,
                                 a.port, name="cloud-admin", tls=tls)
        self._admin.start()

    def stop(self, grace: float | None = None) -> None:
        """Stop accepting (new requests get UNAVAILABLE), finish queued and in-flight
        batches within ``grace`` seconds (default ``config.grace_s``), then close links,
        HTTP and backends. Idempotent."""
        with self._lock:
            if self._state in ("stopped", "draining"):
                return
            self._state = "draining"
        grace = self.config.grace_s if grace is None else grace
        log.info("draining (grace %.1f s)", grace)
        self.batcher.stop(grace)
        self._control_pool.shutdown(wait=False, cancel_futures=True)
        self._loader.shutdown(wait=False, cancel_futures=True)
        for link in reversed(self._links):
            try:
                link.stop()
            except Exception:
                log.exception("stopping link")
        for server in (self._admin, self._http):
            if server is not None:
                server.stop()
        self.repository.close()
        self._state = "stopped"
        log.info("cloud core stopped")

    @property
    def state(self) -> str:
        return self._state

    @property
    def ready(self) -> bool:
        """Serving: started, links bound, and (if any were configured) models loaded."""
        return (self._state == "running"
                and (not self.config.models or bool(self.repository.all_loaded())))

    @property
    def endpoints(self) -> list[str]:
        return [e for link in self._links for e in link.endpoints]

    @property
    def endpoints_by_kind(self) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {}
        for kind, link in zip(self._link_kinds, self._links, strict=False):
            out.setdefault(kind, []).extend(link.endpoints)
        return out

    @property
    def http_url(self) -> str | None:
        return self._http.url if self._http is not None else None

    @property
    def admin_url(self) -> str | None:
        return self._admin.url if self._admin is not None else None

    # -- ServerHandler ---------------------------------------------------------------
    def on_request(self, request: Request, responder: Responder) -> None:
        """Validate and enqueue (called on a link's I/O thread: must not compute)."""
        target: Target | None = None
        try:
            if self._state != "running":
                raise Unavailable("cloud core is not serving (starting or shutting down)")
            target = resolve_target(request, self.repository)
            valid = check_request(request, target,
                                  max_request_bytes=self.config.limits.max_request_bytes,
                                  max_batch=self.config.batching.max_batch)
            self.batcher.submit(valid.batch_key, Entry(items=valid.items,
                                                       deadline=request.deadline,
                                                       payload=_Job(request, responder, valid)))
        except CloudError as e:
            self._refuse(request, responder, e, target)
        except Exception as e:  # a bug must not kill the link's I/O thread
            log.exception("unexpected error validating request %s", request.request_id)
            self._refuse(request, responder, e, target)

    def on_control(self, msg: Fetch | Report, send: Any) -> None:
        """A download chunk or a rollout report from an authenticated agent (called on a
        link's I/O thread: handed to the control pool)."""
        try:
            self._control_pool.submit(self._control, msg, send)
        except RuntimeError:  # shutting down
            send(Reply(request_id=msg.request_id, status=Status.UNAVAILABLE,
                       error="cloud core is shutting down"))

    def _control(self, msg: Fetch | Report, send: Any) -> None:
        try:
            if isinstance(msg, Fetch):
                if not self.config.rollout.serve_bundles:
                    from transport.messages import Chunk

                    reply: Any = Chunk(request_id=msg.request_id, status=Status.UNAVAILABLE,
                                       error="this core does not serve bundles")
                else:
                    reply = self.distributor.serve(msg)
            else:
                self.metrics.agent_seen(msg.agent_id, msg.model, msg.version)
                reply = Directive(request_id=msg.request_id,
                                  target=self.rollout.on_report(msg))
        except Exception as e:
            log.exception("control message %s failed", msg.request_id)
            reply = Reply(request_id=msg.request_id, status=Status.INTERNAL,
                          error=f"server error: {type(e).__name__}")
        _send_any(send, reply)

    def on_reject(self, reason: str, agent_id: str | None) -> None:
        self.metrics.rejected.labels(reason=reason).inc()
        log.info("link refused a frame (%s) from %s", reason, agent_id or "unknown peer")

    def load(self) -> LoadReport:
        return LoadReport(queue_depth=self.batcher.depth(), queue_ms=self._queue_ms,
                          utilisation=self.batcher.busy / self.config.executor_workers,
                          inflight=self._inflight)

    # -- replies ---------------------------------------------------------------------
    def _refuse(self, request: Request, responder: Responder, error: Exception,
                target: Target | None) -> None:
        """Answer ``request`` with the status of ``error`` and count it; metric labels
        come from the checked ``target`` (None when the model or cut was not resolved),
        never from what the request claims."""
        status = status_for(error)
        reason = error.reason if isinstance(error, CloudError) else "internal"
        model, cut = (target.version.name, target.cut.id) if target else (UNKNOWN, UNKNOWN)
        self.metrics.rejected.labels(reason=reason).inc()
        self.metrics.requests.labels(model=model, cut=cut, status=status.name).inc()
        log.info("refused %s from %s: %s %s", request.request_id, request.agent_id,
                 status.name, error)
        _send(responder, Reply(request_id=request.request_id, status=status, error=str(error)))

    def _expired(self, entry: Entry) -> None:
        job: _Job = entry.payload
        self._refuse(job.request, job.responder,
                     _deadline_error(entry, time.monotonic() - entry.enqueued), job.valid.target)

    def _failed(self, entry: Entry, error: Exception) -> None:
        job: _Job = entry.payload
        self._refuse(job.request, job.responder, error, job.valid.target)

    def _depth(self, key: tuple[Any, ...], depth: int) -> None:
        # One queue per (model, version, cut, sample shapes); the gauge sums the shapes.
        # Called on every submit, so it does nothing once the gauge exists: the gauge
        # reads the batcher's queues when it is scraped, not on every request.
        if key in self._depth_keys:
            return
        labels = key[:3]
        if labels in self._depth_gauges:
            self._depth_keys.add(key)
            return
        with self._count_lock:
            if labels in self._depth_gauges:
                return
            gauge = self.metrics.queue_depth.labels(model=key[0], version=key[1], cut=key[2])
            gauge.set_function(lambda: self._queued(labels))
            self._depth_gauges[labels] = gauge

    def _queued(self, labels: tuple[Any, ...]) -> int:
        """Requests waiting in the queues of one (model, version, cut)."""
        return sum(n for k, n in self.batcher.depths().items() if k[:3] == labels)

    # -- compute ---------------------------------------------------------------------
    def _execute(self, key: tuple[Any, ...], batch: list[Entry]) -> None:
        """Run one batch on its version's backend and answer every request in it."""
        jobs: list[_Job] = [e.payload for e in batch]
        target = jobs[0].valid.target
        lv: LoadedVersion = target.version
        cut = target.cut
        backend = target.backend
        items = sum(e.items for e in batch)
        start = time.monotonic()
        span = self._trace_batch(batch, jobs, target, start)
        with self._count_lock:
            self._inflight += len(batch)
        try:
            if len(jobs) == 1:
                inputs = dict(jobs[0].request.tensors)
            else:
                inputs = {t.name: np.concatenate([j.request.tensors[t.name] for j in jobs])
                          for t in cut.tensors}
            children = self._batch_metrics(lv.name, cut.id, backend.name)
            children[0].inc()
            children[1].inc(items)
            with self._tracer.active("backend", span.traceparent, {"tiersplit.cut": cut.id}):
                outputs = backend.run(inputs)
            if self.config.debug.tail_delay_ms:
                time.sleep(self.config.debug.tail_delay_ms / 1e3)
            for name, arr in outputs.items():
                if arr.shape[:1] != (items,):
                    raise BackendError(f"backend output {name!r} has batch "
                                       f"{arr.shape[:1]}, expected {items}")
        except Exception as e:
            log.error("batch of %d on %s:%s/%s failed: %s", items, lv.name, lv.version,
                      cut.id, e)
            for j in jobs:
                self._refuse(j.request, j.responder, e, target)
            return
        finally:
            span.end()
            with self._count_lock:
                self._inflight -= len(batch)
        compute = time.monotonic() - start
        m = self.metrics
        m.batch_size.observe(items)
        _, _, compute_hist, ok_count, queue_hist = children
        compute_hist.observe(compute)
        ok_count.inc(len(batch))
        for agent in {j.request.agent_id for j in jobs}:
            m.agent_seen(agent, lv.name, lv.version)
        offset = 0
        compute_ms = compute * 1e3
        queue_ms = self._queue_ms
        pairs: list[tuple[Responder, Reply]] = []
        for entry, job in zip(batch, jobs, strict=True):
            queued = start - entry.enqueued
            queue_ms = 0.9 * queue_ms + 0.1 * queued * 1e3
            queue_hist.observe(queued)
            n = entry.items
            tensors = {k: v[offset:offset + n] for k, v in outputs.items()}
            offset += n
            pairs.append((job.responder, Reply(request_id=job.request.request_id,
                                               status=Status.OK, tensors=tensors,
                                               queue_ms=queued * 1e3, compute_ms=compute_ms)))
        self._queue_ms = queue_ms
        _send_all(pairs)

    def _batch_metrics(self, model: str, cut: str, backend: str) -> tuple[Any, ...]:
        """The labelled metric children a batch updates, looked up once per (model, cut,
        backend) and kept: backend calls, backend items, compute time, OK requests,
        queue time."""
        key = (model, cut, backend)
        children = self._children.get(key)
        if children is None:
            m = self.metrics
            children = (m.backend_calls.labels(backend=backend),
                        m.backend_items.labels(backend=backend),
                        m.compute_seconds.labels(model=model, cut=cut),
                        m.requests.labels(model=model, cut=cut, status="OK"),
                        m.queue_seconds.labels(model=model, cut=cut))
            self._children[key] = children
        return children

    def _trace_batch(self, batch: list[Entry], jobs: list[_Job], target: Target,
                     start: float) -> Span:
        """Each request's ``queue`` span (arrival to batch start) under the agent's span,
        and the ``batch`` span: under the first request's trace, linking the others."""
        attrs = {"tiersplit.model": target.version.name,
                 "tiersplit.version": target.version.version, "tiersplit.cut": target.cut.id}
        if not self._tracer.enabled:
            return Span(traceparent=jobs[0].request.traceparent or None)
        begun = wall_ns(start)
        for entry, job in zip(batch, jobs, strict=True):
            self._tracer.record("queue", job.request.traceparent or None,
                                wall_ns(entry.enqueued), begun, attrs)
        return self._tracer.span("batch", jobs[0].request.traceparent or None,
                                 {**attrs, "tiersplit.batch_items": sum(e.items for e in batch),
                                  "tiersplit.batch_requests": len(batch)}, start_ns=begun,
                                 links=[j.request.traceparent for j in jobs[1:]
                                        if j.request.traceparent])

    # -- admin -----------------------------------------------------------------------
    def models(self) -> list[dict[str, Any]]:
        return self.repository.describe()

    def load_model(self, name: str, version: str) -> dict[str, Any]:
        lv = self.repository.load(name, version)
        self.metrics.models_loaded.set(len(self.repository.all_loaded()))
        return {"name": lv.name, "version": lv.version, "digest": lv.digest}

    def _retire(self, lv: LoadedVersion) -> None:
        self.batcher.retire(lambda k: k[0] == lv.name and k[1] == lv.version,
                            timeout=self.config.grace_s)
        forget_version(lv)
        lv.close()
        self.metrics.models_loaded.set(len(self.repository.all_loaded()))

    def unload_model(self, name: str, version: str) -> None:
        self._retire(self.repository.unload(name, version))

    def pin_model(self, name: str, version: str) -> None:
        self.repository.pin(name, version)

    def rollback_model(self, name: str) -> str:
        active, old = self.repository.rollback(name)
        self._retire(old)
        return active

    def rollout_start(self, name: str, version: str, **options: Any) -> dict[str, Any]:
        """Start a rollout plan (loads the target version first: both tiers need it)."""
        plan = self.rollout.start(name, version, **options)
        return plan.to_json()

    def reload_admin_token(self) -> None:
        """Re-read ``admin.token_file`` (SIGHUP): the rotated token works, the old one no
        longer does. A no-op without a token file; on a read error the old token stays."""
        if self._tokens is not None:
            self._tokens.reload()

    def reload_keys(self) -> dict[str, int]:
        """Re-read every link's allow-list (new and established peers are re-checked)."""
        out: dict[str, int] = {}
        for kind, link in zip(self._link_kinds, self._links, strict=False):
            reload = getattr(link, "reload_allowed", None)
            if reload is not None:
                out[kind] = out.get(kind, 0) + int(reload())
        return out


def _lower_priority() -> None:
    """Run this (pool) thread at nice +10: bundle loads for rollouts and chunk reads
    yield the CPU to the batcher's inference work (Linux threads are tasks)."""
    import contextlib
    import os

    with contextlib.suppress(OSError, AttributeError):
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 10)


def _send_any(send: Any, msg: Any) -> None:
    try:
        send(msg)
    except Exception as e:  # the link may be closing; the agent retries
        log.warning("control answer %s not sent: %s", msg.request_id, e)


def _deadline_error(entry: Entry, waited: float) -> CloudError:
    return DeadlineExceeded(f"deadline passed after {waited * 1e3:.1f} ms in the queue; "
                            "dropped before compute")

