"""``partition()``: model -> graph -> candidate cuts -> verified, quantized bundle.

Everything is computed in memory and written through :func:`contract.bundle.write_bundle`
(temp dir + rename), so a failure at any step leaves no half-written bundle behind.
"""

from __future__ import annotations

import dataclasses
import gc
import logging
import re
import shutil
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from contract.bundle import (
    Accuracy,
    CutSpec,
    Manifest,
    QuantSpec,
    TensorSpec,
    write_bundle,
)
from contract.errors import BundleExists
from partitioner import cache as _cache
from partitioner import load, memory, ortutil
from partitioner.data import CALIBRATION_SAMPLES, EVAL_SAMPLES, decls_from, load_metric, prepare
from partitioner.errors import GraphError, InputError, QuantizationError
from partitioner.graph import Cut, GraphInfo, analyze, candidate_cuts, make_cut
from partitioner.inputs import InputDecl, example_feeds
from partitioner.progress import Steps
from partitioner.quantize import QuantConfig
from partitioner.recipes import Candidate, Floor, search
from partitioner.split import (
    Comparison,
    compare,
    head_model,
    run_split,
    tail_model,
    verify_split,
)
from partitioner.stages import Meter

log = logging.getLogger(__name__)

__all__ = ["CALIBRATION_SAMPLES", "EVAL_SAMPLES", "SAMPLES_FILE", "partition"]

SAMPLES_FILE = "samples.npz"  # extra bundle file: inputs named like the model's, batch first
SAMPLES_KEPT = 16
_VERIFY_BATCH = 3  # not 1: proves the dynamic batch dimension works end to end
_SAFE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


def _check_name(kind: str, value: str) -> str:
    if not _SAFE.match(value) or ".." in value:
        raise ValueError(f"{kind} {value!r} must be letters, digits, '.', '_' or '-' "
                         "(it names a directory)")
    return value


def _signing_key(key: Any):
    if key is None:
        return None
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    if isinstance(key, Ed25519PrivateKey):
        return key
    from transport.keys import load_ed25519_private

    return load_ed25519_private(Path(key))


def _specs(info: GraphInfo, names: Iterable[str]) -> list[TensorSpec]:
    return [TensorSpec(name=n, shape=list(info.tensors[n].shape), dtype=info.tensors[n].dtype,
                       dynamic=list(info.tensors[n].dynamic)) for n in names]


def _int8_bytes(info: GraphInfo, names: Iterable[str]) -> int:
    total = 0
    for n in names:
        t = info.tensors[n]
        total += t.sample_elements if t.dtype.startswith("float") else t.bytes
    return total


def _accuracy(c: Comparison, metric: float | None) -> Accuracy:
    return Accuracy(max_abs=c.max_abs, mean_abs=c.mean_abs, cosine=c.cosine,
                    top1_agreement=c.top1_agreement, samples=c.samples, metric=metric)


def _resolve_cuts(info: GraphInfo, max_cuts: int,
                  extra_cuts: Iterable[Iterable[str]] | None, privacy_floor: int) -> list[Cut]:
    cuts = candidate_cuts(info, max_cuts, min_depth=privacy_floor)
    seen = {c.tensors for c in cuts}
    for names in extra_cuts or ():
        cut = make_cut(info, list(names))
        if cut.kind != "split" or cut.tensors in seen:
            continue
        if cut.depth < privacy_floor:
            raise GraphError(f"extra cut {cut.id} ({', '.join(cut.tensors[:3])}) is below the "
                             f"privacy floor of {privacy_floor} edge-side nodes")
        seen.add(cut.tensors)
        cuts.insert(-1, cut)
    cuts.sort(key=lambda c: (c.kind == "edge", c.depth))
    return cuts


def _cut_ids(cuts: Sequence[Cut]) -> list[str]:
    ids: list[str] = []
    for c in cuts:
        base, i = c.id, 1
        cid = base
        while cid in ids:  # two extra cuts with equal depth: k12, k12b, k12c...
            i += 1
            cid = f"{base}{chr(ord('a') + i - 1)}"
        ids.append(cid)
    return ids




