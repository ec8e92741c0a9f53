"""Verify a published bundle: hashes, signature, and every cut run against the full model.

What ``tiersplit verify`` runs. A bundle passes when its manifest's hashes and signature
check out (:meth:`Bundle.load`), every head's outputs and every tail's inputs are exactly
the cut's crossing tensors (names, per-sample shapes, dtypes), the fp32 head -> tail
reproduces the full model within :data:`partitioner.split.TOLERANCE`, and the int8 head
-> tail gives finite outputs of the right shape (its closeness is reported, not judged:
the manifest's accuracy report is the contract for that).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from contract.bundle import Bundle, CutSpec, TensorSpec
from partitioner import ortutil
from partitioner.errors import PartitionError, VerificationError
from partitioner.split import TOLERANCE, compare, run_split

SAMPLES_FILE = "samples.npz"  # written by partition(); see partitioner.pipeline

log = logging.getLogger(__name__)

__all__ = ["CutCheck", "VerifyReport", "verify_bundle"]


@dataclass(frozen=True, slots=True)
class CutCheck:
    """Outcome for one cut. ``fp32_relative`` is None where no fp32 split exists."""

    cut_id: str
    depth: int
    ok: bool
    fp32_relative: float | None = None
    int8_cosine: float | None = None
    int8_top1: float | None = None
    message: str = ""


@dataclass(frozen=True)
class VerifyReport:
    path: Path
    name: str
    version: str
    digest: str
    signed: bool
    signature_checked: bool
    cuts: list[CutCheck] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.cuts)


def _feeds(specs: list[TensorSpec], batch: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    out = {}
    for s in specs:
        shape = (batch, *s.shape[1:])
        if s.dtype.startswith("float"):
            out[s.name] = rng.standard_normal(shape).astype(s.dtype)
        else:
            out[s.name] = rng.integers(0, 4, shape).astype(s.dtype)
    return out


_ORT_TYPES = {"tensor(float)": "float32", "tensor(double)": "float64",
              "tensor(float16)": "float16", "tensor(int64)": "int64", "tensor(int32)": "int32",
              "tensor(int8)": "int8", "tensor(uint8)": "uint8", "tensor(bool)": "bool"}


def _check_io(kind: str, args, specs: list[TensorSpec], cut_id: str) -> None:
    got = {a.name: a for a in args}
    want = {s.name: s for s in specs}
    if set(got) != set(want):
        raise VerificationError(f"cut {cut_id}: {kind} are {sorted(got)}, the manifest says "
                                f"{sorted(want)}")
    for n, s in want.items():
        a = got[n]
        dims = list(a.shape)[1:]
        dtype = _ORT_TYPES.get(a.type, a.type)
        if dtype != s.dtype or any(isinstance(d, int) and d != w
                                   for d, w in zip(dims, s.shape[1:], strict=False)) \
                or len(dims) != len(s.shape) - 1:
            raise VerificationError(f"cut {cut_id}: {kind[:-1]} {n!r} is {dtype}{list(a.shape)}, "
                                    f"the manifest says {s.dtype}{s.shape}")


def _check_cut(b: Bundle, cut: CutSpec, full, feeds, ref, classification: bool) -> CutCheck:
    m = b.manifest
    if cut.is_cloud:
        tail = ortutil.session(b.file(cut.tail or m.full_fp32))
        _check_io("tail inputs", tail.get_inputs(), cut.tensors, cut.id)
        got = tail.run(None, feeds)
        c = compare(ref, got, classification)
        if c.relative > TOLERANCE:
            raise VerificationError(f"cut cloud: tail differs from the full model by "
                                    f"{c.max_abs:.3g}")
        return CutCheck(cut.id, cut.depth, True, c.relative, 1.0, c.top1_agreement)
    if cut.is_edge:
        head = ortutil.session(b.file(cut.head or m.full_int8))
        _check_io("head outputs", head.get_outputs(), m.outputs, cut.id)
        c = compare(ref, head.run(None, feeds), classification)
        return CutCheck(cut.id, cut.depth, True, None, c.cosine, c.top1_agreement)
    if not (cut.head and cut.tail):
        raise VerificationError(f"cut {cut.id}: manifest lacks its head or tail file")
    tail = ortutil.session(b.file(cut.tail))
    _check_io("tail inputs", tail.get_inputs(), cut.tensors, cut.id)
    _check_io("tail outputs", tail.get_outputs(), m.outputs, cut.id)
    rel = None
    if cut.head_fp32 and (b.path / cut.head_fp32).exists():
        head32 = ortutil.session(b.file(cut.head_fp32))
        _check_io("head outputs", head32.get_outputs(), cut.tensors, cut.id)
        c32 = compare(ref, run_split(head32, tail, feeds))
        rel = c32.relative
        if rel > TOLERANCE:
            raise VerificationError(f"cut {cut.id}: fp32 head -> tail differs from the full "
                                    f"model by {c32.max_abs:.3g} (scale {c32.scale:.3g})")
    head8 = ortutil.session(b.file(cut.head))
    _check_io("head outputs", head8.get_outputs(), cut.tensors, cut.id)
    c8 = compare(ref, run_split(head8, tail, feeds), classification)
    return CutCheck(cut.id, cut.depth, True, rel, c8.cosine, c8.top1_agreement)


def verify_bundle(path: Path | str, public_key=None, *, samples: int = 8, seed: int = 0,
                  on_cut: Callable[[CutCheck], None] | None = None) -> VerifyReport:
    """Load ``path`` (hashes, signature) and run every cut against the full model.

    Inputs are the bundle's ``samples.npz`` (representative, from the calibration set)
    when present, else seeded random inputs.

    Args:
        public_key: Ed25519 public key (object or ``.pub`` path). Without one, a signature
            present is not checked and the report says so.
        samples: random inputs per check (batch size; > 1 exercises the dynamic batch).
        on_cut: called with each cut's result as it finishes.

    Raises:
        BundleError / HashMismatch / SignatureError: the bundle itself is not trustworthy
            (no cut is run then).
    """
    if public_key is not None and not hasattr(public_key, "verify"):
        from transport.keys import load_ed25519_public

        public_key = load_ed25519_public(Path(public_key))
    b = Bundle.load(path, public_key, require_signature=public_key is not None, role="all")
    m = b.manifest
    classification = m.task == "classification"
    feeds = _feeds(m.inputs, samples, seed)
    if SAMPLES_FILE in m.files and (b.path / SAMPLES_FILE).exists():
        # Representative inputs shipped in the bundle (hash-checked above): the int8 figures
        # then mean something; fall back to random inputs for older bundles.
        with np.load(b.path / SAMPLES_FILE, allow_pickle=False) as z:
            if all(s.name in z.files for s in m.inputs):
                feeds = {s.name: z[s.name][:samples] for s in m.inputs}
    full = ortutil.session(b.file(m.full_fp32))
    ref = full.run(None, feeds)
    checks: list[CutCheck] = []
    for cut in m.cuts:
        try:
            check = _check_cut(b, cut, full, feeds, ref, classification)
        except (PartitionError, VerificationError) as e:
            check = CutCheck(cut.id, cut.depth, False, message=str(e))
        except Exception as e:  # an ORT failure on a listed file is a failed check, not a crash
            first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
            check = CutCheck(cut.id, cut.depth, False, message=f"{type(e).__name__}: {first}")
        checks.append(check)
        if on_cut is not None:
            on_cut(check)
    return VerifyReport(path=b.path, name=m.name, version=m.version, digest=b.digest,
                        signed=b.signed, signature_checked=public_key is not None, cuts=checks)
