"""Prometheus metrics of one cloud core (its own registry, so several cores can live in
one process: tests, benchmarks, the demo).

Names are a contract (the reliability suite and dashboards rely on them):

- ``tiersplit_cloud_requests_total{model,cut,status}``: every request answered, by status.
- ``tiersplit_cloud_rejected_total{reason}``: refused before compute (link: auth, malformed,
  replay...; core: model_not_found, version_mismatch, cut_not_found, names, dtype, shape,
  oversize, batch, deadline, overloaded, unavailable).
- ``tiersplit_cloud_queue_depth{model,version,cut}``: requests waiting.
- ``tiersplit_cloud_batch_size``: samples per executed batch (histogram).
- ``tiersplit_cloud_queue_seconds{model,cut}`` / ``tiersplit_cloud_compute_seconds{model,cut}``.
- ``tiersplit_cloud_backend_calls_total{backend}`` / ``..._backend_items_total{backend}``:
  proof that refused requests cost no compute.

Labels come from the repository, never from unvalidated request fields (unknown names are
labelled ``_unknown``), so a hostile agent cannot blow up the label space.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

__all__ = ["UNKNOWN", "CloudMetrics"]

UNKNOWN = "_unknown"
_LAT = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0)
_BATCH = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)


class CloudMetrics:
    """The core's metric families in a private registry."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter("tiersplit_cloud_requests_total", "Requests answered, by status",
                                ["model", "cut", "status"], registry=r)
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

    def render(self) -> bytes:
        """The text exposition format for ``/metrics``."""
        return generate_latest(self.registry)
