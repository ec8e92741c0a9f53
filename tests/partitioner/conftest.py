"""Partitioner fixtures: bundles built once per session, beyond the shared zoo ones."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.partitioner.user_models import INPUT_SHAPES

USER_MODEL = "tests.partitioner.user_models:make"


@pytest.fixture(scope="session")
def part_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("partition-repo")


def user_extra_cuts() -> list[list[str]]:
    """Two cuts the ranking would not keep: before the concat (both branches cross) and
    right after the features output (a model output crosses and passes through)."""
    from partitioner import load
    from partitioner.graph import analyze

    info = analyze(load.load(USER_MODEL, INPUT_SHAPES).model)
    cat = next(n for n in info.nodes if n.op_type == "Concat")
    return [list(cat.inputs), ["output1"]]


@pytest.fixture(scope="session")
def user_bundle(part_root: Path) -> Path:
    """The two-input user callable, 5 ranked cuts plus :func:`user_extra_cuts`, unsigned."""
    from partitioner import partition

    return partition(USER_MODEL, INPUT_SHAPES, part_root, name="user", max_cuts=5,
                     extra_cuts=user_extra_cuts(), progress=False)
