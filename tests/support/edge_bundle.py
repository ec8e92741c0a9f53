"""A small, real bundle for the edge tests: a 4-stage CNN built with onnx.helper, heads and
full model quantized with ONNX Runtime static int8 (QDQ, per-channel), signed with a
fresh Ed25519 key. No torch, seconds to build. Cut bytes shrink with depth, so the
placement policy has a real trade-off (edge compute vs bytes on the wire)."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from onnxruntime.quantization import (
    CalibrationDataReader,
    QuantFormat,
    QuantType,
    quantize_static,
)

from contract.bundle import CutSpec, Manifest, TensorSpec, write_bundle
from transport import keys

# A small CNN: (N,3,32,32) -> conv stages whose activations shrink 16K -> 8K -> 4K -> 1K
# elements -> global pool -> 10 logits. Cuts after each stage.
INPUT, OUTPUT = "x", "logits"
IN_SHAPE = (3, 32, 32)
# (cout, stride) per conv stage; activation shapes follow
STAGES = ((16, 1), (32, 2), (64, 2), (64, 2))


@dataclass
class BuiltBundle:
    path: Path
    root: Path
    public_key: Path
    secret_key: Path


def _act(i: int) -> str:
    return f"h{i}"


def _stage_shapes() -> list[tuple[int, int, int]]:
    c, h, w = IN_SHAPE
    out = []
    for cout, stride in STAGES:
        h, w = (h + stride - 1) // stride, (w + stride - 1) // stride
        c = cout
        out.append((c, h, w))
    return out


def _macs() -> list[int]:
    shapes = [IN_SHAPE, *_stage_shapes()]
    return [shapes[i][0] * shapes[i + 1][0] * 9 * shapes[i + 1][1] * shapes[i + 1][2]
            for i in range(len(STAGES))] + [STAGES[-1][0] * 10]


def _full_model(seed: int = 0) -> onnx.ModelProto:
    rng = np.random.default_rng(seed)
    nodes, inits = [], []
    prev, cin = INPUT, IN_SHAPE[0]
    for i, (cout, stride) in enumerate(STAGES):
        w = (rng.standard_normal((cout, cin, 3, 3)) * np.sqrt(2.0 / (9 * cin))).astype(
            np.float32)
        b = (0.05 * rng.standard_normal(cout)).astype(np.float32)
        inits += [numpy_helper.from_array(w, f"w{i}"), numpy_helper.from_array(b, f"b{i}")]
        nodes.append(helper.make_node("Conv", [prev, f"w{i}", f"b{i}"], [f"c{i}"],
                                      name=f"Conv{i}", kernel_shape=[3, 3],
                                      pads=[1, 1, 1, 1], strides=[stride, stride]))
        nodes.append(helper.make_node("Relu", [f"c{i}"], [_act(i + 1)], name=f"Relu{i}"))
        prev, cin = _act(i + 1), cout
    wf = (rng.standard_normal((cin, 10)) / np.sqrt(cin)).astype(np.float32)
    bf = (0.1 * rng.standard_normal(10)).astype(np.float32)
    inits += [numpy_helper.from_array(wf, "wf"), numpy_helper.from_array(bf, "bf")]
    nodes += [
        helper.make_node("GlobalAveragePool", [prev], ["pool"], name="Pool"),
        helper.make_node("Flatten", ["pool"], ["flat"], name="Flatten", axis=1),
        helper.make_node("MatMul", ["flat", "wf"], ["mmf"], name="MatMulF"),
        helper.make_node("Add", ["mmf", "bf"], [OUTPUT], name="AddF"),
    ]
    graph = helper.make_graph(
        nodes, "edge_cnn",
        [helper.make_tensor_value_info(INPUT, TensorProto.FLOAT, ["N", *IN_SHAPE])],
        [helper.make_tensor_value_info(OUTPUT, TensorProto.FLOAT, ["N", 10])],
        inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def _extract(model: onnx.ModelProto, inputs: list[str], outputs: list[str],
             path: Path) -> None:
    tmp = path.with_suffix(".src.onnx")
    onnx.save(model, tmp)
    onnx.utils.extract_model(str(tmp), str(path), inputs, outputs)
    tmp.unlink()


class _Reader(CalibrationDataReader):
    def __init__(self, data: list[dict[str, np.ndarray]]) -> None:
        self._it = iter(data)

    def get_next(self):
        return next(self._it, None)


def _quantize(src: Path, dst: Path, calib: list[dict[str, np.ndarray]]) -> None:
    quantize_static(str(src), str(dst), _Reader(calib), quant_format=QuantFormat.QDQ,
                    per_channel=True, activation_type=QuantType.QInt8,
                    weight_type=QuantType.QInt8)


def build_bundle(root: Path, key_dir: Path, name: str = "edge_cnn", version: str = "1",
                 stages: tuple[int, ...] = (1, 2, 3, 4), seed: int = 0) -> BuiltBundle:
    """Build and sign ``root/name/version``; cut ``k<2*s>`` after conv stage ``s``."""
    secret, public = (key_dir / "signing.key", key_dir / "signing.pub")
    if not secret.exists():
        secret, public = keys.generate("ed25519", key_dir, "signing")
    signing = keys.load_ed25519_private(secret)
    model = _full_model(seed)
    rng = np.random.default_rng(seed + 1)
    calib = [{INPUT: rng.standard_normal((1, *IN_SHAPE)).astype(np.float32)}
             for _ in range(8)]
    nodes_total = len(model.graph.node)
    macs = _macs()
    shapes = _stage_shapes()
    in_elems = int(np.prod(IN_SHAPE))
    with write_bundle(root, name, version, signing) as stage:
        d = stage.dir
        onnx.save(model, d / "full.onnx")
        _quantize(d / "full.onnx", d / "full.int8.onnx", calib)
        cuts = [CutSpec(id="cloud", depth=0,
                        tensors=[TensorSpec(name=INPUT, shape=[-1, *IN_SHAPE])],
                        bytes=4 * in_elems, bytes_int8=in_elems, head=None, tail="full.onnx",
                        head_flops=0, tail_flops=sum(macs))]
        for s in stages:
            act = _act(s)
            depth = 2 * s
            cid = f"k{depth}"
            elems = int(np.prod(shapes[s - 1]))
            _extract(model, [INPUT], [act], d / f"head-{cid}.onnx")
            _quantize(d / f"head-{cid}.onnx", d / f"head-{cid}.int8.onnx", calib)
            _extract(model, [act], [OUTPUT], d / f"tail-{cid}.onnx")
            cuts.append(CutSpec(id=cid, depth=depth, depth_fraction=depth / nodes_total,
                                tensors=[TensorSpec(name=act, shape=[-1, *shapes[s - 1]])],
                                bytes=4 * elems, bytes_int8=elems,
                                head=f"head-{cid}.int8.onnx", head_fp32=f"head-{cid}.onnx",
                                tail=f"tail-{cid}.onnx", head_flops=sum(macs[:s]),
                                tail_flops=sum(macs[s:])))
        cuts.append(CutSpec(id="edge", depth=nodes_total, depth_fraction=1.0, tensors=[],
                            bytes=0, bytes_int8=0, head="full.int8.onnx", tail=None,
                            head_flops=sum(macs)))
        stage.set_manifest(Manifest(
            name=name, version=version,
            created=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            source="tests.support.edge_bundle", opset=17, task="classification",
            inputs=[TensorSpec(name=INPUT, shape=[-1, *IN_SHAPE])],
            outputs=[TensorSpec(name=OUTPUT, shape=[-1, 10])], cuts=cuts))
    return BuiltBundle(root / name / version, root, public, secret)


def reference(bundle_path: Path, x: np.ndarray) -> np.ndarray:
    """fp32 full-model outputs (the ground truth the int8 paths are compared to)."""
    import onnxruntime as ort

    sess = ort.InferenceSession(str(bundle_path / "full.onnx"),
                                providers=["CPUExecutionProvider"])
    return sess.run([OUTPUT], {INPUT: x})[0]
