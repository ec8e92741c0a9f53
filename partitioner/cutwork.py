"""The work of one interior cut, given what every cut shares: extract the head and tail,
verify the split, search the head's precision, write the models, then the cut's codecs
and device tail.

:class:`CutWork` holds only plain data (the analysed graph, the calibration and
held-back inputs, the fp32 reference outputs, the settings), so the same object runs the
cuts one after another in the partitioning process or is sent once to each worker
process (:mod:`partitioner.parallel`), and either way produces the same files and specs.
The run's meter, progress and cache are looked up where the work runs
(:func:`partitioner.stages.current`, :func:`partitioner.cache.current`).
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import onnx

from contract.bundle import Accuracy, CutSpec, TensorSpec
from partitioner import cache as _cache
from partitioner import ortutil, stages
from partitioner.errors import GraphError
from partitioner.graph import Cut, GraphInfo
from partitioner.quantize import CalibrationSet, QuantConfig
from partitioner.recipes import Candidate, Floor, search
from partitioner.screen import Screen, judged
from partitioner.split import (
    Comparison,
    compare,
    head_model,
    run_split,
    tail_model,
    verify_split,
)

log = logging.getLogger(__name__)

__all__ = ["VERIFY_BATCH", "CutResult", "CutWork", "Progress", "Task", "accuracy",
           "int8_bytes", "specs", "with_recipe"]

VERIFY_BATCH = 3  # not 1: proves the dynamic batch dimension works end to end
Task = tuple[Cut, str, dict, int, int]  # cut, id, common spec fields, index, cut count


class Progress(Protocol):
    """What the cut work reports progress to (the run's bar, or a worker's queue)."""

    def __call__(self, desc: str, advance: int = 1) -> None: ...

    def cut(self, cid: str, index: int, count: int) -> None: ...

    def candidate(self, desc: str) -> None: ...


def specs(info: GraphInfo, names: Sequence[str]) -> list[TensorSpec]:
    """Tensor specs of ``names`` from the analysed graph."""
    return [TensorSpec(name=n, shape=list(info.tensors[n].shape), dtype=info.tensors[n].dtype,
                       dynamic=list(info.tensors[n].dynamic)) for n in names]


def int8_bytes(info: GraphInfo, names: Sequence[str]) -> int:
    """Bytes per sample of ``names`` with float tensors sent as int8."""
    total = 0
    for n in names:
        t = info.tensors[n]
        total += t.sample_elements if t.dtype.startswith("float") else t.bytes
    return total


def accuracy(c: Comparison, metric: float | None) -> Accuracy:
    """A manifest accuracy record from a comparison."""
    return Accuracy(max_abs=c.max_abs, mean_abs=c.mean_abs, cosine=c.cosine,
                    top1_agreement=c.top1_agreement, samples=c.samples, metric=metric)


def with_recipe(spec: CutSpec, pick: Candidate, fp32_ms: float) -> CutSpec:
    """``spec`` recording the chosen head's recipe and latencies."""
    return spec.model_copy(update={"recipe": pick.recipe, "excluded_nodes": pick.excluded,
                                   "latency_ms": round(pick.latency_ms, 4),
                                   "latency_fp32_ms": round(fp32_ms, 4)})


@dataclass
class CutResult:
    """One cut's outcome: its spec (None: no head kept the floor) and the files it wrote
    to the scratch directory."""

    cid: str
    spec: CutSpec | None
    files: list[str] = field(default_factory=list)


