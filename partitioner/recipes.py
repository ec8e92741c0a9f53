"""Accuracy-bounded precision: for one head, the fastest recipe that meets the floor.

Static QDQ int8 (per-channel weights, U8 activations) suits conv nets, whose activations
are well-behaved; trained transformers have activation outliers that a static U8 range
cannot hold, and dynamic int8 (weights per-channel, activations scaled per batch at run
time, only MatMul/Gemm with constant weights) keeps them accurate. Each candidate is
judged where it matters, at the model's outputs (head -> fp32 tail vs the fp32 model), on
held-back samples. A recipe that misses the floor gets its most sensitive nodes back in
float, their number growing fourfold per try until the floor holds; fp32 is the last
resort, and also ships when every int8 head that met the floor measured clearly slower. Among the
candidates that meet the floor, the one with the lowest measured latency ships.
"""

from __future__ import annotations

import logging
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
from onnx import helper

from partitioner import cache as _cache
from partitioner import ortutil, stages
from partitioner.errors import AccuracyError, QuantizationError
from partitioner.quantize import CalibrationSet, QuantConfig, _DemoteRootRecords, quantize
from partitioner.split import Comparison

log = logging.getLogger(__name__)

__all__ = ["Candidate", "Floor", "Metric", "search"]

Metric = Callable[[Sequence[np.ndarray], Sequence[np.ndarray]], float]
_WEIGHTED = {"MatMul", "Gemm", "Conv"}
_RANK_SAMPLES = 16
_LATENCY_BUDGET_S = 0.4
# int8 must be this much slower than fp32 before fp32 ships instead: below it, the
# difference is timing noise on a shared machine and int8 still halves memory.
_FP32_MARGIN = 1.15
_FALLBACK_STEP = 4  # nodes restored to float grow 1, 4, 16...: each try recalibrates
_WORTHWHILE = 0.6  # a passing head slower than this ratio still lets fallbacks be tried


@dataclass(frozen=True)
class Floor:
    """What every shipped head must keep, measured at the model outputs vs fp32.

    Attributes:
        cosine: mean cosine similarity.
        top1: top-1 agreement, applied to classifiers only.
        metric / metric_name / metric_floor: a user metric ``fn(reference, actual)``
            (higher is better) that must reach ``metric_floor``.
    """

    cosine: float = 0.99
    top1: float | None = 0.99
    metric: Metric | None = field(default=None, compare=False)
    metric_name: str | None = None
    metric_floor: float | None = None

    def score(self, ref: Sequence[np.ndarray], got: Sequence[np.ndarray]) -> float | None:
        """The user metric, or None without one.

        Raises:
            AccuracyError: the metric raised or did not return a finite number.
        """
        if self.metric is None:
            return None
        try:
            value = float(self.metric(ref, got))
        except Exception as e:
            first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
            raise AccuracyError(f"accuracy metric {self.metric_name} raised "
                                f"{type(e).__name__}: {first}") from e
        if not np.isfinite(value):
            raise AccuracyError(f"accuracy metric {self.metric_name} returned {value}")
        return value

    def met(self, c: Comparison, metric: float | None, classification: bool) -> bool:
        if c.cosine < self.cosine:
            return False
        if classification and self.top1 is not None and c.top1_agreement is not None \
                and c.top1_agreement < self.top1:
            return False
        return not (self.metric_floor is not None and metric is not None
                    and metric < self.metric_floor)


@dataclass
class Candidate:
    """One evaluated head."""

    recipe: str
    model: onnx.ModelProto
    comparison: Comparison
    metric: float | None
    excluded: list[str] = field(default_factory=list)
    latency_ms: float = 0.0
    meets: bool = False


def latency_ms(model: onnx.ModelProto, feeds: Mapping[str, np.ndarray]) -> float:
    """Median batch-1 latency on one thread (what an edge device's single core sees).

    Cached per exact model bytes, input and machine: a re-run with another floor
    re-judges candidates without timing them again."""
    def timed() -> float:
        with stages.current().stage("time latency"):
            return _time_ms(model, feeds)

    return float(_cache.memoized_json(
        "latency",
        lambda: _cache.key_of("latency", _cache.digest_model(model), _feeds_id(feeds, 1),
                              platform.machine(), platform.processor(), os.cpu_count()),
        timed, lambda hit: isinstance(hit, (int, float))))


def _feeds_id(feeds: Mapping[str, np.ndarray], n: int) -> str:
    """What identifies the first ``n`` samples of ``feeds`` in a cache key: the key of
    lazily computed feeds (not computing them), else a digest of those samples."""
    key = getattr(feeds, "key", None)
    if key:
        return f"{key}[:{n}]"
    return _cache.digest_arrays({k: v[:n] for k, v in feeds.items()})


