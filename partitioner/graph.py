"""Graph analysis of an ONNX model: order, tensor facts, live sets and candidate cuts.

A *cut* is the full set of tensors crossing the head/tail boundary, not one edge: in a
residual block the skip and the branch both cross, after a concatenation of two inputs
both inputs may cross. Every cut here satisfies one contract (see :func:`make_cut`): the
head is the set of nodes needed to compute the crossing tensors from the model inputs,
and the tail can compute every model output from the crossing tensors alone.

Shapes come from running the model in ONNX Runtime at batch 1 and 2 with every tensor
exposed (exact even where ONNX shape inference gives up), dtypes from shape inference.
A tensor is *batch-major* when its first dimension follows the batch; only batch-major
tensors can cross a cut, because the cloud batches tails along dimension 0.

The placement helper builds its DADS min-cut graph from :class:`GraphInfo`:
``nodes[i].inputs/outputs`` are the data edges (activation tensors only; weights and
constants are excluded), ``tensors[name].bytes`` the per-sample edge weight,
``nodes[i].macs`` the compute estimate. Feed the resulting tensor set to
:func:`make_cut` (or through ``partition(extra_cuts=...)``) to check and use it.
"""

from __future__ import annotations

import dataclasses
import logging
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import helper

from partitioner.errors import GraphError

log = logging.getLogger(__name__)

__all__ = [
    "Cut",
    "GraphInfo",
    "NodeInfo",
    "TensorInfo",
    "analyze",
    "block_boundaries",
    "candidate_cuts",
    "make_cut",
    "validate_cut",
]


@dataclass(frozen=True, slots=True)
class TensorInfo:
    """Facts about one activation tensor (weights and constants are not listed).

    Attributes:
        name: the ONNX tensor name.
        dtype: numpy dtype name ("float32", "int64"...); "unknown" if shape inference
            could not tell (such a tensor is never a candidate crossing).
        shape: measured shape with ``-1`` for the batch dimension when batch-major,
            else the shape at batch 1.
        batch_major: dimension 0 is the dynamic batch.
        producer: index of the producing node, ``None`` for a model input.
        consumers: indices of the nodes that read it.
        is_input / is_output: a model input / output.
    """

    name: str
    dtype: str
    shape: tuple[int, ...]
    batch_major: bool
    producer: int | None
    consumers: tuple[int, ...]
    is_input: bool = False
    is_output: bool = False
    dynamic: tuple[int, ...] = ()  # non-batch dims whose size follows a dynamic input dim
    dim_names: tuple[tuple[int, str], ...] = ()  # symbolic name of each dynamic dim

    @property
    def sample_elements(self) -> int:
        dims = self.shape[1:] if self.batch_major else self.shape
        return int(np.prod(dims, dtype=np.int64)) if dims else 1

    @property
    def bytes(self) -> int:
        """Bytes per sample (fp32 raw for a float tensor)."""
        if self.dtype == "unknown":
            return 0
        return self.sample_elements * np.dtype(self.dtype).itemsize


@dataclass(frozen=True, slots=True)
class NodeInfo:
    """One node in topological order.

    Attributes:
        index: position in :attr:`GraphInfo.nodes`.
        name / op_type / domain: from the ONNX node.
        inputs / outputs: activation tensor names only (no weights, no constants).
        macs: estimated multiply-accumulates per sample (elementwise ops count one per
            output element).
        constant: computes only from weights (e.g. ``Constant``); such nodes are
            recomputed on both sides of a cut and never make a tensor cross.
    """

    index: int
    name: str
    op_type: str
    domain: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    macs: int
    constant: bool = False


