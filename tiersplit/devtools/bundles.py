"""Hand-built, real bundles for the cloud core's tests and bench/cloud.py.

Small ONNX models written with ``onnx.helper`` (deterministic names, no torch export),
split at named tensors with ``onnx.utils.Extractor``, heads quantized with ONNX Runtime's
real static int8 quantization (QDQ, per channel), written with ``write_bundle`` and
signed. Independent of the partitioner so the cloud core can be tested on its own.

Models:
    mlp  x[N,16] -> Gemm+Relu -> h1[N,32] -> Gemm+Relu -> h2[N,32] -> Gemm -> y[N,10]
         cuts: cloud, h1, h2, edge
    cnn  x[N,1,8,8] -> Conv+Relu -> c1[N,4,8,8] -> MaxPool -> p1[N,4,4,4] -> Flatten
         -> Gemm -> y[N,10]; cuts: cloud, c1, p1, edge
    wide (bench) x[N,W] -> W x H Gemm+Relu (x layers) -> y[N,10]; cuts: cloud, h1, edge
"""

from __future__ import annotations

import datetime as dt
import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from onnx import TensorProto, helper, numpy_helper
from onnxruntime.quantization import (
    CalibrationDataReader,
    QuantFormat,
    QuantType,
    quantize_static,
)

from contract.bundle import Accuracy, Bundle, CutSpec, Manifest, TensorSpec, write_bundle

OPSET = 17


@dataclass(frozen=True)
class Graph:
    model: onnx.ModelProto
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    cuts: list[tuple[str, list[TensorSpec]]]  # interior cuts in order


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
    return helper.make_tensor_value_info(spec.name, TensorProto.FLOAT, dims)


def _finish(name: str, nodes, inits, inputs, outputs, cuts) -> Graph:
    g = helper.make_graph(nodes, name, [_vi(t) for t in inputs], [_vi(t) for t in outputs],
                          inits, value_info=[_vi(t) for _, ts in cuts for t in ts])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", OPSET)])
    m.ir_version = 8
    onnx.checker.check_model(m)
    return Graph(m, inputs, outputs, cuts)


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


class _Reader(CalibrationDataReader):
    def __init__(self, name: str, shape: tuple[int, ...], n: int, seed: int) -> None:
        rng = np.random.default_rng(seed)
        self._it = iter([{name: rng.standard_normal((1, *shape)).astype(np.float32)}
                         for _ in range(n)])

    def get_next(self):
        return next(self._it, None)


def _quantize(src: Path, dst: Path, inp: TensorSpec) -> None:
    # ORT logs a "consider pre-processing" warning on the root logger for every call.
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        quantize_static(str(src), str(dst), _Reader(inp.name, inp.sample_shape, 128, 1),
                        quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QInt8, weight_type=QuantType.QInt8)
    finally:
        root.setLevel(level)


def sample(spec: TensorSpec, n: int, rng: np.random.Generator) -> np.ndarray:
    return rng.standard_normal((n, *spec.sample_shape)).astype(np.float32)


def _run(path: Path, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    s = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return s.run(None, feeds)


def _nbytes(specs: list[TensorSpec], per: int) -> int:
    return sum(t.sample_elements * per for t in specs)


def build_bundle(root: Path, name: str, version: str, graph: Graph,
                 key: Ed25519PrivateKey | None, extra: dict[str, bytes] | None = None) -> Path:
    """Split, quantize and publish ``graph`` as bundle ``root/name/version``.

    ``extra`` adds files (e.g. ``tail-<cut>.pt2``), hashed and signed like the rest.
    """
    inp = graph.inputs[0]
    with tempfile.TemporaryDirectory() as tmpd:
        tmp = Path(tmpd)
        onnx.save(graph.model, tmp / "full.onnx")
        _quantize(tmp / "full.onnx", tmp / "full.int8.onnx", inp)
        rng = np.random.default_rng(7)
        xs = sample(inp, 512, rng)
        ref = _run(tmp / "full.onnx", {inp.name: xs})[0]
        with write_bundle(root, name, version, key) as stage:
            d = stage.dir
            (d / "full.onnx").write_bytes((tmp / "full.onnx").read_bytes())
            (d / "full.int8.onnx").write_bytes((tmp / "full.int8.onnx").read_bytes())
            for rel, data in (extra or {}).items():
                (d / rel).write_bytes(data)
            ex = onnx.utils.Extractor(graph.model)
            cuts = [CutSpec(id="cloud", depth=0, tensors=graph.inputs,
                            bytes=_nbytes(graph.inputs, 4), bytes_int8=_nbytes(graph.inputs, 1))]
            for depth, (cid, specs) in enumerate(graph.cuts, start=1):
                names = [t.name for t in specs]
                head = ex.extract_model([inp.name], names)
                tail = ex.extract_model(names, [t.name for t in graph.outputs])
                onnx.save(head, d / f"head-{cid}.onnx")
                onnx.save(tail, d / f"tail-{cid}.onnx")
                _quantize(d / f"head-{cid}.onnx", d / f"head-{cid}.int8.onnx", inp)
                acts = _run(d / f"head-{cid}.int8.onnx", {inp.name: xs})
                out = _run(d / f"tail-{cid}.onnx", dict(zip(names, acts, strict=True)))[0]
                err = np.abs(out - ref)
                cos = float(np.sum(out * ref) / (np.linalg.norm(out) * np.linalg.norm(ref)))
                cuts.append(CutSpec(
                    id=cid, depth=depth, depth_fraction=depth / (len(graph.cuts) + 1),
                    tensors=specs, bytes=_nbytes(specs, 4), bytes_int8=_nbytes(specs, 1),
                    head=f"head-{cid}.int8.onnx", head_fp32=f"head-{cid}.onnx",
                    tail=f"tail-{cid}.onnx",
                    accuracy=Accuracy(max_abs=float(err.max()), mean_abs=float(err.mean()),
                                      cosine=cos, samples=len(xs))))
            cuts.append(CutSpec(id="edge", depth=len(graph.cuts) + 1, depth_fraction=1.0,
                                tensors=[], bytes=0, bytes_int8=0, head="full.int8.onnx"))
            stage.set_manifest(Manifest(
                name=name, version=version,
                created=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
                source=f"tiersplit.devtools.bundles:{graph.model.graph.name}", opset=OPSET,
                task="classification", inputs=graph.inputs, outputs=graph.outputs, cuts=cuts))
    return root / name / version


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