@dataclass
class CutWork:
    """Everything the cuts of one run share, and the per-cut work on it."""

    info: GraphInfo
    calib: CalibrationSet
    evald: dict[str, np.ndarray]
    ref_eval: list[np.ndarray]
    ref_verify: list[np.ndarray]
    verify_feeds: dict[str, np.ndarray]
    floor: Floor
    quant: QuantConfig
    classification: bool
    screen: Screen
    scratch: Path
    work: int  # samples per sensitivity-probe batch
    device_tails: bool = True
    eval_digest: str = ""
    # intra-op threads of the evaluation sessions: the cores left to each process that
    # works at once (latency is always timed on one thread, as the edge runs it)
    threads: int = 1

    # -- evaluation on the held-back set ------------------------------------------------

    def evaluate(self, model: onnx.ModelProto, tail_sess: Any, scope: Sequence[str]
                 ) -> tuple[Comparison, float | None]:
        """``model`` (a head, finished by ``tail_sess``; or a whole model) against the
        fp32 reference on the held-back set, screened: a candidate that provably misses
        the floor stops early. Results are cached by the exact model bytes."""
        floor, screen = self.floor, self.screen
        with stages.current().stage("evaluate"):
            key = None
            if floor.metric is None and _cache.current() is not None:
                key = _cache.key_of(list(scope), _cache.digest_model(model), self.eval_digest,
                                    self.classification)

            def runner() -> Callable[[dict[str, np.ndarray]], list[np.ndarray]]:
                sess = ortutil.session(model, threads=self.threads)
                if tail_sess is None:
                    return lambda f: sess.run(None, f)
                return lambda f: run_split(sess, tail_sess, f)

            return judged(screen, key, runner, lambda outs: (
                compare(self.ref_eval, outs, self.classification),
                floor.score(self.ref_eval, outs)))

    def probe(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Held-back samples for the search's own runs (latency at batch 1, the
        sensitivity probe that keeps every activation): at most a work batch of them.
        Accuracy is still judged on the whole held-back set (``evaluate``)."""
        return {k: v[:self.work] for k, v in feeds.items()}

    # -- one cut -------------------------------------------------------------------------

    def run_cut(self, cut: Cut, cid: str, common: dict, step: Progress) -> CutResult:
        """Head search, files, codecs and device tail of one interior cut."""
        files: list[str] = []
        with ortutil.threads(self.threads):
            with stages.current().stage("cut total"):
                spec = self._split_cut(cut, cid, common, step, files)
            ortutil.release()
            if spec is not None:
                spec = self._extras(spec, step, files)
        ortutil.release()
        return CutResult(cid, spec, files)

    def _save(self, files: list[str], rel: str, model: onnx.ModelProto) -> None:
        onnx.save(model, str(self.scratch / rel))
        files.append(rel)

    def _split_cut(self, cut: Cut, cid: str, common: dict, step: Progress,
                   files: list[str]) -> CutSpec | None:
        meter, info = stages.current(), self.info
        with meter.stage("extract head/tail"):
            head, tail = head_model(info, cut), tail_model(info, cut)
        with meter.stage("verify split"):
            head_sess = ortutil.session(head, threads=self.threads)
            tail_sess = ortutil.session(tail, threads=self.threads)
            verify_split(None, head_sess, tail_sess, self.verify_feeds, cut_id=cid,
                         reference=self.ref_verify)
            _check_head_outputs(head_sess, info, cut, cid, self.verify_feeds)
            del head_sess
        step(f"verify {cid}")
        with meter.stage("search heads"):
            pick, tried, fp32_ms = search(
                head, lambda m: self.evaluate(m, tail_sess, cut.tensors), self.calib,
                self.probe(self.evald), self.floor, self.classification, quant=self.quant,
                what=f"head of cut {cid}", tick=step.candidate)
        del tried
        step(f"search {cid}")
        if pick is None:
            return None
        names = {"head": f"head-{cid}.int8.onnx", "head_fp32": f"head-{cid}.onnx",
                 "tail": f"tail-{cid}.onnx"}
        spec = CutSpec(**common, tensors=specs(info, cut.tensors),
                       bytes_int8=int8_bytes(info, cut.tensors),
                       accuracy=accuracy(pick.comparison, pick.metric), **names)
        spec = with_recipe(spec, pick, fp32_ms)
        with meter.stage("save cut"):
            self._save(files, names["head_fp32"], head)
            if pick.model is head:  # fp32 ships: the same bytes, serialized once
                shutil.copyfile(self.scratch / names["head_fp32"], self.scratch / names["head"])
                files.insert(0, names["head"])
            else:
                self._save(files, names["head"], pick.model)
            self._save(files, names["tail"], tail)
        return spec

    def _extras(self, spec: CutSpec, step: Progress, files: list[str]) -> CutSpec:
        """The cut's wire codecs (bytes and the accuracy each keeps) and its int8 device
        tail (:mod:`partitioner.cut_extras`), from the head and tail already written out;
        both are released again when done."""
        from partitioner.cut_extras import finish_cut

        if not (spec.head and spec.tail):
            return spec
        classification, floor, ref = self.classification, self.floor, self.ref_eval

        def judge(outs: list[np.ndarray]) -> tuple[Comparison, float | None]:
            return compare(ref, outs, classification), floor.score(ref, outs)

        with stages.current().stage("device tail + codecs"):
            models = {rel: onnx.load(str(self.scratch / rel)) for rel in (spec.head, spec.tail)}
            spec = finish_cut(spec, models, self.calib, self.evald, ref, judge, floor,
                              classification, quant=self.quant,
                              device_tails=self.device_tails, tick=lambda d: step(d, 0),
                              screen=self.screen)
            if spec.device_tail is not None:
                self._save(files, spec.device_tail, models[spec.device_tail])
            del models
            ortutil.release()
        return spec


def _check_head_outputs(head_sess, info: GraphInfo, cut: Cut, cid: str,
                        feeds: Mapping[str, np.ndarray]) -> None:
    """The head's outputs are exactly the crossing tensors, in shape and dtype."""
    names = [o.name for o in head_sess.get_outputs()]
    if sorted(names) != sorted(cut.tensors):
        raise GraphError(f"cut {cid}: head outputs {names} != crossing tensors {cut.tensors}")
    ins = {i.name: feeds[i.name] for i in head_sess.get_inputs()}
    for n, v in zip(names, head_sess.run(names, ins), strict=True):
        t = info.tensors[n]
        want = (VERIFY_BATCH, *t.shape[1:])
        fixed = [i for i in range(len(want)) if i not in t.dynamic]
        if len(v.shape) != len(want) or any(v.shape[i] != want[i] for i in fixed) \
                or v.dtype.name != t.dtype:
            raise GraphError(f"cut {cid}: head output {n!r} is {v.dtype.name}{list(v.shape)}, "
                             f"expected {t.dtype}{list(want)}")