@dataclass(frozen=True)
class GraphInfo:
    """The analysed graph. ``live[p]`` is the crossing set of the prefix cut at ``p``."""

    model: onnx.ModelProto
    nodes: tuple[NodeInfo, ...]
    tensors: dict[str, TensorInfo]
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    live: tuple[tuple[str, ...], ...]
    opset: int
    # Tensors that may cross although not float: masks and what is computed from masks
    # alone (an attention mask reveals lengths, never content).
    mask_tensors: frozenset[str] = frozenset()

    @property
    def compute_nodes(self) -> int:
        """Nodes that are not constant folding; the depth of the "edge" cut."""
        return sum(1 for n in self.nodes if not n.constant)

    @property
    def total_macs(self) -> int:
        return sum(n.macs for n in self.nodes)

    def bytes_of(self, names: Iterable[str]) -> int:
        """Per-sample bytes of a set of tensors."""
        return sum(self.tensors[n].bytes for n in names)

    def crossing(self, head: Iterable[int]) -> tuple[str, ...]:
        """Tensors that cross when ``head`` (node indices) runs on the edge."""
        head = set(head)
        out: list[str] = []
        for t in self.tensors.values():
            on_edge = t.is_input or t.producer in head
            if not on_edge:
                continue
            if t.is_output or any(c not in head for c in t.consumers):
                out.append(t.name)  # constants are not in ``tensors``: they never cross
        return tuple(sorted(out, key=self._order_key))

    def _order_key(self, name: str) -> tuple[int, str]:
        t = self.tensors[name]
        return (-1 if t.producer is None else t.producer, name)


@dataclass(frozen=True)
class Cut:
    """A valid cut.

    Attributes:
        depth: nodes on the edge side (0 = all cloud, ``len(nodes)`` = all edge).
        head_nodes: indices of the nodes the head runs.
        tensors: crossing tensor names (model inputs for "cloud", empty for "edge").
        bytes: per-sample crossing bytes.
        head_macs / tail_macs: estimated MACs per sample on each side.
    """

    depth: int
    head_nodes: frozenset[int] = field(repr=False)
    tensors: tuple[str, ...]
    bytes: int
    head_macs: int
    tail_macs: int
    kind: str = "split"  # "cloud", "edge" or "split"

    @property
    def id(self) -> str:
        """Manifest cut id: ``cloud``, ``edge`` or ``k<depth>``."""
        return self.kind if self.kind != "split" else f"k{self.depth}"


# --------------------------------------------------------------------------- analysis
def _dtype_name(elem_type: int) -> str:
    try:
        return np.dtype(helper.tensor_dtype_to_np_dtype(elem_type)).name
    except (KeyError, TypeError, ValueError):
        return "unknown"


def _subgraph_refs(node: onnx.NodeProto) -> set[str]:
    """Outer-scope names read inside If/Loop/Scan bodies (they are real inputs)."""
    refs: set[str] = set()
    for attr in node.attribute:
        graphs = list(attr.graphs) + ([attr.g] if attr.HasField("g") else [])
        for g in graphs:
            local = {i.name for i in g.input} | {i.name for i in g.initializer}
            for n in g.node:
                local.update(n.output)
            for n in g.node:
                refs.update(x for x in n.input if x and x not in local)
                refs.update(_subgraph_refs(n) - local)
    return refs


def _topo_order(nodes: Sequence[onnx.NodeProto]) -> list[int]:
    """Kahn's algorithm, stable w.r.t. the file order (exporters emit execution order)."""
    produced_by: dict[str, int] = {}
    for i, n in enumerate(nodes):
        for o in n.output:
            if o:
                produced_by[o] = i
    deps = []
    for n in nodes:
        names = {x for x in n.input if x} | _subgraph_refs(n)
        deps.append({produced_by[x] for x in names if x in produced_by})
    done: set[int] = set()
    order: list[int] = []
    pending = list(range(len(nodes)))
    while pending:
        progressed = False
        rest = []
        for i in pending:
            if deps[i] <= done:
                order.append(i)
                done.add(i)
                progressed = True
            else:
                rest.append(i)
        if not progressed:
            raise GraphError("the ONNX graph has a cycle or reads undefined tensors; "
                             "run onnx.checker.check_model on it")
        pending = rest
    return order


