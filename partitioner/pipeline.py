"""``partition()``: model -> graph -> candidate cuts -> verified, quantized bundle.

Everything is computed in memory and written through :func:`contract.bundle.write_bundle`
(temp dir + rename), so a failure at any step leaves no half-written bundle behind.
"""

from __future__ import annotations

import dataclasses
import logging
import re
import shutil
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from contract.bundle import Accuracy, CutSpec, Manifest, QuantSpec, write_bundle
from contract.errors import BundleExists
from partitioner import cache as _cache
from partitioner import load, memory, ortutil
from partitioner.cutwork import (
    VERIFY_BATCH,
    CutResult,
    CutWork,
    Task,
    accuracy,
    int8_bytes,
    with_recipe,
)
from partitioner.cutwork import specs as cut_specs
from partitioner.data import CALIBRATION_SAMPLES, EVAL_SAMPLES, decls_from, load_metric, prepare
from partitioner.errors import GraphError, InputError, QuantizationError
from partitioner.graph import Cut, GraphInfo, analyze, candidate_cuts, make_cut
from partitioner.inputs import InputDecl, example_feeds
from partitioner.progress import Steps
from partitioner.quantize import QuantConfig
from partitioner.recipes import Floor, search
from partitioner.screen import Screen
from partitioner.stages import Meter

log = logging.getLogger(__name__)

__all__ = ["CALIBRATION_SAMPLES", "EVAL_SAMPLES", "SAMPLES_FILE", "partition"]

