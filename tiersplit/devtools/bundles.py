"""Hand-built, real bundles for every area's tests and the benchmarks: the one builder.

Small ONNX models written with ``onnx.helper`` (deterministic names, no torch export),
split at named tensors with ``onnx.utils.Extractor``, heads quantized with ONNX Runtime's
real static int8 quantization (QDQ, per channel) from one calibration reader, written
with ``write_bundle`` and signed. Independent of the partitioner, so the cloud core and
the edge agent can be tested on their own, in seconds and without torch.

Models:
    mlp  x[N,16] -> Gemm+Relu -> h1[N,32] -> Gemm+Relu -> h2[N,32] -> Gemm -> y[N,10]
         cuts: cloud, h1, h2, edge
    cnn  x[N,1,8,8] -> Conv+Relu -> c1[N,4,8,8] -> MaxPool -> p1[N,4,4,4] -> Flatten
         -> Gemm -> y[N,10]; cuts: cloud, c1, p1, edge
    wide (bench) x[N,W] -> W x H Gemm+Relu (x layers) -> y[N,10]; cuts: cloud, h1, edge
    text input_ids[N,8], attention_mask[N,8] (int64) -> masked mean embedding -> Gemm+Relu
         -> h1[N,16] -> Gemm -> y[N,4]; cuts: cloud, h1, edge (integer inputs)
    edge_cnn  x[N,3,32,32] -> four Conv+Relu stages (16K -> 8K -> 4K -> 1K elements) ->
         global pool -> logits[N,10]; cuts: cloud, k2, k4, k6, k8 (after each stage),
         edge; with per-cut MACs, so a placement policy has a real trade-off (edge compute
         vs bytes on the wire). :func:`build_edge_cnn` builds it signed from key files.
"""

from __future__ import annotations

import datetime as dt
import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import yaml
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from onnx import TensorProto, helper, numpy_helper
from onnxruntime.quantization import (
    CalibrationDataReader,
    QuantFormat,
    QuantType,
    quantize_static,
)

from contract import dtypes
from contract.bundle import (
    MANIFEST,
    Accuracy,
    Bundle,
    CutSpec,
    Manifest,
    TensorSpec,
    write_bundle,
)
from contract.privacy import AttackScore, CutRisk, PrivacyAudit

__all__ = ["EDGE_CNN_INPUT", "EDGE_CNN_OUTPUT", "EDGE_CNN_SHAPE", "OPSET", "BuiltBundle",
           "Graph", "audit", "build_bundle", "build_edge_cnn", "build_signed", "cnn", "edge_cnn",
           "full_reference", "load_built", "mlp", "reference", "sample", "signing_keys",
           "text", "wide"]

OPSET = 17


@dataclass(frozen=True)
class Graph:
    """A model and where it may be cut.

    Attributes:
        model: the fp32 ONNX model.
        inputs / outputs: its tensors.
        cuts: interior cuts in order: ``(cut id, crossing tensors)``.
        depths: per interior cut, its depth (default 1, 2, ...).
        edge_depth: depth of the ``edge`` cut (default one more than the last cut).
        flops: per interior cut, ``(head MACs, tail MACs)`` per sample (default unknown).
        total_flops: MACs of the whole model per sample (0 = unknown).
    """

    model: onnx.ModelProto
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    cuts: list[tuple[str, list[TensorSpec]]]
    depths: list[int] | None = None
    edge_depth: int | None = None
    flops: list[tuple[int, int]] | None = None
    total_flops: int = 0


@dataclass(frozen=True)
class BuiltBundle:
    """A built, signed bundle and the key files it was signed with.

    Attributes:
        path: the bundle directory ``root/<name>/<version>``.
        root: the repository root holding it.
        public_key / secret_key: the Ed25519 key files.
        name / version: as in the manifest.
        manifest: the parsed manifest (cut ids, tensor specs...).
    """

    path: Path
    root: Path
    public_key: Path
    secret_key: Path
    name: str
    version: str
    manifest: Manifest