def _time_ms(model: onnx.ModelProto, feeds: Mapping[str, np.ndarray]) -> float:
    sess = ortutil.session(model, threads=1)
    names = {i.name for i in sess.get_inputs()}
    one = {k: v[:1] for k, v in feeds.items() if k in names}
    for _ in range(2):
        sess.run(None, one)
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < 5 or (time.perf_counter() - start < _LATENCY_BUDGET_S
                             and len(times) < 50):
        t = time.perf_counter()
        sess.run(None, one)
        times.append(time.perf_counter() - t)
    return statistics.median(times) * 1e3


def _named(model: onnx.ModelProto) -> onnx.ModelProto:
    """Every node named (quantizers exclude nodes by name)."""
    seen: set[str] = set()
    for i, n in enumerate(model.graph.node):
        if not n.name or n.name in seen:
            n.name = f"{n.op_type}_{i}"
        seen.add(n.name)
    return model


def _weighted_nodes(model: onnx.ModelProto, ops: set[str]) -> list[onnx.NodeProto]:
    weights = {w.name for w in model.graph.initializer}
    return [n for n in model.graph.node
            if n.op_type in ops and len(n.input) > 1 and n.input[1] in weights]


def _dynamic(model: onnx.ModelProto, exclude: Sequence[str]) -> onnx.ModelProto:
    """Dynamic int8 of ``model`` (cached by its exact bytes and the nodes left in float:
    a re-run with another floor quantizes nothing again)."""
    return _cache.memoized_model(
        "quantize",
        lambda: _cache.key_of(_cache.digest_model(model), sorted(exclude), "dynamic-int8"),
        lambda: _quantize_dynamic(model, exclude))


def _quantize_dynamic(model: onnx.ModelProto, exclude: Sequence[str]) -> onnx.ModelProto:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with stages.current().stage("quantize"), \
            tempfile.TemporaryDirectory(prefix="tiersplit-dyn-") as tmp:
        src, dst = Path(tmp) / "in.onnx", Path(tmp) / "out.onnx"
        onnx.save(model, str(src))
        demote = _DemoteRootRecords()
        logging.getLogger().addFilter(demote)
        try:
            quantize_dynamic(str(src), str(dst), op_types_to_quantize=["MatMul", "Gemm"],
                             per_channel=True, weight_type=QuantType.QInt8,
                             nodes_to_exclude=list(exclude),
                             extra_options={"MatMulConstBOnly": True})
        except Exception as e:
            first = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
            raise QuantizationError(f"dynamic int8 quantization failed: {first}") from e
        finally:
            logging.getLogger().removeFilter(demote)
        return onnx.load(str(dst))


def _make(recipe: str, model: onnx.ModelProto, calib: CalibrationSet, quant: QuantConfig,
          exclude: Sequence[str], what: str) -> onnx.ModelProto:
    if recipe == "static-qdq":
        return quantize(model, calib, quant, what=what, nodes_to_exclude=exclude)
    return _dynamic(model, exclude)


def _rank(fp32: onnx.ModelProto, quant: onnx.ModelProto, nodes: Sequence[onnx.NodeProto],
          feeds: Mapping[str, np.ndarray], chunk: int = 1) -> list[str]:
    """Quantized nodes, most error added first (cached by both models' exact bytes and
    the probe inputs). ``chunk``: samples per probe run."""
    def ranked() -> list[str]:
        with stages.current().stage("rank sensitivity"):
            return _rank_nodes(fp32, quant, nodes, feeds, chunk)

    order = _cache.memoized_json(
        "rank",
        lambda: _cache.key_of("rank", _cache.digest_model(fp32), _cache.digest_model(quant),
                              [n.name for n in nodes], _feeds_id(feeds, _RANK_SAMPLES)),
        ranked, lambda hit: isinstance(hit, list))
    return [str(x) for x in order]


