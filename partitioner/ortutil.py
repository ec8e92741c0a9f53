"""ONNX Runtime helpers shared by analysis, verification, quantization and the bench.

Sessions are pinned to one intra-op thread by default: the partitioner runs beside other
work on small machines, and one thread makes latency figures comparable between runs. A
run that has the machine's cores to itself (the cuts done one after another in one
process) raises that default for the sessions it opens with :func:`threads`; latency is
still timed on the one thread it asks for explicitly.

Sessions here run a model a few times and are dropped, so they do without ONNX Runtime's
CPU memory arena: the arena keeps the largest batch's activations (rounded up to a power
of two) until the session dies, which set the run's peak, and the freed memory is given
back to the system at once (:func:`release`).
"""

from __future__ import annotations

import contextvars
import ctypes
import ctypes.util
import gc
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import helper

__all__ = ["CHUNK", "InputSpec", "batch_independent", "chunk_for", "input_specs",
           "random_feeds", "release", "run_chunked", "session", "threads"]

CHUNK = 16  # samples per run when a whole held-back or calibration set goes through a model

_THREADS: contextvars.ContextVar[int] = contextvars.ContextVar("tiersplit_ort_threads",
                                                               default=1)


@contextmanager
def threads(n: int) -> Iterator[None]:
    """Sessions opened in this context without an explicit thread count use ``n``
    intra-op threads."""
    token = _THREADS.set(max(1, int(n)))
    try:
        yield
    finally:
        _THREADS.reset(token)


def _libc():
    name = ctypes.util.find_library("c")
    try:
        lib = ctypes.CDLL(name) if name else None
    except OSError:
        return None
    return lib if lib is not None and hasattr(lib, "malloc_trim") else None


_LIBC = _libc()


def release() -> None:
    """Collect garbage and hand freed heap memory back to the system (glibc
    ``malloc_trim``): a large model's freed sessions and protobufs otherwise stay in the
    process's resident memory and add to the next stage's peak."""
    gc.collect()
    if _LIBC is not None:
        _LIBC.malloc_trim(0)


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


def session(model: onnx.ModelProto | Path | str, *, threads: int | None = None,
            optimize: bool = True):
    """A CPU ``InferenceSession`` without a memory arena (``threads`` intra-op threads;
    default: the context's, see :func:`threads`, else 1)."""
    import onnxruntime as ort

    n = _THREADS.get() if threads is None else threads
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = n
    opts.enable_cpu_mem_arena = False
    if n > 1:
        # Idle intra-op threads spin by default: on a machine shared with other work that
        # burns the CPU the other threads (and processes) need.
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    opts.graph_optimization_level = (ort.GraphOptimizationLevel.ORT_ENABLE_ALL if optimize
                                     else ort.GraphOptimizationLevel.ORT_DISABLE_ALL)
    src = model.SerializeToString() if isinstance(model, onnx.ModelProto) else str(model)
    return ort.InferenceSession(src, sess_options=opts, providers=["CPUExecutionProvider"])


def batch_independent(model: onnx.ModelProto) -> bool:
    """Whether each sample's outputs are the same whatever else is in its batch: not so
    for dynamic int8, whose activation scales are computed over the whole batch."""
    return not any(n.op_type.startswith("DynamicQuantize") for n in model.graph.node)


def chunk_for(*models: onnx.ModelProto) -> int | None:
    """The chunk :func:`run_chunked` may use for data going through ``models`` (None:
    the whole set at once, as the figures were always computed for dynamic int8)."""
    return CHUNK if all(batch_independent(m) for m in models) else None


def run_chunked(sess, names: Sequence[str] | None, feeds: dict[str, np.ndarray],
                chunk: int | None = CHUNK) -> list[np.ndarray]:
    """``sess.run(names, feeds)`` over ``chunk`` samples at a time, outputs joined along
    the batch: a large model's activations for a whole data set would set the run's
    peak. Runs the set at once when ``chunk`` is None (see :func:`chunk_for`) or an
    output is not batch-first (its leading dimension is not the chunk's sample count)."""
    n = len(next(iter(feeds.values()))) if feeds else 0
    if chunk is None or n <= chunk or any(len(v) != n for v in feeds.values()):
        return sess.run(names, feeds)
    parts: list[list[np.ndarray]] = []
    for lo in range(0, n, chunk):
        part = {k: v[lo:lo + chunk] for k, v in feeds.items()}
        outs = sess.run(names, part)
        if any(np.ndim(o) == 0 or len(o) != len(next(iter(part.values()))) for o in outs):
            del parts, outs
            return sess.run(names, feeds)
        parts.append(outs)
    return [np.concatenate([p[j] for p in parts]) for j in range(len(parts[0]))]
