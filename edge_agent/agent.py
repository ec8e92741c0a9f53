"""The edge agent in one object: bundle, runtime, policy, cloud links, HTTP API.

``EdgeAgent(config).start()`` verifies the bundle (refusing an unsigned or tampered
one), measures the heads on this device, connects to the cloud endpoints the residency
rules allow, serves the local API (HTTP, and gRPC when ``api.grpc_port`` is set) and
tells systemd it is ready; ``stop()`` stops accepting, drains requests in flight and
closes the links. ``tiersplit edge run`` is a thin wrapper around it.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from contract.bundle import Bundle, Manifest
from contract.deadline import Deadline
from contract.privacy import judge_cuts
from contract.tracing import tracer_for
from edge_agent.client import EdgeClient
from edge_agent.config import AUTO_CODEC, EdgeConfig, load_config
from edge_agent.cuts import cut_infos_from_manifest
from edge_agent.endpoints import EndpointInfo, resident
from edge_agent.errors import AgentNotReady, BundleRefused, ConfigError, UpdateFailed
from edge_agent.metrics import EdgeMetrics
from edge_agent.policy import Policy
from edge_agent.result import RequestHandle
from edge_agent.runner import StatsSnapshot
from edge_agent.runtime import EdgeRuntime, load_edge_bundle
from edge_agent.systemd import apply_credentials, notify
from edge_agent.updater import Updater
from transport.base import ClientLink
from transport.errors import TransportError
from transport.keys import check_secret_permissions

__all__ = ["EdgeAgent"]

log = logging.getLogger(__name__)


def _load_prior(cfg: EdgeConfig, model: str) -> Any:
    """``(up_Bps, rtt_ms) -> cut`` from ``placement_prior``, or None (missing file, model
    not in it, or unreadable: the prior is an optimisation, never a reason not to start)."""
    path = cfg.placement_prior
    if path is None or not Path(path).exists():
        return None
    try:
        from placement import load_prior

        prior = load_prior(path)
    except (ImportError, ValueError) as e:
        log.warning("ignoring placement prior %s: %s", path, e)
        return None
    assigned = prior.agent_cut(cfg.agent_id)
    if assigned is not None:
        return lambda _up, _rtt: assigned
    if model not in prior.models:
        log.info("placement prior %s has no entry for %s; not used", path, model)
        return None
    return lambda up, rtt: prior.cut_for(model, up, rtt)


def _read_token(cfg: EdgeConfig) -> str | None:
    if cfg.api.token is not None:
        return cfg.api.token.get_secret_value()
    if cfg.api.token_file is not None:
        try:
            check_secret_permissions(Path(cfg.api.token_file))
            return Path(cfg.api.token_file).read_text().strip()
        except (TransportError, OSError) as e:
            raise ConfigError(f"api.token_file: {e}") from e
    return None


class EdgeAgent:
    """The daemon, in-process.

    Args:
        config: an :class:`EdgeConfig` or the path of an ``edge.yaml``.
        serve_http: start the local API (the benchmarks drive :meth:`infer` directly).
    """

    def __init__(self, config: EdgeConfig | Path | str, *, serve_http: bool = True) -> None:
        # under systemd, secrets come from LoadCredential= ($CREDENTIALS_DIRECTORY)
        self.config = apply_credentials(
            config if isinstance(config, EdgeConfig) else load_config(config))
        self.serve_http = serve_http
        self.metrics = EdgeMetrics()
        self.runtime: EdgeRuntime | None = None
        self.policy: Policy | None = None
        self.client: EdgeClient | None = None
        self.tracer = tracer_for(self.config.tracing, "tiersplit-edge")
        self._grpc: Any = None
        self.updater: Updater | None = None
        self._server: Any = None
        self._server_thread: threading.Thread | None = None
        self._sock: socket.socket | None = None
        self._ready = False
        self._started_at = 0.0
        self._lock = threading.Lock()
        self._state = "new"

    # ---- lifecycle ---------------------------------------------------------------

    def start(self, timeout: float = 30.0) -> EdgeAgent:
        """Load, measure, connect and serve. Raises if called twice.

        Raises:
            BundleRefused: the bundle is unsigned/tampered/wrongly signed.
            ConfigError: a key or token file is unusable, or ``fixed_cut`` is invalid.
        """
        with self._lock:
            if self._state != "new":
                raise RuntimeError(f"EdgeAgent already {self._state}")
            self._state = "starting"
        cfg = self.config
        try:
            token = _read_token(cfg)
            bundle = load_edge_bundle(cfg.bundle.path, cfg.bundle.public_key,
                                      cfg.bundle.allow_unsigned)
            self.policy = self._make_policy(bundle)
            self.runtime = self._make_runtime(bundle, self.policy)
            links = self._connect()
            self.client = EdgeClient(self.runtime, self.policy, links, cfg, self.metrics)
            self.client.start()
            if cfg.update.state_dir is not None:
                key = None
                if cfg.bundle.public_key is not None:
                    from transport.keys import load_ed25519_public

                    key = load_ed25519_public(cfg.bundle.public_key)
                self.updater = Updater(self, cfg.update, key, cfg.agent_id, bundle,
                                       self.metrics)
                self.updater.start()
            if self.serve_http:
                self._start_http(token, timeout)
        except BaseException:
            self._teardown()
            with self._lock:
                self._state = "failed"
            raise
        self._started_at = time.time()
        self._ready = True
        with self._lock:
            self._state = "running"
        notify("READY=1")  # Type=notify: systemctl start returns once the agent serves
        log.info("edge agent %s serving %s v%s (digest %s…) on %s", cfg.agent_id,
                 bundle.name, bundle.version, bundle.digest[:12], self.http_url or "no HTTP")
        return self

    def _make_policy(self, bundle: Bundle) -> Policy:
        cfg = self.config
        cuts = cut_infos_from_manifest(bundle.manifest)
        endpoints = [EndpointInfo(e.name, e.region) for e in cfg.endpoints]
        # the floor is judged on the signed manifest: its privacy audit states the risk
        verdicts = judge_cuts(bundle.manifest, cfg.policy.privacy_floor,
                              None if cfg.codec == AUTO_CODEC else cfg.codec)
        policy_cfg = cfg.policy
        if policy_cfg.accuracy_floor is None:  # the floor the partitioner shipped
            policy_cfg = policy_cfg.model_copy(update={
                "accuracy_floor": bundle.manifest.quantization.accuracy_floor})
        try:
            return Policy(cuts, endpoints, policy_cfg, cfg.codec,
                          allowed_regions=cfg.allowed_regions,
                          prior=_load_prior(cfg, bundle.name), privacy=verdicts)
        except ValueError as e:
            raise ConfigError(str(e)) from e

    def _make_runtime(self, bundle: Bundle, policy: Policy) -> EdgeRuntime:
        """ORT sessions of ``bundle``, warmed and measured on this device."""
        rt = self.config.runtime
        runtime = EdgeRuntime(bundle, intra_op_threads=rt.intra_op_threads,
                              inter_op_threads=rt.inter_op_threads,
                              on_timing=policy.estimates.observe_head,
                              emulate_gmacs=rt.emulate_gmacs)
        runtime.measure(rt.warmup_runs, rt.measure_runs)
        return runtime

    # ---- what the updater needs (edge_agent.updater.UpdateHost) ----------------------

    def links(self) -> list[ClientLink]:
        return self.client.links() if self.client is not None else []

    def current_bundle(self) -> Bundle:
        if self.runtime is None:
            raise AgentNotReady("the agent has not started")
        return self.runtime.bundle

    def request_counts(self) -> tuple[int, int, int, float, float]:
        """What the agent reports to the cloud: (requests finished, cloud attempts the
        cloud answered, of those with an error status, recent p50 ms, recent p99 ms);
        counters since start, a request that failed outright counting as an answered
        attempt in error."""
        if self.client is None:
            return 0, 0, 0, 0.0, 0.0
        c = self.client.counts_by_path()
        failed = c.get("error", 0)
        done = sum(c.get(k, 0) for k in ("remote", "device", "fallback")) + failed
        answered, errors = self.client.tally.replies()
        p50, p99 = self.client.tally.percentiles()
        return done, answered + failed, errors + failed, p50, p99

    def switch(self, bundle: Bundle) -> None:
        """Load ``bundle`` (verified), warm it, and serve new requests from it; requests
        in flight finish on the version they started on.

        Raises:
            UpdateFailed: (``load``) ONNX Runtime refused the bundle; nothing changed.
        """
        if self.client is None or self.runtime is None or self.policy is None:
            raise UpdateFailed("load", "the agent is not running")
        old = self.runtime.manifest
        same_cuts = ([(c.id, c.tensors) for c in old.cuts]
                     == [(c.id, c.tensors) for c in bundle.manifest.cuts])
        try:
            policy = self.policy if same_cuts else self._make_policy(bundle)
            runtime = self._make_runtime(bundle, policy)
        except (BundleRefused, ConfigError) as e:
            raise UpdateFailed("load", str(e)) from e
        self.client.swap(runtime, policy)
        self.runtime, self.policy = runtime, policy

    def _connect(self) -> dict[str, ClientLink]:
        from transport import make_client_link

        links: dict[str, ClientLink] = {}
        allowed = resident(self.config.endpoints, self.config.allowed_regions)
        for ep in self.config.endpoints:
            if ep not in allowed:
                log.info("endpoint %s (region %s) excluded by allowed_regions", ep.name,
                         ep.region)
                continue
            try:
                links[ep.name] = make_client_link(ep.link, self.config.agent_id)
            except TransportError as e:
                for link in links.values():
                    link.close()
                raise ConfigError(f"endpoint {ep.name}: {e}") from e
        return links

    def _start_http(self, token: str | None, timeout: float) -> None:
        import uvicorn

        from edge_agent.api import build_app

        api = self.config.api
        app = build_app(self, token=token, max_body_bytes=api.max_body_bytes,
                        tracer=self.tracer)
        sock = socket.socket(socket.AF_INET6 if ":" in api.host else socket.AF_INET)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((api.host, api.port))
        except OSError as e:
            sock.close()
            raise ConfigError(f"api: cannot listen on {api.host}:{api.port}: {e}") from e
        self._sock = sock
        config = uvicorn.Config(app, log_level="warning", lifespan="off", access_log=False,
                                timeout_graceful_shutdown=5)
        self._server = uvicorn.Server(config)
        self._server_thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [sock]}, daemon=True,
            name="edge-http")
        self._server_thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if not self._server_thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the HTTP API did not start within "
                                   f"{timeout:.0f}s on {api.host}:{api.port}")
            time.sleep(0.01)
        if api.grpc_port is not None:
            self._start_grpc(token)

    def _start_grpc(self, token: str | None) -> None:
        from edge_agent.grpc_api import GrpcServer

        api = self.config.api
        try:
            self._grpc = GrpcServer(self, api.host, api.grpc_port or 0, token=token,
                                    workers=self.config.runtime.workers + 4,
                                    max_message_bytes=api.max_body_bytes, tracer=self.tracer)
        except OSError as e:
            raise ConfigError(f"api.grpc_port: {e}") from e
        self._grpc.start()

    def stop(self, grace: float = 10.0) -> None:
        """Stop accepting, drain requests in flight (up to ``grace`` s), close links."""
        with self._lock:
            if self._state in ("stopped", "new"):
                self._state = "stopped"
                return
            self._state = "stopping"
        notify("STOPPING=1")
        self._ready = False
        self._teardown(grace)
        with self._lock:
            self._state = "stopped"
        log.info("edge agent %s stopped", self.config.agent_id)

    def _teardown(self, grace: float = 10.0) -> None:
        # New requests get 503 from here on; the HTTP server stops accepting and waits
        # for the responses in flight while the client still serves them; then the
        # client drains what was submitted in-process and closes the links.
        self._ready = False
        if self._grpc is not None:
            self._grpc.stop(grace)
        if self.updater is not None:
            self.updater.stop()
        if self._server is not None:
            self._server.should_exit = True
            if self._server_thread is not None:
                self._server_thread.join(timeout=grace)
        if self.client is not None:
            self.client.close(drain_s=grace)
        if self._sock is not None:
            self._sock.close()

    def __enter__(self) -> EdgeAgent:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ---- the dataplane the API adapts ----------------------------------------------

    @property
    def ready(self) -> bool:
        return self._ready

    @property
    def manifest(self) -> Manifest:
        if self.runtime is None:
            raise AgentNotReady("the agent has not started")
        return self.runtime.manifest

    @property
    def model_name(self) -> str:
        return self.config.api.model_name or self.manifest.name

    @property
    def http_url(self) -> str | None:
        if self._sock is None:
            return None
        host, port = self._sock.getsockname()[:2]
        return f"http://{'[' + host + ']' if ':' in host else host}:{port}"

    @property
    def grpc_url(self) -> str | None:
        """``host:port`` of the gRPC API (``tritonclient.grpc`` form), or None when off."""
        return self._grpc.url if self._grpc is not None else None

    @property
    def allow_cut_override(self) -> bool:
        return self.config.api.allow_cut_override

    def infer(self, inputs: dict[str, np.ndarray], deadline_ms: float | None = None,
              request_id: str | None = None, cut: str | None = None, *,
              deadline: Deadline | None = None,
              traceparent: str | None = None) -> RequestHandle:
        """Run one request (validated now, executed on a worker).

        The time budget is ``deadline`` if given, else ``deadline_ms`` from now, else the
        configured default. ``traceparent`` (W3C) continues the caller's trace.

        Raises:
            AgentNotReady: not started or stopping.
            InvalidInput: inputs do not match the model.
            Overloaded: too many requests queued.
        """
        if not self._ready or self.client is None:
            raise AgentNotReady("the edge agent is not running")
        return self.client.submit(inputs, deadline_ms, request_id, cut, deadline=deadline,
                                  traceparent=traceparent)

    def stats(self) -> StatsSnapshot:
        """Cumulative request statistics (the v2 ``/stats`` endpoints)."""
        return self.client.tally.stats() if self.client is not None else StatsSnapshot()

    def wait_connected(self, timeout: float = 10.0, count: int = 1) -> bool:
        """Block until ``count`` endpoints are connected (tests, benchmarks)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if sum(e["connected"] for e in self.status()["endpoints"].values()) >= count:
                return True
            time.sleep(0.05)
        return False

    def status(self) -> dict[str, Any]:
        """Bundle, endpoints, estimates, current cut, counts by path (``/status``; paths
        are ``remote``, ``device`` and ``fallback``, plus ``error``, ``cascade_local`` /
        ``cascade_split`` and ``fallback_<what finished it>``), the privacy floor's
        barred cuts (under ``policy``), and the device's model runs by model key."""
        cfg = self.config
        out: dict[str, Any] = {"agent_id": cfg.agent_id, "state": self._state,
                               "ready": self._ready, "http": self.http_url,
                               "grpc": self.grpc_url,
                               "uptime_s": round(time.time() - self._started_at, 3)
                               if self._started_at else 0.0}
        if self.runtime is not None:
            b = self.runtime.bundle
            out["bundle"] = {"model": b.name, "version": b.version, "digest": b.digest,
                             "signed": b.signed, "path": str(b.path),
                             "cuts": b.manifest.cut_ids}
            out["model_name"] = self.model_name
            out["update"] = (self.updater.status() if self.updater is not None
                             else {"current": b.version, "staged": "", "previous": "",
                                   "kept": [], "error": "", "switches": 0})
        eps: dict[str, Any] = {}
        live = self.client.endpoint_status() if self.client is not None else {}
        allowed = resident(cfg.endpoints, cfg.allowed_regions)
        for ep in cfg.endpoints:
            if ep.name in live:
                eps[ep.name] = live[ep.name]
            else:
                eps[ep.name] = {"region": ep.region, "connected": False,
                                "excluded": None if ep in allowed
                                else "region not in allowed_regions"}
        out["endpoints"] = eps
        out["allowed_regions"] = cfg.allowed_regions
        if self.policy is not None:
            pol = self.policy.snapshot()
            out["policy"] = pol
            out["current_cut"] = pol["current_cut"]
        out["counts"] = self.client.counts_by_path() if self.client is not None else {}
        casc = cfg.policy.cascade
        out["cascade"] = {"enabled": casc.enabled, "threshold": casc.threshold,
                          "kind": casc.kind}
        if self.runtime is not None:
            out["device_tails"] = sorted(c.id for c in self.runtime.manifest.cuts
                                         if self.runtime.has_tail(c.id))
            out["device_runs"] = dict(self.runtime.runs)
        return out

    def metrics_text(self) -> bytes:
        return self.metrics.render(self.status())

