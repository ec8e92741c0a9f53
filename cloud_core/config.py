"""``cloud.yaml``: the cloud core's configuration, validated once at the entry point.

Built on :mod:`contract.config`: every section is a frozen
:class:`~contract.config.StrictModel`, so a misspelt key fails at start-up with its
dotted path (``batching.max_batchh: unknown key``) instead of being silently ignored;
path settings are :data:`~contract.config.ConfigPath`, resolved against the directory of
the YAML file, so a config and its repository/keys can move together; and any setting can
be overridden from the environment (``TIERSPLIT_BATCHING__MAX_BATCH=32``), see
:func:`contract.config.load_yaml`.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, model_validator

from cloud_core.errors import ConfigError
from contract import config as kit
from contract.config import ConfigPath, StrictModel, is_loopback
from contract.tracing import TracingConfig
from transport.config import ServerLinkConfig

log = logging.getLogger(__name__)

__all__ = [
    "AdminConfig",
    "BackendConfig",
    "BatchingConfig",
    "CloudConfig",
    "DebugConfig",
    "HttpConfig",
    "LimitsConfig",
    "ModelRef",
    "RolloutConfig",
    "load_config",
    "parse_config",
]


class ModelRef(StrictModel):
    """Which bundle versions of one model to load at start.

    ``versions: ["latest"]`` loads the highest version found (numeric order when the
    version strings are integers, else lexical); ``["all"]`` every version on disk.
    ``pin`` makes a version the active one from the start (see :mod:`cloud_core.repository`).
    """

    name: str
    versions: list[str] = Field(default_factory=lambda: ["latest"], min_length=1)
    pin: str | None = None


class BatchingConfig(StrictModel):
    """Dynamic batching, applied per (model, version, cut) queue.

    ``max_batch`` counts samples (the batch dimension), not requests; a request bigger
    than ``max_batch`` is refused as INVALID_INPUT. ``max_queue_delay_ms`` is how long the
    first request of a batch may wait for company once a worker is free; it goes earlier
    when no request has arrived for ``idle_gap_ms`` (default: a quarter of the delay;
    ``disable_idle_gap: true`` waits the full delay, as Triton does). ``adaptive_delay``
    skips the wait on queues where it has not paid off lately (a lone sender), probing
    every 16th batch; ``false`` always waits, as Triton does. ``max_queue``
    bounds waiting requests per queue; beyond it requests get OVERLOADED (back-pressure).
    """

    max_batch: int = Field(16, ge=1, le=4096)
    max_queue_delay_ms: float = Field(2.0, ge=0, le=10_000)
    idle_gap_ms: float | None = Field(
        None, ge=0, description="send a partial batch once no request arrived for this "
        "long; default a quarter of max_queue_delay_ms")
    disable_idle_gap: bool = False
    adaptive_delay: bool = Field(
        True, description="stop waiting on queues where waiting has not gathered company "
        "lately (every 16th batch still waits, to notice new senders)")
    max_queue: int = Field(256, ge=1)

    @property
    def idle_gap_s(self) -> float | None:
        """The idle gap in seconds, or None to always wait the full queue delay."""
        if self.disable_idle_gap:
            return None
        gap = self.idle_gap_ms if self.idle_gap_ms is not None else self.max_queue_delay_ms / 4
        return gap / 1e3


class BackendConfig(StrictModel):
    """Which engine runs the tails.

    ``onnxruntime`` (default) uses the CUDA execution provider when ``device`` is
    ``auto``/``cuda`` and ORT has it, else CPU. ``torch`` runs ``tail-<cut>.pt2``
    (``torch.export``) when the bundle lists one, else the fp32 ONNX tail through
    tiersplit's ONNX->torch interpreter. ``triton`` forwards whole batches to a Triton
    server (models named as ``tiersplit cloud export-triton`` writes them).
    """

    kind: Literal["onnxruntime", "torch", "triton"] = "onnxruntime"
    device: Literal["auto", "cpu", "cuda"] = "auto"
    threads: int = Field(0, ge=0, description="intra-op threads per session; 0 = engine default")
    triton_url: str = "127.0.0.1:8001"
    triton_protocol: Literal["grpc", "http"] = "grpc"
    triton_timeout_s: float = Field(30.0, gt=0)


class HttpConfig(StrictModel):
    """Metrics, health and admin API. ``port: 0`` picks a free port (printed at start)."""

    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = Field(9300, ge=0, le=65535)


class AdminConfig(StrictModel):
    """The admin API's own listener (load, unload, pin, rollback, keys reload).

    Closed by default: on loopback without credentials every call is refused; on any other
    address ``token_file`` or ``client_ca`` is required (a config error otherwise), so a
    pod address never exposes model control to whoever can reach it. ``port: 0`` picks a
    free port. ``audit_log`` unset writes JSON lines to the ``tiersplit.audit`` logger.
    """

    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = Field(9301, ge=0, le=65535)
    token_file: ConfigPath | None = Field(
        None, description="bearer token file (0600 or a Kubernetes Secret); SIGHUP re-reads it")
    client_ca: ConfigPath | None = Field(
        None, description="CA that client certificates must chain to (mTLS); needs "
        "server_cert and server_key")
    server_cert: ConfigPath | None = None
    server_key: ConfigPath | None = None
    audit_log: ConfigPath | None = Field(
        None, description="JSON-lines audit file; unset: the 'tiersplit.audit' logger")
    auth_failures_per_minute: int = Field(10, ge=1)

    @model_validator(mode="after")
    def _credentials_off_loopback(self) -> AdminConfig:
        if self.client_ca is not None and (self.server_cert is None or self.server_key is None):
            raise ValueError("admin.client_ca needs admin.server_cert and admin.server_key "
                             "(mTLS serves TLS itself)")
        if (self.server_cert is None) != (self.server_key is None):
            raise ValueError("admin.server_cert and admin.server_key go together")
        if not is_loopback(self.host) and self.token_file is None and self.client_ca is None:
            raise ValueError(f"admin.host {self.host!r} is not loopback and the admin API has "
                             "no credentials: set admin.token_file (a bearer token file) or "
                             "admin.client_ca, or bind admin.host: 127.0.0.1")
        return self


class LimitsConfig(StrictModel):
    """Per-request size limits checked before anything is queued."""

    max_request_bytes: int = Field(64 << 20, ge=1)


class DebugConfig(StrictModel):
    """Fault injection for reliability tests. Leave at defaults in production.

    ``tail_delay_ms`` adds that much sleep to every batch's compute (a "slow cloud"); it is
    included in the reply's ``compute_ms`` so agents' placement sees it.
    """

    tail_delay_ms: float = Field(0.0, ge=0)


class RolloutConfig(StrictModel):
    """Fleet rollouts (``tiersplit fleet``): where plans persist and how agents report.

    Attributes:
        state_file: the plans, as JSON (default ``<repository>/.rollouts.json``, next to
            the bundles: a restarted core resumes its plans).
        window_s: the window per-version request rates, error rates and percentiles are
            computed over (agents report every second or so).
        serve_bundles: answer agents' downloads of edge files (heads, device tails, int8
            full model, manifest, signature) on their authenticated links.
    """

    state_file: ConfigPath | None = None
    window_s: float = Field(30.0, gt=0)
    serve_bundles: bool = True


class CloudConfig(StrictModel):
    """The whole ``cloud.yaml``. See ``configs/cloud.yaml`` for a documented example."""

    repository: ConfigPath
    signing_public_key: ConfigPath | None = None
    allow_unsigned: bool = False
    models: list[ModelRef] = Field(default_factory=list)
    transports: list[ServerLinkConfig] = Field(default_factory=list)
    batching: BatchingConfig = Field(default_factory=BatchingConfig)
    backend: BackendConfig = Field(default_factory=BackendConfig)
    executor_workers: int = Field(2, ge=1, le=256)
    http: HttpConfig = Field(default_factory=HttpConfig)
    admin: AdminConfig = Field(default_factory=AdminConfig)
    limits: LimitsConfig = Field(default_factory=LimitsConfig)
    grace_s: float = Field(10.0, ge=0)
    debug: DebugConfig = Field(default_factory=DebugConfig)
    #: OpenTelemetry spans (queue, batch, backend) continuing the agents' traces; off by
    #: default (see ``contract.tracing.TracingConfig``).
    tracing: TracingConfig = Field(default_factory=TracingConfig)
    rollout: RolloutConfig = Field(default_factory=RolloutConfig)

    @model_validator(mode="before")
    @classmethod
    def _move_deprecated_token(cls, data: Any) -> Any:
        # http.admin_token_file predates the separate admin listener; it now means
        # admin.token_file (the admin API no longer shares the metrics port).
        http = data.get("http") if isinstance(data, dict) else None
        if isinstance(http, dict) and "admin_token_file" in http:
            http = dict(http)
            token = http.pop("admin_token_file")
            admin = dict(data.get("admin") or {})
            admin.setdefault("token_file", token)
            data = {**data, "http": http, "admin": admin}
            log.warning("http.admin_token_file is deprecated; use admin.token_file")
        return data

    @model_validator(mode="after")
    def _key_or_unsigned(self) -> CloudConfig:
        if self.signing_public_key is None and not self.allow_unsigned:
            raise ValueError("signing_public_key is required unless allow_unsigned: true "
                             "(bundles are verified with it on load)")
        return self


def parse_config(data: dict[str, Any], base: Path | str | None = None,
                 source: str = "<config>") -> CloudConfig:
    """Validate an already-parsed mapping (tests and embedding); relative paths resolve
    against ``base`` (default: the working directory).

    Raises:
        ConfigError: naming each offending key.
    """
    try:
        return kit.parse(CloudConfig, data, source=f"cloud config {source}", base=base)
    except kit.ConfigError as e:
        raise ConfigError(str(e)) from None


def load_config(path: Path | str) -> CloudConfig:
    """Read and validate ``cloud.yaml`` (environment overrides applied, see
    :func:`contract.config.load_yaml`).

    Raises:
        ConfigError: missing file, bad YAML, or a schema error naming the key.
    """
    try:
        return kit.load_yaml(path, CloudConfig, what="cloud config")
    except kit.ConfigError as e:
        raise ConfigError(str(e)) from None