SAMPLES_FILE = "samples.npz"  # extra bundle file: inputs named like the model's, batch first
SAMPLES_KEPT = 16
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
              meter: Meter | None = None, jobs: int | None = None) -> Path:
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
        jobs: worker processes for the interior cuts (None: one per core for models of
            at least ``memory.PARALLEL_MIN_WEIGHTS``, as many as fit ``max_memory`` or the
            available memory by the per-run estimate; 1: one cut after another in this
            process). The bundle is the same either way.

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
    if jobs is not None and jobs < 1:
        raise ValueError(f"jobs must be at least 1, got {jobs}")
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
            ortutil.release()
            cuts = _resolve_cuts(info, max_cuts, extra_cuts, privacy_floor)
        ids = _cut_ids(cuts)
        splits = [c for c in cuts if c.kind == "split"]
        run.fit_batch(info, weights, max_memory, name)
        run.plan_jobs(len(splits), max_memory, jobs)
        step.total(2 + 2 * len(splits) + 2)
        step("analyze")
        with _cache.bound(_open_cache(cache_dir, info.model, meter)) as run_cache:
            specs = run.cuts(info, loaded, data, decls, cuts, ids, run_cache, on_cut, on_drop)
        manifest = Manifest(
            name=name, version=version, created=datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            source=loaded.source, opset=info.opset, task=loaded.task,  # type: ignore[arg-type]
            inputs=cut_specs(info, info.inputs), outputs=cut_specs(info, info.outputs), cuts=specs,
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
        ortutil.release()
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
        self.estimate: memory.Estimate | None = None
        self.jobs = 1  # worker processes for the interior cuts (1: here, in order)

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
        self.estimate = est
        log.info("estimated peak memory %s", est.describe())
        self.meter.facts.update(estimate=est.total, batch=self.batch, work_batch=work,
                                weights=weights, activations=acts, all_activations=every)
        self.work = work
        if self.quant.calibrate_method == "MinMax" and work != self.quant.batch:
            # min/max ranges do not depend on how samples are batched
            self.quant = dataclasses.replace(self.quant, batch=work)
        # Outputs batch-first: the held-back set can run in batches and be concatenated.
        self._chunked = all(info.tensors[o].batch_major for o in info.outputs)

    def plan_jobs(self, cuts: int, budget: int | None, requested: int | None) -> None:
        """How many worker processes run the interior cuts, within the memory budget."""
        assert self.estimate is not None
        self.jobs = memory.workers(self.estimate, cuts, budget, requested)
        if requested is not None and self.jobs < min(requested, cuts):
            log.warning("--jobs %d lowered to %d: each cut worker needs %s and the budget "
                        "is %s", requested, self.jobs, memory.fmt_bytes(self.estimate.total),
                        "--max-memory" if budget is not None else "the available memory")
        self.meter.facts["jobs"] = self.jobs

    def references(self, model: onnx.ModelProto, evald: Mapping[str, np.ndarray],
                   verify_feeds: Mapping[str, np.ndarray]) -> tuple[list, list]:
        """The full fp32 model's outputs on the held-back and verification inputs, from a
        session that is closed afterwards: every later comparison uses these outputs."""
        sess = ortutil.session(model)
        ref_eval = self.run_batched(lambda f: _run_checked(sess, f, "evaluation data"), evald)
        return ref_eval, sess.run(None, dict(verify_feeds))

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

    def make_screen(self, evald: Mapping[str, np.ndarray], ref_eval: Sequence[np.ndarray]
                    ) -> Screen:
        """How candidates are evaluated on the held-back set: in batches, stopping early
        once a candidate provably misses the floor (never with a user metric, which
        cannot be bounded)."""
        floor = self.floor
        return Screen(evald, ref_eval, self.classification, floor.cosine,
                      floor.top1 if self.classification else None, self.batch,
                      chunked=self._chunked, enabled=floor.metric is None)

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
        verify_feeds = example_feeds(_varied(decls), VERIFY_BATCH, 7, loaded.vocab)
        evald = data.eval
        eval_digest = _cache.digest_arrays(evald) if run_cache is not None else ""
        with meter.stage("reference outputs"), ortutil.threads(memory.cores()):
            ref_eval, ref_verify = self.references(info.model, evald, verify_feeds)
        if floor.metric is not None:
            floor.score(ref_eval, ref_eval)  # fails now, before any work, if it is broken
        work = CutWork(info, data.calib, evald, ref_eval, ref_verify, verify_feeds, floor,
                       quant, classification, self.make_screen(evald, ref_eval), self.scratch,
                       self.work, self.device_tails, eval_digest)

        work.threads = memory.cores()  # nothing else runs while the full model is searched
        with meter.stage("search full model"), ortutil.threads(work.threads):
            full_pick, full_tried, full_fp32_ms = search(
                info.model, lambda m: work.evaluate(m, None, ()), data.calib,
                work.probe(evald), floor, classification, quant=quant, what="full model",
                tick=step.candidate)
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
        self.full_acc = full_acc = accuracy(full_pick.comparison, full_pick.metric)
        del full_tried
        ortutil.release()
        step("search full model")

        total_nodes = max(info.compute_nodes, 1)
        commons = [dict(id=cid, depth=cut.depth, depth_fraction=cut.depth / total_nodes,
                        bytes=cut.bytes, head_flops=cut.head_macs, tail_flops=cut.tail_macs)
                   for cut, cid in zip(cuts, ids, strict=True)]
        tasks = [(cut, cid, common, n, len(cuts)) for n, (cut, cid, common)
                 in enumerate(zip(cuts, ids, commons, strict=True), 1) if cut.kind == "split"]
        work.threads = max(1, memory.cores() // self.jobs)
        results = self.interior(work, tasks, run_cache)
        specs: list[CutSpec] = []
        for cut, cid, common in zip(cuts, ids, commons, strict=True):
            if cut.kind == "cloud":
                spec = CutSpec(**common, tensors=cut_specs(info, info.inputs),
                               bytes_int8=int8_bytes(info, info.inputs), tail="full.onnx",
                               accuracy=Accuracy(top1_agreement=1.0 if classification else None,
                                                 samples=len(ref_eval[0])), recipe="fp32")
            elif cut.kind == "edge":
                spec = with_recipe(CutSpec(**common, tensors=[], bytes_int8=0,
                                           head="full.int8.onnx", accuracy=full_acc),
                                   full_pick, full_fp32_ms)
            else:
                result = next(results)
                self.files += result.files
                if result.spec is None:
                    reason = f"no head meets the floor (cosine >= {floor.cosine})"
                    log.warning("cut %s dropped: %s", cid, reason)
                    if on_drop is not None:
                        on_drop(cid, reason)
                    continue
                spec = result.spec
            specs.append(spec)
            if on_cut is not None:
                on_cut(spec)
        return specs

    def interior(self, work: CutWork, tasks: Sequence[Task],
                 run_cache: _cache.PartitionCache | None) -> Iterator[CutResult]:
        """The interior cuts' results in cut order: here, one after another, or on
        ``self.jobs`` worker processes (:mod:`partitioner.parallel`)."""
        from partitioner import parallel

        state = parallel.share(work) if self.jobs > 1 and len(tasks) > 1 else None
        if state is None:
            self.meter.facts["jobs"] = 1
            work.threads = memory.cores()
            for cut, cid, common, n, count in tasks:
                self.step.cut(cid, n, count)
                yield work.run_cut(cut, cid, common, self.step)
            return
        yield from parallel.run_cuts(state, tasks, self.jobs, self.step, self.meter,
                                     run_cache)