def _macs(node: onnx.NodeProto, shapes: dict[str, tuple[int, ...]],
          weights: dict[str, tuple[int, ...]]) -> int:
    def shape(name: str) -> tuple[int, ...] | None:
        return shapes.get(name) or weights.get(name)

    outs = [shapes[o] for o in node.output if o in shapes]
    out_el = sum(int(np.prod(s[1:], dtype=np.int64)) if len(s) > 1 else 1 for s in outs)
    op = node.op_type
    try:
        if op in ("Conv", "ConvInteger", "QLinearConv"):
            w = shape(node.input[1] if op != "QLinearConv" else node.input[3])
            if w:
                return out_el * int(np.prod(w[1:], dtype=np.int64))
        if op == "ConvTranspose":
            x, w = shape(node.input[0]), shape(node.input[1])
            if x and w:
                return int(np.prod(x[1:], dtype=np.int64)) * int(np.prod(w[1:], dtype=np.int64))
        if op in ("MatMul", "MatMulInteger", "Gemm"):
            a = shape(node.input[0])
            if a:
                trans_a = any(at.name == "transA" and at.i for at in node.attribute)
                k = a[0] if (op == "Gemm" and trans_a) else a[-1]
                return out_el * int(k)
    except IndexError:
        pass
    return out_el


def _probe_decls(model: onnx.ModelProto, inputs) -> list:
    from partitioner.inputs import InputDecl, model_inputs

    found = model_inputs(model)
    if not inputs:
        return found
    given = {d.name: d for d in inputs if d.name}
    out = []
    for i, f in enumerate(found):
        d = given.get(f.name) or (inputs[i] if i < len(inputs) else None)
        if d is None:
            out.append(f)
            continue
        dyn = dict(f.dynamic)
        out.append(InputDecl(f.name, tuple(d.shape), f.dtype, tuple(dyn.items())))
    return out


