"""The fallback search's sensitivity ranking streams its probe samples: chunked or in
one run, the nodes come back in the same order (only squared norms are accumulated)."""

from __future__ import annotations

import numpy as np
import pytest

from partitioner import load
from partitioner.graph import analyze
from partitioner.quantize import CalibrationSet, quantize
from partitioner.recipes import _rank_nodes, _weighted_nodes


@pytest.fixture(scope="module")
def digits():
    return analyze(load.load("zoo:digits_cnn", None).model)


def test_ranking_in_chunks_matches_one_run(digits) -> None:
    rng = np.random.default_rng(3)
    x = rng.random((16, 1, 8, 8), dtype=np.float32)
    q = quantize(digits.model, CalibrationSet({"image": x}))
    nodes = _weighted_nodes(digits.model, {"Conv", "Gemm", "MatMul"})
    assert len(nodes) >= 3
    feeds = {"image": rng.random((16, 1, 8, 8), dtype=np.float32)}
    whole = _rank_nodes(digits.model, q, nodes, feeds, chunk=16)
    for chunk in (1, 2, 5):
        assert _rank_nodes(digits.model, q, nodes, feeds, chunk=chunk) == whole, chunk
    assert sorted(whole) == sorted(n.name for n in nodes)