def _rank_nodes(fp32: onnx.ModelProto, quant: onnx.ModelProto,
                nodes: Sequence[onnx.NodeProto], feeds: Mapping[str, np.ndarray],
                chunk: int = 1) -> list[str]:
    """Relative error of each node's output minus that of its input, both against the
    fp32 model, on a few samples; most error added first.

    Every probed tensor of a sample is an output here, so the samples go through both
    models ``chunk`` at a time and only the squared norms are kept (a device tail of an
    early cut probed on 16 samples at once held gigabytes). A dynamic int8 model, whose
    scales depend on the whole batch, still sees all its samples in one run."""
    tensors: list[str] = []
    for n in nodes:
        tensors.extend(x for x in (n.input[0], n.output[0]) if x not in tensors)
    known = {t for n in quant.graph.node for t in n.output} | {i.name for i in quant.graph.input}
    tensors = [t for t in tensors if t in known]

    def opened(model: onnx.ModelProto):
        probe = onnx.ModelProto()
        probe.CopyFrom(model)
        have = {o.name for o in probe.graph.output}
        for t in tensors:
            if t not in have:
                probe.graph.output.append(helper.make_tensor_value_info(
                    t, onnx.TensorProto.FLOAT, None))
        sess = ortutil.session(probe)
        del probe
        return (sess, [o.name for o in sess.get_outputs() if o.name in tensors],
                {i.name for i in sess.get_inputs()})

    diff: dict[str, float] = dict.fromkeys(tensors, 0.0)
    norm: dict[str, float] = dict.fromkeys(tensors, 0.0)
    bad: set[str] = set()
    n = min(_RANK_SAMPLES, len(next(iter(feeds.values()))))
    step = n if ortutil.chunk_for(quant) is None else max(1, chunk)
    try:
        (rs, rnames, rins), (gs, gnames, gins) = opened(fp32), opened(quant)
        for lo in range(0, n, step):
            part = {k: v[lo:min(lo + step, n)] for k, v in feeds.items()}
            ref = dict(zip(rnames, rs.run(rnames, {k: v for k, v in part.items() if k in rins}),
                           strict=True))
            got = dict(zip(gnames, gs.run(gnames, {k: v for k, v in part.items() if k in gins}),
                           strict=True))
            for t in tensors:
                if t not in ref or t not in got or ref[t].shape != got[t].shape:
                    bad.add(t)
                    continue
                r = ref[t].astype(np.float64).ravel()
                d = got[t].ravel() - r
                diff[t] += float(np.dot(d, d))
                norm[t] += float(np.dot(r, r))
            del ref, got
    except Exception as e:  # ranking is an optimisation: fall back to graph order
        log.debug("sensitivity ranking failed (%s); excluding in graph order", e)
        return [n.name for n in nodes]

    def err(t: str) -> float:
        if t in bad or t not in diff:
            return 0.0
        return float(np.sqrt(diff[t]) / max(np.sqrt(norm[t]), 1e-12))

    added = {n.name: err(n.output[0]) - err(n.input[0]) for n in nodes}
    return sorted(added, key=lambda k: -added[k])


def search(head: onnx.ModelProto, evaluate: Callable[[onnx.ModelProto], tuple[Comparison,
           float | None]], calib: CalibrationSet, feeds: Mapping[str, np.ndarray],
           floor: Floor, classification: bool, *, quant: QuantConfig | None = None,
           what: str = "head", tick: Callable[[str], None] | None = None,
           fp32_fallback: bool = True,
           ) -> tuple[Candidate | None, list[Candidate], float]:
    """Try the recipes on ``head``; return (the fastest candidate meeting the floor or
    None, every candidate tried, fp32 latency in ms).

    Args:
        evaluate: model -> (comparison at the model outputs, user metric) on the
            held-back samples.
        feeds: held-back inputs (latency and sensitivity ranking use a few of them).
        tick: progress callback, one call per candidate.
        fp32_fallback: try the fp32 model itself when no int8 candidate is worth it
            (False where only int8 can ship).

    Raises:
        AccuracyError: the user metric failed.
    """
    quant = quant or QuantConfig()
    head = _named(head)
    tick = tick or (lambda _desc: None)
    tried: list[Candidate] = []

    def attempt(recipe: str, exclude: Sequence[str]) -> Candidate | None:
        label = recipe + ("+fallback" if exclude else "")
        try:
            model = (head if recipe == "fp32" else
                     _make(recipe, head, calib, quant, exclude, what))
        except QuantizationError as e:
            log.info("%s: %s not possible: %s", what, label, e)
            return None
        cmp, metric = evaluate(model)
        cand = Candidate(label, model, cmp, metric, list(exclude),
                         meets=floor.met(cmp, metric, classification))
        if cand.meets:
            cand.latency_ms = latency_ms(model, feeds)
        tried.append(cand)
        tick(f"{what}: {label} cos {cmp.cosine:.4f}")
        return cand

    recipes = ["static-qdq"]
    if _weighted_nodes(head, {"MatMul", "Gemm"}):
        recipes.append("dynamic-int8")
    firsts = [c for c in (attempt(r, ()) for r in recipes) if c is not None]
    fp32_ms = latency_ms(head, feeds)
    # Fallback: each recipe that missed the floor, best first, gets its most sensitive
    # nodes back in float, until some head meets the floor at a worthwhile speed-up.
    for first in sorted(firsts, key=lambda c: -c.comparison.cosine):
        if first.meets or any(c.meets and c.latency_ms <= _WORTHWHILE * fp32_ms
                              for c in tried):
            continue
        ops = _WEIGHTED if first.recipe == "static-qdq" else {"MatMul", "Gemm"}
        order = _rank(head, first.model, _weighted_nodes(head, ops), feeds, quant.batch)
        k = 1
        while k < len(order):
            cand = attempt(first.recipe, order[:k])
            if cand is not None and cand.meets:
                break
            k *= _FALLBACK_STEP
    passing = [c for c in tried if c.meets]
    if fp32_fallback and (not passing
                          or min(c.latency_ms for c in passing) > _FP32_MARGIN * fp32_ms):
        cand = attempt("fp32", ())  # exact, and faster than every int8 head that passed
        if cand is not None and cand.meets:
            cand.latency_ms = fp32_ms
            passing.append(cand)
    chosen = min(passing, key=lambda c: c.latency_ms) if passing else None
    return chosen, tried, fp32_ms