def analyze(model: onnx.ModelProto, declared=None) -> GraphInfo:
    """Analyse a model with a dynamic batch dimension 0 on every input.

    Args:
        declared: :class:`partitioner.inputs.InputDecl` per input giving example sizes of
            its dynamic dimensions (default: the model's own, 16 where symbolic).

    The model runs at batch 1 with the example sizes and at batch 2 with every dynamic
    dimension one shorter (longer when tiny): a tensor dimension that changes with them
    is dynamic, and stays symbolic in heads and tails.

    Raises:
        GraphError: the model cannot run in ONNX Runtime, or its outputs do not follow
            the batch dimension.
    """
    import onnxruntime as ort

    from partitioner import ortutil

    graph = model.graph
    weights = {i.name: tuple(i.dims) for i in graph.initializer}
    for n in graph.node:  # Constant nodes are weights too
        if n.op_type == "Constant" and n.domain in ("", "ai.onnx"):
            for a in n.attribute:
                if a.name == "value":
                    weights[n.output[0]] = tuple(a.t.dims)
    inputs = tuple(i.name for i in graph.input if i.name not in weights)
    outputs = tuple(o.name for o in graph.output)
    order = _topo_order(list(graph.node))
    if order != sorted(order):  # keep node indices == positions in the model we hand out
        sorted_model = onnx.ModelProto()
        sorted_model.CopyFrom(model)
        del sorted_model.graph.node[:]
        sorted_model.graph.node.extend(graph.node[i] for i in order)
        model, graph = sorted_model, sorted_model.graph
    protos = list(graph.node)

    try:
        inferred = onnx.shape_inference.infer_shapes(model, strict_mode=False)
        dtypes = {vi.name: _dtype_name(vi.type.tensor_type.elem_type)
                  for vi in [*inferred.graph.value_info, *inferred.graph.input,
                             *inferred.graph.output]}
    except Exception as e:  # shape inference is best effort; ORT run below is the truth
        log.debug("shape inference failed: %s", e)
        dtypes = {vi.name: _dtype_name(vi.type.tensor_type.elem_type)
                  for vi in [*graph.input, *graph.output]}

    # Constant subgraphs: nodes whose activation inputs are all constant.
    const_tensors: set[str] = set(weights)
    const_nodes: set[int] = set()
    for pos, n in enumerate(protos):
        ins = {x for x in n.input if x} | _subgraph_refs(n)
        if ins <= const_tensors:
            const_nodes.add(pos)
            const_tensors.update(o for o in n.output if o)

    # Every non-constant tensor, measured at batch 1 and 2.
    act_names = [o for pos, n in enumerate(protos) if pos not in const_nodes
                 for o in n.output if o]
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    del probe.graph.output[:]
    known_out = {o.name: o for o in graph.output}
    exposed = []
    for name in act_names:
        if name in known_out:
            probe.graph.output.append(known_out[name])
            exposed.append(name)
        elif dtypes.get(name, "unknown") != "unknown":
            probe.graph.output.append(helper.make_tensor_value_info(
                name, helper.np_dtype_to_tensor_dtype(np.dtype(dtypes[name])), None))
            exposed.append(name)
    measured: list[dict[str, tuple[int, ...]]] = []
    from partitioner.inputs import InputDecl, example_feeds

    decls = _probe_decls(model, declared)
    varied = [InputDecl(d.name, tuple(s - 1 if (i in d.dynamic_axes and s > 2) else
                                      s + 1 if i in d.dynamic_axes else s
                                      for i, s in enumerate(d.shape)), d.dtype, d.dynamic)
              for d in decls]
    try:
        sess = ortutil.session(probe, optimize=False)
        for batch, ds in ((1, decls), (2, varied)):
            feeds = example_feeds(ds, batch, seed=batch)
            vals = sess.run(exposed, feeds)
            shapes = {k: tuple(v.shape) for k, v in feeds.items()}
            shapes.update({k: tuple(np.asarray(v).shape) for k, v in zip(exposed, vals,
                                                                         strict=True)})
            for k, v in zip(exposed, vals, strict=True):
                if k not in dtypes or dtypes[k] == "unknown":
                    dtypes[k] = np.asarray(v).dtype.name
            measured.append(shapes)
    except (ort.capi.onnxruntime_pybind11_state.Fail,
            ort.capi.onnxruntime_pybind11_state.InvalidGraph,
            ort.capi.onnxruntime_pybind11_state.InvalidArgument,
            ort.capi.onnxruntime_pybind11_state.NotImplemented,
            ort.capi.onnxruntime_pybind11_state.RuntimeException) as e:
        reason = re.sub(r"^\[ONNXRuntimeError\] : \d+ : \w+ : (Fatal error: )?", "",
                        str(e).strip().splitlines()[0])[:300]
        raise GraphError(f"ONNX Runtime cannot run this model at batch 1 and 2: {reason} — "
                         "bundles run on ONNX Runtime: replace unsupported ops and export "
                         "with a dynamic batch dimension 0") from e
    b1, b2 = measured
    for name in outputs:
        s1, s2 = b1.get(name), b2.get(name)
        if not s1 or not s2 or s1[0] != 1 or s2[0] != 2:
            raise GraphError(f"model output {name!r} does not follow the batch dimension "
                             f"(shape {s1} at batch 1, {s2} at batch 2); export with a "
                             "dynamic batch dimension 0")

    producer: dict[str, int] = {}
    consumers: dict[str, list[int]] = {}
    nodes: list[NodeInfo] = []
    for pos, n in enumerate(protos):
        ins = [x for x in dict.fromkeys([*n.input, *sorted(_subgraph_refs(n))])
               if x and x not in const_tensors]
        outs = [o for o in n.output if o and o not in const_tensors]
        for x in ins:
            consumers.setdefault(x, []).append(pos)
        for o in outs:
            producer[o] = pos
        nodes.append(NodeInfo(index=pos, name=n.name or f"{n.op_type}_{pos}",
                              op_type=n.op_type, domain=n.domain, inputs=tuple(ins),
                              outputs=tuple(outs), macs=_macs(n, b1, weights),
                              constant=pos in const_nodes))
    tensors: dict[str, TensorInfo] = {}
    dyn_sizes = {(d.shape[a], v.shape[a]): sym for d, v in zip(decls, varied, strict=True)
                 for a, sym in d.dynamic}
    for name in [*inputs, *producer]:
        s1, s2 = b1.get(name), b2.get(name)
        dynamic: tuple[int, ...] = ()
        dim_names: tuple[tuple[int, str], ...] = ()
        if s1 is None:
            shape, batch_major = (), False
        else:
            batch_major = (s2 is not None and len(s1) == len(s2) and len(s1) > 0
                           and s1[0] == 1 and s2[0] == 2)
            if batch_major:
                dynamic = tuple(i for i in range(1, len(s1)) if s1[i] != s2[i])
                dim_names = tuple((i, dyn_sizes.get((s1[i], s2[i]), f"dyn{s1[i]}_{s2[i]}"))
                                  for i in dynamic)
                if dynamic and not dyn_sizes:
                    batch_major = False  # sizes vary although no input dimension did
            shape = (-1, *s1[1:]) if batch_major else s1
        tensors[name] = TensorInfo(
            name=name, dtype=dtypes.get(name, "unknown"), shape=tuple(int(d) for d in shape),
            batch_major=batch_major, producer=producer.get(name),
            consumers=tuple(consumers.get(name, ())), is_input=name in inputs,
            is_output=name in outputs, dynamic=dynamic if batch_major else (),
            dim_names=dim_names if batch_major else ())

    info = GraphInfo(model=model, nodes=tuple(nodes), tensors=tensors, inputs=inputs,
                     outputs=outputs, live=(), opset=_opset(model),
                     mask_tensors=_mask_tensors(nodes, tensors, inputs))
    return dataclasses.replace(info, live=_live_sets(info))


