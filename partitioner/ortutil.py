"""ONNX Runtime helpers shared by analysis, verification, quantization and the bench.

Sessions are pinned to one intra-op thread by default: the partitioner runs beside other
work on small machines, and one thread makes latency figures comparable between runs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import helper

__all__ = ["InputSpec", "input_specs", "random_feeds", "session"]


@dataclass(frozen=True, slots=True)
class InputSpec:
    """A model input: name, numpy dtype name and shape (``None`` for a symbolic dim)."""

    name: str
    dtype: str
    shape: tuple[int | None, ...]

    def concrete(self, batch: int) -> tuple[int, ...]:
        """Shape at ``batch`` (unknown non-batch dims become 1)."""
        dims = [batch] + [d if d is not None else 1 for d in self.shape[1:]]
        return tuple(dims[: max(len(self.shape), 1)]) if self.shape else ()


def input_specs(model: onnx.ModelProto) -> list[InputSpec]:
    """The model's real inputs (initializers listed as inputs are skipped)."""
    weights = {i.name for i in model.graph.initializer}
    specs = []
    for vi in model.graph.input:
        if vi.name in weights:
            continue
        tt = vi.type.tensor_type
        dtype = np.dtype(helper.tensor_dtype_to_np_dtype(tt.elem_type)).name
        shape = tuple(d.dim_value if d.HasField("dim_value") else None for d in tt.shape.dim)
        specs.append(InputSpec(vi.name, dtype, shape))
    return specs


def random_feeds(specs: Sequence[InputSpec], batch: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Random inputs: standard normal floats, small non-negative integers (safe indices)."""
    rng = np.random.default_rng(seed)
    feeds = {}
    for s in specs:
        shape = s.concrete(batch)
        if s.dtype.startswith("float"):
            feeds[s.name] = rng.standard_normal(shape).astype(s.dtype)
        elif s.dtype == "bool":
            feeds[s.name] = rng.integers(0, 2, shape).astype(bool)
        else:
            feeds[s.name] = rng.integers(0, 4, shape).astype(s.dtype)
    return feeds


def session(model: onnx.ModelProto | Path | str, *, threads: int = 1, optimize: bool = True):
    """A CPU ``InferenceSession`` (1 intra-op thread by default)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    if threads > 1:
        # Idle intra-op threads spin by default: on a machine shared with other work that
        # burns the CPU the other threads (and processes) need.
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    opts.graph_optimization_level = (ort.GraphOptimizationLevel.ORT_ENABLE_ALL if optimize
                                     else ort.GraphOptimizationLevel.ORT_DISABLE_ALL)
    src = model.SerializeToString() if isinstance(model, onnx.ModelProto) else str(model)
    return ort.InferenceSession(src, sess_options=opts, providers=["CPUExecutionProvider"])
