"""The torch backend's ONNX interpreter against ONNX Runtime on one graph that uses the
awkward corners: asymmetric pads, pooling, batch norm, shape arithmetic, axes given as
inputs (opset 18), Split with num_outputs, LayerNormalization, Gather of a scalar."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import torch
from onnx import TensorProto, helper, numpy_helper

from cloud_core.backends.onnx_to_torch import OnnxTorchProgram


def _graph() -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    f = np.float32

    def init(name, arr):
        return numpy_helper.from_array(np.asarray(arr), name)

    inits = [
        init("w", rng.standard_normal((4, 3, 3, 3)).astype(f) * 0.3),
        init("scale", (1 + 0.1 * rng.standard_normal(4)).astype(f)),
        init("bias", (0.1 * rng.standard_normal(4)).astype(f)),
        init("mean", (0.1 * rng.standard_normal(4)).astype(f)),
        init("var", (1 + rng.random(4)).astype(f)),
        init("shape2", np.array([0, -1], np.int64)),
        init("ax1", np.array([1], np.int64)),
        init("zero", np.array(0, np.int64)),
        init("st", np.array([0], np.int64)), init("en", np.array([12], np.int64)),
        init("ln_s", (1 + 0.1 * rng.standard_normal(24)).astype(f)),
        init("ln_b", (0.1 * rng.standard_normal(24)).astype(f)),
        init("lo", np.array(-0.5, f)), init("hi", np.array(0.7, f)),
        init("two", np.array(2.0, f)),
    ]
    n = helper.make_node
    nodes = [
        n("Conv", ["x", "w"], ["c"], pads=[0, 0, 1, 1]),
        n("BatchNormalization", ["c", "scale", "bias", "mean", "var"], ["bn"], epsilon=1e-5),
        n("Relu", ["bn"], ["r"]),
        n("AveragePool", ["r"], ["ap"], kernel_shape=[2, 2], strides=[2, 2]),
        n("MaxPool", ["ap"], ["mp"], kernel_shape=[3, 3], strides=[1, 1], pads=[1, 1, 1, 1]),
        n("Add", ["ap", "mp"], ["s"]),
        n("Shape", ["s"], ["sh"]),
        n("Gather", ["sh", "zero"], ["nb"], axis=0),
        n("Reshape", ["s", "shape2"], ["fl"]),
        n("Unsqueeze", ["fl", "ax1"], ["u"]),
        n("Softmax", ["u"], ["sm"], axis=-1),
        n("Squeeze", ["sm", "ax1"], ["sq"]),
        n("Slice", ["fl", "st", "en", "ax1"], ["sl"]),
        n("Split", ["sq"], ["p0", "p1", "p2"], axis=1, num_outputs=3),
        n("Concat", ["sl", "p1"], ["cat"], axis=1),
        n("ReduceMean", ["cat", "ax1"], ["rm"], keepdims=1),
        n("Sub", ["cat", "rm"], ["ctr"]),
        n("Mul", ["ctr", "two"], ["m2"]),
        n("Tanh", ["m2"], ["th"]),
        n("Clip", ["th", "lo", "hi"], ["cl"]),
        n("LayerNormalization", ["cl", "ln_s", "ln_b"], ["ln"], axis=-1, epsilon=1e-5),
        n("Cast", ["nb"], ["nbf"], to=TensorProto.FLOAT),
        n("Mul", ["ln", "nbf"], ["y"]),
    ]
    g = helper.make_graph(
        nodes, "ops", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 24])], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)])
    m.ir_version = 8
    onnx.checker.check_model(m, full_check=True)
    return m


def test_interpreter_matches_onnxruntime(tmp_path) -> None:
    path = tmp_path / "ops.onnx"
    onnx.save(_graph(), path)
    x = np.random.default_rng(1).standard_normal((5, 3, 8, 8)).astype(np.float32)
    want = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(
        None, {"x": x})[0]
    prog = OnnxTorchProgram(path, torch.device("cpu"))
    with torch.inference_mode():
        got = prog({"x": torch.from_numpy(x)})["y"].numpy()
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
