"""The cascade's threshold tuner: pure rules, then the trained digits CNN's int8 model
against its fp32 self on held-back digits (tune on one half, check on the other)."""

from __future__ import annotations

import logging
import math

import numpy as np
import pytest

from placement.cascade import confidence, tune_threshold


def test_confidence_scores() -> None:
    logits = np.array([[10.0, 0.0, 0.0], [1.0, 1.0, 0.0]])
    top = confidence(logits, "max-softmax")
    assert top[0] > 0.99 and top[1] == pytest.approx(np.e / (2 * np.e + 1))
    margin = confidence(logits, "margin")
    assert margin[0] > 0.99 and margin[1] == pytest.approx(0.0, abs=1e-12)
    seq = np.zeros((1, 3, 2))  # a sequence: as sure as its least sure position
    seq[0, :, 0] = [9.0, 9.0, 0.0]
    assert confidence(seq)[0] == pytest.approx(0.5)
    with pytest.raises(ValueError, match="unknown confidence kind"):
        confidence(logits, "entropy")
    with pytest.raises(ValueError, match="classes >= 2"):
        confidence(np.zeros((3, 1)))


def test_tuner_picks_the_lowest_threshold_meeting_the_target() -> None:
    scores = np.array([0.99, 0.98, 0.97, 0.90, 0.80, 0.70, 0.60, 0.50])
    agree = np.array([1, 1, 1, 1, 0, 1, 0, 0], dtype=bool)
    t = tune_threshold(scores, agree, 0.8, local_ms=5.0, split_ms=40.0, split_bytes=1000)
    # the 6 most confident agree 5/6 = 0.83 >= 0.8; 7 would be 5/7 = 0.71
    assert t.threshold == 0.70 and t.local_share == pytest.approx(6 / 8)
    assert t.achieved == pytest.approx(5 / 6) and t.met
    assert t.latency_saved_ms == pytest.approx(40.0 - (5.0 + 0.25 * 40.0))
    assert t.bytes_saved == pytest.approx(750.0)
    strict = tune_threshold(scores, agree, 1.0)
    assert strict.threshold == 0.90 and strict.local_share == 0.5 and strict.achieved == 1.0
    # the surest answer is wrong: no threshold keeps 99%, the device never answers alone
    none = tune_threshold(np.array([0.9, 0.8]), np.array([False, True]), 0.99)
    assert math.isinf(none.threshold) and none.local_share == 0 and not none.met
    assert none.achieved == 1.0 and none.overall == 1.0
    tied = tune_threshold(np.array([0.9, 0.9, 0.5]), np.array([True, False, True]), 1.0)
    assert tied.local_share == 0  # one threshold admits both tied scores: 1/2 agree
    with pytest.raises(ValueError, match="one agreement flag per score"):
        tune_threshold(np.array([0.5, 0.6]), np.array([True]))


@pytest.mark.slow
def test_digits_cascade_meets_its_agreement_target_on_held_back_digits(tmp_path) -> None:
    """Tuned on half the held-back digits for 99% agreement with the fp32 model, the
    threshold keeps 99% on the other half while the device answers most digits alone."""
    pytest.importorskip("sklearn")
    ort = pytest.importorskip("onnxruntime")
    import onnx
    import torch
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    from partitioner import zoo
    from partitioner.load import export

    z = zoo.get("digits_cnn")
    model = z.build()
    fp32 = tmp_path / "digits.onnx"
    onnx.save(export(model, [tuple(z.input_shapes[0])], z.input_names), fp32)
    calib = z.example_inputs(128, seed=1)[0]

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._it = iter({z.input_names[0]: calib[i:i + 1]} for i in range(len(calib)))

        def get_next(self):
            return next(self._it, None)

    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        quantize_static(str(fp32), str(tmp_path / "digits.int8.onnx"), Reader(),
                        quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QInt8, weight_type=QuantType.QInt8)
    finally:
        root.setLevel(level)
    x, _ = z.heldout()
    x = np.ascontiguousarray(x, dtype=np.float32)
    with torch.no_grad():
        ref = model(torch.from_numpy(x)).numpy()
    dev = ort.InferenceSession(str(tmp_path / "digits.int8.onnx"),
                               providers=["CPUExecutionProvider"])
    logits = dev.run(None, {z.input_names[0]: x})[0]
    scores = confidence(logits, "max-softmax")
    agree = logits.argmax(1) == ref.argmax(1)
    order = np.random.default_rng(0).permutation(len(x))
    tune, check = order[: len(x) // 2], order[len(x) // 2:]
    t = tune_threshold(scores[tune], agree[tune], 0.99)
    local = scores[check] >= t.threshold
    share = float(local.mean())
    held = float(agree[check][local].mean()) if local.any() else 1.0
    print(f"CASCADE digits: threshold {t.threshold:.4f}, tuned share {t.local_share:.3f} at "
          f"{t.achieved:.4f}; held-back share {share:.3f} at {held:.4f} agreement "
          f"(int8 overall {float(agree.mean()):.4f}, {len(check)} digits)")
    assert t.met and held >= 0.99
    assert share >= 0.5
