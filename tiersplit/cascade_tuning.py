"""Tune the device cascade of a bundle on held-back data (``tiersplit place tune --data``).

The cascade's promise is agreement with the full-precision model: an input the device's
int8 model answers alone must get the answer the fp32 model would have given. Only data
the bundle never saw can check that promise, so the tuner runs both models of the bundle
(``full.int8.onnx`` on the device's side, ``full.onnx`` as the reference) with ONNX
Runtime on held-back inputs, scores the int8 answers with the same confidence function
the edge agent uses (``placement.cascade.confidence`` or an operator's hook), and lets
``placement.cascade.tune_threshold`` pick the lowest threshold meeting the target. No
torch: this runs where the bundle runs.

What a local answer saves comes from the bundle's own measurements: the split path's head
time and bytes at the cut requests would otherwise take (the manifest records both), plus
the network and cloud time the operator states for that path (the manifest cannot know
the link); the cascade always pays for the full int8 model first.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from contract.arrays import read_npz_inputs
from contract.bundle import Bundle, CutSpec, Manifest
from contract.dtypes import numpy_dtype
from edge_agent.cascade import load_score_hook
from edge_agent.errors import ConfigError
from placement.cascade import KINDS, CascadeTuning, confidence, tune_threshold

__all__ = [
    "TARGETS",
    "CascadeRun",
    "CascadeSavings",
    "cascade_snippet",
    "load_data",
    "refuse_calibration",
    "run_models",
    "savings_of",
    "score_function",
    "split_cut",
    "tune_bundle",
]

#: Agreement targets the table compares with the one asked for.
TARGETS = (0.95, 0.98, 0.99, 0.995, 1.0)
_BATCH = 256  # samples per ONNX Runtime call (bounded memory on big held-back sets)

Score = Callable[[np.ndarray], np.ndarray]


def score_function(kind: str) -> Score:
    """The confidence score ``kind`` names: a built-in (``max-softmax``, ``margin``) or a
    hook ``pkg.mod:fn`` returning one score per sample, as the edge agent loads it.

    Raises:
        ValueError: an unknown kind, or a hook that cannot be loaded.
    """
    if kind in KINDS:
        return lambda z: confidence(z, kind)
    if ":" not in kind:
        raise ValueError(f"--confidence: expected one of {list(KINDS)} or a hook "
                         f"'pkg.mod:fn', got {kind!r}")
    try:
        return load_score_hook(kind, "--confidence")
    except ConfigError as e:
        raise ValueError(str(e)) from e


def refuse_calibration(manifest: Manifest, data: Path) -> None:
    """Refuse held-back data that is the bundle's calibration data.

    Calibration inputs are what the int8 model was fitted to: agreement measured on them
    flatters the cascade. The manifest names the calibration file it was given
    (``quantization.calibration``; ``generated`` when the partitioner drew its own from
    the model's training split), so a file of that name is refused.

    Raises:
        ValueError: ``data`` is the calibration file.
    """
    calib = manifest.quantization.calibration
    if calib not in ("generated", "given") and Path(calib).name == data.name:
        raise ValueError(f"{data} is the bundle's calibration data ({calib}, "
                         f"{manifest.quantization.calibration_samples} samples): tune on "
                         "held-back data the int8 model was not calibrated on")


def load_data(path: Path, manifest: Manifest) -> dict[str, np.ndarray]:
    """The held-back inputs in ``path`` (.npz), one array per model input.

    Arrays are matched by input name, else by position (``arr_0``...), else a single
    array feeds a single input; each is cast to the input's dtype after a shape check.

    Raises:
        ValueError: unreadable file, a missing input, wrong shapes or sample counts.
    """
    raw = read_npz_inputs(path, [spec.name for spec in manifest.inputs], "held-back data")
    feeds: dict[str, np.ndarray] = {}
    for spec in manifest.inputs:
        arr = raw[spec.name]
        want = spec.shape[1:]
        got = list(arr.shape[1:])
        fixed_ok = len(got) == len(want) and all(
            g == w or (d + 1) in spec.dynamic or w < 0
            for d, (g, w) in enumerate(zip(got, want, strict=True)))
        if arr.ndim < 1 or not fixed_ok:
            raise ValueError(f"{path}: input {spec.name!r} has shape {list(arr.shape)}, "
                             f"expected [N, {', '.join(map(str, want))}]")
        feeds[spec.name] = np.ascontiguousarray(arr, dtype=numpy_dtype(spec.dtype))
    counts = {len(a) for a in feeds.values()}
    if len(counts) != 1 or counts == {0}:
        raise ValueError(f"{path}: held-back arrays need one equal, non-zero sample count, "
                         f"got {sorted(counts)}")
    return feeds


def run_models(bundle: Bundle, feeds: dict[str, np.ndarray], output: str | None = None
               ) -> tuple[np.ndarray, np.ndarray]:
    """(int8 outputs, fp32 outputs) of ``output`` (default: the first) on ``feeds``.

    Raises:
        ValueError: ``output`` is not an output of the model, or the fp32 reference is not
            in this copy of the bundle (an edge-only copy ships the int8 model alone).
    """
    import onnxruntime as ort

    m = bundle.manifest
    names = [t.name for t in m.outputs]
    out = output or names[0]
    if out not in names:
        raise ValueError(f"--output {out!r} is not an output of the model; expected one of "
                         f"{names}")
    ref = bundle.path / m.full_fp32
    if m.full_fp32 not in m.files or not ref.is_file():
        raise ValueError(f"the fp32 reference {m.full_fp32} is not in {bundle.path}: tune "
                         "on a full copy of the bundle (the edge-only copy lacks it)")
    n = len(next(iter(feeds.values())))
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    results = []
    for rel in (m.full_int8, m.full_fp32):
        sess = ort.InferenceSession(str(bundle.file(rel)), opts,
                                    providers=["CPUExecutionProvider"])
        parts = [sess.run([out], {k: v[i:i + _BATCH] for k, v in feeds.items()})[0]
                 for i in range(0, n, _BATCH)]
        results.append(np.concatenate(parts))
    return results[0], results[1]


def split_cut(manifest: Manifest, cut: str | None, privacy_floor: int) -> CutSpec:
    """The cut the requests the device does not answer would take: ``cut``, or the
    shallowest split cut at or below the privacy floor's depth.

    Raises:
        ValueError: an unknown cut, one barred by the floor, or no split cut at all.
    """
    if cut is not None:
        try:
            spec = manifest.cut(cut)
        except KeyError:
            raise ValueError(f"--cut {cut!r} is not a cut of this bundle; expected one of "
                             f"{manifest.cut_ids}") from None
        if spec.is_edge:
            raise ValueError("--cut edge sends nothing: name the cut the split path takes")
        if spec.depth < privacy_floor:
            raise ValueError(f"--cut {cut!r} (depth {spec.depth}) is below the privacy "
                             f"floor {privacy_floor}")
        return spec
    splits = [c for c in manifest.cuts if not c.is_edge and c.depth >= privacy_floor]
    if not splits:
        raise ValueError(f"no split cut at privacy floor {privacy_floor}: the device "
                         "answers every request already")
    return min(splits, key=lambda c: c.depth)


@dataclass(frozen=True, slots=True)
class CascadeSavings:
    """What one request costs on each path, from the manifest (and the stated link)."""

    cut: str
    local_ms: float  # full int8 model on the device (the cascade always pays it)
    split_ms: float  # head at ``cut`` + the stated network and cloud time
    split_bytes: float  # request activations (codec) + reply, per sample
    measured: bool  # the manifest has both latencies (else 0 stands in)


def savings_of(manifest: Manifest, cut: CutSpec, codec: str, link_ms: float
               ) -> CascadeSavings:
    """The per-request costs :func:`tune_bundle` turns into savings."""
    edge = next((c for c in manifest.cuts if c.is_edge), None)
    local = edge.latency_ms if edge is not None else None
    base = codec.split("+")[0]
    up = cut.bytes if base == "raw" else cut.bytes / 2 if base == "fp16" else cut.bytes_int8
    reply = sum(4 * max(t.sample_elements, 1) for t in manifest.outputs)
    return CascadeSavings(cut.id, local or 0.0, (cut.latency_ms or 0.0) + link_ms,
                          float(up + reply), local is not None and cut.latency_ms is not None)


@dataclass(frozen=True, slots=True)
class CascadeRun:
    """The tuned threshold, the comparison table's rows and what they were measured on."""

    chosen: CascadeTuning
    rows: list[CascadeTuning]
    savings: CascadeSavings
    samples: int
    int8_agreement: float  # every held-back answer of the int8 model vs fp32
    digest: str  # sha256 of the held-back file


def tune_bundle(bundle: Bundle, data: Path, *, target: float = 0.99,
                kind: str = "max-softmax", output: str | None = None,
                cut: str | None = None, privacy_floor: int = 1, codec: str = "int8",
                link_ms: float = 0.0) -> CascadeRun:
    """Run both full models on ``data`` and tune the threshold for ``target``.

    Raises:
        ValueError: calibration data, unreadable or mismatched data, logits without a
            class axis, a hook that fails or returns the wrong number of scores.
    """
    m = bundle.manifest
    refuse_calibration(m, data)
    feeds = load_data(data, m)
    score = score_function(kind)
    int8, fp32 = run_models(bundle, feeds, output)
    n = len(int8)
    if int8.ndim < 2 or int8.shape[-1] < 2:
        raise ValueError(f"output shape {list(int8.shape)} holds no class logits: the "
                         "cascade needs a classifier's output")
    try:
        scores = np.asarray(score(int8), dtype=np.float64).reshape(-1)
    except Exception as e:  # an operator's hook: say which and why, in one line
        raise ValueError(f"confidence {kind!r} failed on the int8 outputs: "
                         f"{type(e).__name__}: {e}") from e
    if scores.size != n or not np.all(np.isfinite(scores)):
        raise ValueError(f"confidence {kind!r} must return {n} finite scores, got shape "
                         f"{list(scores.shape)}")
    classes = int8.shape[-1]
    agree = (int8.reshape(n, -1, classes).argmax(-1)
             == fp32.reshape(n, -1, classes).argmax(-1)).all(axis=1)
    sav = savings_of(m, split_cut(m, cut, privacy_floor), codec, link_ms)

    def at(t: float) -> CascadeTuning:
        return tune_threshold(scores, agree, t, local_ms=sav.local_ms, split_ms=sav.split_ms,
                              split_bytes=sav.split_bytes)

    rows = [at(t) for t in sorted({*TARGETS, target})]
    digest = hashlib.sha256(data.read_bytes()).hexdigest()
    return CascadeRun(at(target), rows, sav, n, float(agree.mean()), digest)


def cascade_snippet(run: CascadeRun, kind: str, output: str | None) -> dict[str, Any]:
    """The ``policy.cascade`` section the tuned threshold gives (disabled when no
    threshold met the target: the device would never answer alone)."""
    t = run.chosen
    section: dict[str, Any] = {"enabled": bool(t.met),
                               "threshold": float(t.threshold) if t.met else 1.0,
                               "kind": kind}
    if output is not None:
        section["output"] = output
    return {"policy": {"cascade": section}}
