"""ONNX Runtime helpers the partitioner's memory bound rests on: chunked runs give the
whole-set outputs, a context sets the sessions' threads."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper

from partitioner import ortutil


def _model(flatten_batch: bool) -> onnx.ModelProto:
    """x (N, 4) -> relu(x) * 2, and either keeps the batch first or folds it away."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    two = helper.make_tensor("two", TensorProto.FLOAT, [], [2.0])
    nodes = [helper.make_node("Relu", ["x"], ["r"]), helper.make_node("Mul", ["r", "two"],
                                                                      ["m"])]
    inits = [two]
    if flatten_batch:  # (N, 4) -> (1, 4N): the leading dimension is not the batch
        shape = helper.make_tensor("shape", TensorProto.INT64, [2], [1, -1])
        nodes.append(helper.make_node("Reshape", ["m", "shape"], ["y"]))
        inits.append(shape)
    else:
        nodes.append(helper.make_node("Identity", ["m"], ["y"]))
    graph = helper.make_graph(nodes, "g", [x], [y], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_chunked_run_equals_the_whole_run() -> None:
    x = np.random.default_rng(0).standard_normal((37, 4)).astype(np.float32)
    sess = ortutil.session(_model(False))
    whole = sess.run(None, {"x": x})[0]
    got = ortutil.run_chunked(sess, None, {"x": x}, chunk=8)[0]
    assert got.shape == whole.shape == (37, 4)
    np.testing.assert_array_equal(got, whole)


def test_chunked_run_falls_back_when_outputs_are_not_batch_first() -> None:
    x = np.random.default_rng(1).standard_normal((10, 4)).astype(np.float32)
    sess = ortutil.session(_model(True))
    got = ortutil.run_chunked(sess, None, {"x": x}, chunk=4)[0]
    assert got.shape == (1, 40)  # one run over the set, not three joined chunks
    np.testing.assert_array_equal(got, sess.run(None, {"x": x})[0])


def test_thread_context_sets_the_default_and_explicit_threads_win() -> None:
    model = _model(False)
    with ortutil.threads(2):
        inner = ortutil.session(model)
        pinned = ortutil.session(model, threads=1)
    outer = ortutil.session(model)
    opts = [s.get_session_options() for s in (inner, pinned, outer)]
    assert [o.intra_op_num_threads for o in opts] == [2, 1, 1]
    assert not any(o.enable_cpu_mem_arena for o in opts)



def test_dynamic_int8_runs_whole_sets_at_once(tmp_path) -> None:
    """Dynamic int8 scales activations over the whole batch: chunking would change the
    figures, so such a model is never chunked."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    rng = np.random.default_rng(2)
    w = helper.make_tensor("w", TensorProto.FLOAT, [4, 8],
                           rng.standard_normal((4, 8)).astype(np.float32).ravel().tolist())
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], [w])
    fp32 = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.save(fp32, str(tmp_path / "in.onnx"))
    quantize_dynamic(str(tmp_path / "in.onnx"), str(tmp_path / "out.onnx"),
                     weight_type=QuantType.QInt8)
    dyn = onnx.load(str(tmp_path / "out.onnx"))
    assert ortutil.chunk_for(fp32) == ortutil.CHUNK
    assert ortutil.chunk_for(fp32, dyn) is None and not ortutil.batch_independent(dyn)
    x = (rng.standard_normal((40, 4)) * np.linspace(0.1, 10, 40)[:, None]).astype(np.float32)
    sess = ortutil.session(dyn)
    whole = sess.run(None, {"x": x})[0]
    np.testing.assert_array_equal(
        ortutil.run_chunked(sess, None, {"x": x}, ortutil.chunk_for(dyn))[0], whole)
    # what chunking would have done: other scales per chunk, other outputs
    assert not np.array_equal(ortutil.run_chunked(sess, None, {"x": x}, 8)[0], whole)