def _mask_tensors(nodes: Sequence[NodeInfo], tensors: dict[str, TensorInfo],
                  inputs: Sequence[str]) -> frozenset[str]:
    """Mask inputs (integer/bool inputs named ``*mask*``) and tensors computed from them
    alone."""
    masks = {n for n in inputs if "mask" in n.lower()
             and not tensors[n].dtype.startswith("float")}
    if not masks:
        return frozenset()
    shapes: set[str] = set()  # sizes only (Shape/Size outputs and what follows from them)
    for node in nodes:
        if not node.inputs:
            continue
        if node.op_type in ("Shape", "Size") or all(x in shapes for x in node.inputs):
            shapes.update(node.outputs)
        elif all(x in masks or x in shapes for x in node.inputs):
            masks.update(node.outputs)
    return frozenset(masks)


def _opset(model: onnx.ModelProto) -> int:
    for o in model.opset_import:
        if o.domain in ("", "ai.onnx"):
            return int(o.version)
    return 0


def _live_sets(info: GraphInfo) -> tuple[tuple[str, ...], ...]:
    """Crossing set at each prefix position ``p`` (head = nodes[:p]).

    A tensor crosses at ``p`` when it exists before ``p`` (model input or produced by
    a node < p) and a node >= p reads it or it is a model output.
    """
    n = len(info.nodes)
    spans: list[tuple[str, int, int]] = []
    for t in info.tensors.values():
        avail = 0 if t.producer is None else t.producer + 1
        last = n if t.is_output else max(t.consumers, default=-1)
        spans.append((t.name, avail, last))
    live = []
    for p in range(n + 1):
        names = [k for k, a, last in spans if a <= p <= last]
        live.append(tuple(sorted(names, key=info._order_key)))
    return tuple(live)


# --------------------------------------------------------------------------- cuts
def _ancestors(info: GraphInfo, names: Iterable[str]) -> set[int]:
    head: set[int] = set()
    stack = [info.tensors[n].producer for n in names]
    while stack:
        i = stack.pop()
        if i is None or i in head:
            continue
        head.add(i)
        for x in info.nodes[i].inputs:
            stack.append(info.tensors[x].producer)
    return head


def validate_cut(info: GraphInfo, tensors: Iterable[str]) -> frozenset[int]:
    """Check that ``tensors`` is exactly the crossing set of some head; return the head.

    The head is every node needed to compute ``tensors`` from the model inputs. The set
    is a valid cut when the tail needs nothing else from the edge side: no other head
    tensor and no model input is read by a tail node or is a model output.

    Raises:
        GraphError: naming unknown tensors, tensors that cannot cross (no batch
            dimension, unknown dtype), or what is missing / superfluous.
    """
    wanted = list(dict.fromkeys(tensors))
    unknown = [t for t in wanted if t not in info.tensors]
    if unknown:
        raise GraphError(f"not activation tensors of this model: {', '.join(unknown[:5])}")
    bad = [t for t in wanted if not info.tensors[t].batch_major
           or info.tensors[t].dtype == "unknown"]
    if bad:
        raise GraphError(f"tensors without a batch dimension 0 cannot cross a cut: "
                         f"{', '.join(bad[:5])}")
    head = _ancestors(info, wanted)
    actual = set(info.crossing(head))
    missing = sorted(actual - set(wanted))
    extra = sorted(set(wanted) - actual)
    if missing or extra:
        parts = []
        if missing:
            parts.append(f"the tail also needs {', '.join(missing[:5])}")
        if extra:
            parts.append(f"not needed by the tail: {', '.join(extra[:5])}")
        raise GraphError("not a valid cut: " + "; ".join(parts))
    return frozenset(head)


