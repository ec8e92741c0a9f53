"""What the partitioner adds to an interior cut once its head is chosen: the device tail
(:mod:`partitioner.device_tail`) and the wire codecs the cut allows
(:mod:`partitioner.codec_accuracy`); and the table that reports both.

Both are measured with the head that ships, on the same held-back samples and against the
same fp32 reference as the head itself, so every figure in the manifest answers the same
question: what does the edge's output look like next to the fp32 model's.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Mapping, Sequence

import numpy as np
import onnx

from contract.bundle import CutCodec, CutSpec, Manifest
from partitioner import cache as _cache
from partitioner.codec_accuracy import CANDIDATES, best_codec, measure_codecs
from partitioner.device_tail import Judge, build_device_tail, with_device_tail
from partitioner.quantize import CalibrationSet, QuantConfig
from partitioner.recipes import Floor
from partitioner.screen import Screen
from partitioner.split import Comparison
from transport import codecs

log = logging.getLogger(__name__)

__all__ = ["candidate_codecs", "extras_table", "finish_cut"]


def finish_cut(spec: CutSpec, files: dict[str, onnx.ModelProto], calib: CalibrationSet,
               eval_inputs: Mapping[str, np.ndarray], reference: Sequence[np.ndarray],
               judge: Judge, floor: Floor, classification: bool, *,
               quant: QuantConfig | None = None, device_tails: bool = True,
               tick: Callable[[str], None] | None = None,
               screen: Screen | None = None) -> CutSpec:
    """``spec`` with its codec table and (when ``device_tails``) its device tail; the
    tail's model is added to ``files``. Cuts without both a head and a tail pass as they
    are. ``screen``: how device-tail candidates are screened on the held-back set."""
    if not (spec.head and spec.tail) or spec.head not in files or spec.tail not in files:
        return spec
    head, tail = files[spec.head], files[spec.tail]
    spec = spec.model_copy(update={"codecs": _codecs(head, tail, eval_inputs, reference,
                                                     floor, classification, tick)})
    if not device_tails:
        return spec
    result = build_device_tail(spec.id, head, tail, calib, eval_inputs, judge, floor,
                               classification, quant=quant, tick=tick, screen=screen)
    if result.pick is None:
        log.warning("cut %s ships no device tail: %s (a failed cloud attempt reruns the "
                    "full model)", spec.id, result.reason)
    else:
        files[result.file] = result.pick.model  # type: ignore[index]
    return with_device_tail(spec, result)


@dataclasses.dataclass(frozen=True)
class _Recorded(Floor):
    """The run's floor, keeping every judgement made with it (the comparison and metric
    behind each codec's verdict), so a cached codec table can be judged again under
    another floor."""

    seen: list = dataclasses.field(default_factory=list, compare=False)

    def met(self, c: Comparison, metric: float | None, classification: bool) -> bool:
        self.seen.append((dataclasses.asdict(c), metric))
        return super().met(c, metric, classification)


def _serves_other_shapes(model: onnx.ModelProto) -> bool:
    """Whether ``model`` takes inputs whose shape varies beyond the batch dimension (a
    sequence length marked dynamic): requests then come at shapes it was not judged at."""
    for i in model.graph.input:
        dims = list(i.type.tensor_type.shape.dim)[1:]
        if any(d.dim_param or not d.HasField("dim_value") for d in dims):
            return True
    return False


def candidate_codecs(head: onnx.ModelProto) -> tuple[str, ...]:
    """The codecs judged at a cut. Fitted-range bases (``int3m``/``int2m``) clip each
    channel to a range fitted to one request's values; judged at the partitioned length
    they do not carry to other lengths (all-MiniLM-L6-v2, first interior cut:
    ``int3m+zstd`` keeps mean cosine >= 0.99 on held-back sentences at 32 tokens but gives
    0.986-0.988 at 16 and 48), so a head that serves other shapes is not offered them."""
    if not _serves_other_shapes(head):
        return CANDIDATES
    return tuple(c for c in CANDIDATES if codecs.parse_spec(c).base not in codecs.FITTED_BITS)


def _codecs(head: onnx.ModelProto, tail: onnx.ModelProto,
            eval_inputs: Mapping[str, np.ndarray], reference: Sequence[np.ndarray],
            floor: Floor, classification: bool, tick: Callable[[str], None] | None
            ) -> list[CutCodec]:
    """The cut's codec table; cached by the exact head and tail bytes and the held-back
    data. A hit is re-judged under this run's floor from the figures it keeps (bytes,
    encode time, and the comparison each verdict was made on), so a re-run with another
    floor measures no codec again."""
    candidates = candidate_codecs(head)
    run_cache = _cache.current()
    key = None
    if run_cache is not None and floor.metric is None:
        key = _cache.key_of("codecs", _cache.digest_model(head), _cache.digest_model(tail),
                            _cache.digest_arrays(eval_inputs), classification, list(candidates))
        hit = run_cache.get_json("codecs", key)
        if isinstance(hit, list):
            try:
                return [CutCodec(**{**row, "meets_floor": floor.met(
                    Comparison(**cmp), metric, classification)}) for row, cmp, metric in hit]
            except (TypeError, ValueError) as e:  # a damaged entry is a miss
                log.warning("codec cache entry unusable (%s); measuring again", e)
    recorder = _Recorded(floor.cosine, floor.top1, floor.metric, floor.metric_name,
                         floor.metric_floor)
    table = measure_codecs(head, tail, eval_inputs, reference, recorder, classification,
                           candidates=candidates, tick=tick)
    if key is not None and len(recorder.seen) == len(table):
        run_cache.put_json("codecs", key, [  # type: ignore[union-attr]
            [row.model_dump(), cmp, metric] for row, (cmp, metric)
            in zip(table, recorder.seen, strict=True)])
    return table


def extras_table(manifest: Manifest, title: str | None = None):
    """Per interior cut: its device tail and every codec's bytes and accuracy (a rich
    ``Table``; ``ok`` marks the codecs that keep the bundle's floor)."""
    from rich.table import Table

    t = Table(title=title, title_justify="left")
    for col, just in [("cut", "left"), ("device tail", "left"), ("tail ms", "right"),
                      ("tail cosine", "right"), ("best codec ≤floor: ratio", "left"),
                      ("codecs: ratio / worst cosine / top-1", "left")]:
        t.add_column(col, justify=just)  # type: ignore[arg-type]
    for c in manifest.cuts:
        if not (c.head and c.tail):
            continue
        best = best_codec(c)
        rows = "\n".join(
            f"{'ok ' if k.meets_floor else '-- '}{k.codec}: {k.ratio:.3f}x / {k.cosine:.4f}"
            + ("" if k.top1 is None else f" / {k.top1:.1%}") for k in c.codecs)
        acc = c.device_tail_accuracy
        t.add_row(c.id,
                  f"{c.device_tail_recipe}" if c.device_tail else "none",
                  "—" if c.device_tail_latency_ms is None else f"{c.device_tail_latency_ms:.2f}",
                  "—" if acc is None else f"{acc.cosine:.6f}",
                  "not measured" if not c.codecs else
                  "none" if best is None else f"{best.codec}: {best.ratio:.3f}x",
                  rows or "—")
    return t
