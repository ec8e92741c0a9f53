"""ONNX Runtime on the device: the int8 heads, device tails and the int8 full model.

Loads the edge side of a verified bundle, one ``InferenceSession`` per head plus the full
int8 model, and the device tail of every cut that ships one (the rest of the model after
that cut: a request whose cloud attempt fails finishes from the tensors its head already
computed), with the configured intra-op threads. At start it measures each head on this
device (a short warm-up, then the median of a few timed runs) so the policy predicts
with real numbers from the first request; every later run updates the estimate.
No torch here: ONNX Runtime and numpy only.
"""

from __future__ import annotations

import logging
import statistics
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np
import onnxruntime as ort

from contract import dtypes
from contract.bundle import CLOUD_CUT, EDGE_CUT, Bundle, TensorSpec
from contract.errors import BundleError
from edge_agent.errors import BundleRefused, InvalidInput
from transport.errors import KeyFileError
from transport.keys import load_ed25519_public

__all__ = ["EdgeRuntime", "load_edge_bundle"]

log = logging.getLogger(__name__)

_TAIL = "tail:"  # model key prefix of a device tail (``tail:<cut>``)


def _tail_key(cut_id: str) -> str:
    return f"{_TAIL}{cut_id}"

def load_edge_bundle(path: Path, public_key: Path | None, allow_unsigned: bool) -> Bundle:
    """Load and verify the edge side of a bundle; refuse anything not signed as configured.

    Raises:
        BundleRefused: unsigned, tampered, wrongly signed, incomplete or malformed bundle;
            the message says which and what to do.
    """
    try:
        key = load_ed25519_public(public_key) if public_key is not None else None
        return Bundle.load(path, key, require_signature=not allow_unsigned, role="edge")
    except BundleError as e:
        raise BundleRefused(f"refusing bundle {path}: {e}") from e
    except (KeyFileError, OSError) as e:
        raise BundleRefused(f"cannot verify bundle {path}: {e}") from e


def _np_dtype(spec: TensorSpec) -> np.dtype:
    try:
        return dtypes.numpy_dtype(spec.dtype)
    except dtypes.UnknownDType:
        return np.dtype(spec.dtype)


