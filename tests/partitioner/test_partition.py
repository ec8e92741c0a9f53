"""Split against whole: every kept cut of every zoo model and of a two-input user
callable reproduces the full model in fp32; int8 heads stay close; the bundle is complete."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest

from contract.bundle import Bundle
from partitioner import ortutil, zoo
from partitioner.check import verify_bundle
from partitioner.split import TOLERANCE, run_split

ZOO_CUTS = 6


@pytest.fixture(scope="module")
def zoo_bundles(part_root: Path, partition_cache: Path) -> dict[str, Path]:
    """Every small zoo model, through the session partition cache (other areas build the
    same models: their exports, calibration ranges and shared heads are reused)."""
    from partitioner import partition

    return {n: partition(f"zoo:{n}", None, part_root, max_cuts=ZOO_CUTS, progress=False,
                         cache_dir=partition_cache)
            for n in zoo.names("small")}


def _check_bundle(path: Path) -> Bundle:
    b = Bundle.load(path, require_signature=False)
    m = b.manifest
    assert m.cuts[0].id == "cloud" and m.cuts[-1].id == "edge"
    assert [c.depth for c in m.cuts] == sorted(c.depth for c in m.cuts)
    assert m.cuts[0].tensors == m.inputs and m.cuts[0].tail == m.full_fp32
    assert m.cuts[-1].head == m.full_int8 and m.cuts[-1].tensors == [] and m.cuts[-1].bytes == 0
    for spec in [*m.inputs, *m.outputs]:
        assert spec.shape[0] == -1
    for c in m.cuts[1:-1]:
        assert c.id == f"k{c.depth}"
        assert (c.head, c.head_fp32, c.tail) == (f"head-{c.id}.int8.onnx", f"head-{c.id}.onnx",
                                                 f"tail-{c.id}.onnx")
        head = onnx.load(str(b.file(c.head)))
        assert [o.name for o in head.graph.output] == [t.name for t in c.tensors]
        specs = {s.name: s for s in [*m.inputs, *c.tensors]}
        for i in [*head.graph.input, *head.graph.output]:  # the fp32 interface is kept
            assert onnx.helper.tensor_dtype_to_np_dtype(
                i.type.tensor_type.elem_type).name == specs[i.name].dtype
        ops = {n.op_type for n in head.graph.node}
        int8_ops = {"static-qdq": {"QuantizeLinear"},
                    "dynamic-int8": {"DynamicQuantizeLinear", "DynamicQuantizeMatMul",
                                     "MatMulInteger"}}
        assert c.recipe.split("+")[0] in (*int8_ops, "fp32")
        assert c.recipe == "fp32" or ops & int8_ops[c.recipe.split("+")[0]] or c.head_flops == 0
        assert c.latency_ms and c.latency_fp32_ms
        tail = onnx.load(str(b.file(c.tail)))
        assert sorted(i.name for i in tail.graph.input) == sorted(t.name for t in c.tensors)
        assert all(t.shape[0] == -1 for t in c.tensors)
        assert c.bytes == sum(np.dtype(t.dtype).itemsize * t.sample_elements for t in c.tensors)
        floats = [t for t in c.tensors if t.dtype == "float32"]
        assert c.bytes_int8 == c.bytes - sum(3 * t.sample_elements for t in floats)
        assert c.head_flops + c.tail_flops == m.cuts[-1].head_flops
        assert c.accuracy.samples > 0 and c.accuracy.cosine >= m.quantization.accuracy_floor
    return b


@pytest.mark.parametrize("name", zoo.names("small"))
def test_zoo_model_every_cut_verifies(zoo_bundles: dict[str, Path], name: str) -> None:
    b = _check_bundle(zoo_bundles[name])
    assert len(b.manifest.cuts) >= 4
    report = verify_bundle(b.path)
    assert report.ok, [c.message for c in report.cuts if not c.ok]
    for c in report.cuts:
        if c.fp32_relative is not None:
            assert c.fp32_relative <= TOLERANCE
    assert report.cuts[-1].int8_cosine > 0.99


def test_user_callable_two_inputs(user_bundle: Path) -> None:
    b = _check_bundle(user_bundle)
    m = b.manifest
    assert [s.name for s in m.inputs] == ["rgb", "depth"]
    assert [s.name for s in m.outputs] == ["output0", "output1"]
    assert m.source == "tests.partitioner.user_models:make"
    multi = [c for c in m.cuts if len(c.tensors) == 2 and not c.is_cloud]
    assert multi, "the before-concat extra cut (two crossing tensors) is missing"
    passthrough = [c for c in m.cuts if [t.name for t in c.tensors] == ["output1"]]
    assert passthrough, "the extra cut through the features output is missing"
    report = verify_bundle(b.path)
    assert report.ok, [c.message for c in report.cuts if not c.ok]
    # run the two-tensor cut by hand at batch 5: head -> tail == full
    feeds = ortutil.random_feeds(ortutil.input_specs(onnx.load(str(b.file(m.full_fp32)))), 5)
    full = ortutil.session(b.file(m.full_fp32)).run(None, feeds)
    got = run_split(ortutil.session(b.file(multi[0].head_fp32)),
                    ortutil.session(b.file(multi[0].tail)), feeds)
    for r, g in zip(full, got, strict=True):
        assert np.abs(r - g).max() <= TOLERANCE * max(1.0, np.abs(r).max())


def test_digits_int8_heads_keep_top1_on_heldout(zoo_bundles: dict[str, Path]) -> None:
    b = Bundle.load(zoo_bundles["digits_cnn"], require_signature=False)
    m = b.manifest
    x, _ = zoo.get("digits_cnn").heldout()
    feeds = {m.inputs[0].name: x}
    ref = ortutil.session(b.file(m.full_fp32)).run(None, feeds)[0].argmax(1)
    for c in m.cuts[1:-1]:
        got = run_split(ortutil.session(b.file(c.head)), ortutil.session(b.file(c.tail)),
                        feeds)[0].argmax(1)
        agreement = (got == ref).mean()
        assert agreement >= 0.99, (c.id, agreement)
        assert c.accuracy.top1_agreement == pytest.approx(agreement)
        assert c.accuracy.samples == len(x)
    full8 = ortutil.session(b.file(m.full_int8)).run(None, feeds)[0].argmax(1)
    assert (full8 == ref).mean() >= 0.98
    assert m.quantization.calibration == "generated"
    assert m.quantization.evaluation == "held-out split"
    assert m.quantization.accuracy_floor == 0.99 and m.quantization.top1_floor == 0.99


def test_onnx_file_input(zoo_bundles: dict[str, Path], part_root: Path, tmp_path: Path) -> None:
    from partitioner import partition

    src = tmp_path / "mobile.onnx"
    src.write_bytes((zoo_bundles["mobilenet_like"] / "full.onnx").read_bytes())
    path = partition(src, [(1, 3, 64, 64)], tmp_path / "repo", max_cuts=3, progress=False)
    b = _check_bundle(path)
    assert b.manifest.name == "mobile" and b.manifest.source == "mobile.onnx"
    assert len(b.manifest.cuts) == 3
    assert verify_bundle(path).ok


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_onnx_file_with_fixed_batch_is_made_dynamic(tmp_path: Path) -> None:
    """An ONNX file exported at batch 1 (common) still gets a dynamic batch dimension."""
    import torch

    from partitioner import partition

    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU(),
                              torch.nn.Conv2d(8, 4, 3), torch.nn.Flatten(1)).eval()
    f = tmp_path / "fixed.onnx"
    torch.onnx.export(net, (torch.randn(1, 3, 12, 12),), str(f), dynamo=False, opset_version=17,
                      input_names=["x"], output_names=["y"])
    path = partition(f, None, tmp_path / "repo", max_cuts=3, progress=False, calib_data={
        "x": np.random.default_rng(0).standard_normal((8, 3, 12, 12)).astype(np.float32)})
    b = _check_bundle(path)
    assert b.manifest.inputs[0].shape == [-1, 3, 12, 12]
    assert b.manifest.quantization.calibration == "given"
    assert verify_bundle(path).ok


def test_extra_cut_must_be_valid(part_root: Path) -> None:
    from partitioner import partition
    from partitioner.errors import GraphError
    from tests.partitioner.conftest import USER_MODEL
    from tests.partitioner.user_models import INPUT_SHAPES

    with pytest.raises(GraphError, match="not a valid cut"):
        partition(USER_MODEL, INPUT_SHAPES, part_root, name="user-bad", version="1",
                  extra_cuts=[["/Relu_output_0"]], progress=False)
    assert not (part_root / "user-bad" / "1").exists()


def test_privacy_floor(tmp_path: Path) -> None:
    from partitioner import partition
    from partitioner.errors import GraphError

    path = partition("zoo:digits_cnn", None, tmp_path, max_cuts=3, privacy_floor=3,
                     progress=False)
    m = Bundle.load(path, require_signature=False).manifest
    assert "cloud" not in m.cut_ids and m.cut_ids[-1] == "edge"
    assert all(c.depth >= 3 for c in m.cuts)
    with pytest.raises(GraphError, match="privacy floor"):
        partition("zoo:digits_cnn", None, tmp_path, version="2", privacy_floor=3,
                  extra_cuts=[["/1/Relu_output_0"]], progress=False)
