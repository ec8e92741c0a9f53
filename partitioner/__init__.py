"""partitioner: model -> graph -> candidate cuts -> int8 heads / fp32 tails -> signed bundle.

The package root imports nothing heavy: the edge agent imports ``partitioner.bundle`` and
``partitioner.placement`` (no torch, no onnx). ``partition`` and the analysis modules
are loaded on first use.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = ["bundle", "errors", "graph", "partition", "quantize", "split", "verify_bundle", "zoo"]

_LAZY_MODULES = {"bundle", "errors", "graph", "quantize", "split", "zoo", "check"}


def __getattr__(name: str) -> Any:
    if name == "partition":
        from partitioner._pipeline import partition

        return partition
    if name == "verify_bundle":
        from partitioner.check import verify_bundle

        return verify_bundle
    if name in _LAZY_MODULES:
        return importlib.import_module(f"partitioner.{name}")
    raise AttributeError(f"module 'partitioner' has no attribute {name!r}")
