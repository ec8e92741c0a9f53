"""The edge agent's configuration (``configs/edge.yaml``), validated once at start.

Every section is a frozen pydantic model with ``extra="forbid"``: an unknown key or a
wrong type is an error that names the key (``policy.explore_fraction: ...``), never a
silently ignored setting. Relative paths in a config file are resolved against the
file's directory (as ``cloud.yaml`` does), so a config and its keys can move together;
``tiersplit edge install`` writes absolute ones.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    model_validator,
)

from edge_agent.errors import ConfigError
from transport.config import ClientLinkConfig

__all__ = [
    "ApiConfig",
    "BundleConfig",
    "DeadlineConfig",
    "EdgeConfig",
    "EndpointConfig",
    "PolicyConfig",
    "RetryConfig",
    "RuntimeConfig",
    "format_validation_error",
    "load_config",
    "parse_config",
    "resolve_paths",
]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class BundleConfig(_Section):
    """Which bundle the agent serves and the key its manifest must be signed with.

    Attributes:
        path: the bundle directory (``<root>/<model>/<version>``).
        public_key: the cloud's Ed25519 signing public key (PEM ``.pub``). A bundle not
            signed by it is refused at start.
        allow_unsigned: accept a bundle with no signature when no ``public_key`` is set.
            Off by default: an edge device should only run what the cloud signed.
    """

    path: Path
    public_key: Path | None = None
    allow_unsigned: bool = False

    @model_validator(mode="after")
    def _key_or_explicit_opt_out(self) -> BundleConfig:
        if self.public_key is None and not self.allow_unsigned:
            raise ValueError("public_key is required (the cloud's signing key); set "
                             "allow_unsigned: true only for local experiments")
        return self


class EndpointConfig(_Section):
    """One cloud core the agent may send to.

    Attributes:
        name: a label used in status, metrics and logs.
        region: where the endpoint runs; compared with ``allowed_regions``.
        link: a transport client config (``kind: zmq`` or ``kind: mqtt``), exactly as
            ``transport.config`` defines it.
    """

    name: str = Field(min_length=1)
    region: str = "default"
    link: ClientLinkConfig


class ApiConfig(_Section):
    """The local Open Inference Protocol (KServe v2) HTTP endpoint for applications.

    Attributes:
        host: bind address; loopback by default (apps on the same device).
        port: TCP port; 0 picks a free one (printed in the ``READY`` line).
        token: optional bearer token apps must send (``Authorization: Bearer ...``).
        token_file: alternatively, a 0600 file holding the token (preferred: keeps the
            secret out of the config).
        max_body_bytes: requests larger than this get 413 before being read.
        model_name: the name apps use in ``/v2/models/<name>``; defaults to the
            bundle's model name.
        allow_cut_override: let a request force its cut with the ``tiersplit_cut``
            parameter — any cut, including ``cloud`` below the privacy floor (data
            residency still holds). For benchmarks and the demo's comparisons; off by
            default, and a request that tries it then gets 400.
    """

    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    token: SecretStr | None = None
    token_file: Path | None = None
    max_body_bytes: int = Field(64 << 20, gt=0)
    model_name: str | None = None
    allow_cut_override: bool = False

    @model_validator(mode="after")
    def _one_token_source(self) -> ApiConfig:
        if self.token is not None and self.token_file is not None:
            raise ValueError("set token or token_file, not both")
        return self


class RuntimeConfig(_Section):
    """ONNX Runtime settings on the device.

    Attributes:
        intra_op_threads: threads per ORT session run (the device's cores for the head).
        inter_op_threads: ORT inter-op threads.
        workers: requests processed concurrently (a sized executor).
        warmup_runs: untimed runs per model at start (ORT allocates on first runs).
        measure_runs: timed runs per model at start; the median seeds head latency.
        emulate_gmacs: emulate a slower device (tests, benchmarks, demos on a fast host):
            every ORT run lasts at least ``MACs / (emulate_gmacs * 1e9)`` seconds, the
            difference spent sleeping (no CPU), using the manifest's per-cut MAC counts.
            ``null`` (default) = the host's real speed.
    """

    intra_op_threads: int = Field(1, ge=1)
    inter_op_threads: int = Field(1, ge=1)
    workers: int = Field(4, ge=1)
    warmup_runs: int = Field(2, ge=0)
    measure_runs: int = Field(5, ge=1)
    emulate_gmacs: float | None = Field(None, gt=0)


class PolicyConfig(_Section):
    """Runtime placement.

    Attributes:
        privacy_floor: minimum cut depth sent to the cloud. 1 (default) keeps raw inputs
            on the device (the ``cloud`` cut is never used); 0 allows sending them.
        explore_fraction: share of requests that try a cut other than the predicted best
            (among those predicted within ``explore_max_ratio`` of it) so unused cuts'
            cloud timings and wire sizes stay fresh.
        explore_max_ratio: exploration never picks a cut predicted slower than this
            multiple of the best: it refreshes estimates without hurting tail latency.
        ewma_alpha: weight of a new (median-filtered) sample in the estimates.
        window: samples in the median filter that makes estimates robust to outliers.
        probe_interval_s: seconds between ping probes per endpoint (0 disables).
        probe_bytes: payload of the bandwidth probe (a second, empty ping gives RTT).
        initial_up_Bps: uplink bandwidth assumed before any measurement (bytes/s).
        initial_rtt_ms: RTT assumed before any measurement.
        hysteresis: keep the current cut unless another is predicted faster by more
            than this fraction (avoids flapping between near-equal cuts).
        fixed_cut: force one cut id (``edge`` = all local, ``cloud`` = raw inputs, or
            ``k<depth>``): for benchmarks and comparisons; bypasses the optimizer but
            not the privacy floor unless ``privacy_floor`` allows it.
        accuracy_floor: cuts whose int8 accuracy (manifest cosine) is lower are excluded.
        cloud_speedup: until an endpoint reports compute times, its tails are assumed
            this many times faster than this device (then measured values take over).
        seed: seed of the exploration RNG (reproducible runs).
    """

    privacy_floor: int = Field(1, ge=0)
    explore_fraction: float = Field(0.05, ge=0.0, le=1.0)
    explore_max_ratio: float = Field(2.0, ge=1.0)
    ewma_alpha: float = Field(0.3, gt=0.0, le=1.0)
    window: int = Field(5, ge=1, le=101)
    probe_interval_s: float = Field(2.0, ge=0.0)
    probe_bytes: int = Field(32 << 10, ge=0)
    initial_up_Bps: float = Field(1.25e6, gt=0)
    initial_rtt_ms: float = Field(50.0, ge=0)
    hysteresis: float = Field(0.05, ge=0.0, lt=1.0)
    fixed_cut: str | None = None
    accuracy_floor: float = Field(0.0, ge=0.0, le=1.0)
    cloud_speedup: float = Field(10.0, gt=0)
    seed: int | None = None


class DeadlineConfig(_Section):
    """Per-request deadlines.

    Attributes:
        default_ms: deadline of a request that names none.
        local_reserve: the cloud wait ends early enough to finish locally: this multiple
            of the measured local (int8 full model) time is kept in reserve.
        min_remote_ms: don't try a cloud endpoint with less time than this left.
    """

    default_ms: float = Field(2000.0, gt=0)
    local_reserve: float = Field(1.5, ge=0.0)
    min_remote_ms: float = Field(5.0, ge=0.0)


class RetryConfig(_Section):
    """Failover and circuit breaking.

    Attributes:
        max_endpoints: cloud endpoints one request may try before finishing locally.
        breaker_failures: consecutive failures that open an endpoint's breaker.
        breaker_open_s: how long an open breaker refuses before a half-open probe.
    """

    max_endpoints: int = Field(2, ge=1)
    breaker_failures: int = Field(3, ge=1)
    breaker_open_s: float = Field(5.0, gt=0)


class EdgeConfig(_Section):
    """The whole ``edge.yaml``.

    Attributes:
        agent_id: this device's id (its key's name in the cloud's allow-list).
        bundle: the bundle and its signing key.
        endpoints: cloud cores, tried in predicted-latency order. May be empty (all
            local).
        allowed_regions: data residency: only endpoints in these regions ever receive
            data. ``null`` allows every region.
        api: the local HTTP API.
        runtime: ONNX Runtime and concurrency.
        codec: wire codec of cut tensors (``raw``, ``fp16``, ``int8``, ``int8+lz4``...).
        policy, deadlines, retry: see their sections.
        placement_prior: optional ``configs/placement.yaml`` from ``tiersplit place
            tune``; used until the agent's own measurements are warm. Missing = none.
    """

    agent_id: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_.-]+$")
    bundle: BundleConfig
    endpoints: list[EndpointConfig] = Field(default_factory=list)
    allowed_regions: list[str] | None = None
    api: ApiConfig = Field(default_factory=ApiConfig)
    runtime: RuntimeConfig = Field(default_factory=RuntimeConfig)
    codec: str = "int8+lz4"
    policy: PolicyConfig = Field(default_factory=PolicyConfig)
    deadlines: DeadlineConfig = Field(default_factory=DeadlineConfig)
    retry: RetryConfig = Field(default_factory=RetryConfig)
    placement_prior: Path | None = None

    @model_validator(mode="after")
    def _unique_endpoint_names(self) -> EdgeConfig:
        names = [e.name for e in self.endpoints]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"endpoint names must be unique; repeated: {dup}")
        return self

    def region_allowed(self, region: str) -> bool:
        return self.allowed_regions is None or region in self.allowed_regions

    @property
    def resident_endpoints(self) -> list[EndpointConfig]:
        """Endpoints data may be sent to (data residency applied)."""
        return [e for e in self.endpoints if self.region_allowed(e.region)]


def format_validation_error(error: ValidationError, prefix: str = "") -> str:
    """One line per problem, each naming the key path (``api.port: ...``)."""
    lines = []
    for err in error.errors():
        loc = ".".join(str(p) for p in err["loc"] if not str(p).startswith("function-"))
        if prefix:
            loc = f"{prefix}.{loc}" if loc else prefix
        msg = "unknown key" if err["type"] == "extra_forbidden" else err["msg"]
        lines.append(f"{loc or '<root>'}: {msg}")
    return "; ".join(lines)


_LINK_PATH_KEYS = frozenset({"secret_key", "server_public_key", "ca_file", "client_cert",
                             "client_key", "password_file"})


def _abs(value: Any, base: Path) -> Any:
    if not isinstance(value, str):
        return value
    p = Path(value).expanduser()
    return str(p if p.is_absolute() else base / p)


def _resolve_link(data: Any, base: Path) -> Any:
    if isinstance(data, list):
        return [_resolve_link(x, base) for x in data]
    if not isinstance(data, dict):
        return data
    return {k: _abs(v, base) if k in _LINK_PATH_KEYS else _resolve_link(v, base)
            for k, v in data.items()}


def resolve_paths(data: dict[str, Any], base: Path) -> dict[str, Any]:
    """Every path-valued setting made absolute against ``base`` (the config's folder)."""
    out = dict(data)
    for section, keys in (("bundle", ("path", "public_key")), ("api", ("token_file",))):
        if isinstance(out.get(section), dict):
            out[section] = {k: _abs(v, base) if k in keys else v
                            for k, v in out[section].items()}
    if "placement_prior" in out:
        out["placement_prior"] = _abs(out["placement_prior"], base)
    if isinstance(out.get("endpoints"), list):
        out["endpoints"] = [
            {k: _resolve_link(v, base) if k == "link" else v for k, v in ep.items()}
            if isinstance(ep, dict) else ep for ep in out["endpoints"]]
    return out


def load_config(path: Path | str) -> EdgeConfig:
    """Read and validate an edge config file.

    Raises:
        ConfigError: the file is missing, not YAML, or invalid; the message names the
            offending keys.
    """
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except FileNotFoundError as e:
        raise ConfigError(f"edge config not found: {path}") from e
    except yaml.YAMLError as e:
        raise ConfigError(f"{path} is not valid YAML: {str(e).splitlines()[0]}") from e
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a mapping of settings, got {type(data).__name__}")
    return parse_config(resolve_paths(data, path.resolve().parent), source=str(path))


def parse_config(data: dict[str, Any], source: str = "<config>") -> EdgeConfig:
    """Validate an already-parsed config mapping (tests and in-process users)."""
    try:
        return EdgeConfig.model_validate(data)
    except ValidationError as e:
        raise ConfigError(f"invalid edge config {source}: {format_validation_error(e)}") \
            from None
