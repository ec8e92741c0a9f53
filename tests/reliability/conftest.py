"""Fixtures of the reliability suite: one signed repository with two models (and two
versions of one), fresh fleet keys per test, and in-process agents stopped at teardown.

Bundles come from ``tests.support.edge_bundle`` (a small CNN built with onnx.helper and
quantized with ONNX Runtime's static int8: seconds, no torch), so the suite exercises
the same artifacts an edge device and a cloud core load in production.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.reliability.fleet import CloudProc, FleetKeys, cosine
from tests.support.agents import agent_factory
from tests.support.edge_bundle import IN_SHAPE, INPUT, OUTPUT, build_bundle, reference

MODEL_A, MODEL_B = "edge_cnn", "edge_cnn_b"


@dataclass(frozen=True)
class Repo:
    """The suite's bundle repository: ``edge_cnn`` v1 and v2, ``edge_cnn_b`` v1."""

    root: Path
    public_key: Path
    secret_key: Path

    def path(self, model: str = MODEL_A, version: str = "1") -> Path:
        return self.root / model / version


@pytest.fixture(scope="session")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Repo:
    logging.getLogger("onnxruntime").setLevel(logging.ERROR)
    base = tmp_path_factory.mktemp("rel-repo")
    kd = base / "keys"
    kd.mkdir()
    root = base / "bundles"
    a1 = build_bundle(root, kd, MODEL_A, "1", seed=0)
    build_bundle(root, kd, MODEL_A, "2", seed=3)
    build_bundle(root, kd, MODEL_B, "1", stages=(1, 2), seed=5)
    return Repo(root=root, public_key=a1.public_key, secret_key=a1.secret_key)


@dataclass(frozen=True)
class Samples:
    """Fixed inputs with their fp32 reference outputs, per (model, version)."""

    inputs: list[dict[str, np.ndarray]]
    refs: dict[tuple[str, str], list[np.ndarray]]

    def checker(self, model: str = MODEL_A, version: str = "1") -> Callable[[int, Any], None]:
        refs = self.refs[(model, version)]

        def check(i: int, res: Any) -> None:
            c = cosine(res.outputs[OUTPUT], refs[i])
            assert c >= 0.99, f"outputs differ from {model} v{version} (cosine {c:.3f})"

        return check


@pytest.fixture(scope="session")
def samples(repo: Repo) -> Samples:
    rng = np.random.default_rng(11)
    inputs = [{INPUT: rng.standard_normal((1, *IN_SHAPE)).astype(np.float32)}
              for _ in range(4)]
    refs = {(m, v): [reference(repo.path(m, v), x[INPUT]) for x in inputs]
            for m, v in ((MODEL_A, "1"), (MODEL_A, "2"), (MODEL_B, "1"))}
    return Samples(inputs, refs)


@pytest.fixture
def fleet(tmp_path: Path) -> FleetKeys:
    """Fresh cloud and agent keys for one test (agents a0..a3 allow-listed)."""
    f = FleetKeys(tmp_path / "keys")
    for i in range(4):
        f.add(f"a{i}")
    return f


@pytest.fixture
def clouds() -> Iterator[list[CloudProc]]:
    """Cloud processes a test starts (append them): killed by PID at teardown."""
    procs: list[CloudProc] = []
    yield procs
    for p in procs:
        with contextlib.suppress(Exception):
            p.kill()


@pytest.fixture
def make_agent() -> Iterator[Callable[..., Any]]:
    """Start in-process agents (no HTTP unless asked); all stopped at teardown."""
    with agent_factory(serve_http=False) as factory:
        yield factory


__all__ = ["INPUT", "IN_SHAPE", "MODEL_A", "MODEL_B", "OUTPUT", "Repo", "Samples"]