def _dense(name: str, x: str, w: np.ndarray, b: np.ndarray, relu: bool, out: str
           ) -> tuple[list[onnx.NodeProto], list[onnx.TensorProto]]:
    inits = [numpy_helper.from_array(w, f"{name}.w"), numpy_helper.from_array(b, f"{name}.b")]
    if relu:
        nodes = [helper.make_node("Gemm", [x, f"{name}.w", f"{name}.b"], [f"{name}.z"]),
                 helper.make_node("Relu", [f"{name}.z"], [out])]
    else:
        nodes = [helper.make_node("Gemm", [x, f"{name}.w", f"{name}.b"], [out])]
    return nodes, inits


def _vi(spec: TensorSpec) -> onnx.ValueInfoProto:
    dims: list[int | str] = ["N" if d < 0 else d for d in spec.shape]
    return helper.make_tensor_value_info(spec.name, dtypes.by_name(spec.dtype).onnx, dims)


def _finish(name: str, nodes, inits, inputs, outputs, cuts, **meta: Any) -> Graph:
    g = helper.make_graph(nodes, name, [_vi(t) for t in inputs], [_vi(t) for t in outputs],
                          inits, value_info=[_vi(t) for _, ts in cuts for t in ts])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", OPSET)])
    m.ir_version = 8
    onnx.checker.check_model(m)
    return Graph(m, inputs, outputs, cuts, **meta)


def mlp(seed: int) -> Graph:
    rng = np.random.default_rng(seed)
    f32 = np.float32
    nodes, inits = [], []
    for lname, (i, o), relu, x, out in (("l1", (16, 32), True, "x", "h1"),
                                        ("l2", (32, 32), True, "h1", "h2"),
                                        ("l3", (32, 10), False, "h2", "y")):
        n, t = _dense(lname, x, (rng.standard_normal((i, o)) / np.sqrt(i)).astype(f32),
                      (0.1 * rng.standard_normal(o)).astype(f32), relu, out)
        nodes += n
        inits += t
    return _finish("mlp", nodes, inits, [TensorSpec(name="x", shape=[-1, 16])],
                   [TensorSpec(name="y", shape=[-1, 10])],
                   [("h1", [TensorSpec(name="h1", shape=[-1, 32])]),
                    ("h2", [TensorSpec(name="h2", shape=[-1, 32])])])


