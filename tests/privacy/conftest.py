"""Privacy fixtures: audit data files and audits computed once per module that needs them.

Bundles come from the shared session ``bundle_factory`` (signed zoo bundles); anything an
audit publishes goes to this folder's own repository so other areas never see it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest


@pytest.fixture(scope="session")
def privacy_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("privacy")


@pytest.fixture(scope="session")
def digits_npz(privacy_root: Path) -> Path:
    """All 1797 scikit-learn digits as (N, 1, 8, 8), named like digits_cnn's input."""
    from partitioner.privacy.data import digits_images

    path = privacy_root / "digits.npz"
    np.savez(path, image=digits_images((1, 8, 8)))
    return path


def head_program(path: Path):
    """The white-box attack's differentiable head: the cloud backend's interpreter."""
    import torch

    from cloud_core.backends.onnx_to_torch import OnnxTorchProgram

    return OnnxTorchProgram(path, torch.device("cpu"))
