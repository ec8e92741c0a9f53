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
from partitioner.errors import GraphError
from partitioner.graph import Cut, GraphInfo, analyze, candidate_cuts, make_cut
from partitioner.quantize import CalibrationSet, QuantConfig, quantize
from partitioner.split import compare, head_model, run_split, tail_model, verify_split

log = logging.getLogger(__name__)

__all__ = ["CALIBRATION_SAMPLES", "EVAL_SAMPLES", "SAMPLES_FILE", "partition"]

CALIBRATION_SAMPLES = 64
SAMPLES_FILE = "samples.npz"  # extra bundle file: inputs named like the model's, batch first
SAMPLES_KEPT = 16
EVAL_SAMPLES = 64
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


def _calibration(loaded: load.Loaded, calib_data: Any, info: GraphInfo,
                 ) -> tuple[CalibrationSet, str]:
    shapes = {n: tuple(info.tensors[n].shape[1:]) for n in info.inputs}
    if calib_data is None:
        if loaded.examples is not None:
            return CalibrationSet(loaded.examples(CALIBRATION_SAMPLES, 0)), "generated"
        specs = ortutil.input_specs(info.model)
        return (CalibrationSet(ortutil.random_feeds(specs, CALIBRATION_SAMPLES, seed=0)),
                "generated")
    if isinstance(calib_data, CalibrationSet):
        return calib_data, "given"
    if isinstance(calib_data, Mapping):
        return CalibrationSet(calib_data), "given"
    path = Path(calib_data)
    return CalibrationSet.from_npz(path, list(info.inputs), shapes), path.name


def _eval_data(loaded: load.Loaded, info: GraphInfo) -> dict[str, np.ndarray]:
    if loaded.heldout is not None:
        return dict(loaded.heldout[0])
    if loaded.examples is not None:
        return loaded.examples(EVAL_SAMPLES, 1)
    return ortutil.random_feeds(ortutil.input_specs(info.model), EVAL_SAMPLES, seed=1)


def _specs(info: GraphInfo, names: Iterable[str]) -> list[TensorSpec]:
    return [TensorSpec(name=n, shape=list(info.tensors[n].shape), dtype=info.tensors[n].dtype)
            for n in names]


def _int8_bytes(info: GraphInfo, names: Iterable[str]) -> int:
    total = 0
    for n in names:
        t = info.tensors[n]
        total += t.sample_elements if t.dtype.startswith("float") else t.bytes
    return total


def _accuracy(ref: Sequence[np.ndarray], got: Sequence[np.ndarray], classification: bool,
              ) -> Accuracy:
    c = compare(ref, got, classification)
    return Accuracy(max_abs=c.max_abs, mean_abs=c.mean_abs, cosine=c.cosine,
                    top1_agreement=c.top1_agreement, samples=c.samples)


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


