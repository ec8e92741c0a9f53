"""The edge agent's configuration (``configs/edge.yaml``), validated once at start.

Every section is a ``contract.config.StrictModel``: an unknown key or a wrong type is an
error that names the key (``policy.explore_fraction: ...``), never a silently ignored
setting. Path-valued settings are ``ConfigPath``: relative ones are resolved against the
config file's folder (as ``cloud.yaml`` does), so a config and its keys can move
together; ``tiersplit edge install`` writes absolute ones.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, SecretStr, field_validator, model_validator

from contract import config as kit
from contract.config import ConfigPath, StrictModel, is_loopback
from contract.privacy import PrivacyFloor
from contract.tracing import TracingConfig
from edge_agent.endpoints import region_allowed, resident
from edge_agent.errors import ConfigError
from transport.codecs import parse_spec
from transport.config import ClientLinkConfig
from transport.errors import CodecError

__all__ = [
    "ApiConfig",
    "BundleConfig",
    "CascadeConfig",
    "DeadlineConfig",
    "EdgeConfig",
    "EndpointConfig",
    "PolicyConfig",
    "RetryConfig",
    "RuntimeConfig",
    "UpdateConfig",
    "load_config",
    "parse_config",
]

#: ``codec: auto``: choose the codec with the cut; ``AUTO_BASE_CODEC`` is measured live.
AUTO_CODEC = "auto"
AUTO_BASE_CODEC = "int8+lz4"


class BundleConfig(StrictModel):
    """Which bundle the agent serves and the key its manifest must be signed with.

    Attributes:
        path: the bundle directory (``<root>/<model>/<version>``).
        public_key: the cloud's Ed25519 signing public key (PEM ``.pub``). A bundle not
            signed by it is refused at start.
        allow_unsigned: accept a bundle with no signature when no ``public_key`` is set.
            Off by default: an edge device should only run what the cloud signed.
    """

    path: ConfigPath
    public_key: ConfigPath | None = None
    allow_unsigned: bool = False

    @model_validator(mode="after")
    def _key_or_explicit_opt_out(self) -> BundleConfig:
        if self.public_key is None and not self.allow_unsigned:
            raise ValueError("public_key is required (the cloud's signing key); set "
                             "allow_unsigned: true only for local experiments")
        return self


class EndpointConfig(StrictModel):
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


class ApiConfig(StrictModel):
    """The local Open Inference Protocol (KServe v2) HTTP endpoint for applications.

    Attributes:
        host: bind address; loopback by default (apps on the same device). Any other
            address needs ``token`` or ``token_file`` (a config error otherwise).
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
        grpc_port: also serve the protocol over gRPC (``GRPCInferenceService``, what
            ``tritonclient.grpc`` speaks) on this port of ``host``, with the same token
            rule; 0 picks a free port. ``null`` (default): no gRPC listener — one more
            open port and a thread pool only for apps that ask for them.
    """

    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    token: SecretStr | None = None
    token_file: ConfigPath | None = None
    max_body_bytes: int = Field(64 << 20, gt=0)
    model_name: str | None = None
    allow_cut_override: bool = False
    grpc_port: int | None = Field(None, ge=0, le=65535)

    @model_validator(mode="after")
    def _one_token_source(self) -> ApiConfig:
        if self.token is not None and self.token_file is not None:
            raise ValueError("set token or token_file, not both")
        if not is_loopback(self.host) and self.token is None and self.token_file is None:
            raise ValueError(f"api.host {self.host!r} is not loopback and the API has no "
                             "credentials: set api.token_file (a 0600 bearer token file) or "
                             "bind api.host: 127.0.0.1")
        return self


class RuntimeConfig(StrictModel):
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


#: The built-in confidence scores of the cascade (a hook names ``pkg.mod:fn`` instead).
CASCADE_KINDS = ("max-softmax", "margin")
_HOOK = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")


class CascadeConfig(StrictModel):
    """Answer easy inputs on the device alone: the int8 full model runs first and its
    answer stands when its confidence reaches ``threshold``; otherwise the request goes
    on to the placement policy's path (the device's answer is kept: it serves the
    ``edge`` cut and a fallback, and is never computed twice).

    Attributes:
        enabled: run the cascade (off by default: every request then pays for the full
            model on the device first, which only pays off when many inputs are easy).
        threshold: confidence at or above which the device's answer stands. Pick it with
            ``placement.cascade.tune_threshold`` on held-back data for a target agreement
            with the full-precision model.
        kind: the confidence score: ``max-softmax`` (largest class probability),
            ``margin`` (top-1 minus top-2 probability) or a hook ``pkg.mod:fn`` called
            with the output array ``[batch, ...]`` and returning one score per sample.
        output: the output holding the logits (default: the model's first output).
    """

    enabled: bool = False
    threshold: float = Field(0.9, ge=0.0)
    kind: str = "max-softmax"
    output: str | None = None

    @field_validator("kind")
    @classmethod
    def _known_kind(cls, value: str) -> str:
        if value not in CASCADE_KINDS and not _HOOK.match(value):
            raise ValueError(f"expected one of {list(CASCADE_KINDS)} or a hook 'pkg.mod:fn', "
                             f"got {value!r}")
        return value


class PolicyConfig(StrictModel):
    """Runtime placement.

    Attributes:
        privacy_floor: which cuts may send data. An integer is a minimum cut depth: 1
            (default) keeps raw inputs on the device (the ``cloud`` cut is never used); 0
            allows sending them. A mapping states the floor as risk (``min_depth``,
            ``max_reconstruction``, ``max_dcor``, ``unaudited``; see
            ``contract.privacy.PrivacyFloor``): cuts whose audited reconstruction quality
            in the bundle's signed privacy audit exceeds the bound are never sent, and
            ``/status`` says which cuts are barred and why.
        explore_fraction: share of requests that try a cut other than the predicted best
            (among those predicted within ``explore_max_ratio`` of it) so unused cuts'
            cloud timings and wire sizes stay fresh.
        explore_max_ratio: exploration never picks a cut predicted slower than this
            multiple of the best: it refreshes estimates without hurting tail latency.
        estimator: ``robust`` (default): outliers are ignored and confirmed changes
            followed at once (see ``change_band``); ``latest``: the last sample is the
            estimate (re-decide on every measurement; fast and noisy, for comparison).
        ewma_alpha: weight of a new (median-filtered) in-band sample in the estimates.
        window: in-band samples in the median filter.
        change_band: a sample more than this factor above or below an estimate is out of
            its band: held back, not averaged in.
        change_confirm: consecutive out-of-band samples on one side that reset the
            estimate to their level (2: a change is followed after two samples, a lone
            outlier never moves it).
        overdue_factor: a transfer still in flight after this multiple of its predicted
            time bounds the bandwidth before it completes (concurrent decisions use it).
        probe_interval_s: seconds between ping probes per endpoint (0 disables).
        probe_bytes: payload of the bandwidth probe (a second, empty ping gives RTT).
        initial_up_Bps: uplink bandwidth assumed before any measurement (bytes/s).
        initial_rtt_ms: RTT assumed before any measurement.
        hysteresis: keep the current cut unless another is predicted faster by more
            than this fraction (avoids flapping between near-equal cuts).
        fixed_cut: force one cut id (``edge`` = all local, ``cloud`` = raw inputs, or
            ``k<depth>``): for benchmarks and comparisons; bypasses the optimizer but
            not the privacy floor.
        accuracy_floor: cuts whose int8 accuracy (manifest cosine) is lower are excluded;
            unset, the floor the bundle was partitioned to (``quantization.accuracy_floor``).
        cloud_speedup: until an endpoint reports compute times, its tails are assumed
            this many times faster than this device (then measured values take over).
        seed: seed of the exploration RNG (reproducible runs).
        cascade: answer confident inputs on the device alone (see its section).
    """

    privacy_floor: PrivacyFloor = Field(default_factory=lambda: PrivacyFloor(min_depth=1))
    explore_fraction: float = Field(0.05, ge=0.0, le=1.0)
    explore_max_ratio: float = Field(2.0, ge=1.0)
    estimator: Literal["robust", "latest"] = "robust"
    ewma_alpha: float = Field(0.3, gt=0.0, le=1.0)
    window: int = Field(5, ge=1, le=101)
    change_band: float = Field(2.0, gt=1.0)
    change_confirm: int = Field(2, ge=1, le=20)
    overdue_factor: float = Field(5.0, gt=1.0)
    probe_interval_s: float = Field(2.0, ge=0.0)
    probe_bytes: int = Field(32 << 10, ge=0)
    initial_up_Bps: float = Field(1.25e6, gt=0)
    initial_rtt_ms: float = Field(50.0, ge=0)
    hysteresis: float = Field(0.05, ge=0.0, lt=1.0)
    fixed_cut: str | None = None
    accuracy_floor: float | None = Field(None, ge=0.0, le=1.0)
    cloud_speedup: float = Field(10.0, gt=0)
    seed: int | None = None
    cascade: CascadeConfig = Field(default_factory=CascadeConfig)


class DeadlineConfig(StrictModel):
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


class RetryConfig(StrictModel):
    """Failover and circuit breaking.

    Attributes:
        max_endpoints: cloud endpoints one request may try before finishing locally.
        breaker_failures: consecutive failures that open an endpoint's breaker.
        breaker_open_s: how long an open breaker refuses before a half-open probe.
    """

    max_endpoints: int = Field(2, ge=1)
    breaker_failures: int = Field(3, ge=1)
    breaker_open_s: float = Field(5.0, gt=0)


class UpdateConfig(StrictModel):
    """Model updates pushed by the cloud's rollout plans (``tiersplit fleet``).

    Attributes:
        state_dir: where downloads are staged (``staging/``) and verified versions kept
            (``versions/<model>/<version>/``). None (the default) turns updates off: the
            agent runs ``bundle.path`` and never changes it.
        keep: verified versions kept on disk (the one running included) for an instant
            rollback without a download; older ones are deleted.
        max_rate_bytes_per_s: download rate cap (a token bucket), so inference keeps the
            link.
        chunk_bytes: bytes asked for per chunk (one chunk in flight at a time).
        report_interval_s: seconds between reports to the cloud (the answer is this
            agent's target version).
        retry_s: first wait after a failed update; doubles up to 30 s.
        labels: labels a rollout plan may pick this agent by (``--labels``).
    """

    state_dir: ConfigPath | None = None
    keep: int = Field(3, ge=1, le=100)
    max_rate_bytes_per_s: float = Field(8e6, gt=0)
    chunk_bytes: int = Field(128 * 1024, ge=1024, le=256 * 1024)
    report_interval_s: float = Field(1.0, gt=0)
    retry_s: float = Field(1.0, gt=0)
    labels: list[str] = Field(default_factory=list)


class EdgeConfig(StrictModel):
    """The whole ``edge.yaml``.

    Attributes:
        agent_id: this device's id (its key's name in the cloud's allow-list).
        bundle: the bundle and its signing key.
        endpoints: cloud cores, tried in predicted-latency order. May be empty (all
            local).
        allowed_regions: data residency: only endpoints in these regions ever receive
            data. ``null`` allows every region.
        api: the local HTTP (and optional gRPC) API.
        runtime: ONNX Runtime and concurrency.
        codec: wire codec of cut tensors (``raw``, ``fp16``, ``int8``, ``int8+lz4``...),
            pinned; or ``auto``: per request, with the cut, among the codecs the bundle
            measured at that cut and found to keep its accuracy floor (``int8+lz4`` where
            none were measured; privacy is then judged under the leakiest audited codec).
        policy, deadlines, retry: see their sections.
        placement_prior: optional ``configs/placement.yaml`` from ``tiersplit place
            tune``; used until the agent's own measurements are warm. Missing = none.
        tracing: OpenTelemetry spans per request (off by default; see
            ``contract.tracing.TracingConfig``).
        update: model updates from the cloud's rollout plans (off unless ``state_dir``).
    """

    agent_id: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_.-]+$")
    bundle: BundleConfig
    endpoints: list[EndpointConfig] = Field(default_factory=list)
    allowed_regions: list[str] | None = None
    api: ApiConfig = Field(default_factory=ApiConfig)
    runtime: RuntimeConfig = Field(default_factory=RuntimeConfig)
    codec: str = "int8+lz4"

    @field_validator("codec")
    @classmethod
    def _codec_known(cls, v: str) -> str:
        if v != AUTO_CODEC:
            try:
                parse_spec(v)
            except CodecError as e:
                raise ValueError(f"{e}; or 'auto' (chosen per cut from the bundle)") from e
        return v

    @property
    def wire_codec(self) -> str:
        """The codec measured live and used where no other is chosen (``codec`` itself
        unless it is ``auto``)."""
        return AUTO_BASE_CODEC if self.codec == AUTO_CODEC else self.codec
    policy: PolicyConfig = Field(default_factory=PolicyConfig)
    deadlines: DeadlineConfig = Field(default_factory=DeadlineConfig)
    retry: RetryConfig = Field(default_factory=RetryConfig)
    placement_prior: ConfigPath | None = None
    tracing: TracingConfig = Field(default_factory=TracingConfig)
    update: UpdateConfig = Field(default_factory=UpdateConfig)

    @model_validator(mode="after")
    def _unique_endpoint_names(self) -> EdgeConfig:
        names = [e.name for e in self.endpoints]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"endpoint names must be unique; repeated: {dup}")
        return self

    def region_allowed(self, region: str) -> bool:
        """Whether data may go to ``region`` (``edge_agent.endpoints.region_allowed``)."""
        return region_allowed(region, self.allowed_regions)

    @property
    def resident_endpoints(self) -> list[EndpointConfig]:
        """Endpoints data may be sent to (data residency applied)."""
        return resident(self.endpoints, self.allowed_regions)


def load_config(path: Path | str) -> EdgeConfig:
    """Read and validate an edge config file (relative paths: against its folder).

    Raises:
        ConfigError: the file is missing, not YAML, or invalid; the message names the
            offending keys.
    """
    try:
        return kit.load_yaml(path, EdgeConfig, what="edge config")
    except kit.ConfigError as e:
        raise ConfigError(str(e)) from e


def parse_config(data: dict[str, Any], source: str = "<config>",
                 base: Path | str | None = None) -> EdgeConfig:
    """Validate an already-parsed config mapping (tests and in-process users); relative
    paths resolve against ``base`` (default: the working directory)."""
    try:
        return kit.parse(EdgeConfig, data, source=f"edge config {source}", base=base)
    except kit.ConfigError as e:
        raise ConfigError(str(e)) from None
