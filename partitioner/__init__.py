"""partitioner: model -> graph -> candidate cuts -> int8 heads / fp32 tails -> signed bundle.

Offline tooling: it may import torch and onnx, and neither service imports it. The
package root imports nothing heavy; ``partition`` and the analysis modules are loaded on
first use, so ``tiersplit --help`` stays fast.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = ["errors", "graph", "partition", "quantize", "split", "verify_bundle", "zoo"]

_LAZY_MODULES = {"errors", "graph", "quantize", "split", "zoo", "check"}


def __getattr__(name: str) -> Any:
    if name == "partition":
        from partitioner.pipeline import partition

        return partition
    if name == "verify_bundle":
        from partitioner.check import verify_bundle

        return verify_bundle
    if name in _LAZY_MODULES:
        return importlib.import_module(f"partitioner.{name}")
    raise AttributeError(f"module 'partitioner' has no attribute {name!r}")
