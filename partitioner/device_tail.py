"""Device tails: the rest of the model after a cut, int8 and accuracy-bounded, for the edge.

When a request's cloud attempt fails after its head ran, the agent finishes it from the
tensors the head already computed instead of rerunning the whole model: the device tail
of that cut. It is made like the heads: every int8 recipe of :func:`partitioner.recipes.search`
is tried on the fp32 tail, calibrated on what the shipped int8 head outputs for the
calibration inputs (the tail sees exactly those on the device), and judged end to end on
the held-back inputs: int8 head -> int8 device tail vs the fp32 full model, against the
bundle's floor. Only an int8 tail ships (an fp32 tail would not be cheaper than the int8
full model the agent already has); when no int8 recipe keeps the floor the cut ships no
device tail and the agent falls back to the full model.
"""

from __future__ import annotations

import dataclasses
import logging
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

from contract.bundle import Accuracy, CutSpec
from partitioner import cache as _cache
from partitioner import ortutil, stages
from partitioner.quantize import CalibrationSet, LazyCalibration, LazyFeeds, QuantConfig
from partitioner.recipes import Candidate, Floor, search
from partitioner.screen import SCREEN_SAMPLES, Screen, judged
from partitioner.split import Comparison

log = logging.getLogger(__name__)

__all__ = ["DeviceTail", "build_device_tail", "device_tail_file", "tail_feeds",
           "with_device_tail"]

Judge = Callable[[list[np.ndarray]], tuple[Comparison, float | None]]


def device_tail_file(cut_id: str) -> str:
    """The bundle file name of a cut's device tail."""
    return f"device-tail-{cut_id}.int8.onnx"


@dataclass(frozen=True)
class DeviceTail:
    """The outcome for one cut: the shipped tail, or why there is none."""

    cut_id: str
    pick: Candidate | None
    tried: int
    fp32_ms: float
    reason: str = ""

    @property
    def file(self) -> str | None:
        return device_tail_file(self.cut_id) if self.pick is not None else None


def tail_feeds(head: onnx.ModelProto, tail: onnx.ModelProto,
               inputs: Mapping[str, np.ndarray], head_sess=None) -> dict[str, np.ndarray]:
    """The tail's inputs for ``inputs``: the head's outputs (and any model input the
    tail reads directly), by name. ``head_sess``: an open session of ``head`` to reuse."""
    hs = head_sess if head_sess is not None else ortutil.session(head)
    names = [o.name for o in hs.get_outputs()]
    mids = dict(zip(names, ortutil.run_chunked(
        hs, names, {i.name: inputs[i.name] for i in hs.get_inputs()},
        ortutil.chunk_for(head)), strict=True))
    wanted = [i.name for i in tail.graph.input
              if i.name not in {w.name for w in tail.graph.initializer}]
    return {n: mids[n] if n in mids else inputs[n] for n in wanted}