def make_cut(info: GraphInfo, tensors: Iterable[str]) -> Cut:
    """Validate a crossing-tensor set (e.g. from a min-cut) and describe it as a :class:`Cut`.

    Raises:
        GraphError: see :func:`validate_cut`.
    """
    head = validate_cut(info, tensors)
    return _cut(info, head, info.crossing(head))


def _cut(info: GraphInfo, head: frozenset[int], crossing: tuple[str, ...],
         kind: str | None = None) -> Cut:
    head_macs = sum(info.nodes[i].macs for i in head)
    if kind is None:
        kind = "cloud" if not head else ("edge" if len(head) >= info.compute_nodes
                                         else "split")
    return Cut(depth=len(head), head_nodes=head, tensors=crossing,
               bytes=0 if kind == "edge" else info.bytes_of(crossing),
               head_macs=head_macs, tail_macs=info.total_macs - head_macs, kind=kind)


def cloud_cut(info: GraphInfo) -> Cut:
    """Everything in the cloud: the raw model inputs cross."""
    return _cut(info, frozenset(), tuple(info.inputs), "cloud")


def edge_cut(info: GraphInfo) -> Cut:
    """Everything on the edge: nothing crosses."""
    head = frozenset(n.index for n in info.nodes if not n.constant)
    return _cut(info, head, (), "edge")


def _crossable(info: GraphInfo, names: Sequence[str]) -> bool:
    """Every crossing tensor follows the batch, and is a float activation or a mask; no raw
    input crosses except a mask (a text model's pooling reads it at the very end)."""
    return bool(names) and any(n not in info.mask_tensors for n in names) and all(
        info.tensors[n].batch_major and info.tensors[n].dtype != "unknown"
        and (n in info.mask_tensors
             or (info.tensors[n].dtype.startswith("float") and not info.tensors[n].is_input))
        for n in names)


_CONSTANT_WIDTH = 1.25  # block ends this close in bytes form a transformer-like stack
_MIN_BLOCK_NODES = 4  # a single Conv or Linear is a layer, not a block
_MIN_BLOCKS = 3
_INDEXED = re.compile(r"^(.*?)(\d+)$")


def block_boundaries(info: GraphInfo) -> list[int]:
    """Prefix positions right after each block of the model's longest stack of numbered
    modules (a transformer's ``layer.0 .. layer.11``, a CNN's stages), where a clean cut
    exists.

    Exported node names carry the module path (``/encoder/layer.3/attention/...``); the
    parent path with the most distinct indices is the stack. After block ``i`` ends, the
    first position whose live set can cross (before block ``i+1`` ends) is its boundary.
    """
    children: dict[str, dict[int, list[int]]] = {}
    for node in info.nodes:
        if node.constant:
            continue
        parts = node.name.split("/")
        for depth in range(1, len(parts) - 1):
            m = _INDEXED.match(parts[depth])
            if not m:
                continue
            parent = "/".join(parts[:depth]) + "/" + m.group(1)
            children.setdefault(parent, {}).setdefault(int(m.group(2)), []).append(node.index)
    if not children:
        return []
    stacks = {k: {i: v for i, v in kids.items() if len(v) >= _MIN_BLOCK_NODES}
              for k, kids in children.items()}
    parent, blocks = max(stacks.items(), key=lambda kv: (len(kv[1]), -len(kv[0])))
    if len(blocks) < _MIN_BLOCKS:
        return []
    order = sorted(blocks)
    out: list[int] = []
    n = len(info.nodes)
    for i, idx in enumerate(order):
        start = max(blocks[idx]) + 1
        stop = max(blocks[order[i + 1]]) if i + 1 < len(order) else n
        for p in range(start, min(stop, n)):
            if _crossable(info, info.live[p]):
                head = _ancestors(info, info.live[p])
                if info.crossing(head) == info.live[p]:
                    out.append(p)
                break
    log.debug("block boundaries of %s: %s", parent, out)
    return out