def _run_checked(sess, feeds: Mapping[str, np.ndarray], what: str) -> list[np.ndarray]:
    """The fp32 model on user data; an ORT failure here is the data's fault."""
    try:
        return sess.run(None, dict(feeds))
    except Exception as e:
        reason = re.sub(r"^\[ONNXRuntimeError\] : \d+ : \w+ : ", "",
                        (str(e).strip().splitlines() or [type(e).__name__])[0])[:240]
        shapes = ", ".join(f"{k} {v.dtype.name}{tuple(v.shape)}" for k, v in feeds.items())
        raise InputError(f"the model fails on the {what} ({shapes}): {reason} — is a sequence "
                         "longer than the model supports, or an id outside its vocabulary?"
                         ) from e


def _varied(decls: Sequence[InputDecl]) -> list[InputDecl]:
    """The declarations with every dynamic dimension at another size (proves it dynamic)."""
    out = []
    for d in decls:
        dims = tuple(max(2, s // 2) if i in d.dynamic_axes and s > 2 else s
                     for i, s in enumerate(d.shape))
        out.append(InputDecl(d.name, dims, d.dtype, d.dynamic))
    return out


def partition(model: Any, input_shapes: Sequence[Any] | None, out_dir: Path | str, *,
              name: str | None = None, version: str = "1", calib_data: Any = None,
              eval_data: Any = None, max_cuts: int = 6, signing_key: Any = None,
              extra_cuts: Iterable[Iterable[str]] | None = None, progress: bool = True,
              task: str | None = None, quant: QuantConfig | None = None,
              privacy_floor: int = 0, accuracy_floor: float = 0.99,
              top1_floor: float | None = 0.99, metric: Any = None,
              metric_floor: float | None = None,
              on_cut: Callable[[CutSpec], None] | None = None,
              on_drop: Callable[[str, str], None] | None = None,
              device_tails: bool = True,
              cache_dir: Path | str | None = None, max_memory: int | None = None,
              meter: Meter | None = None) -> Path:
    """Partition ``model`` into a verified, accuracy-bounded bundle ``out_dir/name/version``.

    Args:
        model: ``"zoo:<name>"``, a path to an ``.onnx`` file, ``"pkg.module:callable"``
            returning an ``nn.Module``, or an ``nn.Module``.
        input_shapes: per input a shape (float32, batch first), a ``NAME:SHAPE:DTYPE``
            string (``input_ids:1,seq=128:int64``) or an :class:`InputDecl`; ``None`` for
            zoo and ONNX models (their own inputs are used).
        out_dir: the bundle repository root.
        name / version: bundle directory names (default name: the model's).
        calib_data / eval_data: ``.npz`` path (arrays named like the inputs, or
            ``arr_0``...) or a dict of arrays; None for generated data. Without
            ``eval_data`` a quarter of the calibration data is held back for accuracy.
        max_cuts: cuts to keep including "cloud" and "edge".
        privacy_floor: minimum edge-side depth of any cut; above 0 there is no "cloud"
            cut (raw inputs never leave the edge).
        accuracy_floor / top1_floor: every shipped head keeps at least this cosine (and,
            for classifiers, top-1 agreement) vs fp32 on the held-back samples.
        metric / metric_floor: a user metric ``fn(reference, actual) -> float`` (or its
            ``"pkg.mod:fn"`` path) that must reach ``metric_floor``.
        signing_key: Ed25519 private key or a path to its PEM file.
        extra_cuts: crossing-tensor sets that must be candidates too (e.g. a min-cut).
        progress: show a rich progress bar on stderr.
        task: "classification" (top-1 agreement is reported) or "other".
        quant: static quantization settings (defaults: QDQ, U8S8, per-channel, MinMax).
        on_cut: called with each finished :class:`CutSpec` (the CLI prints rows live).
        on_drop: called with (cut id, reason) for a cut no precision could keep.
        device_tails: ship an int8 device tail per interior cut (when one keeps the floor).
        cache_dir: keep calibration ranges, quantized heads and their held-back figures
            under ``cache_dir/<model sha256>/``; a re-run (e.g. with another floor) reuses
            them. None: no cache.
        max_memory: peak-memory budget in bytes: batches shrink to fit it, and a model
            whose estimate does not fit is refused before anything is written.
        meter: receives time and peak RSS per stage (and cache/calibration counters).

    Returns:
        The published bundle directory.

    Raises:
        UnknownModel, ExportError, GraphError, InputError, QuantizationError,
        AccuracyError, VerificationError, BundleExists, MemoryBudgetError, ValueError:
        one-line messages.
    """
    quant = quant or QuantConfig()
    if task is not None and task not in ("classification", "regression", "other"):
        raise ValueError(f"task must be classification, regression or other, not {task!r}")
    if not 0.0 <= accuracy_floor <= 1.0:
        raise ValueError(f"accuracy floor must be a cosine in [0, 1], got {accuracy_floor}")
    out_dir = Path(out_dir)
    if name is not None:
        _check_name("name", name)
    _check_name("version", version)
    early_name = name or (model[4:] if isinstance(model, str) and model.startswith("zoo:")
                          else None)
    if early_name is not None and (out_dir / early_name / version).exists():
        raise BundleExists(f"bundle {out_dir / early_name / version} already exists; bundles "
                           "are immutable — choose a new --version")
    key = _signing_key(signing_key)
    metric_name = metric if isinstance(metric, str) else getattr(metric, "__name__", None)
    metric_fn = load_metric(metric) if isinstance(metric, str) else metric
    if metric_fn is not None and metric_floor is None:
        raise ValueError("a metric needs a floor (--metric-floor)")
    floor = Floor(cosine=accuracy_floor, top1=top1_floor, metric=metric_fn,
                  metric_name=metric_name, metric_floor=metric_floor)
    if max_memory is not None and max_memory <= 0:
        raise ValueError(f"max memory must be positive, got {max_memory}")
    started = time.perf_counter()
    torch_model = not (isinstance(model, (str, Path)) and (
        str(model).startswith("zoo:") or str(model).endswith(".onnx") or Path(model).is_file()))
    if input_shapes is None and calib_data is not None and torch_model:
        input_shapes = decls_from(calib_data)  # dtypes and shapes from the user's data
    meter = meter or Meter()
    with meter, Steps(progress) as step, \
            tempfile.TemporaryDirectory(prefix="tiersplit-partition-") as scratch:
        with meter.stage("export"):
            loaded = load.load(model, input_shapes, name=name, task=task,
                               export_cache=None if cache_dir is None
                               else Path(cache_dir) / "exports")
        name = _check_name("name", loaded.name)
        if (out_dir / name / version).exists():
            raise BundleExists(f"bundle {out_dir / name / version} already exists; bundles "
                               "are immutable — choose a new --version")
        weights = memory.weight_bytes(loaded.model)
        memory.check(memory.estimate(weights, 0, 1), max_memory, name)  # weights alone
        step("export")
        run = _Run(meter, step, Path(scratch), floor, quant)
        run.device_tails = device_tails
        with meter.stage("prepare data"):
            data = prepare(loaded, calib_data, eval_data)
        sizes = {k: (1, *v.shape[1:]) for k, v in data.calib.arrays.items()}
        decls = [InputDecl(d.name, sizes.get(d.name or "", d.shape), d.dtype, d.dynamic)
                 for d in loaded.inputs]
        with meter.stage("check model"):
            _check_runs(loaded.model, data)
        with meter.stage("analyze"):
            info = analyze(loaded.model, decls)
            # info.model is the analysed (possibly re-sorted) model: one copy is enough.
            loaded = dataclasses.replace(loaded, model=onnx.ModelProto())
            gc.collect()
            cuts = _resolve_cuts(info, max_cuts, extra_cuts, privacy_floor)
        ids = _cut_ids(cuts)
        splits = [c for c in cuts if c.kind == "split"]
        run.fit_batch(info, weights, max_memory, name)
        step.total(2 + 2 * len(splits) + 2)
        step("analyze")
        with _cache.bound(_open_cache(cache_dir, info.model, meter)) as run_cache:
            specs = run.cuts(info, loaded, data, decls, cuts, ids, run_cache, on_cut, on_drop)
        manifest = Manifest(
            name=name, version=version, created=datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            source=loaded.source, opset=info.opset, task=loaded.task,  # type: ignore[arg-type]
            inputs=_specs(info, info.inputs), outputs=_specs(info, info.outputs), cuts=specs,
            full_accuracy=run.full_acc,
            quantization=QuantSpec(
                method="accuracy-bounded search (onnxruntime quantize_static/quantize_dynamic)",
                format="QDQ/dynamic", per_channel=quant.per_channel,
                activation_type=quant.activation_type, weight_type=quant.weight_type,
                calibration=data.calib_source, calibration_samples=data.calib.samples,
                evaluation=data.eval_source, evaluation_samples=data.eval_samples,
                accuracy_floor=floor.cosine,
                top1_floor=floor.top1 if run.classification else None,
                metric=metric_name if metric_fn is not None else None,
                metric_floor=metric_floor if metric_fn is not None else None))
        del info
        gc.collect()
        with meter.stage("write bundle"), write_bundle(out_dir, name, version, key) as stage:
            for rel in run.files:
                shutil.move(str(Path(scratch) / rel), str(stage.dir / rel))
            # A few representative inputs (calibration distribution): verify and profiling
            # warm-up use them instead of random noise that int8 ranges were not fit to.
            np.savez(stage.dir / SAMPLES_FILE,
                     **{k: v[:SAMPLES_KEPT] for k, v in data.calib.arrays.items()})
            stage.set_manifest(manifest)
        step("write bundle")
    log.info("partitioned %s into %d cuts in %.1fs", name, len(specs),
             time.perf_counter() - started)
    return out_dir / name / version


def _open_cache(cache_dir: Path | str | None, model: onnx.ModelProto,
                meter: Meter) -> _cache.PartitionCache | None:
    if cache_dir is None:
        return None
    with meter.stage("digest model"):
        digest = _cache.digest_model(model)
    try:
        return _cache.PartitionCache(cache_dir, digest)
    except OSError as e:  # an unwritable cache costs the reuse, not the run
        log.warning("cache directory %s unusable (%s); running without a cache", cache_dir, e)
        return None


def _check_runs(model: onnx.ModelProto, data) -> None:
    """ONNX Runtime can run the model on the user's calibration and evaluation data."""
    try:
        sess = ortutil.session(model)
    except Exception as e:
        reason = re.sub(r"^\[ONNXRuntimeError\] : \d+ : \w+ : (Fatal error: )?", "",
                        (str(e).strip().splitlines() or [type(e).__name__])[0])[:300]
        raise GraphError(f"ONNX Runtime cannot run this model: {reason} — bundles run on "
                         "ONNX Runtime: replace unsupported ops") from e
    _run_checked(sess, {k: v[:2] for k, v in data.calib.arrays.items()}, "calibration data")
    _run_checked(sess, {k: v[:2] for k, v in data.eval.items()}, "evaluation data")


def _with_recipe(spec: CutSpec, pick: Candidate, fp32_ms: float) -> CutSpec:
    return spec.model_copy(update={"recipe": pick.recipe, "excluded_nodes": pick.excluded,
                                   "latency_ms": round(pick.latency_ms, 4),
                                   "latency_fp32_ms": round(fp32_ms, 4)})


class _Run:
    """The per-cut work of one partition run, one cut at a time.

    Every model a cut produces (fp32 head, tail, chosen int8 head) is written to the
    scratch directory as soon as the cut is done and dropped from memory with its ONNX
    Runtime sessions, so peak memory follows the model's size, not the number of cuts.
    """

    def __init__(self, meter: Meter, step: Steps, scratch: Path, floor: Floor,
                 quant: QuantConfig) -> None:
        self.meter, self.step, self.scratch = meter, step, scratch
        self.floor, self.quant = floor, quant
        self.files: list[str] = []
        self.batch = quant.batch
        self.work = quant.batch  # samples per calibration / sensitivity-probe batch
        self.full_acc: Accuracy | None = None
        self.classification = False
        self.device_tails = True  # ship an int8 device tail per interior cut (when one fits)
        self._chunked = False

    def fit_batch(self, info: GraphInfo, weights: int, budget: int | None, what: str) -> None:
        """Pick the evaluation batch and the (smaller) calibration/probe batch, halving
        both until the estimate fits the budget; refuse the run (nothing written) when
        even one sample does not fit."""
        acts, every = memory.activation_bytes(info), memory.all_activation_bytes(info)
        work = memory.work_batch(every, self.batch)
        est = memory.estimate(weights, acts, self.batch, every, work)
        while budget is not None and est.total > budget and max(self.batch, work) > 1:
            self.batch, work = max(1, self.batch // 2), max(1, work // 2)
            est = memory.estimate(weights, acts, self.batch, every, work)
        memory.check(est, budget, what)
        log.info("estimated peak memory %s", est.describe())
        self.meter.facts.update(estimate=est.total, batch=self.batch, work_batch=work,
                                weights=weights, activations=acts, all_activations=every)
        self.work = work
        if self.quant.calibrate_method == "MinMax" and work != self.quant.batch:
            # min/max ranges do not depend on how samples are batched
            self.quant = dataclasses.replace(self.quant, batch=work)
        # Outputs batch-first: the held-back set can run in batches and be concatenated.
        self._chunked = all(info.tensors[o].batch_major for o in info.outputs)

    def references(self, model: onnx.ModelProto, evald: Mapping[str, np.ndarray],
                   verify_feeds: Mapping[str, np.ndarray]) -> tuple[list, list]:
        """The full fp32 model's outputs on the held-back and verification inputs, from a
        session that is closed afterwards: every later comparison uses these outputs."""
        sess = ortutil.session(model)
        ref_eval = self.run_batched(lambda f: _run_checked(sess, f, "evaluation data"), evald)
        return ref_eval, sess.run(None, dict(verify_feeds))

    def probe(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Held-back samples for the search's own runs (latency at batch 1, the
        sensitivity probe that keeps every activation): at most a work batch of them.
        Accuracy is still judged on the whole held-back set (``evaluate``)."""
        return {k: v[:self.work] for k, v in feeds.items()}

    def save(self, rel: str, model: onnx.ModelProto) -> None:
        onnx.save(model, str(self.scratch / rel))
        self.files.append(rel)

    def run_batched(self, fn: Callable[[dict[str, np.ndarray]], list[np.ndarray]],
                    feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        """``fn`` over ``feeds`` in batches (outputs concatenated): activations for a
        whole held-back set would dominate the peak on large models."""
        n = len(next(iter(feeds.values())))
        if not self._chunked or n <= self.batch:
            return fn(dict(feeds))
        parts = [fn({k: v[i:i + self.batch] for k, v in feeds.items()})
                 for i in range(0, n, self.batch)]
        return [np.concatenate([p[j] for p in parts]) for j in range(len(parts[0]))]

    def cuts(self, info: GraphInfo, loaded, data, decls, cuts: Sequence[Cut],
             ids: Sequence[str], run_cache: _cache.PartitionCache | None,
             on_cut: Callable[[CutSpec], None] | None,
             on_drop: Callable[[str, str], None] | None) -> list[CutSpec]:
        meter, step, floor, quant = self.meter, self.step, self.floor, self.quant
        self.classification = classification = loaded.task == "classification"
        if run_cache is not None:
            # Ranges live beside the cache entries, keyed by what they were computed from.
            ranges = run_cache.path("ranges", _cache.key_of(
                data.calib.digest, quant.calibrate_method, "asymmetric"), "json")
        else:
            ranges = self.scratch / "calibration-ranges.json"
        data.calib.share_ranges(ranges, info.model)
        verify_feeds = example_feeds(_varied(decls), _VERIFY_BATCH, 7, loaded.vocab)
        evald = data.eval
        eval_digest = _cache.digest_arrays(evald) if run_cache is not None else ""
        with meter.stage("reference outputs"):
            ref_eval, ref_verify = self.references(info.model, evald, verify_feeds)
        if floor.metric is not None:
            floor.score(ref_eval, ref_eval)  # fails now, before any work, if it is broken

        def evaluate(model: onnx.ModelProto, tail_sess, scope: Sequence[str]
                     ) -> tuple[Comparison, float | None]:
            with meter.stage("evaluate"):
                key = None
                if run_cache is not None and floor.metric is None:
                    key = _cache.key_of(list(scope), _cache.digest_model(model), eval_digest,
                                        classification)
                    hit = run_cache.get_json("evaluate", key)
                    if hit is not None:
                        return Comparison(**hit), None
                sess = ortutil.session(model)
                if tail_sess is None:
                    outs = self.run_batched(lambda f: sess.run(None, f), evald)
                else:
                    outs = self.run_batched(lambda f: run_split(sess, tail_sess, f), evald)
                result = (compare(ref_eval, outs, classification), floor.score(ref_eval, outs))
                if key is not None:
                    run_cache.put_json("evaluate", key, dataclasses.asdict(result[0]))
                return result

        with meter.stage("search full model"):
            full_pick, full_tried, full_fp32_ms = search(
                info.model, lambda m: evaluate(m, None, ()), data.calib, self.probe(evald), floor,
                classification, quant=quant, what="full model", tick=step.candidate)
        if not any(c.recipe != "fp32" for c in full_tried):
            ops = sorted({n.op_type for n in info.model.graph.node})
            raise QuantizationError(
                f"nothing in the full model can be quantized to int8 by ONNX Runtime (ops: "
                f"{', '.join(ops[:12])}); int8 needs ops like Conv, MatMul, Gemm — partition "
                "a model that has them")
        if full_pick is None:
            raise GraphError("the full model does not meet the accuracy floor even in fp32: "
                             "check the metric and its floor")
        self.save("full.onnx", info.model)  # after the search named its nodes
        self.save("full.int8.onnx", full_pick.model)
        full_pick.model = onnx.ModelProto()  # written out; the edge cut needs its figures only
        self.full_acc = full_acc = _accuracy(full_pick.comparison, full_pick.metric)
        del full_tried
        gc.collect()
        step("search full model")

        total_nodes = max(info.compute_nodes, 1)
        specs: list[CutSpec] = []
        for n, (cut, cid) in enumerate(zip(cuts, ids, strict=True), 1):
            common = dict(id=cid, depth=cut.depth, depth_fraction=cut.depth / total_nodes,
                          bytes=cut.bytes, head_flops=cut.head_macs,
                          tail_flops=cut.tail_macs)
            if cut.kind == "cloud":
                spec = CutSpec(**common, tensors=_specs(info, info.inputs),
                               bytes_int8=_int8_bytes(info, info.inputs), tail="full.onnx",
                               accuracy=Accuracy(top1_agreement=1.0 if classification else None,
                                                 samples=len(ref_eval[0])), recipe="fp32")
            elif cut.kind == "edge":
                spec = _with_recipe(CutSpec(**common, tensors=[], bytes_int8=0,
                                            head="full.int8.onnx", accuracy=full_acc),
                                    full_pick, full_fp32_ms)
            else:
                step.cut(cid, n, len(cuts))
                with meter.stage("cut total"):
                    spec = self.split_cut(info, cut, cid, common, data, ref_verify,
                                          verify_feeds, evaluate)
                gc.collect()
                if spec is None:
                    reason = f"no head meets the floor (cosine >= {floor.cosine})"
                    log.warning("cut %s dropped: %s", cid, reason)
                    if on_drop is not None:
                        on_drop(cid, reason)
                    continue
                spec = self.cut_extras(spec, data, evald, ref_eval)
            specs.append(spec)
            if on_cut is not None:
                on_cut(spec)
        return specs

    def cut_extras(self, spec: CutSpec, data, evald: Mapping[str, np.ndarray],
                   ref_eval: list[np.ndarray]) -> CutSpec:
        """The cut's wire codecs (bytes and the accuracy each keeps) and its int8 device
        tail (:mod:`partitioner.cut_extras`), from the head and tail already written out;
        both are released again when done."""
        from partitioner.cut_extras import finish_cut

        if not (spec.head and spec.tail):
            return spec
        classification, floor = self.classification, self.floor

        def judge(outs: list[np.ndarray]) -> tuple[Comparison, float | None]:
            return compare(ref_eval, outs, classification), floor.score(ref_eval, outs)

        with self.meter.stage("device tail + codecs"):
            models = {rel: onnx.load(str(self.scratch / rel)) for rel in (spec.head, spec.tail)}
            spec = finish_cut(spec, models, data.calib, evald, ref_eval, judge, floor,
                              classification, quant=self.quant,
                              device_tails=self.device_tails, tick=lambda d: self.step(d, 0))
            if spec.device_tail is not None:
                self.save(spec.device_tail, models[spec.device_tail])
            del models
            gc.collect()
        return spec

    def split_cut(self, info: GraphInfo, cut: Cut, cid: str, common: dict, data, ref_verify,
                  verify_feeds, evaluate) -> CutSpec | None:
        meter, step = self.meter, self.step
        with meter.stage("extract head/tail"):
            head, tail = head_model(info, cut), tail_model(info, cut)
        with meter.stage("verify split"):
            head_sess, tail_sess = ortutil.session(head), ortutil.session(tail)
            verify_split(None, head_sess, tail_sess, verify_feeds, cut_id=cid,
                         reference=ref_verify)
            _check_head_outputs(head_sess, info, cut, cid, verify_feeds)
            del head_sess
        step(f"verify {cid}")
        with meter.stage("search heads"):
            pick, tried, fp32_ms = search(
                head, lambda m: evaluate(m, tail_sess, cut.tensors), data.calib,
                self.probe(data.eval),
                self.floor, self.classification, quant=self.quant,
                what=f"head of cut {cid}", tick=step.candidate)
        del tried
        step(f"search {cid}")
        if pick is None:
            return None
        names = {"head": f"head-{cid}.int8.onnx", "head_fp32": f"head-{cid}.onnx",
                 "tail": f"tail-{cid}.onnx"}
        spec = CutSpec(**common, tensors=_specs(info, cut.tensors),
                       bytes_int8=_int8_bytes(info, cut.tensors),
                       accuracy=_accuracy(pick.comparison, pick.metric), **names)
        spec = _with_recipe(spec, pick, fp32_ms)
        # The chosen head (pick.model), the tail (tail, tail_sess) and the held-back
        # inputs (data.eval) are all at hand here: per-cut checks of the chosen head go
        # here, before the cut's models are written out and released.
        with meter.stage("save cut"):
            self.save(names["head"], pick.model)
            self.save(names["head_fp32"], head)
            self.save(names["tail"], tail)
        return spec


def _check_head_outputs(head_sess, info: GraphInfo, cut: Cut, cid: str, feeds) -> None:
    """The head's outputs are exactly the crossing tensors, in shape and dtype."""
    names = [o.name for o in head_sess.get_outputs()]
    if sorted(names) != sorted(cut.tensors):
        raise GraphError(f"cut {cid}: head outputs {names} != crossing tensors {cut.tensors}")
    ins = {i.name: feeds[i.name] for i in head_sess.get_inputs()}
    for n, v in zip(names, head_sess.run(names, ins), strict=True):
        t = info.tensors[n]
        want = (_VERIFY_BATCH, *t.shape[1:])
        fixed = [i for i in range(len(want)) if i not in t.dynamic]
        if len(v.shape) != len(want) or any(v.shape[i] != want[i] for i in fixed) \
                or v.dtype.name != t.dtype:
            raise GraphError(f"cut {cid}: head output {n!r} is {v.dtype.name}{list(v.shape)}, "
                             f"expected {t.dtype}{list(want)}")
