"""Fixtures of the rollout suite: a signed repository with ``edge_cnn`` v1 and v2 (and a
v2 whose cloud tails fail on real inputs), a per-test copy of it for the core, fleet keys
for agents a0..a3, and the bookkeeping to start real cores and in-process agents.

Bundles come from :mod:`tiersplit.devtools.bundles` (a small CNN quantized with ONNX
Runtime: seconds, no torch). A test gets its own copy of the repository, so one that
corrupts a file or persists a plan never affects another.
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.reliability.conftest import clouds, fleet, make_agent
from tests.reliability.fleet import cosine
from tests.rollout.broken import make_failing_tails
from tests.support.edge_bundle import IN_SHAPE, INPUT, OUTPUT, build_bundle, reference

MODEL = "edge_cnn"


@dataclass(frozen=True)
class Repo:
    """``root``: v1 and v2 of :data:`MODEL`; ``broken``: v1 and a v2 whose tails fail."""

    root: Path
    broken: Path
    public_key: Path
    secret_key: Path

    def copy(self, dst: Path, broken: bool = False) -> Path:
        shutil.copytree(self.broken if broken else self.root, dst)
        return dst

    def path(self, version: str = "1") -> Path:
        return self.root / MODEL / version


@pytest.fixture(scope="session")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Repo:
    logging.getLogger("onnxruntime").setLevel(logging.ERROR)
    base = tmp_path_factory.mktemp("rollout-repo")
    kd = base / "keys"
    kd.mkdir()
    root = base / "bundles"
    b1 = build_bundle(root, kd, MODEL, "1", seed=0)
    build_bundle(root, kd, MODEL, "2", seed=3)
    broken = base / "broken"
    shutil.copytree(root / MODEL / "1", broken / MODEL / "1")
    make_failing_tails(root / MODEL / "2", broken / MODEL / "2", b1.secret_key)
    return Repo(root=root, broken=broken, public_key=b1.public_key, secret_key=b1.secret_key)


@dataclass(frozen=True)
class Samples:
    """Fixed inputs and the fp32 reference outputs of each version."""

    inputs: list[dict[str, np.ndarray]]
    refs: dict[str, list[np.ndarray]]

    def check(self, i: int, res: Any) -> None:
        """The outputs equal those of the version that answered (``res.version``)."""
        assert res.version in self.refs, f"unknown version {res.version!r}"
        c = cosine(res.outputs[OUTPUT], self.refs[res.version][i])
        assert c >= 0.99, f"outputs differ from v{res.version}'s (cosine {c:.3f})"
        other = next(v for v in self.refs if v != res.version)
        assert cosine(res.outputs[OUTPUT], self.refs[other][i]) < c


@pytest.fixture(scope="session")
def samples(repo: Repo) -> Samples:
    rng = np.random.default_rng(11)
    inputs = [{INPUT: rng.standard_normal((1, *IN_SHAPE)).astype(np.float32)}
              for _ in range(4)]
    refs = {v: [reference(repo.path(v), x[INPUT]) for x in inputs] for v in ("1", "2")}
    return Samples(inputs, refs)


# The reliability suite's fixtures, same keys (agents a0..a3), cores and agents.
__all__ = ["INPUT", "MODEL", "OUTPUT", "Repo", "Samples", "clouds", "fleet", "make_agent"]