def _select(info: GraphInfo, frontier: list[int], budget: int) -> list[int]:
    if len(frontier) <= budget:
        return frontier
    levels: dict[int, int] = {}
    for p in frontier:
        levels.setdefault(info.bytes_of(info.live[p]), p)  # shallowest per size
    chosen = [levels[b] for b in sorted(levels)][:budget]
    rest = [p for p in frontier if p not in chosen]
    while len(chosen) < budget and rest:
        far = max(rest, key=lambda p: min(abs(p - q) for q in [0, *chosen]))
        chosen.append(far)
        rest.remove(far)
    return sorted(chosen)


def candidate_cuts(info: GraphInfo, max_cuts: int = 6, min_depth: int = 0) -> list[Cut]:
    """The ``max_cuts`` most useful cuts by depth: "cloud" (unless ``min_depth`` forbids
    it), split cuts, and always "edge".

    Prefix positions of the topological order are considered; a position qualifies when
    every crossing tensor is a batch-major float and no raw model input crosses (that
    would leak inputs past the privacy floor). Among those, the Pareto frontier in
    (depth, bytes) is kept: a deeper cut is useful only if it sends no more bytes than
    every shallower one (ties are kept: between transformer layers the residual stream
    is the same size, yet each boundary is a different edge/cloud compute split).
    When the model is a stack of constant-width blocks (a transformer's encoder layers,
    see :func:`block_boundaries`), the boundaries after its blocks come first, spread
    evenly over the depth. From the frontier, the shallowest cut of each distinct byte
    size is taken, smallest sizes first; any budget left goes to the remaining points
    farthest in depth from those already chosen, so shallow (little edge compute) to deep
    (few bytes) splits are covered.

    Args:
        max_cuts: total number of cuts including "cloud" and "edge" (at least 2).
        min_depth: privacy floor: no cut with fewer edge-side nodes is offered; any
            floor above 0 drops "cloud" (raw inputs would leave the edge).
    """
    if max_cuts < 2:
        raise ValueError(f"max_cuts must be at least 2 (cloud and edge), got {max_cuts}")
    if min_depth < 0:
        raise ValueError(f"min_depth (privacy floor) must be >= 0, got {min_depth}")
    n = len(info.nodes)
    frontier: list[int] = []
    best = None
    for p in range(1, n):
        names = info.live[p]
        if not _crossable(info, names):
            continue
        if n - p <= sum(1 for i in range(p, n) if info.nodes[i].constant):
            continue  # nothing but constants left for the tail
        if min_depth and len(_ancestors(info, names)) < min_depth:
            continue
        b = info.bytes_of(names)
        if best is None or b <= best:
            # Equal bytes right after the previous point (Conv then Relu): prefer the later
            # position, which sends post-activation values (kinder to the int8 codec).
            if frontier and b == best and p == frontier[-1] + 1:
                frontier[-1] = p
            else:
                frontier.append(p)
            best = b
    with_cloud = min_depth == 0
    budget = max_cuts - 1 - int(with_cloud)
    blocks = [p for p in block_boundaries(info) if p < n and not (
        min_depth and len(_ancestors(info, info.live[p])) < min_depth)]
    sizes = [info.bytes_of(info.live[p]) for p in blocks]
    if sizes and max(sizes) > _CONSTANT_WIDTH * max(min(sizes), 1):
        blocks = []  # shrinking stages (a CNN): the byte ranking already finds their ends
    if len(blocks) > budget:  # evenly spread, always keeping the deepest boundary
        picks = np.linspace(len(blocks) - 1, 0, budget) if budget > 1 else [len(blocks) - 1]
        blocks = sorted({blocks[round(float(i))] for i in picks})
    rest = [p for p in frontier if p not in blocks]
    chosen = sorted([*blocks, *_select(info, rest, budget - len(blocks))]) if budget > len(
        blocks) else blocks
    cuts = [cloud_cut(info)] if with_cloud else []
    seen: set[tuple[str, ...]] = set()
    for p in chosen:
        names = info.live[p]
        if names in seen:
            continue
        seen.add(names)
        head = frozenset(_ancestors(info, names))
        if info.crossing(head) != names:
            continue  # a dead node sits in the prefix; this position is not a clean cut
        cuts.append(_cut(info, head, names, "split"))
    cuts.append(edge_cut(info))
    return cuts
