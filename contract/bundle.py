"""The bundle: the versioned, signed artifact both tiers share.

Layout of ``<root>/<name>/<version>/``::

    manifest.yaml        this module's :class:`Manifest`
    manifest.yaml.sig    detached Ed25519 signature of manifest.yaml's bytes (optional)
    full.onnx            fp32 full model (cloud "cloud" cut, reference)
    full.int8.onnx       int8 full model (edge local fallback, "edge" cut)
    head-<cut>.int8.onnx head of each cut, quantized
    head-<cut>.onnx      fp32 head (reference / profiling)
    tail-<cut>.onnx      fp32 tail of each cut
    device-tail-<cut>.int8.onnx  int8 tail of a cut, run on the device when the cloud fails
    profile.json         optional measured profile

The bundle digest (sha256 hex of manifest.yaml bytes) names the exact version in every
request; the manifest lists the sha256 of every other file, so one digest pins all.
This module imports no torch (the edge agent uses it).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import yaml
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from contract.errors import BundleError, BundleExists, HashMismatch, SignatureError
from contract.privacy import PrivacyAudit

FORMAT_VERSION = 1
MANIFEST = "manifest.yaml"
SIGNATURE = "manifest.yaml.sig"
CLOUD_CUT = "cloud"  # everything in the cloud: the raw inputs cross (privacy floor 0)
EDGE_CUT = "edge"  # everything on the edge: nothing crosses

__all__ = [
    "CLOUD_CUT",
    "EDGE_CUT",
    "Accuracy",
    "Bundle",
    "CutCodec",
    "CutSpec",
    "Manifest",
    "QuantSpec",
    "TensorSpec",
    "sha256_file",
    "write_bundle",
]


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class TensorSpec(_Frozen):
    """A named tensor. ``shape[0] == -1`` marks the dynamic batch dimension.

    ``dynamic`` lists the other dimensions whose size varies per request (a text model's
    sequence length); ``shape`` holds the size they had when the model was partitioned,
    so per-sample byte figures stay meaningful, and a reader must accept any size there.
    """

    name: str
    shape: list[int]
    dtype: str = "float32"
    dynamic: list[int] = Field(default_factory=list)

    @property
    def sample_shape(self) -> tuple[int, ...]:
        """Shape without the batch dimension."""
        return tuple(self.shape[1:])

    @property
    def sample_elements(self) -> int:
        n = 1
        for d in self.shape[1:]:
            n *= d
        return n


class Accuracy(_Frozen):
    """int8 head + fp32 tail vs fp32 full model, on calibration-independent inputs."""

    max_abs: float = 0.0
    mean_abs: float = 0.0
    cosine: float = 1.0
    top1_agreement: float | None = None  # classifiers only
    samples: int = 0
    metric: float | None = None  # the user's metric (higher is better), when one was given


class CutCodec(_Frozen):
    """One wire codec measured at one cut on the held-back samples by the partitioner.

    The int8 head's crossing tensors go through the codec's encode/decode round trip and
    into the fp32 tail; the model outputs are compared with the fp32 model's, so a codec
    is judged by the accuracy the whole split keeps, not by the tensor's own error.
    """

    codec: str  # wire codec spec, e.g. "int8+lz4", "int4c+zstd"
    ratio: float  # encoded bytes / fp32 bytes, mean over held-back samples
    # worst-sample cosine of the model output (int8 head -> codec round trip -> fp32
    # tail) vs the fp32 model
    cosine: float
    top1: float | None = None  # top-1 agreement with the fp32 model, classifiers only
    encode_ms: float  # edge encode time per sample (batch 1), median
    meets_floor: bool  # cosine (and top-1) at or above the bundle's accuracy floor


class CutSpec(_Frozen):
    """One candidate cut: the full set of tensors crossing the head/tail boundary."""

    id: str
    depth: int  # nodes on the edge side, in topological order (0 = all cloud)
    depth_fraction: float = 0.0  # depth / total nodes
    tensors: list[TensorSpec]  # crossing tensors; for "cloud" the model inputs
    bytes: int  # per sample, fp32 (raw codec)
    bytes_int8: int  # per sample, int8 codec before compression
    head: str | None = None  # int8 head file (None for "cloud")
    head_fp32: str | None = None
    tail: str | None = None  # fp32 tail file (None for "edge")
    head_flops: int = 0  # estimated MACs per sample (0 if unknown)
    tail_flops: int = 0
    accuracy: Accuracy = Field(default_factory=Accuracy)
    # How the head was made: "static-qdq", "dynamic-int8", either with "+fallback" when
    # ``excluded_nodes`` stay in float, or "fp32" when no int8 recipe met the floor.
    recipe: str = "static-qdq"
    excluded_nodes: list[str] = Field(default_factory=list)
    latency_ms: float | None = None  # head, batch 1, one thread, as shipped
    latency_fp32_ms: float | None = None  # the fp32 head on the same machine
    # The rest of the model after this cut, int8 and accuracy-bounded like the heads: a
    # request whose cloud attempt fails finishes from the tensors the head computed.
    device_tail: str | None = None
    device_tail_recipe: str | None = None  # how it was quantized (as ``recipe``)
    device_tail_latency_ms: float | None = None  # batch 1, one thread, as shipped
    # int8 head -> int8 device tail vs the fp32 model on the held-back samples
    device_tail_accuracy: Accuracy | None = None
    # Wire codecs measured at this cut (bytes and the accuracy each keeps); empty = not
    # measured, and agents use their configured codec.
    codecs: list[CutCodec] = Field(default_factory=list)

    @property
    def is_cloud(self) -> bool:
        return self.id == CLOUD_CUT

    @property
    def is_edge(self) -> bool:
        return self.id == EDGE_CUT


class QuantSpec(_Frozen):
    method: str = "onnxruntime.quantize_static"
    format: str = "QDQ"
    per_channel: bool = True
    activation_type: str = "QInt8"
    weight_type: str = "QInt8"
    calibration: str = "generated"  # "generated" or the npz file name
    calibration_samples: int = 0
    evaluation: str = "generated"  # where the held-back accuracy samples came from
    evaluation_samples: int = 0
    # The floor every shipped head met on the held-back samples; the edge's default
    # accuracy floor. 0 (old bundles) means no floor was applied.
    accuracy_floor: float = 0.0  # cosine vs fp32
    top1_floor: float | None = None  # classifiers: top-1 agreement vs fp32
    metric: str | None = None  # "pkg.mod:fn" user metric, when one set the floor
    metric_floor: float | None = None


class Manifest(_Frozen):
    format: int = FORMAT_VERSION
    name: str
    version: str
    created: str  # ISO 8601 UTC
    source: str  # "zoo:digits_cnn", a file name or "pkg.mod:fn"
    opset: int
    task: Literal["classification", "regression", "other"] = "other"
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    cuts: list[CutSpec]
    full_fp32: str = "full.onnx"
    full_int8: str = "full.int8.onnx"
    full_accuracy: Accuracy = Field(default_factory=Accuracy)
    quantization: QuantSpec = Field(default_factory=QuantSpec)
    files: dict[str, str] = Field(default_factory=dict)  # relative path -> sha256 hex
    privacy_audit: PrivacyAudit | None = None  # tiersplit privacy audit --record

    def cut(self, cut_id: str) -> CutSpec:
        for c in self.cuts:
            if c.id == cut_id:
                return c
        raise KeyError(cut_id)

    @property
    def cut_ids(self) -> list[str]:
        return [c.id for c in self.cuts]

    def to_yaml(self) -> bytes:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False).encode()


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


Role = Literal["edge", "cloud", "all"]


def _role_files(m: Manifest, role: Role) -> set[str]:
    need: set[str] = set()
    if role in ("edge", "all"):
        need.add(m.full_int8)
        need.update(c.head for c in m.cuts if c.head)
        need.update(c.device_tail for c in m.cuts if c.device_tail)
    if role in ("cloud", "all"):
        need.add(m.full_fp32)
        need.update(c.tail for c in m.cuts if c.tail)
    return need


@dataclass(frozen=True)
class Bundle:
    """A loaded, verified bundle. Construct with :meth:`load`."""

    path: Path
    manifest: Manifest
    digest: str  # sha256 hex of manifest.yaml
    signed: bool

    @property
    def name(self) -> str:
        return self.manifest.name

    @property
    def version(self) -> str:
        return self.manifest.version

    def file(self, rel: str) -> Path:
        """Absolute path of a manifest-listed file."""
        if rel not in self.manifest.files:
            raise BundleError(f"{rel!r} is not listed in the manifest of {self.path}")
        return self.path / rel

    @classmethod
    def load(cls, path: Path | str, public_key: Ed25519PublicKey | None = None, *,
             require_signature: bool = True, role: Role = "all") -> Bundle:
        """Load and verify a bundle directory.

        Args:
            path: the ``<name>/<version>`` directory.
            public_key: the Ed25519 key that must have signed the manifest.
            require_signature: refuse an unsigned bundle (default). With no
                ``public_key`` this must be False.
            role: which files must be present: the edge needs heads and the int8 full
                model, the cloud needs tails and the fp32 full model. Every listed file
                that is present is hashed either way.

        Raises:
            BundleError / HashMismatch / SignatureError with the file and what to do.
        """
        path = Path(path)
        mpath = path / MANIFEST
        try:
            raw = mpath.read_bytes()
        except FileNotFoundError as e:
            raise BundleError(f"no {MANIFEST} in {path}: not a bundle directory") from e
        spath = path / SIGNATURE
        signed = spath.exists()
        if public_key is not None:
            if not signed:
                raise SignatureError(f"bundle {path} is unsigned but a signing key is "
                                     "configured; re-partition with --signing-key")
            try:
                public_key.verify(spath.read_bytes(), raw)
            except InvalidSignature as e:
                raise SignatureError(f"bad signature on {mpath}: the manifest was modified or "
                                     "signed with another key") from e
        elif require_signature:
            raise SignatureError(f"no public key given to verify {path}; pass the signing "
                                 "key's .pub or allow unsigned bundles explicitly")
        try:
            manifest = Manifest.model_validate(yaml.safe_load(raw))
        except (yaml.YAMLError, ValidationError, TypeError) as e:
            raise BundleError(f"malformed manifest {mpath}: {str(e).splitlines()[0]}") from e
        if manifest.format != FORMAT_VERSION:
            raise BundleError(f"bundle format {manifest.format} not supported "
                              f"(this tiersplit reads format {FORMAT_VERSION})")
        needed = _role_files(manifest, role)
        for rel, expected in manifest.files.items():
            fpath = (path / rel).resolve()
            if path.resolve() not in fpath.parents:
                raise BundleError(f"manifest lists a file outside the bundle: {rel!r}")
            if not fpath.exists():
                if rel in needed:
                    raise BundleError(f"bundle {path} is missing {rel}")
                continue
            actual = sha256_file(fpath)
            if actual != expected:
                raise HashMismatch(f"{fpath} sha256 {actual[:12]}… != manifest "
                                   f"{expected[:12]}…: file corrupt or tampered; "
                                   "re-copy the bundle")
        for rel in needed:
            if rel not in manifest.files:
                raise BundleError(f"manifest of {path} does not list {rel}")
        return cls(path=path, manifest=manifest, digest=hashlib.sha256(raw).hexdigest(),
                   signed=signed)


@contextmanager
def write_bundle(root: Path | str, name: str, version: str,
                 signing_key: Ed25519PrivateKey | None = None) -> Iterator[_BundleStage]:
    """Stage a bundle in a temp dir and publish it atomically (rename) on success.

    Usage::

        with write_bundle(out, "digits_cnn", "1", key) as stage:
            onnx.save(head, stage.dir / "head-k3.int8.onnx")
            stage.set_manifest(manifest_without_files)
        # now out/digits_cnn/1 exists with hashes filled in and a signature

    Refuses an existing version (bundles are immutable); leaves nothing behind on error.
    """
    final = Path(root) / name / version
    if final.exists():
        raise BundleExists(f"bundle {final} already exists; bundles are immutable — "
                           "choose a new --version")
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{version}.tmp-", dir=final.parent))
    stage = _BundleStage(tmp)
    try:
        yield stage
        if stage.manifest is None:
            raise BundleError("bundle stage closed without a manifest")
        files = {
            str(p.relative_to(tmp)): sha256_file(p)
            for p in sorted(tmp.rglob("*"))
            if p.is_file() and p.name not in (MANIFEST, SIGNATURE)
        }
        manifest = stage.manifest.model_copy(update={"files": files})
        raw = manifest.to_yaml()
        (tmp / MANIFEST).write_bytes(raw)
        if signing_key is not None:
            (tmp / SIGNATURE).write_bytes(signing_key.sign(raw))
        for p in tmp.rglob("*"):
            os.chmod(p, 0o444 if p.is_file() else 0o755)
        os.chmod(tmp, 0o755)
        if final.exists():
            raise BundleExists(f"bundle {final} appeared while writing; refusing to overwrite")
        os.rename(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


class _BundleStage:
    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.manifest: Manifest | None = None

    def set_manifest(self, manifest: Manifest) -> None:
        self.manifest = manifest