def cnn(seed: int) -> Graph:
    rng = np.random.default_rng(seed)
    f32 = np.float32
    inits = [numpy_helper.from_array((0.3 * rng.standard_normal((4, 1, 3, 3))).astype(f32),
                                     "conv.w"),
             numpy_helper.from_array((0.1 * rng.standard_normal(4)).astype(f32), "conv.b"),
             numpy_helper.from_array((rng.standard_normal((64, 10)) / 8).astype(f32), "fc.w"),
             numpy_helper.from_array((0.1 * rng.standard_normal(10)).astype(f32), "fc.b")]
    nodes = [
        helper.make_node("Conv", ["x", "conv.w", "conv.b"], ["conv.z"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["conv.z"], ["c1"]),
        helper.make_node("MaxPool", ["c1"], ["p1"], kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Flatten", ["p1"], ["flat"], axis=1),
        helper.make_node("Gemm", ["flat", "fc.w", "fc.b"], ["y"]),
    ]
    return _finish("cnn", nodes, inits, [TensorSpec(name="x", shape=[-1, 1, 8, 8])],
                   [TensorSpec(name="y", shape=[-1, 10])],
                   [("c1", [TensorSpec(name="c1", shape=[-1, 4, 8, 8])]),
                    ("p1", [TensorSpec(name="p1", shape=[-1, 4, 4, 4])])])


def wide(seed: int, width: int = 512, layers: int = 3) -> Graph:
    """A tail heavy enough that batching matters (bench/cloud.py)."""
    rng = np.random.default_rng(seed)
    f32 = np.float32
    nodes, inits = [], []
    x = "x"
    for i in range(layers):
        out = "h1" if i == 0 else f"a{i}"
        n, t = _dense(f"l{i}", x, (rng.standard_normal((width, width)) / np.sqrt(width))
                      .astype(f32), np.zeros(width, f32), True, out)
        nodes += n
        inits += t
        x = out
    n, t = _dense("head", x, (rng.standard_normal((width, 10)) / np.sqrt(width)).astype(f32),
                  np.zeros(10, f32), False, "y")
    return _finish("wide", nodes + n, inits + t, [TensorSpec(name="x", shape=[-1, width])],
                   [TensorSpec(name="y", shape=[-1, 10])],
                   [("h1", [TensorSpec(name="h1", shape=[-1, width])])])


def text(seed: int, vocab: int = 32, seq: int = 8, dim: int = 16) -> Graph:
    """A tiny text classifier with integer inputs, as a transformer's would be:
    ``input_ids[N,seq]`` and ``attention_mask[N,seq]`` (int64) -> masked mean of an
    embedding -> Gemm+Relu -> h1[N,dim] -> Gemm -> y[N,4]; cuts: cloud, h1, edge.
    Random calibration ids are 0/1, always inside the vocabulary."""
    rng = np.random.default_rng(seed)
    f32 = np.float32
    inits = [numpy_helper.from_array(rng.standard_normal((vocab, dim)).astype(f32), "emb"),
             numpy_helper.from_array(np.array([2], dtype=np.int64), "ax2"),
             numpy_helper.from_array(np.array([1], dtype=np.int64), "ax1")]
    nodes = [
        helper.make_node("Gather", ["emb", "input_ids"], ["tok"], axis=0),
        helper.make_node("Cast", ["attention_mask"], ["maskf"], to=TensorProto.FLOAT),
        helper.make_node("Unsqueeze", ["maskf", "ax2"], ["mask3"]),
        helper.make_node("Mul", ["tok", "mask3"], ["masked"]),
        helper.make_node("ReduceSum", ["masked", "ax1"], ["pooled"], keepdims=0),
    ]
    for lname, (i, o), relu, x, out in (("l1", (dim, dim), True, "pooled", "h1"),
                                        ("l2", (dim, 4), False, "h1", "y")):
        n, t = _dense(lname, x, (rng.standard_normal((i, o)) / np.sqrt(i)).astype(f32),
                      (0.1 * rng.standard_normal(o)).astype(f32), relu, out)
        nodes += n
        inits += t
    ids = [TensorSpec(name="input_ids", shape=[-1, seq], dtype="int64"),
           TensorSpec(name="attention_mask", shape=[-1, seq], dtype="int64")]
    return _finish("text", nodes, inits, ids, [TensorSpec(name="y", shape=[-1, 4])],
                   [("h1", [TensorSpec(name="h1", shape=[-1, dim])])])


#: The edge CNN's input, output and per-sample input shape.
EDGE_CNN_INPUT, EDGE_CNN_OUTPUT = "x", "logits"
EDGE_CNN_SHAPE = (3, 32, 32)
_EDGE_CNN_STAGES = ((16, 1), (32, 2), (64, 2), (64, 2))  # (channels out, stride)


def _edge_cnn_shapes() -> list[tuple[int, int, int]]:
    c, h, w = EDGE_CNN_SHAPE
    out = []
    for cout, stride in _EDGE_CNN_STAGES:
        h, w = (h + stride - 1) // stride, (w + stride - 1) // stride
        c = cout
        out.append((c, h, w))
    return out


def edge_cnn(seed: int = 0, stages: tuple[int, ...] = (1, 2, 3, 4)) -> Graph:
    """The edge tests' CNN; cut ``k<2*s>`` after conv stage ``s`` for each of ``stages``."""
    rng = np.random.default_rng(seed)
    shapes = _edge_cnn_shapes()
    dims = [EDGE_CNN_SHAPE, *shapes]
    macs = [dims[i][0] * dims[i + 1][0] * 9 * dims[i + 1][1] * dims[i + 1][2]
            for i in range(len(_EDGE_CNN_STAGES))] + [_EDGE_CNN_STAGES[-1][0] * 10]
    nodes, inits = [], []
    prev, cin = EDGE_CNN_INPUT, EDGE_CNN_SHAPE[0]
    for i, (cout, stride) in enumerate(_EDGE_CNN_STAGES):
        w = (rng.standard_normal((cout, cin, 3, 3)) * np.sqrt(2.0 / (9 * cin))).astype(
            np.float32)
        b = (0.05 * rng.standard_normal(cout)).astype(np.float32)
        inits += [numpy_helper.from_array(w, f"w{i}"), numpy_helper.from_array(b, f"b{i}")]
        nodes.append(helper.make_node("Conv", [prev, f"w{i}", f"b{i}"], [f"c{i}"],
                                      name=f"Conv{i}", kernel_shape=[3, 3],
                                      pads=[1, 1, 1, 1], strides=[stride, stride]))
        nodes.append(helper.make_node("Relu", [f"c{i}"], [f"h{i + 1}"], name=f"Relu{i}"))
        prev, cin = f"h{i + 1}", cout
    wf = (rng.standard_normal((cin, 10)) / np.sqrt(cin)).astype(np.float32)
    bf = (0.1 * rng.standard_normal(10)).astype(np.float32)
    inits += [numpy_helper.from_array(wf, "wf"), numpy_helper.from_array(bf, "bf")]
    nodes += [
        helper.make_node("GlobalAveragePool", [prev], ["pool"], name="Pool"),
        helper.make_node("Flatten", ["pool"], ["flat"], name="Flatten", axis=1),
        helper.make_node("MatMul", ["flat", "wf"], ["mmf"], name="MatMulF"),
        helper.make_node("Add", ["mmf", "bf"], [EDGE_CNN_OUTPUT], name="AddF"),
    ]
    cuts = [(f"k{2 * s}", [TensorSpec(name=f"h{s}", shape=[-1, *shapes[s - 1]])])
            for s in stages]
    return _finish("edge_cnn", nodes, inits,
                   [TensorSpec(name=EDGE_CNN_INPUT, shape=[-1, *EDGE_CNN_SHAPE])],
                   [TensorSpec(name=EDGE_CNN_OUTPUT, shape=[-1, 10])], cuts,
                   depths=[2 * s for s in stages], edge_depth=len(nodes),
                   flops=[(sum(macs[:s]), sum(macs[s:])) for s in stages],
                   total_flops=sum(macs))


class _Reader(CalibrationDataReader):
    """Calibration batches (one sample each) for every input of the model, random or
    given (``feeds``: name -> ``[n, ...]`` arrays, e.g. a head's real activations)."""

    def __init__(self, inputs: list[TensorSpec], n: int, seed: int,
                 feeds: dict[str, np.ndarray] | None = None) -> None:
        if feeds is not None:
            n = min(n, *(len(v) for v in feeds.values()))
            self._it = iter([{k: v[i:i + 1] for k, v in feeds.items()} for i in range(n)])
            return
        rng = np.random.default_rng(seed)
        self._it = iter([{t.name: sample(t, 1, rng) for t in inputs} for _ in range(n)])

    def get_next(self):
        return next(self._it, None)


def _quantize(src: Path, dst: Path, inputs: list[TensorSpec],
              feeds: dict[str, np.ndarray] | None = None) -> None:
    # ORT logs a "consider pre-processing" warning on the root logger for every call.
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        quantize_static(str(src), str(dst), _Reader(inputs, 128, 1, feeds),
                        quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QInt8, weight_type=QuantType.QInt8)
    finally:
        root.setLevel(level)


def sample(spec: TensorSpec, n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` random samples of ``spec``: standard normal for floats, 0/1 otherwise."""
    dt = dtypes.numpy_dtype(spec.dtype)
    shape = (n, *spec.sample_shape)
    if dt.kind == "f":
        return rng.standard_normal(shape).astype(dt)
    return rng.integers(0, 2, size=shape).astype(dt)


def _run(path: Path, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    s = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return s.run(None, feeds)


def _nbytes(specs: list[TensorSpec], per: int) -> int:
    return sum(t.sample_elements * per for t in specs)


def build_bundle(root: Path, name: str, version: str, graph: Graph,
                 key: Ed25519PrivateKey | None, extra: dict[str, bytes] | None = None, *,
                 device_tails: bool = False, privacy_audit: PrivacyAudit | None = None
                 ) -> Path:
    """Split, quantize and publish ``graph`` as bundle ``root/name/version``.

    ``extra`` adds files (e.g. ``tail-<cut>.pt2``), hashed and signed like the rest.
    ``device_tails`` also ships each interior cut's tail quantized to int8
    (``tail-<cut>.int8.onnx``, calibrated on the int8 head's activations) as the cut's
    ``device_tail``. ``privacy_audit`` is recorded in the (signed) manifest.
    """
    inputs = graph.inputs
    n_cuts = len(graph.cuts)
    depths = graph.depths or list(range(1, n_cuts + 1))
    edge_depth = graph.edge_depth or n_cuts + 1
    flops = graph.flops or [(0, 0)] * n_cuts
    total = graph.total_flops
    with tempfile.TemporaryDirectory() as tmpd:
        tmp = Path(tmpd)
        onnx.save(graph.model, tmp / "full.onnx")
        _quantize(tmp / "full.onnx", tmp / "full.int8.onnx", inputs)
        rng = np.random.default_rng(7)
        xs = {t.name: sample(t, 512, rng) for t in inputs}
        ref = _run(tmp / "full.onnx", xs)[0]
        with write_bundle(root, name, version, key) as stage:
            d = stage.dir
            (d / "full.onnx").write_bytes((tmp / "full.onnx").read_bytes())
            (d / "full.int8.onnx").write_bytes((tmp / "full.int8.onnx").read_bytes())
            for rel, data in (extra or {}).items():
                (d / rel).write_bytes(data)
            ex = onnx.utils.Extractor(graph.model)
            cuts = [CutSpec(id="cloud", depth=0, tensors=inputs,
                            bytes=_nbytes(inputs, 4), bytes_int8=_nbytes(inputs, 1),
                            tail_flops=total)]
            for (cid, specs), depth, (head_flops, tail_flops) in zip(graph.cuts, depths, flops,
                                                                      strict=True):
                names = [t.name for t in specs]
                head = ex.extract_model([t.name for t in inputs], names)
                tail = ex.extract_model(names, [t.name for t in graph.outputs])
                onnx.save(head, d / f"head-{cid}.onnx")
                onnx.save(tail, d / f"tail-{cid}.onnx")
                _quantize(d / f"head-{cid}.onnx", d / f"head-{cid}.int8.onnx", inputs)
                acts = _run(d / f"head-{cid}.int8.onnx", xs)
                out = _run(d / f"tail-{cid}.onnx", dict(zip(names, acts, strict=True)))[0]
                device_tail = None
                if device_tails:
                    device_tail = f"tail-{cid}.int8.onnx"
                    _quantize(d / f"tail-{cid}.onnx", d / device_tail, specs,
                              dict(zip(names, acts, strict=True)))
                err = np.abs(out - ref)
                cos = float(np.sum(out * ref) / (np.linalg.norm(out) * np.linalg.norm(ref)))
                cuts.append(CutSpec(
                    id=cid, depth=depth, depth_fraction=depth / edge_depth,
                    tensors=specs, bytes=_nbytes(specs, 4), bytes_int8=_nbytes(specs, 1),
                    head=f"head-{cid}.int8.onnx", head_fp32=f"head-{cid}.onnx",
                    tail=f"tail-{cid}.onnx", head_flops=head_flops, tail_flops=tail_flops,
                    device_tail=device_tail,
                    accuracy=Accuracy(max_abs=float(err.max()), mean_abs=float(err.mean()),
                                      cosine=cos, samples=len(ref))))
            cuts.append(CutSpec(id="edge", depth=edge_depth, depth_fraction=1.0,
                                tensors=[], bytes=0, bytes_int8=0, head="full.int8.onnx",
                                head_flops=total))
            stage.set_manifest(Manifest(
                name=name, version=version,
                created=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
                source=f"tiersplit.devtools.bundles:{graph.model.graph.name}", opset=OPSET,
                task="classification", inputs=inputs, outputs=graph.outputs, cuts=cuts,
                privacy_audit=privacy_audit))
    return root / name / version


def signing_keys(key_dir: Path) -> tuple[Path, Path]:
    """``(secret, public)`` Ed25519 key files ``signing.key``/``.pub`` in ``key_dir``,
    generated on first use."""
    from transport import keys

    secret, public = key_dir / "signing.key", key_dir / "signing.pub"
    if secret.exists() and public.exists():
        return secret, public
    return keys.generate("ed25519", key_dir, "signing")


def load_built(path: Path, root: Path, secret_key: Path, public_key: Path) -> BuiltBundle:
    """A :class:`BuiltBundle` for a bundle already on disk (any builder's)."""
    manifest = Manifest.model_validate(yaml.safe_load((path / MANIFEST).read_bytes()))
    return BuiltBundle(path=path, root=root, public_key=public_key, secret_key=secret_key,
                       name=manifest.name, version=manifest.version, manifest=manifest)


def build_signed(root: Path, key_dir: Path, name: str, version: str,
                 graph: Graph, **options: Any) -> BuiltBundle:
    """Build ``graph`` as ``root/name/version``, signed with ``key_dir``'s signing key
    (generated there on first use); ``options`` as :func:`build_bundle`'s."""
    from transport import keys

    secret, public = signing_keys(key_dir)
    path = build_bundle(root, name, version, graph, keys.load_ed25519_private(secret),
                        **options)
    return load_built(path, root, secret, public)


def build_edge_cnn(root: Path, key_dir: Path, name: str = "edge_cnn", version: str = "1",
                   stages: tuple[int, ...] = (1, 2, 3, 4), seed: int = 0,
                   **options: Any) -> BuiltBundle:
    """Build :func:`edge_cnn` as ``root/name/version``, signed with ``key_dir``'s key;
    ``options`` as :func:`build_bundle`'s (``device_tails``, ``privacy_audit``)."""
    return build_signed(root, key_dir, name, version, edge_cnn(seed, stages), **options)


def audit(risks: dict[str, float], metric: str = "ssim", codecs: tuple[str, ...] = ("raw",),
          dcor: dict[str, float] | None = None) -> PrivacyAudit:
    """A hand-written privacy audit for tests: ``risks`` is the reconstruction quality the
    strongest attack reached per cut id (as ``tiersplit privacy audit`` would record it),
    the same for every codec listed."""
    rows = [CutRisk(cut=cid, depth=0, codec=codec, dcor=(dcor or {}).get(cid, risk),
                    scores=[AttackScore(attack="decoder", **{metric: risk})])
            for cid, risk in risks.items() for codec in codecs]
    return PrivacyAudit(date=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
                        metric=metric, data="tiersplit.devtools.bundles:audit",  # type: ignore[arg-type]
                        attack_train=0, attack_eval=0, attacks=["decoder"], codecs=list(codecs),
                        cuts=rows)


def reference(bundle: Bundle, cut: str, x: np.ndarray) -> tuple[dict[str, np.ndarray],
                                                                 np.ndarray, np.ndarray]:
    """(crossing tensors from the int8 head, fp32 tail on them, fp32 full model) for ``x``."""
    m = bundle.manifest
    spec = m.cut(cut)
    full = _run(bundle.file(m.full_fp32), {m.inputs[0].name: x})[0]
    if spec.is_cloud:
        return {m.inputs[0].name: x}, full, full
    acts = _run(bundle.file(spec.head), {m.inputs[0].name: x})
    crossing = dict(zip([t.name for t in spec.tensors], acts, strict=True))
    tail = _run(bundle.file(spec.tail), crossing)[0]
    return crossing, tail, full


def full_reference(bundle_path: Path, x: np.ndarray) -> np.ndarray:
    """The fp32 full model's first output for ``x`` fed to its first input: the ground
    truth int8 paths are compared to."""
    manifest = Manifest.model_validate(yaml.safe_load((bundle_path / MANIFEST).read_bytes()))
    out = _run(bundle_path / manifest.full_fp32, {manifest.inputs[0].name: x})
    return out[0]
