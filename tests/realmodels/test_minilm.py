"""The real all-MiniLM-L6-v2 (trained weights) partitions from its torch module and from
an ONNX export, and every shipped head keeps the floor on sentences never used for
calibration, at sequence lengths other than the one it was partitioned at.

Skips, saying why, when the ``real-models`` extra is not installed.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from partitioner import minilm
from partitioner.text_corpus import CALIBRATION, EVALUATION
from tests.realmodels.conftest import INPUTS, SEQ

_REASON = minilm.missing()
# partitioning the real model takes minutes on a loaded CI machine
pytestmark = [pytest.mark.skipif(_REASON is not None, reason=_REASON or ""),
              pytest.mark.timeout(1800)]


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("minilm-repo")


@pytest.fixture(scope="module")
def torch_bundle(minilm_bundle) -> Path:
    return minilm_bundle.path


@pytest.fixture(scope="module")
def onnx_bundle(repo: Path, tmp_path_factory: pytest.TempPathFactory,
                partition_cache: Path) -> Path:
    """The ONNX-file entry path: a user's own export of the module, partitioned from the
    file. The export is byte-identical to the torch path's, so through the session
    ``partition_cache`` the calibration ranges and the quantized heads' held-back figures
    that the torch build computed are looked up; loading the file, graph analysis, cutting,
    bundle writing and verification run again, and the test below judges every shipped
    head on held-back sentences at a length neither build used."""
    import onnx

    from partitioner import load, partition

    f = tmp_path_factory.mktemp("minilm-onnx") / "all-MiniLM-L6-v2.onnx"
    onnx.save(load.export(minilm.make(), INPUTS), str(f))
    return partition(f, None, repo, name="minilm-onnx", max_cuts=3,
                     calib_data=minilm.tokenize(CALIBRATION, SEQ),
                     eval_data=minilm.tokenize(EVALUATION, SEQ), progress=False,
                     device_tails=False, cache_dir=partition_cache)


def _reference(sentences: list[str], length: int) -> np.ndarray:
    import torch

    feeds = minilm.tokenize(sentences, length)
    with torch.no_grad():
        return minilm.make()(torch.from_numpy(feeds["input_ids"]),
                             torch.from_numpy(feeds["attention_mask"])).numpy()


def _cos_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def _similarity(e: np.ndarray) -> np.ndarray:
    n = e / np.linalg.norm(e, axis=1, keepdims=True)
    s = n @ n.T
    return s[np.triu_indices(len(e), 1)]


def _shipped(path: Path, length: int) -> dict[str, np.ndarray]:
    """Every shipped path (split cuts' int8 head -> tail, and the local int8 model) on the
    held-back sentences at ``length`` tokens."""
    from contract.bundle import Bundle
    from partitioner import ortutil
    from partitioner.split import run_split

    b = Bundle.load(path, require_signature=False)
    feeds = minilm.tokenize(EVALUATION, length)
    out = {}
    for c in b.manifest.cuts:
        if c.head and c.tail:
            out[c.id] = run_split(ortutil.session(b.file(c.head)),
                                  ortutil.session(b.file(c.tail)), feeds)[0]
        elif c.head:
            out[c.id] = ortutil.session(b.file(c.head)).run(None, feeds)[0]
    return out


@pytest.mark.parametrize("length", [SEQ, 20, 64])
def test_torch_module_every_cut_meets_the_floor(torch_bundle: Path, length: int) -> None:
    ref = _reference(EVALUATION, length)
    shipped = _shipped(torch_bundle, length)
    assert len(shipped) >= 3  # two interior cuts and the local fallback
    for cid, got in shipped.items():
        cos = _cos_rows(ref, got)
        assert cos.mean() >= 0.99, (cid, length, cos.mean())
        corr = np.corrcoef(_similarity(ref), _similarity(got))[0, 1]
        assert corr >= 0.98, (cid, length, corr)


def test_torch_manifest_records_inputs_floor_and_recipes(torch_bundle: Path) -> None:
    from contract.bundle import Bundle

    m = Bundle.load(torch_bundle, require_signature=False).manifest
    assert [(s.name, s.dtype, s.dynamic) for s in m.inputs] == [
        ("input_ids", "int64", [1]), ("attention_mask", "int64", [1])]
    assert m.outputs[0].shape == [-1, 384]
    q = m.quantization
    assert q.accuracy_floor == 0.99 and q.evaluation_samples == len(EVALUATION)
    assert q.calibration_samples == len(CALIBRATION)
    interior = [c for c in m.cuts if c.head and c.tail]
    assert interior and all("layer." in c.tensors[-1].name for c in interior)  # block ends
    for c in [*interior, m.cuts[-1]]:
        assert c.recipe and c.latency_ms and c.latency_fp32_ms
        assert c.accuracy.cosine >= 0.99 and c.accuracy.samples == len(EVALUATION)
        hidden = [t for t in c.tensors if t.dtype == "float32"]
        assert all(1 in t.dynamic for t in hidden if len(t.shape) == 3)


def test_onnx_export_partitions_and_meets_the_floor(onnx_bundle: Path) -> None:
    ref = _reference(EVALUATION, 40)
    for cid, got in _shipped(onnx_bundle, 40).items():
        assert _cos_rows(ref, got).mean() >= 0.99, cid
        assert np.corrcoef(_similarity(ref), _similarity(got))[0, 1] >= 0.98, cid


def test_bundle_verifies(torch_bundle: Path) -> None:
    from partitioner.check import verify_bundle

    report = verify_bundle(torch_bundle)
    assert report.ok, [c.message for c in report.cuts if not c.ok]
