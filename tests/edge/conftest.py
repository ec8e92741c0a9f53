"""Fixtures of the edge agent tests: a real signed bundle, configs, agents."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.agents import agent_factory
from tiersplit.devtools.bundles import BuiltBundle, build_edge_cnn, build_signed, text


@pytest.fixture(scope="session")
def edge_bundle(tmp_path_factory: pytest.TempPathFactory) -> BuiltBundle:
    """The small int8 CNN bundle (built once per session, signed with a fresh key)."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # ORT's calibration chatter, while building only
    try:
        base = tmp_path_factory.mktemp("edge-bundle")
        keys = base / "keys"
        keys.mkdir()
        return build_edge_cnn(base / "repo", keys)
    finally:
        root.setLevel(level)


@pytest.fixture(scope="session")
def text_bundle(tmp_path_factory: pytest.TempPathFactory) -> BuiltBundle:
    """A tiny text classifier taking int64 ``input_ids`` and ``attention_mask``."""
    base = tmp_path_factory.mktemp("text-bundle")
    return build_signed(base / "repo", base / "keys", "text", "1", text(seed=2))


def base_config(bundle: BuiltBundle, **overrides: Any) -> dict[str, Any]:
    """A minimal valid config mapping; ``overrides`` replace top-level sections."""
    cfg: dict[str, Any] = {
        "agent_id": "edge-test",
        "bundle": {"path": str(bundle.path), "public_key": str(bundle.public_key)},
        "api": {"port": 0},
        "runtime": {"warmup_runs": 1, "measure_runs": 2, "workers": 2},
        "policy": {"probe_interval_s": 0.5, "seed": 1},
    }
    cfg.update(overrides)
    return cfg


@pytest.fixture
def make_agent() -> Iterator[Callable[..., Any]]:
    """Start agents from config mappings; every one is stopped at teardown."""
    with agent_factory(serve_http=True) as factory:
        yield factory


@pytest.fixture
def bundle_dir(edge_bundle: BuiltBundle) -> Path:
    return edge_bundle.path
