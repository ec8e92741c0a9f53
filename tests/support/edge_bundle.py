"""The edge CNN bundle under the names the reliability suite imports.

The builder itself is :mod:`tiersplit.devtools.bundles` (the one hand-built bundle
builder); this module only keeps ``IN_SHAPE``/``INPUT``/``OUTPUT``, ``build_bundle`` and
``reference`` importable from here.
"""

from __future__ import annotations

import numpy as np

from tiersplit.devtools.bundles import EDGE_CNN_INPUT as INPUT
from tiersplit.devtools.bundles import EDGE_CNN_OUTPUT as OUTPUT
from tiersplit.devtools.bundles import EDGE_CNN_SHAPE as IN_SHAPE
from tiersplit.devtools.bundles import BuiltBundle
from tiersplit.devtools.bundles import build_edge_cnn as build_bundle
from tiersplit.devtools.bundles import full_reference as reference

__all__ = ["INPUT", "IN_SHAPE", "OUTPUT", "BuiltBundle", "assert_int8_close", "build_bundle",
           "reference", "sample_inputs"]


def sample_inputs(batch: int = 2, seed: int = 0) -> np.ndarray:
    """A batch of the edge CNN's inputs (standard normal, seeded)."""
    return np.random.default_rng(seed).standard_normal((batch, *IN_SHAPE)).astype(np.float32)


def assert_int8_close(a: np.ndarray, ref: np.ndarray) -> None:
    """int8 tolerance: cosine >= 0.99 and max error within 10% of the output range."""
    cos = float((a * ref).sum() / (np.linalg.norm(a) * np.linalg.norm(ref)))
    assert cos >= 0.99, cos
    assert np.abs(a - ref).max() <= 0.1 * np.abs(ref).max()
