"""`tiersplit place tune BUNDLE --data`: the device cascade's threshold, tuned on one
held-back split of the trained digits CNN and checked on another it never saw, and the
inputs it must refuse."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from contract.bundle import Bundle
from placement.cascade import confidence
from tiersplit.cascade_tuning import refuse_calibration

runner = CliRunner()
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def digits(bundle_factory):
    return bundle_factory("digits_cnn")


@pytest.fixture(scope="module")
def splits(tmp_path_factory) -> tuple[Path, np.ndarray]:
    """(tuning split .npz, checking split array): the zoo's held-out digits (never used
    for training or calibration), shuffled and halved."""
    pytest.importorskip("sklearn")
    from partitioner import zoo

    x, _ = zoo.get("digits_cnn").heldout()
    order = np.random.default_rng(7).permutation(len(x))
    tune, check = x[order[: len(x) // 2]], x[order[len(x) // 2:]]
    path = tmp_path_factory.mktemp("cascade-data") / "tune.npz"
    np.savez(path, image=tune)
    return path, np.ascontiguousarray(check, dtype=np.float32)


def _tune(digits, data: Path, *extra: str):
    from tiersplit.cli import app

    return runner.invoke(app, ["place", "tune", str(digits.path), "--public-key",
                               str(digits.public_key), "--data", str(data), *extra],
                         terminal_width=200)


def test_tuned_threshold_holds_on_a_second_held_back_split(digits, splits, tmp_path) -> None:
    import onnxruntime as ort

    tune, check = splits
    cfg = tmp_path / "edge.yaml"
    shutil.copy(REPO / "configs" / "edge.yaml", cfg)
    r = _tune(digits, tune, "--target-agreement", "0.99", "--codec", "int8",
              "--link-ms", "25", "--write-config", str(cfg))
    assert r.exit_code == 0, r.output
    flat = " ".join(r.output.split())
    assert "held-back samples" in flat and "split path: cut" in flat and "0.990" in flat
    assert "cascade:" in r.output and "enabled: true" in r.output
    doc = yaml.safe_load(cfg.read_text())
    section = doc["policy"]["cascade"]
    assert doc["agent_id"] == "edge-1" and "endpoints" in doc  # the rest is kept
    from edge_agent.config import CascadeConfig

    tuned = CascadeConfig.model_validate(section)
    assert tuned.enabled and tuned.kind == "max-softmax"

    b = Bundle.load(digits.path, require_signature=False)
    name = b.manifest.inputs[0].name
    int8, fp32 = (ort.InferenceSession(str(b.path / f), providers=["CPUExecutionProvider"])
                  .run(None, {name: check})[0]
                  for f in (b.manifest.full_int8, b.manifest.full_fp32))
    local = confidence(int8, tuned.kind) >= tuned.threshold
    share = float(local.mean())
    agreement = float((int8.argmax(1) == fp32.argmax(1))[local].mean())
    print(f"CASCADE tune CLI: threshold {tuned.threshold:.4f}; second split "
          f"{len(check)} digits: {share:.1%} local at {agreement:.2%} agreement")
    assert agreement >= 0.99 and share >= 0.5


def _entropy(z: np.ndarray) -> np.ndarray:
    p = np.exp(z - z.max(axis=-1, keepdims=True))
    p /= p.sum(axis=-1, keepdims=True)
    return 1.0 - (-(p * np.log(p + 1e-12)).sum(-1) / np.log(z.shape[-1]))


def _three_scores(z: np.ndarray) -> np.ndarray:
    return np.ones(3)


def test_confidence_hooks_and_margin(digits, splits) -> None:
    tune, _ = splits
    r = _tune(digits, tune, "--confidence", f"{__name__}:_entropy")
    assert r.exit_code == 0, r.output
    assert f"kind: {__name__}:_entropy" in r.output
    r = _tune(digits, tune, "--confidence", "margin")
    assert r.exit_code == 0 and "kind: margin" in r.output, r.output
    r = _tune(digits, tune, "--confidence", f"{__name__}:_three_scores")
    assert r.exit_code == 2 and "finite scores" in r.output, r.output
    r = _tune(digits, tune, "--confidence", "entropy")
    assert r.exit_code == 2 and "pkg.mod:fn" in r.output, r.output


def test_bad_inputs_are_one_line_errors(digits, splits, tmp_path) -> None:
    tune, _ = splits
    wrong = tmp_path / "wrong.npz"
    np.savez(wrong, image=np.zeros((4, 1, 9, 9), np.float32))
    r = _tune(digits, wrong)
    assert r.exit_code == 2 and "expected [N, 1, 8, 8]" in r.output, r.output
    other = tmp_path / "other.npz"
    np.savez(other, a=np.zeros((4, 1, 8, 8)), b=np.zeros((4, 1, 8, 8)))
    r = _tune(digits, other)
    assert r.exit_code == 2 and "no array for input" in r.output, r.output
    r = _tune(digits, tune, "--cut", "edge")
    assert r.exit_code == 2 and "sends nothing" in r.output, r.output
    # an edge-only copy has no fp32 reference to agree with
    edge_only = tmp_path / "digits_cnn" / "1"
    shutil.copytree(digits.path, edge_only)
    (edge_only / "full.onnx").chmod(0o644)
    (edge_only / "full.onnx").unlink()
    r = _tune(dataclasses.replace(digits, path=edge_only), tune)
    assert r.exit_code == 2 and "fp32 reference" in r.output, r.output
    from tiersplit.cli import app

    r = runner.invoke(app, ["place", "tune"])
    assert r.exit_code == 2 and "--data" in r.output, r.output


def test_the_calibration_file_is_refused(digits) -> None:
    m = Bundle.load(digits.path, require_signature=False).manifest
    refuse_calibration(m, Path("held-back.npz"))  # "generated": drawn from the train split
    named = m.model_copy(update={"quantization": m.quantization.model_copy(
        update={"calibration": "calib.npz", "calibration_samples": 64})})
    with pytest.raises(ValueError, match="calibration data"):
        refuse_calibration(named, Path("/data/calib.npz"))
    refuse_calibration(named, Path("/data/held-back.npz"))
