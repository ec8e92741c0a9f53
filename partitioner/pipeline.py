"""``partition()``: model -> graph -> candidate cuts -> verified, quantized bundle.

Everything is computed in memory and written through :func:`contract.bundle.write_bundle`
(temp dir + rename), so a failure at any step leaves no half-written bundle behind.
"""

from __future__ import annotations

import logging
import re
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
from partitioner import load, ortutil
from partitioner.data import CALIBRATION_SAMPLES, EVAL_SAMPLES, decls_from, load_metric, prepare
from partitioner.errors import GraphError, InputError, QuantizationError
from partitioner.graph import Cut, GraphInfo, analyze, candidate_cuts, make_cut
from partitioner.inputs import InputDecl, example_feeds
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

log = logging.getLogger(__name__)

__all__ = ["CALIBRATION_SAMPLES", "EVAL_SAMPLES", "SAMPLES_FILE", "partition"]

SAMPLES_FILE = "samples.npz"  # extra bundle file: inputs named like the model's, batch first
SAMPLES_KEPT = 16
_VERIFY_BATCH = 3  # not 1: proves the dynamic batch dimension works end to end
_SAFE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


class _Steps:
    """A rich progress bar (stderr) or a no-op; one tick per finished step."""

    def __init__(self, enabled: bool) -> None:
        self._bar = None
        self._task = None
        if enabled:
            from rich.console import Console
            from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

            self._bar = Progress(TextColumn("{task.description:<34}"), BarColumn(),
                                 TextColumn("{task.completed}/{task.total}"),
                                 TimeElapsedColumn(), console=Console(stderr=True),
                                 transient=True)

    def __enter__(self) -> _Steps:
        if self._bar is not None:
            self._bar.start()
            self._task = self._bar.add_task("export", total=2)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self._bar.stop()

    def total(self, n: int) -> None:
        if self._bar is not None:
            self._bar.update(self._task, total=n)

    def __call__(self, desc: str, advance: int = 1) -> None:
        if self._bar is not None:
            self._bar.update(self._task, description=desc, advance=advance)
        log.debug("partition step: %s", desc)


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
              device_tails: bool = True) -> Path:
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

    Returns:
        The published bundle directory.

    Raises:
        UnknownModel, ExportError, GraphError, InputError, QuantizationError,
        AccuracyError, VerificationError, BundleExists, ValueError: one-line messages.
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
    started = time.perf_counter()
    torch_model = not (isinstance(model, (str, Path)) and (
        str(model).startswith("zoo:") or str(model).endswith(".onnx") or Path(model).is_file()))
    if input_shapes is None and calib_data is not None and torch_model:
        input_shapes = decls_from(calib_data)  # dtypes and shapes from the user's data
    with _Steps(progress) as step:
        loaded = load.load(model, input_shapes, name=name, task=task)
        name = _check_name("name", loaded.name)
        if (out_dir / name / version).exists():
            raise BundleExists(f"bundle {out_dir / name / version} already exists; bundles "
                               "are immutable — choose a new --version")
        step("export")
        data = prepare(loaded, calib_data, eval_data)
        sizes = {k: (1, *v.shape[1:]) for k, v in data.calib.arrays.items()}
        decls = [InputDecl(d.name, sizes.get(d.name or "", d.shape), d.dtype, d.dynamic)
                 for d in loaded.inputs]
        try:
            first_sess = ortutil.session(loaded.model)
        except Exception as e:
            reason = re.sub(r"^\[ONNXRuntimeError\] : \d+ : \w+ : (Fatal error: )?", "",
                            (str(e).strip().splitlines() or [type(e).__name__])[0])[:300]
            raise GraphError(f"ONNX Runtime cannot run this model: {reason} — bundles run on "
                             "ONNX Runtime: replace unsupported ops") from e
        _run_checked(first_sess, {k: v[:2] for k, v in data.calib.arrays.items()},
                     "calibration data")
        _run_checked(first_sess, {k: v[:2] for k, v in data.eval.items()}, "evaluation data")
        del first_sess
        info = analyze(loaded.model, decls)
        cuts = _resolve_cuts(info, max_cuts, extra_cuts, privacy_floor)
        ids = _cut_ids(cuts)
        splits = [c for c in cuts if c.kind == "split"]
        step.total(2 + 2 * len(splits) + 2)
        step("analyze")
        classification = loaded.task == "classification"
        verify_feeds = example_feeds(_varied(decls), _VERIFY_BATCH, 7, loaded.vocab)
        full_sess = ortutil.session(info.model)
        evald = data.eval
        ref_eval = _run_checked(full_sess, evald, "evaluation data")
        if floor.metric is not None:
            floor.score(ref_eval, ref_eval)  # fails now, before any work, if it is broken

        def judge(model_outputs: list[np.ndarray]) -> tuple[Comparison, float | None]:
            return (compare(ref_eval, model_outputs, classification),
                    floor.score(ref_eval, model_outputs))

        files: dict[str, onnx.ModelProto] = {"full.onnx": info.model}
        full_pick, full_tried, full_fp32_ms = search(
            info.model, lambda m: judge(ortutil.session(m).run(None, evald)), data.calib,
            evald, floor, classification, quant=quant, what="full model",
            tick=lambda d: step(d, 0))
        if not any(c.recipe != "fp32" for c in full_tried):
            ops = sorted({n.op_type for n in info.model.graph.node})
            raise QuantizationError(
                f"nothing in the full model can be quantized to int8 by ONNX Runtime (ops: "
                f"{', '.join(ops[:12])}); int8 needs ops like Conv, MatMul, Gemm — partition "
                "a model that has them")
        if full_pick is None:
            raise GraphError("the full model does not meet the accuracy floor even in fp32: "
                             "check the metric and its floor")
        files["full.int8.onnx"] = full_pick.model
        full_acc = _accuracy(full_pick.comparison, full_pick.metric)
        step("search full model")

        total_nodes = max(info.compute_nodes, 1)
        specs: list[CutSpec] = []
        for cut, cid in zip(cuts, ids, strict=True):
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
                spec = _split_cut(info, cut, cid, common, data, quant, full_sess, verify_feeds,
                                  judge, floor, classification, files, step)
                if spec is None:
                    reason = f"no head meets the floor (cosine >= {floor.cosine})"
                    log.warning("cut %s dropped: %s", cid, reason)
                    if on_drop is not None:
                        on_drop(cid, reason)
                    continue
                # -- device tail and wire codecs of this cut (partitioner.cut_extras) --
                from partitioner.cut_extras import finish_cut

                spec = finish_cut(spec, files, data.calib, evald, ref_eval, judge, floor,
                                  classification, quant=quant, device_tails=device_tails,
                                  tick=lambda d: step(d, 0))
                # -- end device tail and wire codecs --
            specs.append(spec)
            if on_cut is not None:
                on_cut(spec)

        manifest = Manifest(
            name=name, version=version, created=datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            source=loaded.source, opset=info.opset, task=loaded.task,  # type: ignore[arg-type]
            inputs=_specs(info, info.inputs), outputs=_specs(info, info.outputs), cuts=specs,
            full_accuracy=full_acc,
            quantization=QuantSpec(
                method="accuracy-bounded search (onnxruntime quantize_static/quantize_dynamic)",
                format="QDQ/dynamic", per_channel=quant.per_channel,
                activation_type=quant.activation_type, weight_type=quant.weight_type,
                calibration=data.calib_source, calibration_samples=data.calib.samples,
                evaluation=data.eval_source, evaluation_samples=data.eval_samples,
                accuracy_floor=floor.cosine,
                top1_floor=floor.top1 if classification else None,
                metric=metric_name if metric_fn is not None else None,
                metric_floor=metric_floor if metric_fn is not None else None))
        with write_bundle(out_dir, name, version, key) as stage:
            for rel, proto in files.items():
                onnx.save(proto, str(stage.dir / rel))
            # A few representative inputs (calibration distribution): verify and profiling
            # warm-up use them instead of random noise that int8 ranges were not fit to.
            np.savez(stage.dir / SAMPLES_FILE,
                     **{k: v[:SAMPLES_KEPT] for k, v in data.calib.arrays.items()})
            stage.set_manifest(manifest)
        step("write bundle")
    log.info("partitioned %s into %d cuts in %.1fs", name, len(specs),
             time.perf_counter() - started)
    return out_dir / name / version


