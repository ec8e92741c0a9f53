"""Quantization and calibration data: real ONNX Runtime static int8, clear failures."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest

from partitioner import load, ortutil
from partitioner.errors import QuantizationError
from partitioner.graph import analyze
from partitioner.quantize import CalibrationSet, QuantConfig, quantize, quantized_op_count


@pytest.fixture(scope="module")
def digits():
    return analyze(load.load("zoo:digits_cnn", None).model)


def test_quantize_full_model_keeps_float_interface(digits) -> None:
    x = np.random.default_rng(0).random((16, 1, 8, 8), dtype=np.float32)
    q = quantize(digits.model, CalibrationSet({"image": x}))
    assert quantized_op_count(q) > 0
    assert [i.name for i in q.graph.input] == ["image"]
    assert q.graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    ref = ortutil.session(digits.model).run(None, {"image": x})[0]
    got = ortutil.session(q).run(None, {"image": x})[0]
    assert (ref.argmax(1) == got.argmax(1)).mean() >= 0.9


def test_quantize_errors(digits) -> None:
    with pytest.raises(QuantizationError, match="lacks input"):
        quantize(digits.model, CalibrationSet({"other": np.zeros((2, 3), np.float32)}))
    with pytest.raises(QuantizationError, match="unknown quantization setting"):
        quantize(digits.model, CalibrationSet({"image": np.zeros((2, 1, 8, 8), np.float32)}),
                 QuantConfig(activation_type="QInt4x"))
    with pytest.raises(QuantizationError, match="differ in sample count"):
        CalibrationSet({"a": np.zeros((2, 1)), "b": np.zeros((3, 1))})


def test_npz_loading(tmp_path: Path) -> None:
    arr = np.ones((5, 1, 8, 8), np.float32)
    np.savez(tmp_path / "pos.npz", arr)  # arr_0
    c = CalibrationSet.from_npz(tmp_path / "pos.npz", ["image"], {"image": (1, 8, 8)})
    assert c.samples == 5
    np.savez(tmp_path / "two.npz", a=arr, b=arr)
    with pytest.raises(QuantizationError, match="no array for input 'image'"):
        CalibrationSet.from_npz(tmp_path / "two.npz", ["image"])
    (tmp_path / "junk.npz").write_bytes(b"junk")
    with pytest.raises(QuantizationError, match="cannot read"):
        CalibrationSet.from_npz(tmp_path / "junk.npz", ["image"])


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_token_id_onnx_model_partitions(tmp_path: Path) -> None:
    """int64 token ids (an embedding lookup) in an ONNX file: cuts start after the lookup."""
    import torch

    from contract.bundle import Bundle
    from partitioner import partition
    from partitioner.check import verify_bundle

    class Tok(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.emb = torch.nn.Embedding(50, 16)
            self.ff = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU(),
                                          torch.nn.Linear(32, 16), torch.nn.ReLU())
            self.out = torch.nn.Linear(16, 4)

        def forward(self, ids: torch.Tensor) -> torch.Tensor:
            return self.out(self.ff(self.emb(ids)).mean(dim=1))

    torch.manual_seed(0)
    f = tmp_path / "tok.onnx"
    torch.onnx.export(Tok().eval(), (torch.zeros(1, 6, dtype=torch.long),), str(f),
                      dynamo=False, opset_version=17, input_names=["ids"],
                      output_names=["logits"], dynamic_axes={"ids": {0: "b"}, "logits": {0: "b"}})
    path = partition(f, None, tmp_path / "repo", max_cuts=4, progress=False, task="classification")
    m = Bundle.load(path, require_signature=False).manifest
    assert m.inputs[0].dtype == "int64" and m.cuts[0].bytes == 6 * 8
    assert m.cuts[0].bytes_int8 == 6 * 8  # integer inputs travel as they are
    splits = [c for c in m.cuts if c.head and c.tail]
    assert splits and all(t.dtype == "float32" for c in splits for t in c.tensors)
    assert verify_bundle(path).ok
