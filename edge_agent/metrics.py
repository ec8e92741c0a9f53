"""Prometheus metrics of one agent (its own registry: several agents may share a process).

Names:
    tiersplit_edge_requests_total{path,outcome}   path = cut id, ``edge`` or ``local``;
                                                  outcome = ok | fallback | error
    tiersplit_edge_request_seconds{path}          end-to-end latency histogram
    tiersplit_edge_failovers_total{endpoint,reason}
    tiersplit_edge_cascade_total{outcome}         outcome = local (the device's answer
                                                  stood) | split (went on to the policy)
    tiersplit_edge_fallbacks_total{kind}          what finished a request after a failed
                                                  cloud attempt: device_tail | cascade |
                                                  full
    tiersplit_edge_current_cut{cut}               1 for the cut the policy uses now
    tiersplit_edge_current_cut_depth              its depth (0 = cloud)
    tiersplit_edge_uplink_bytes_per_second{endpoint}, tiersplit_edge_rtt_seconds{endpoint},
    tiersplit_edge_cloud_queue_seconds{endpoint}  the policy's estimates
    tiersplit_edge_endpoint_connected{endpoint}, tiersplit_edge_breaker_open{endpoint}
    tiersplit_edge_head_seconds{cut}              measured head latency on the device
    tiersplit_edge_codec{cut,codec}               1 for the wire codec the last choice used
    tiersplit_edge_traceparents_ignored_total     malformed W3C traceparents ignored
                                                  (counted per process)
    tiersplit_edge_update_bytes_total             bundle bytes downloaded (model updates)
    tiersplit_edge_update_failures_total{reason}  failed updates: transport | verify | disk
                                                  | io | load (the agent kept serving)
    tiersplit_edge_model_version_info{current,staged,previous}
                                                  1, labelled with the running version,
                                                  the one being fetched, the one before

Every duration is in seconds (the Prometheus base unit), whatever unit the agent's own
status uses.
"""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from contract.tracing import TraceparentCollector

__all__ = ["CONTENT_TYPE", "EdgeMetrics"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class EdgeMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("tiersplit_edge_requests", "Requests by path and outcome",
                                ["path", "outcome"], registry=r)
        self.latency = Histogram("tiersplit_edge_request_seconds", "End-to-end latency",
                                 ["path"], buckets=_BUCKETS, registry=r)
        self.failovers = Counter("tiersplit_edge_failovers", "Failed cloud attempts",
                                 ["endpoint", "reason"], registry=r)
        self.cascade_outcomes = Counter("tiersplit_edge_cascade", "Cascade outcomes",
                                        ["outcome"], registry=r)
        self.fallbacks = Counter("tiersplit_edge_fallbacks", "Fallbacks by what finished "
                                 "the request", ["kind"], registry=r)
        self.current_cut = Gauge("tiersplit_edge_current_cut", "1 for the current cut",
                                 ["cut"], registry=r)
        self.current_depth = Gauge("tiersplit_edge_current_cut_depth",
                                   "Depth of the current cut", registry=r)
        self.up = Gauge("tiersplit_edge_uplink_bytes_per_second", "Estimated uplink",
                        ["endpoint"], registry=r)
        self.rtt = Gauge("tiersplit_edge_rtt_seconds", "Estimated RTT", ["endpoint"],
                         registry=r)
        self.queue = Gauge("tiersplit_edge_cloud_queue_seconds", "Estimated cloud queueing",
                           ["endpoint"], registry=r)
        self.connected = Gauge("tiersplit_edge_endpoint_connected", "Link up",
                               ["endpoint"], registry=r)
        self.breaker = Gauge("tiersplit_edge_breaker_open", "Breaker open (1) or not",
                             ["endpoint"], registry=r)
        r.register(TraceparentCollector("tiersplit_edge"))
        self.head = Gauge("tiersplit_edge_head_seconds", "Head latency on this device",
                             ["cut"], registry=r)
        self.update_bytes = Counter("tiersplit_edge_update_bytes",
                                    "Bundle bytes downloaded for model updates", registry=r)
        self.update_failures = Counter("tiersplit_edge_update_failures",
                                       "Model updates that failed (the agent kept serving)",
                                       ["reason"], registry=r)
        self.version_info = Gauge("tiersplit_edge_model_version_info",
                                  "Bundle versions: running, being fetched, previous",
                                  ["current", "staged", "previous"], registry=r)
        self.codec = Gauge("tiersplit_edge_codec", "1 for the wire codec the last choice "
                           "sent its cut with, 0 for the cut's other candidates",
                           ["cut", "codec"], registry=r)

    # the sink EdgeClient calls
    def request(self, path: str, outcome: str, seconds: float) -> None:
        self.requests.labels(path, outcome).inc()
        self.latency.labels(path).observe(seconds)

    def failover(self, endpoint: str, reason: str) -> None:
        self.failovers.labels(endpoint, reason).inc()

    def cascade(self, outcome: str) -> None:
        self.cascade_outcomes.labels(outcome).inc()

    def fallback(self, kind: str) -> None:
        self.fallbacks.labels(kind).inc()

    def render(self, status: dict[str, Any]) -> bytes:
        """Refresh the gauges from an agent status snapshot, then serialise."""
        policy = status.get("policy", {})
        current = policy.get("current_cut")
        for cut_id, info in policy.get("cuts", {}).items():
            self.current_cut.labels(cut_id).set(1.0 if cut_id == current else 0.0)
            self.head.labels(cut_id).set((info.get("head_ms") or 0.0) / 1e3)
            if cut_id == current:
                self.current_depth.set(info.get("depth", 0))
        last = policy.get("last_choice") or {}
        chosen = (last.get("cut"), last.get("codec"))
        for cut_id, info in policy.get("cuts", {}).items():
            for codec in info.get("codecs", []):
                self.codec.labels(cut_id, codec).set(1.0 if (cut_id, codec) == chosen else 0.0)
        for name, est in policy.get("endpoints", {}).items():
            self.up.labels(name).set(est.get("up_Bps") or 0.0)
            self.rtt.labels(name).set((est.get("rtt_ms") or 0.0) / 1e3)
            self.queue.labels(name).set((est.get("queue_ms") or 0.0) / 1e3)
        for name, ep in status.get("endpoints", {}).items():
            self.connected.labels(name).set(1.0 if ep.get("connected") else 0.0)
            self.breaker.labels(name).set(0.0 if ep.get("breaker") == "closed" else 1.0)
        upd = status.get("update")
        if upd is not None:
            self.version_info.clear()
            self.version_info.labels(upd.get("current", ""), upd.get("staged", ""),
                                     upd.get("previous", "")).set(1.0)
        return generate_latest(self.registry)
