"""Prometheus metrics of one cloud core (its own registry, so several cores can live in
one process: tests, benchmarks, the demo).

Names are a contract (the reliability suite, the Grafana dashboard in
``deploy/grafana/tiersplit.json`` and the autoscaler in ``deploy/k8s`` rely on them).
Every duration is in seconds, as Prometheus conventions ask:

- ``tiersplit_cloud_requests_total{model,cut,status}``: every request answered, by status.
- ``tiersplit_cloud_rejected_total{reason}``: refused before compute (link: auth, malformed,
  replay...; core: model_not_found, version_mismatch, cut_not_found, names, dtype, shape,
  oversize, batch, deadline, overloaded, unavailable).
- ``tiersplit_cloud_queue_depth{model,version,cut}``: requests waiting (the autoscaling
  signal: KEDA scales cores on its sum).
- ``tiersplit_cloud_batch_size``: samples per executed batch (histogram).
- ``tiersplit_cloud_queue_seconds{model,cut}`` / ``tiersplit_cloud_compute_seconds{model,cut}``.
- ``tiersplit_cloud_backend_calls_total{backend}`` / ``..._backend_items_total{backend}``:
  proof that refused requests cost no compute.
- ``tiersplit_cloud_admin_requests_total{action,result}`` /
  ``tiersplit_cloud_admin_auth_failures_total``: the admin plane's calls and refusals.
- ``tiersplit_cloud_models_loaded``: loaded bundle versions.
- ``tiersplit_cloud_agents{model,version}``: distinct agents served in the last
  ``AGENT_WINDOW_S`` seconds, per bundle version (which version the fleet runs; fed by
  :meth:`CloudMetrics.agent_seen`).
- ``tiersplit_cloud_traceparents_ignored_total``: malformed W3C traceparents on requests,
  ignored (the request runs untraced).
- ``tiersplit_build_info{version,component}``: always 1; the installed tiersplit version.
- ``process_*`` / ``python_info``: prometheus_client's process and platform collectors
  (CPU seconds, resident memory, open file descriptors, start time).

Labels come from the repository, never from unvalidated request fields (unknown names are
labelled ``_unknown``), so a hostile agent cannot blow up the label space; agent ids are
the links' authenticated identities and are never exported as labels, only counted.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from importlib import metadata

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from contract.tracing import TraceparentCollector

__all__ = ["AGENT_WINDOW_S", "UNKNOWN", "AgentTracker", "CloudMetrics", "build_version"]

UNKNOWN = "_unknown"
#: How long an agent counts towards ``tiersplit_cloud_agents`` after its last request.
AGENT_WINDOW_S = 300.0
#: Most (agent, model, version) entries remembered; the oldest are forgotten beyond it.
_MAX_AGENTS = 100_000
_LAT = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0)
_BATCH = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)


def build_version() -> str:
    """The installed tiersplit distribution's version (``unknown`` when run from a tree
    that was never installed)."""
    try:
        return metadata.version("tiersplit")
    except metadata.PackageNotFoundError:
        return "unknown"


class AgentTracker(Collector):
    """Counts distinct agents per (model, version) seen within a sliding window.

    A collector rather than a gauge: the count is computed at scrape time, so an agent
    that went quiet drops out without anyone having to expire it.
    """

    def __init__(self, window_s: float = AGENT_WINDOW_S, max_entries: int = _MAX_AGENTS
                 ) -> None:
        self._window = window_s
        self._max = max_entries
        self._seen: dict[tuple[str, str, str], float] = {}
        self._lock = threading.Lock()

    def seen(self, agent_id: str, model: str, version: str) -> None:
        now = time.monotonic()
        key = (agent_id, model, version)
        with self._lock:
            self._seen.pop(key, None)  # re-insert: dict order is last-seen order
            self._seen[key] = now
            while len(self._seen) > self._max:
                del self._seen[next(iter(self._seen))]

    def counts(self) -> dict[tuple[str, str], int]:
        """(model, version) -> distinct agents within the window."""
        cutoff = time.monotonic() - self._window
        out: dict[tuple[str, str], int] = {}
        with self._lock:
            for stale in [k for k, t in self._seen.items() if t < cutoff]:
                del self._seen[stale]
            for _agent, model, version in self._seen:
                out[(model, version)] = out.get((model, version), 0) + 1
        return out

    def describe(self) -> Iterator[GaugeMetricFamily]:
        yield GaugeMetricFamily("tiersplit_cloud_agents", "", labels=["model", "version"])

    def collect(self) -> Iterator[GaugeMetricFamily]:
        fam = GaugeMetricFamily(
            "tiersplit_cloud_agents",
            f"Distinct agents served in the last {self._window:.0f} s, per bundle version",
            labels=["model", "version"])
        for (model, version), n in sorted(self.counts().items()):
            fam.add_metric([model, version], n)
        yield fam


class CloudMetrics:
    """The core's metric families in a private registry."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter("tiersplit_cloud_requests_total", "Requests answered, by status",
                                ["model", "cut", "status"], registry=r)
        self.admin_requests = Counter(
            "tiersplit_cloud_admin_requests_total",
            "Admin API calls, by action and result (ok, error, unauthorized, rate_limited)",
            ["action", "result"], registry=r)
        self.admin_auth_failures = Counter(
            "tiersplit_cloud_admin_auth_failures_total",
            "Admin API calls refused for missing, wrong or rate-limited credentials",
            registry=r)
        self.rejected = Counter("tiersplit_cloud_rejected_total",
                                "Requests refused before compute, by reason", ["reason"],
                                registry=r)
        self.queue_depth = Gauge("tiersplit_cloud_queue_depth", "Requests waiting to be batched",
                                 ["model", "version", "cut"], registry=r)
        self.batch_size = Histogram("tiersplit_cloud_batch_size", "Samples per executed batch",
                                    buckets=_BATCH, registry=r)
        self.queue_seconds = Histogram("tiersplit_cloud_queue_seconds",
                                       "Time from validation to batch start",
                                       ["model", "cut"], buckets=_LAT, registry=r)
        self.compute_seconds = Histogram("tiersplit_cloud_compute_seconds",
                                         "Backend time per batch", ["model", "cut"],
                                         buckets=_LAT, registry=r)
        self.backend_calls = Counter("tiersplit_cloud_backend_calls_total",
                                     "Backend run() calls (batches)", ["backend"], registry=r)
        self.backend_items = Counter("tiersplit_cloud_backend_items_total",
                                     "Samples computed by the backend", ["backend"], registry=r)
        self.models_loaded = Gauge("tiersplit_cloud_models_loaded", "Loaded bundle versions",
                                   registry=r)
        self.build_info = Gauge("tiersplit_build_info", "Installed tiersplit version (always 1)",
                                ["version", "component"], registry=r)
        self.build_info.labels(version=build_version(), component="cloud").set(1)
        self.rollout_state = Gauge(
            "tiersplit_cloud_rollout_state",
            "Rollout plan state per model (0 none, 1 canary, 2 promoted, 3 paused, "
            "4 rolled back)", ["model"], registry=r)
        self.distribution_bytes = Counter(
            "tiersplit_cloud_distribution_bytes_total",
            "Bytes of edge bundle files served to agents", registry=r)
        self.distribution_refused = Counter(
            "tiersplit_cloud_distribution_refused_total",
            "Bundle downloads refused, by reason", ["reason"], registry=r)
        self.agents = AgentTracker()
        r.register(self.agents)
        r.register(TraceparentCollector("tiersplit_cloud"))
        ProcessCollector(registry=r)
        PlatformCollector(registry=r)

    def agent_seen(self, agent_id: str, model: str, version: str) -> None:
        """Record that ``agent_id`` (an authenticated identity) was served by ``model``
        ``version``; feeds ``tiersplit_cloud_agents``."""
        self.agents.seen(agent_id, model, version)

    def render(self) -> bytes:
        """The text exposition format for ``/metrics``."""
        return generate_latest(self.registry)