class EdgeRuntime:
    """ORT sessions for every head of a bundle and its int8 full model.

    ``run_head`` and ``run_full`` are thread-safe (ORT sessions allow concurrent runs).

    Args:
        bundle: a verified bundle (``load_edge_bundle``).
        intra_op_threads / inter_op_threads: ORT threading per session.
        on_timing: called with ``(cut_id, ms_per_sample)`` after every run, so the
            policy keeps learning the device's speed.
        emulate_gmacs: emulate a device this many GMAC/s fast: a run lasts at least its
            manifest MACs at that rate (sleeping the rest). None = real speed.
    """

    def __init__(self, bundle: Bundle, *, intra_op_threads: int = 1, inter_op_threads: int = 1,
                 on_timing: Callable[[str, float], None] | None = None,
                 emulate_gmacs: float | None = None) -> None:
        self.bundle = bundle
        self.manifest = bundle.manifest
        self.on_timing = on_timing
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = intra_op_threads
        opts.inter_op_num_threads = inter_op_threads
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.log_severity_level = 3
        self._opts = opts
        self._sessions: dict[str, ort.InferenceSession] = {}
        self._outputs: dict[str, list[str]] = {}
        self._tails: dict[str, ort.InferenceSession] = {}
        self._count_lock = threading.Lock()
        full = self._session(bundle.file(self.manifest.full_int8))
        self._sessions[EDGE_CUT] = full
        self._outputs[EDGE_CUT] = [t.name for t in self.manifest.outputs]
        for cut in self.manifest.cuts:
            if cut.is_edge or cut.is_cloud or cut.head is None:
                continue
            self._sessions[cut.id] = (full if cut.head == self.manifest.full_int8
                                      else self._session(bundle.file(cut.head)))
            self._outputs[cut.id] = [t.name for t in cut.tensors]
            if cut.device_tail is not None:  # verified with the bundle, like the heads
                self._tails[cut.id] = self._session(bundle.file(cut.device_tail))
        self.head_ms: dict[str, float] = {}  # measured at start (emulation included)
        self.tail_ms: dict[str, float] = {}  # device tails, measured at start
        self.host_ms: dict[str, float] = {}  # the same, this host's real ORT time
        self._last_host_ms = 0.0
        self._min_s: dict[str, float] = {}
        if emulate_gmacs is not None:
            full_macs = max((c.head_flops for c in self.manifest.cuts if c.is_edge),
                            default=0) or max((c.head_flops + c.tail_flops
                                               for c in self.manifest.cuts), default=0)
            for cut in self.manifest.cuts:
                macs = full_macs if cut.is_edge else cut.head_flops
                self._min_s[cut.id] = macs / (emulate_gmacs * 1e9)
                self._min_s[_tail_key(cut.id)] = cut.tail_flops / (emulate_gmacs * 1e9)
            self._min_s[EDGE_CUT] = full_macs / (emulate_gmacs * 1e9)
        #: runs per model key (a cut id, ``edge`` or ``tail:<cut>``): what ran, for tests
        #: and ``/status`` (a fallback that reran the head would show here)
        self.runs: dict[str, int] = {}
        log.info("loaded %s v%s: %d heads, %d device tails + int8 full model, %d intra-op "
                 "threads", self.manifest.name, self.manifest.version,
                 len(self._sessions) - 1, len(self._tails), intra_op_threads)

    def _session(self, path: Path) -> ort.InferenceSession:
        try:
            return ort.InferenceSession(str(path), self._opts, providers=["CPUExecutionProvider"])
        except Exception as e:  # ORT raises its own Fail/InvalidGraph types
            raise BundleRefused(f"ONNX Runtime cannot load {path.name}: {e}; the bundle may "
                                "need a newer onnxruntime (re-partition with a lower opset)") \
                from e

    @property
    def cut_ids(self) -> list[str]:
        """Cuts this runtime can start: every head, ``cloud`` (no head) and ``edge``."""
        return [c.id for c in self.manifest.cuts if c.id in self._sessions or c.is_cloud]

    # ---- inputs ------------------------------------------------------------------

    def validate_inputs(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Check names, dtypes and per-sample shapes against the manifest; say expected vs
        actual. Returns C-contiguous arrays in manifest order.

        Raises:
            InvalidInput: missing/extra names, wrong dtype, shape or batch mismatch.
        """
        specs = {t.name: t for t in self.manifest.inputs}
        missing = sorted(set(specs) - set(inputs))
        extra = sorted(set(inputs) - set(specs))
        if missing or extra:
            raise InvalidInput(f"inputs: expected {sorted(specs)}, got {sorted(inputs)}"
                               f" (missing {missing}, unexpected {extra})")
        out: dict[str, np.ndarray] = {}
        batch = None
        for name, spec in specs.items():
            arr = np.asarray(inputs[name])
            want = _np_dtype(spec)
            if arr.dtype != want:
                raise InvalidInput(f"input {name!r}: expected dtype {want}, got {arr.dtype}")
            dynamic = set(spec.dynamic)  # e.g. a text model's sequence length
            if arr.ndim != len(spec.shape) or any(
                    g != w for i, (g, w) in enumerate(
                        zip(arr.shape[1:], spec.sample_shape, strict=True), start=1)
                    if i not in dynamic):
                raise InvalidInput(f"input {name!r}: expected shape [batch, "
                                   f"{', '.join(map(str, spec.sample_shape))}], got "
                                   f"{list(arr.shape)}")
            if spec.shape[0] != -1 and arr.shape[0] != spec.shape[0]:
                raise InvalidInput(f"input {name!r}: expected batch {spec.shape[0]}, got "
                                   f"{arr.shape[0]}")
            if arr.shape[0] < 1:
                raise InvalidInput(f"input {name!r}: empty batch")
            if batch is None:
                batch = arr.shape[0]
            elif arr.shape[0] != batch:
                raise InvalidInput(f"input {name!r}: batch {arr.shape[0]} differs from the "
                                   f"other inputs' batch {batch}")
            out[name] = np.ascontiguousarray(arr)
        return out

    def example_inputs(self, batch: int = 1, seed: int = 0) -> dict[str, np.ndarray]:
        """Random inputs of the model's shapes (measurement and self-tests)."""
        rng = np.random.default_rng(seed)
        out = {}
        for spec in self.manifest.inputs:
            shape = (batch, *spec.sample_shape)
            dt = _np_dtype(spec)
            if dt.kind == "f":
                out[spec.name] = rng.standard_normal(shape).astype(dt)
            else:
                out[spec.name] = np.zeros(shape, dtype=dt)
        return out

    # ---- execution ---------------------------------------------------------------

    def _run(self, cut_id: str, inputs: Mapping[str, np.ndarray],
             report: bool = True) -> tuple[dict, float]:
        if cut_id.startswith(_TAIL):
            sess = self._tails[cut_id.removeprefix(_TAIL)]
            names = [t.name for t in self.manifest.outputs]
        else:
            sess = self._sessions[cut_id]
            names = self._outputs[cut_id]
        batch = next(iter(inputs.values())).shape[0] if inputs else 1
        t0 = time.perf_counter()
        values = sess.run(names, dict(inputs))
        with self._count_lock:
            self.runs[cut_id] = self.runs.get(cut_id, 0) + 1
        self._last_host_ms = (time.perf_counter() - t0) * 1e3
        floor = self._min_s.get(cut_id, 0.0) * batch
        if floor:
            left = floor - (time.perf_counter() - t0)
            if left > 0:
                time.sleep(left)
        ms = (time.perf_counter() - t0) * 1e3
        if report and self.on_timing is not None:
            self.on_timing(cut_id, ms / max(batch, 1))
        return dict(zip(names, values, strict=True)), ms

    def run_head(self, cut_id: str, inputs: Mapping[str, np.ndarray]) \
            -> tuple[dict[str, np.ndarray], float]:
        """The tensors crossing ``cut_id`` (for ``cloud``: the inputs themselves).

        Returns:
            (crossing tensors by name, head milliseconds)
        """
        if cut_id == CLOUD_CUT:
            return dict(inputs), 0.0
        if cut_id == EDGE_CUT or cut_id not in self._sessions:
            raise KeyError(f"no head for cut {cut_id!r}; heads: {sorted(self._sessions)}")
        return self._run(cut_id, inputs)

    def run_full(self, inputs: Mapping[str, np.ndarray]) -> tuple[dict[str, np.ndarray], float]:
        """The whole model, int8, on the device: the ``edge`` path and the fallback."""
        return self._run(EDGE_CUT, inputs)

    def has_tail(self, cut_id: str) -> bool:
        """Whether ``cut_id`` ships a device tail (a fallback need not redo its head)."""
        return cut_id in self._tails

    def run_tail(self, cut_id: str, tensors: Mapping[str, np.ndarray]) \
            -> tuple[dict[str, np.ndarray], float]:
        """The rest of the model after ``cut_id``, int8, from its crossing tensors.

        Returns:
            (outputs by name, milliseconds)
        """
        if cut_id not in self._tails:
            raise KeyError(f"no device tail for cut {cut_id!r}; tails: {sorted(self._tails)}")
        return self._run(_tail_key(cut_id), tensors, report=False)

    def measure(self, warmup: int = 2, runs: int = 5) -> dict[str, float]:
        """Median batch-1 latency (ms) of every head and the full model on this device."""
        x = self.example_inputs(1)
        result: dict[str, float] = {CLOUD_CUT: 0.0} if any(
            c.is_cloud for c in self.manifest.cuts) else {}
        for cut_id in self._sessions:
            for _ in range(warmup):
                self._run(cut_id, x, report=False)
            times, host = [], []
            for _ in range(runs):
                times.append(self._run(cut_id, x)[1])
                host.append(self._last_host_ms)
            result[cut_id] = statistics.median(times)
            self.host_ms[cut_id] = statistics.median(host)
            if cut_id in self._tails:
                acts = self._run(cut_id, x, report=False)[0]
                self.tail_ms[cut_id] = statistics.median(
                    self._run(_tail_key(cut_id), acts, report=False)[1] for _ in range(runs))
        self.head_ms = result
        with self._count_lock:
            self.runs.clear()  # from here on: what requests ran
        log.info("head latency on this device (ms, batch 1): %s",
                 ", ".join(f"{k}={v:.2f}" for k, v in result.items()))
        return result
