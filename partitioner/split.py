"""Extract head/tail subgraphs for a cut and check head -> tail against the full model.

The head reads the model inputs and outputs exactly the crossing tensors (same names);
the tail reads the crossing tensors and outputs exactly the model outputs. Both keep the
dynamic batch dimension 0, so the cloud can batch tails of many requests together.
Subgraphs are built directly from the analysed graph rather than with
``onnx.utils.Extractor``: its inputs/outputs would carry the batch-1 shapes that shape
inference found, while ours carry the measured per-sample shapes with a symbolic batch.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper

from partitioner.errors import GraphError, VerificationError
from partitioner.graph import Cut, GraphInfo, _subgraph_refs
from partitioner.load import BATCH_PARAM

log = logging.getLogger(__name__)

__all__ = ["TOLERANCE", "Comparison", "compare", "extract", "head_model", "tail_model",
           "verify_split"]

TOLERANCE = 1e-4  # max abs error / max(1, output scale) for an exact (fp32) split


def _value_info(info: GraphInfo, name: str) -> onnx.ValueInfoProto:
    t = info.tensors[name]
    elem = helper.np_dtype_to_tensor_dtype(np.dtype(t.dtype))
    if t.batch_major:
        names = dict(t.dim_names)
        shape: list[int | str] = [BATCH_PARAM, *(names.get(i, d) for i, d in
                                                 enumerate(t.shape) if i > 0)]
    else:
        shape = list(t.shape)
    return helper.make_tensor_value_info(name, elem, shape)


def extract(info: GraphInfo, inputs: Sequence[str], outputs: Sequence[str],
            name: str) -> onnx.ModelProto:
    """The subgraph computing ``outputs`` from ``inputs`` (plus weights and constants).

    Raises:
        GraphError: an output needs a tensor that is neither in ``inputs`` nor computable.
    """
    src = info.model.graph
    produced: dict[str, int] = {}
    for i, n in enumerate(src.node):
        for o in n.output:
            if o:
                produced[o] = i
    weights = {w.name: w for w in src.initializer}
    stop = set(inputs)
    keep: set[int] = set()
    stack = [o for o in outputs if o not in stop]
    seen: set[str] = set()
    while stack:
        t = stack.pop()
        if t in seen or t in stop or t in weights:
            continue
        seen.add(t)
        if t not in produced:
            raise GraphError(f"cannot extract {name}: tensor {t!r} is needed but is neither "
                             "an input of the subgraph nor computed by it")
        i = produced[t]
        if i in keep:
            continue
        keep.add(i)
        node = src.node[i]
        stack.extend(x for x in [*node.input, *_subgraph_refs(node)] if x)
    nodes = [src.node[i] for i in sorted(keep)]
    used = {x for n in nodes for x in [*n.input, *_subgraph_refs(n)] if x}
    inits = [weights[w] for w in weights if w in used]
    graph = helper.make_graph(
        nodes, name, [_value_info(info, i) for i in inputs],
        [_value_info(info, o) for o in outputs], initializer=inits)
    model = helper.make_model(graph, opset_imports=list(info.model.opset_import),
                              ir_version=info.model.ir_version,
                              producer_name="tiersplit.partitioner")
    model.functions.extend(info.model.functions)
    return model


def head_model(info: GraphInfo, cut: Cut) -> onnx.ModelProto:
    """Model inputs -> crossing tensors."""
    used_inputs = [i for i in info.inputs if i in _needed_inputs(info, cut.tensors)]
    return extract(info, used_inputs, list(cut.tensors), f"head_{cut.id}")


def tail_model(info: GraphInfo, cut: Cut) -> onnx.ModelProto:
    """Crossing tensors -> model outputs."""
    return extract(info, list(cut.tensors), list(info.outputs), f"tail_{cut.id}")


def _needed_inputs(info: GraphInfo, names: Iterable[str]) -> set[str]:
    need: set[str] = set()
    stack = list(names)
    seen: set[str] = set()
    while stack:
        t = stack.pop()
        if t in seen:
            continue
        seen.add(t)
        ti = info.tensors.get(t)
        if ti is None:
            continue
        if ti.is_input:
            need.add(t)
        if ti.producer is not None:
            stack.extend(info.nodes[ti.producer].inputs)
    return need


@dataclass(frozen=True, slots=True)
class Comparison:
    """Split outputs against the full model's, over all outputs and samples.

    ``scale`` is the largest reference magnitude; ``max_abs / max(1, scale)`` is what the
    fp32 tolerance bounds.
    """

    max_abs: float
    mean_abs: float
    cosine: float
    top1_agreement: float | None
    scale: float
    samples: int

    @property
    def relative(self) -> float:
        return self.max_abs / max(1.0, self.scale)


def compare(reference: Sequence[np.ndarray], actual: Sequence[np.ndarray],
            classification: bool = False) -> Comparison:
    """Error figures of ``actual`` against ``reference`` (same output order).

    Top-1 agreement (classifiers) compares the first output's argmax over its last axis.
    """
    ref = np.concatenate([np.asarray(r, np.float64).reshape(len(r), -1) for r in reference], 1)
    act = np.concatenate([np.asarray(a, np.float64).reshape(len(a), -1) for a in actual], 1)
    if ref.shape != act.shape:
        raise VerificationError(f"output shapes differ: expected {ref.shape}, got {act.shape}")
    if not np.all(np.isfinite(act)):
        raise VerificationError("split outputs contain NaN or Inf")
    diff = np.abs(ref - act)
    num = (ref * act).sum(1)
    den = np.linalg.norm(ref, axis=1) * np.linalg.norm(act, axis=1)
    cos = np.where(den > 0, num / np.where(den > 0, den, 1.0), 1.0)
    top1 = None
    if classification:
        r0, a0 = np.asarray(reference[0]), np.asarray(actual[0])
        top1 = float((r0.argmax(-1) == a0.argmax(-1)).mean())
    return Comparison(max_abs=float(diff.max(initial=0.0)), mean_abs=float(diff.mean()),
                      cosine=float(cos.mean()), top1_agreement=top1,
                      scale=float(np.abs(ref).max(initial=0.0)), samples=len(ref))


def run_split(head_sess, tail_sess, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
    """head then tail on ``feeds``; the tail receives the head outputs by name."""
    head_in = {i.name: feeds[i.name] for i in head_sess.get_inputs()}
    head_names = [o.name for o in head_sess.get_outputs()]
    mids = dict(zip(head_names, head_sess.run(head_names, head_in), strict=True))
    tail_in = {}
    for i in tail_sess.get_inputs():
        if i.name in mids:
            tail_in[i.name] = mids[i.name]
        elif i.name in feeds:
            tail_in[i.name] = feeds[i.name]
        else:
            raise VerificationError(f"tail input {i.name!r} is produced by neither the head "
                                    "nor the model inputs")
    return tail_sess.run(None, tail_in)


def verify_split(full_sess, head_sess, tail_sess, feeds: Mapping[str, np.ndarray], *,
                 cut_id: str, tolerance: float = TOLERANCE,
                 reference: Sequence[np.ndarray] | None = None) -> Comparison:
    """Check fp32 head -> tail against the full model.

    Args:
        full_sess: the full model's session, or None with ``reference``.
        reference: the full model's outputs on ``feeds``, computed once for all cuts
            (then no session of the full model needs to stay open).

    Raises:
        VerificationError: relative max error above ``tolerance``.
    """
    ref = reference if reference is not None else full_sess.run(None, dict(feeds))
    got = run_split(head_sess, tail_sess, feeds)
    cmp = compare(ref, got)
    if cmp.relative > tolerance:
        raise VerificationError(
            f"cut {cut_id}: head -> tail differs from the full model by {cmp.max_abs:.3g} "
            f"(output scale {cmp.scale:.3g}, tolerance {tolerance:g} relative); the "
            "cut is not exact — report this model")
    return cmp
