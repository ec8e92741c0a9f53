"""Peak-memory estimate of a partition run, checked against ``--max-memory`` up front.

The run holds the source model, one ONNX Runtime session of it, and for the cut being
worked on a head, a tail and their int8 candidates; activations scale with the
evaluation batch. Calibration and the sensitivity probe of the precision search keep
every activation tensor of a sample alive at once (measured: ResNet-50's calibration at
16 samples per batch peaked at 4.5 GiB), so they get their own, smaller batch that keeps
all activations of a batch within :data:`WORK_BYTES`. Cuts are done one after another and
released, so the estimate grows with the model (its weights and per-sample activations)
and not with the number of cuts:

    peak ~ base + WEIGHT_FACTOR x weight bytes
           + max(ACTIVATION_FACTOR x live activation bytes per sample x batch,
                 WORK_FACTOR x all activation bytes per sample x work batch)

The factors were measured on the zoo's real-size models (ResNet-50, MobileNetV2, the
BERT-base-like encoder) with the per-stage RSS meter; ``base`` is the interpreter with
torch, onnx and ONNX Runtime imported. The weight factor covers the analysed model, one
session of it and a quantizer's working copies; it fell from 10 to 6.5 once one-shot
sessions dropped ONNX Runtime's memory arena and freed memory went back to the system
after every cut (ResNet-50, 4 cuts, one process: 1.34 GiB measured, 1.45 GiB estimated).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

import onnx

from partitioner.errors import MemoryBudgetError
from partitioner.stages import fmt_bytes

__all__ = ["Estimate", "activation_bytes", "all_activation_bytes", "available_bytes", "check",
           "cores", "estimate",
           "parent_bytes", "parse_size", "weight_bytes", "work_batch", "workers"]

BASE_BYTES = 450 * 2**20
WEIGHT_FACTOR = 6.5
ACTIVATION_FACTOR = 3.0
WORK_FACTOR = 2.0
PARENT_WEIGHT_FACTOR = 4.0  # the run's own process while workers do the cuts
# Below this many weight bytes a model's cuts take about as long as starting a worker
# process (seconds): without an explicit --jobs they run one after another.
PARALLEL_MIN_WEIGHTS = 4 * 2**20
WORK_BYTES = 256 * 2**20  # all activations of one calibration/probe batch, by default
_UNITS = {"": 1, "b": 1, "k": 2**10, "kb": 10**3, "kib": 2**10, "m": 2**20, "mb": 10**6,
          "mib": 2**20, "g": 2**30, "gb": 10**9, "gib": 2**30, "t": 2**40, "tb": 10**12,
          "tib": 2**40}
_SIZE = re.compile(r"^\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*$")


def parse_size(text: str) -> int:
    """``1.5G`` / ``800M`` / ``2GiB`` / ``123456`` -> bytes (K/M/G are binary units).

    Raises:
        ValueError: not a size.
    """
    m = _SIZE.match(text or "")
    unit = m.group(2).lower() if m else ""
    if m is None or unit not in _UNITS or float(m.group(1)) <= 0:
        raise ValueError(f"{text!r} is not a memory size like 1.5G, 800M or 2GiB")
    return int(float(m.group(1)) * _UNITS[unit])


def weight_bytes(model: onnx.ModelProto) -> int:
    """Bytes of the model's initializers (raw data or typed fields)."""
    total = 0
    for w in model.graph.initializer:
        if w.raw_data:
            total += len(w.raw_data)
        else:
            n = 1
            for d in w.dims:
                n *= d
            total += n * onnx.helper.tensor_dtype_to_np_dtype(w.data_type).itemsize
    return total


def activation_bytes(info) -> int:
    """Largest set of activations alive at once for one sample (bytes), from the
    analysed graph's crossing sets: what any session needs at least per sample."""
    return max((info.bytes_of(live) for live in info.live), default=0)


def all_activation_bytes(info) -> int:
    """Bytes of every activation tensor of one sample (what calibration holds)."""
    return sum(t.bytes for t in info.tensors.values() if t.dtype.startswith("float"))


def work_batch(all_activations: int, most: int, allowance: int = WORK_BYTES) -> int:
    """Samples per calibration/probe batch whose activations fit ``allowance``."""
    return max(1, min(most, allowance // max(all_activations, 1)))


@dataclass(frozen=True, slots=True)
class Estimate:
    """An estimated peak RSS and what it is made of."""

    total: int
    weights: int
    activations: int
    batch: int
    all_activations: int = 0
    work: int = 0

    def describe(self) -> str:
        return (f"~{fmt_bytes(self.total)} (weights {fmt_bytes(self.weights)} x "
                f"{WEIGHT_FACTOR:g}, activations {fmt_bytes(self.activations)}/sample x "
                f"{self.batch} x {ACTIVATION_FACTOR:g} or all {fmt_bytes(self.all_activations)}"
                f"/sample x {self.work} x {WORK_FACTOR:g}, runtime {fmt_bytes(BASE_BYTES)})")


def estimate(weights: int, activations: int, batch: int, all_activations: int = 0,
             work: int = 1) -> Estimate:
    """Peak RSS of a run over a model with these weight and per-sample activation bytes
    (live at once / all), ``batch`` samples per evaluation batch and ``work`` per
    calibration or probe batch."""
    acts = max(ACTIVATION_FACTOR * activations * batch, WORK_FACTOR * all_activations * work)
    total = int(BASE_BYTES + WEIGHT_FACTOR * weights + acts)
    return Estimate(total, weights, activations, batch, all_activations, work)


def check(est: Estimate, budget: int | None, what: str) -> None:
    """Refuse a run whose estimate does not fit ``budget`` (None: no budget).

    Raises:
        MemoryBudgetError: one line with the estimate and the budget.
    """
    if budget is not None and est.total > budget:
        raise MemoryBudgetError(
            f"partitioning {what} needs {est.describe()}, more than --max-memory "
            f"{fmt_bytes(budget)}; nothing was written — raise --max-memory or use a "
            "machine with more memory")


def parent_bytes(est: Estimate) -> int:
    """What the partitioning process itself holds while worker processes do the cuts:
    the runtime, the analysed model and the reference outputs (no sessions)."""
    return int(BASE_BYTES + PARENT_WEIGHT_FACTOR * est.weights)


def available_bytes() -> int:
    """Memory the system can give without swapping (psutil), 0 when unknown."""
    try:
        import psutil

        return int(psutil.virtual_memory().available)
    except Exception:  # no psutil or no /proc: no parallelism beyond the budget
        return 0


def cores() -> int:
    """CPU cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def workers(est: Estimate, cuts: int, budget: int | None, requested: int | None = None,
            *, room: int | None = None, ncores: int | None = None) -> int:
    """Worker processes for the interior cuts: ``requested`` (default: one per core for a
    model of at least :data:`PARALLEL_MIN_WEIGHTS`, else 1), at most one per cut, and
    only as many as fit in ``budget`` (default: the memory the system has available)
    next to the parent, each estimated as a whole run (``est``). 1 means the cuts run one
    after another in the partitioning process itself."""
    if requested is None and est.weights < PARALLEL_MIN_WEIGHTS:
        return 1
    want = min(requested if requested is not None else (ncores or cores()), cuts)
    if want <= 1:
        return 1
    space = budget if budget is not None else (room if room is not None else available_bytes())
    fit = max(0, space - parent_bytes(est)) // max(est.total, 1)
    return max(1, min(want, fit)) if fit >= 2 else 1
