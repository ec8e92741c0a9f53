"""Device tails written by the partitioner: every interior cut of the trained digits CNN
ships an int8 tail that keeps the floor on the held-out digits (int8 head -> int8 device
tail vs the fp32 model), the edge loads them, and a cut where no int8 tail can keep the
floor ships none."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest

from contract.bundle import Bundle
from partitioner import ortutil, zoo
from partitioner.device_tail import build_device_tail, device_tail_file, with_device_tail
from partitioner.quantize import CalibrationSet
from partitioner.recipes import Floor
from partitioner.split import compare

_QUANT_OPS = {"QuantizeLinear", "DynamicQuantizeLinear", "MatMulInteger", "QLinearConv",
              "QLinearMatMul", "ConvInteger"}


@pytest.fixture(scope="module")
def digits(tmp_path_factory: pytest.TempPathFactory) -> Bundle:
    from partitioner import partition

    path = partition("zoo:digits_cnn", None, tmp_path_factory.mktemp("tails"), progress=False)
    return Bundle.load(path, require_signature=False, role="edge")


def _heldout(b: Bundle) -> dict[str, np.ndarray]:
    x, _ = zoo.get("digits_cnn").heldout()
    return {b.manifest.inputs[0].name: x.astype(np.float32)}


def test_every_interior_cut_ships_an_int8_tail_meeting_the_floor(digits: Bundle) -> None:
    m = digits.manifest
    feeds = _heldout(digits)
    ref = ortutil.session(digits.file(m.full_fp32)).run(None, feeds)
    interior = [c for c in m.cuts if c.head and c.tail and not c.is_cloud]
    assert len(interior) >= 2
    for c in interior:
        assert c.device_tail == device_tail_file(c.id), c
        assert c.device_tail_recipe.split("+")[0] in ("static-qdq", "dynamic-int8"), \
            c.device_tail_recipe
        model = onnx.load(str(digits.file(c.device_tail)))
        assert {n.op_type for n in model.graph.node} & _QUANT_OPS, c.id  # really int8
        head = ortutil.session(digits.file(c.head))
        names = [o.name for o in head.get_outputs()]
        mids = dict(zip(names, head.run(names, feeds), strict=True))
        tail = ortutil.session(digits.file(c.device_tail))
        got = tail.run(None, {i.name: mids[i.name] for i in tail.get_inputs()})
        cmp = compare(ref, got, classification=True)
        assert cmp.cosine >= 0.99 and cmp.top1_agreement >= 0.99, (c.id, cmp)
        acc = c.device_tail_accuracy
        assert acc is not None and acc.samples == len(feeds[m.inputs[0].name])
        assert acc.cosine == pytest.approx(cmp.cosine, abs=1e-6)
        assert acc.top1_agreement == pytest.approx(cmp.top1_agreement)
        assert c.device_tail_latency_ms and c.device_tail_latency_ms > 0


def test_the_edge_needs_the_tails_it_lists(digits: Bundle, tmp_path: Path) -> None:
    import shutil

    from contract.errors import BundleError

    copy = tmp_path / "b"
    shutil.copytree(digits.path, copy)
    victim = next(c.device_tail for c in digits.manifest.cuts if c.device_tail)
    (copy / victim).chmod(0o644)
    (copy / victim).unlink()
    Bundle.load(copy, require_signature=False, role="cloud")  # the cloud never runs them
    with pytest.raises(BundleError, match=victim):
        Bundle.load(copy, require_signature=False, role="edge")


def test_no_int8_tail_meeting_the_floor_ships_none(digits: Bundle) -> None:
    m = digits.manifest
    c = next(c for c in m.cuts if c.device_tail)
    feeds = _heldout(digits)
    ref = ortutil.session(digits.file(m.full_fp32)).run(None, feeds)
    calib = CalibrationSet({m.inputs[0].name: zoo.get("digits_cnn").example_inputs(64, 0)[0]})
    exact = Floor(cosine=1.0, top1=1.0)  # only an exact tail would do: no int8 one is

    def judge(outputs: list[np.ndarray]):
        return compare(ref, outputs, True), None

    result = build_device_tail(c.id, onnx.load(str(digits.file(c.head))),
                               onnx.load(str(digits.file(c.tail))), calib, feeds, judge,
                               exact, True)
    assert result.pick is None and result.file is None
    assert "floor" in result.reason and result.tried >= 1
    dropped = with_device_tail(c, result)
    assert dropped.device_tail is None