def partition(model: Any, input_shapes: Sequence[Sequence[int]] | None, out_dir: Path | str, *,
              name: str | None = None, version: str = "1", calib_data: Any = None,
              max_cuts: int = 6, signing_key: Any = None,
              extra_cuts: Iterable[Iterable[str]] | None = None, progress: bool = True,
              task: str | None = None, quant: QuantConfig | None = None,
              privacy_floor: int = 0,
              on_cut: Callable[[CutSpec], None] | None = None) -> Path:
    """Partition ``model`` into a verified, int8-headed bundle ``out_dir/name/version``.

    Args:
        model: ``"zoo:<name>"``, a path to an ``.onnx`` file, ``"pkg.module:callable"``
            returning an ``nn.Module``, or an ``nn.Module``.
        input_shapes: one shape per input, batch first (``None`` for zoo/ONNX models:
            their own shapes are used).
        out_dir: the bundle repository root.
        name / version: bundle directory names (default name: the model's).
        calib_data: ``.npz`` path (arrays named like the inputs, or ``arr_0``...), a dict
            of arrays, or None for generated data (real digits for ``zoo:digits_cnn``).
        max_cuts: cuts to keep including "cloud" and "edge".
        privacy_floor: minimum edge-side depth of any cut; above 0 there is no "cloud"
            cut (raw inputs never leave the edge).
        signing_key: Ed25519 private key or a path to its PEM file.
        extra_cuts: crossing-tensor sets that must be candidates too (e.g. a min-cut);
            each is validated with :func:`partitioner.graph.make_cut`.
        progress: show a rich progress bar on stderr.
        task: "classification" (top-1 agreement is reported) or "other"; zoo models
            know theirs.
        quant: quantization settings (defaults: QDQ, S8S8, per-channel, MinMax).
        on_cut: called with each finished :class:`CutSpec` (the CLI prints rows live).

    Returns:
        The published bundle directory.

    Raises:
        UnknownModel, ExportError, GraphError, QuantizationError, VerificationError,
        BundleExists, ValueError: each with a one-line message saying what to do.
    """
    quant = quant or QuantConfig()
    if task is not None and task not in ("classification", "regression", "other"):
        raise ValueError(f"task must be classification, regression or other, not {task!r}")
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
    started = time.perf_counter()
    with _Steps(progress) as step:
        loaded = load.load(model, input_shapes, name=name, task=task)
        name = _check_name("name", loaded.name)
        if (out_dir / name / version).exists():
            raise BundleExists(f"bundle {out_dir / name / version} already exists; bundles "
                               "are immutable — choose a new --version")
        step("export")
        info = analyze(loaded.model)
        cuts = _resolve_cuts(info, max_cuts, extra_cuts, privacy_floor)
        ids = _cut_ids(cuts)
        splits = [c for c in cuts if c.kind == "split"]
        # export+analyze, 4 per split cut (extract, verify, calibrate+quantize, accuracy),
        # full model quantize + accuracy, write
        step.total(2 + 4 * len(splits) + 3)
        step("analyze")
        classification = loaded.task == "classification"
        calib, calib_source = _calibration(loaded, calib_data, info)
        evald = _eval_data(loaded, info)
        verify_feeds = ortutil.random_feeds(ortutil.input_specs(info.model), _VERIFY_BATCH,
                                             seed=7)
        full_sess = ortutil.session(info.model)
        ref_eval = full_sess.run(None, evald)

        files: dict[str, onnx.ModelProto] = {"full.onnx": info.model}
        step("quantize full model")
        full_int8 = quantize(info.model, calib, quant, what="full model")
        files["full.int8.onnx"] = full_int8
        full_acc = _accuracy(ref_eval, ortutil.session(full_int8).run(None, evald),
                             classification)
        step("accuracy full model")

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
                                                 samples=len(ref_eval[0])))
            elif cut.kind == "edge":
                spec = CutSpec(**common, tensors=[], bytes_int8=0, head="full.int8.onnx",
                               accuracy=full_acc)
            else:
                spec = _split_cut(info, cut, cid, common, calib, quant, full_sess,
                                  verify_feeds, evald, ref_eval, classification, files, step)
            specs.append(spec)
            if on_cut is not None:
                on_cut(spec)

        manifest = Manifest(
            name=name, version=version, created=datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            source=loaded.source, opset=info.opset, task=loaded.task,  # type: ignore[arg-type]
            inputs=_specs(info, info.inputs), outputs=_specs(info, info.outputs), cuts=specs,
            full_accuracy=full_acc,
            quantization=QuantSpec(per_channel=quant.per_channel,
                                   activation_type=quant.activation_type,
                                   weight_type=quant.weight_type, calibration=calib_source,
                                   calibration_samples=calib.samples))
        with write_bundle(out_dir, name, version, key) as stage:
            for rel, proto in files.items():
                onnx.save(proto, str(stage.dir / rel))
            # A few representative inputs (calibration distribution): verify and profiling
            # warm-up use them instead of random noise that int8 ranges were not fit to.
            np.savez(stage.dir / SAMPLES_FILE,
                     **{k: v[:SAMPLES_KEPT] for k, v in calib.arrays.items()})
            stage.set_manifest(manifest)
        step("write bundle")
    final = out_dir / name / version
    log.info("partitioned %s into %s: %d cuts in %.1fs", loaded.source, final, len(specs),
             time.perf_counter() - started)
    return final


def _split_cut(info: GraphInfo, cut: Cut, cid: str, common: dict, calib: CalibrationSet,
               quant: QuantConfig, full_sess, verify_feeds, evald, ref_eval,
               classification: bool, files: dict[str, onnx.ModelProto], step: _Steps,
               ) -> CutSpec:
    head, tail = head_model(info, cut), tail_model(info, cut)
    step(f"extract {cid}")
    head_sess, tail_sess = ortutil.session(head), ortutil.session(tail)
    verify_split(full_sess, head_sess, tail_sess, verify_feeds, cut_id=cid)
    _check_head_outputs(head_sess, info, cut, cid, verify_feeds)
    step(f"verify {cid}")
    head_int8 = quantize(head, calib, quant, what=f"head of cut {cid}", require_quantized=False)
    step(f"calibrate+quantize {cid}")
    got = run_split(ortutil.session(head_int8), tail_sess, evald)
    acc = _accuracy(ref_eval, got, classification)
    step(f"accuracy {cid}")
    names = {"head": f"head-{cid}.int8.onnx", "head_fp32": f"head-{cid}.onnx",
             "tail": f"tail-{cid}.onnx"}
    files[names["head"]], files[names["head_fp32"]], files[names["tail"]] = head_int8, head, tail
    return CutSpec(**common, tensors=_specs(info, cut.tensors),
                   bytes_int8=_int8_bytes(info, cut.tensors), accuracy=acc, **names)


def _check_head_outputs(head_sess, info: GraphInfo, cut: Cut, cid: str, feeds) -> None:
    """The head's outputs are exactly the crossing tensors, in shape and dtype."""
    names = [o.name for o in head_sess.get_outputs()]
    if sorted(names) != sorted(cut.tensors):
        raise GraphError(f"cut {cid}: head outputs {names} != crossing tensors {cut.tensors}")
    ins = {i.name: feeds[i.name] for i in head_sess.get_inputs()}
    for n, v in zip(names, head_sess.run(names, ins), strict=True):
        t = info.tensors[n]
        want = (_VERIFY_BATCH, *t.shape[1:])
        if tuple(v.shape) != want or v.dtype.name != t.dtype:
            raise GraphError(f"cut {cid}: head output {n!r} is {v.dtype.name}{list(v.shape)}, "
                             f"expected {t.dtype}{list(want)}")

