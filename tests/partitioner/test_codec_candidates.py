"""Which codecs a cut is judged with: a head that serves shapes beyond the batch dimension
(a dynamic sequence length) is not offered the fitted-range codecs, whose verdict at the
partitioned length does not carry to other lengths."""

from __future__ import annotations

import onnx
from onnx import TensorProto, helper

from partitioner.codec_accuracy import CANDIDATES
from partitioner.cut_extras import candidate_codecs


def _identity(shape: list[int | str]) -> onnx.ModelProto:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, shape)
    return helper.make_model(helper.make_graph([helper.make_node("Identity", ["x"], ["y"])],
                                               "g", [x], [y]))


def test_fixed_shape_heads_get_every_codec() -> None:
    assert candidate_codecs(_identity(["batch", 3, 8, 8])) == CANDIDATES


def test_dynamic_length_heads_get_no_fitted_codec() -> None:
    got = candidate_codecs(_identity(["batch", "seq", 384]))
    assert "int3m+zstd" in CANDIDATES and "int2m+zstd" in CANDIDATES
    assert "int3m+zstd" not in got and "int2m+zstd" not in got
    assert set(got) == {c for c in CANDIDATES if "m+" not in c and not c.endswith("m")}