def _with_recipe(spec: CutSpec, pick: Candidate, fp32_ms: float) -> CutSpec:
    return spec.model_copy(update={"recipe": pick.recipe, "excluded_nodes": pick.excluded,
                                   "latency_ms": round(pick.latency_ms, 4),
                                   "latency_fp32_ms": round(fp32_ms, 4)})


def _split_cut(info: GraphInfo, cut: Cut, cid: str, common: dict, data, quant: QuantConfig,
               full_sess, verify_feeds, judge, floor: Floor, classification: bool,
               files: dict[str, onnx.ModelProto], step: _Steps) -> CutSpec | None:
    head, tail = head_model(info, cut), tail_model(info, cut)
    head_sess, tail_sess = ortutil.session(head), ortutil.session(tail)
    verify_split(full_sess, head_sess, tail_sess, verify_feeds, cut_id=cid)
    _check_head_outputs(head_sess, info, cut, cid, verify_feeds)
    step(f"verify {cid}")
    pick, _tried, fp32_ms = search(
        head, lambda m: judge(run_split(ortutil.session(m), tail_sess, data.eval)),
        data.calib, data.eval, floor, classification, quant=quant,
        what=f"head of cut {cid}", tick=lambda d: step(d, 0))
    step(f"search {cid}")
    if pick is None:
        return None
    names = {"head": f"head-{cid}.int8.onnx", "head_fp32": f"head-{cid}.onnx",
             "tail": f"tail-{cid}.onnx"}
    files[names["head"]], files[names["head_fp32"]], files[names["tail"]] = (pick.model, head,
                                                                             tail)
    spec = CutSpec(**common, tensors=_specs(info, cut.tensors),
                   bytes_int8=_int8_bytes(info, cut.tensors),
                   accuracy=_accuracy(pick.comparison, pick.metric), **names)
    return _with_recipe(spec, pick, fp32_ms)


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