def build_device_tail(cut_id: str, head_int8: onnx.ModelProto, tail: onnx.ModelProto,
                      calib: CalibrationSet, eval_inputs: Mapping[str, np.ndarray],
                      judge: Judge, floor: Floor, classification: bool, *,
                      quant: QuantConfig | None = None,
                      tick: Callable[[str], None] | None = None,
                      screen: Screen | None = None) -> DeviceTail:
    """Search an int8 device tail for one cut.

    Args:
        head_int8: the head that ships for this cut (its outputs calibrate the tail).
        tail: the fp32 tail.
        calib / eval_inputs: the bundle's calibration set and held-back model inputs.
        judge: model outputs on ``eval_inputs`` -> (comparison vs fp32, user metric).
        screen: the run's held-back screen (its reference and floor): candidates that
            provably miss the floor stop early. None: every candidate runs in full.

    Returns:
        The fastest int8 tail meeting the floor, or none with the reason.
    """
    # The tail's inputs (the int8 head's outputs) are computed only when some cache
    # lookup misses: on a re-run with another floor, every figure is a hit and keyed by
    # what the inputs are computed from (the head's bytes and the model inputs).
    sessions: list = []

    def head_sess():
        if not sessions:
            sessions.append(ortutil.session(head_int8))
        return sessions[0]

    def computed(inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        stages.current().count("device-tail inputs computed")
        return tail_feeds(head_int8, tail, inputs, head_sess())

    cached = _cache.current() is not None
    base = (_cache.key_of(_cache.digest_model(head_int8), [i.name for i in tail.graph.input])
            if cached else "")
    n_eval = len(next(iter(eval_inputs.values())))
    calib_t = LazyCalibration(LazyFeeds(
        lambda: computed(calib.arrays),
        _cache.key_of("tail calibration", base, calib.digest) if cached else "",
        calib.samples))
    eval_t = LazyFeeds(lambda: computed(eval_inputs),
                       _cache.key_of("tail held-back", base, _cache.digest_arrays(eval_inputs))
                       if cached else "", n_eval)
    tail_screen = None if screen is None else dataclasses.replace(
        screen, feeds=eval_t, whole=True, first=min(SCREEN_SAMPLES, screen.batch),
        size=n_eval)
    eval_digest = eval_t.key

    def evaluate(model: onnx.ModelProto) -> tuple[Comparison, float | None]:
        if tail_screen is None:
            return judge(ortutil.run_chunked(ortutil.session(model), None, dict(eval_t),
                                             ortutil.chunk_for(model)))
        key = None
        if floor.metric is None and eval_digest:
            key = _cache.key_of("device tail", _cache.digest_model(model), eval_digest,
                                classification)

        def runner() -> Callable[[dict[str, np.ndarray]], list[np.ndarray]]:
            sess = ortutil.session(model)
            return lambda f: sess.run(None, f)

        return judged(tail_screen, key, runner, judge)

    # Only an int8 tail ships: the fp32 tail is never a candidate (its figures are the
    # shipped head's, already known).
    # The tail is calibrated once; its fallback candidates (nodes left in float) are
    # quantized from the same ranges, which do not depend on the nodes excluded.
    with tempfile.TemporaryDirectory(prefix="tiersplit-tail-") as tmp:
        calib_t.share_ranges(Path(tmp) / "ranges.json", tail)
        _chosen, tried, fp32_ms = search(tail, evaluate, calib_t, eval_t, floor,
                                         classification, quant=quant,
                                         what=f"device tail of cut {cut_id}", tick=tick,
                                         fp32_fallback=False)
    int8 = [c for c in tried if c.meets and c.recipe != "fp32"]
    if not int8:
        best = max((c.comparison.cosine for c in tried if c.recipe != "fp32"), default=None)
        reason = ("no int8 recipe applies" if best is None else
                  f"no int8 tail meets the floor (best cosine {best:.4f} < {floor.cosine})")
        log.info("cut %s ships no device tail: %s", cut_id, reason)
        return DeviceTail(cut_id, None, len(tried), fp32_ms, reason)
    pick = min(int8, key=lambda c: c.latency_ms)
    return DeviceTail(cut_id, pick, len(tried), fp32_ms)


def with_device_tail(spec: CutSpec, result: DeviceTail) -> CutSpec:
    """``spec`` naming its device tail and recording how it was made."""
    if result.pick is None:
        return spec.model_copy(update={"device_tail": None})
    c = result.pick.comparison
    return spec.model_copy(update={
        "device_tail": result.file,
        "device_tail_recipe": result.pick.recipe,
        "device_tail_latency_ms": round(result.pick.latency_ms, 4),
        "device_tail_accuracy": Accuracy(max_abs=c.max_abs, mean_abs=c.mean_abs,
                                         cosine=c.cosine, top1_agreement=c.top1_agreement,
                                         samples=c.samples, metric=result.pick.metric)})
