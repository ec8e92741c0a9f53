"""ONNX Runtime static int8 quantization (QDQ, per-channel weights) of heads and the full model.

QDQ keeps the model's float interface: an int8 head takes and produces float32 tensors
with the same names as the fp32 head, so the edge runtime and the wire format need not
know whether a head is quantized. ONNX Runtime fuses the Q/DQ pairs into integer kernels
(QLinearConv, MatMulInteger...) when it optimizes the session.
"""

from __future__ import annotations

import logging
import tempfile
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

from contract.arrays import read_npz_inputs
from partitioner import cache as _cache
from partitioner import stages
from partitioner.errors import QuantizationError

log = logging.getLogger(__name__)

__all__ = ["CalibrationSet", "LazyCalibration", "LazyFeeds", "QuantConfig", "quantize",
           "quantized_op_count"]


class _DemoteRootRecords(logging.Filter):
    """onnxruntime.quantization logs advice through the root logger ("consider
    pre-processing", bias/axis notes on LayerNorm); keep it at debug level under our name."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name == "root" and record.levelno < logging.ERROR:
            log.debug("onnxruntime.quantization: %s", record.getMessage())
            return False
        return True


@dataclass(frozen=True, slots=True)
class QuantConfig:
    """Settings passed to ``onnxruntime.quantization.quantize_static``.

    Attributes:
        activation_type / weight_type: "QInt8" or "QUInt8".
        per_channel: per-output-channel weight scales (keeps depthwise convs accurate).
        reduce_range: 7-bit weights, for CPUs without VNNI where U8S8 can saturate.
        calibrate_method: "MinMax", "Entropy" or "Percentile".
        batch: samples per calibration step.
    """

    # U8S8 (unsigned activations, signed weights): on x86 ONNX Runtime fuses every QDQ
    # Conv into QLinearConv with VNNI/AVX2 u8*s8 kernels; with S8S8 some convs fall back
    # to DequantizeLinear -> fp32 Conv -> QuantizeLinear and the int8 head is slower than
    # fp32 (measured: resnet_like full model 1.12x fp32 with S8S8, 0.41x with U8S8).
    activation_type: str = "QUInt8"
    weight_type: str = "QInt8"
    per_channel: bool = True
    reduce_range: bool = False
    calibrate_method: str = "MinMax"
    batch: int = 16


class CalibrationSet:
    """Calibration inputs: a dict of arrays keyed by model input name (batch first)."""

    def __init__(self, arrays: Mapping[str, np.ndarray]) -> None:
        if not arrays:
            raise QuantizationError("calibration data is empty")
        lengths = {len(v) for v in arrays.values()}
        if len(lengths) != 1:
            raise QuantizationError(f"calibration arrays differ in sample count: {lengths}")
        self.arrays = {k: np.ascontiguousarray(v) for k, v in arrays.items()}
        self.samples = lengths.pop()
        # Shared activation ranges (ONNX Runtime's calibration cache, JSON): computed by
        # the first static quantization (the full model's) and reused by every head,
        # whose tensors are the full model's tensors under the same names.
        self.ranges: Path | None = None
        self._ranges_model: onnx.ModelProto | None = None
        self._digest: str | None = None

    def share_ranges(self, path: Path, model: onnx.ModelProto) -> None:
        """Calibrate ``model`` (the full model) once into ``path`` and quantize every
        other model from those ranges. Only ``model`` may write the file: ranges computed
        on a head would lack the tensors of deeper heads."""
        self.ranges, self._ranges_model = path, model

    def _ranges_for(self, model: onnx.ModelProto) -> Path | None:
        if self.ranges is None:
            return None
        if self.ranges.is_file() or model is self._ranges_model:
            return self.ranges
        return None

    @property
    def digest(self) -> str:
        """sha256 of the calibration arrays (part of every cache key built on them)."""
        if self._digest is None:
            self._digest = _cache.digest_arrays(self.arrays)
        return self._digest

    @classmethod
    def from_npz(cls, path: Path, input_names: Sequence[str],
                 sample_shapes: Mapping[str, tuple[int, ...]] | None = None) -> CalibrationSet:
        """Load an ``.npz``: arrays named like the model inputs, or ``arr_0..`` in input order.

        Raises:
            QuantizationError: unreadable file, missing input, or wrong per-sample shape.
        """
        try:
            arrays = read_npz_inputs(path, input_names, "calibration data")
        except ValueError as e:
            raise QuantizationError(str(e)) from e
        for name in input_names:
            want = (sample_shapes or {}).get(name)
            if want is not None and tuple(arrays[name].shape[1:]) != tuple(want):
                raise QuantizationError(
                    f"calibration array for {name!r} has samples of shape "
                    f"{tuple(arrays[name].shape[1:])}, the model takes {tuple(want)}")
        return cls(arrays)

    def reader(self, input_names: Sequence[str], batch: int):
        """A fresh ``CalibrationDataReader`` over the inputs a (sub)model reads."""
        from onnxruntime.quantization import CalibrationDataReader

        arrays = self.arrays
        samples = self.samples

        class _Reader(CalibrationDataReader):
            def __init__(self) -> None:
                self._it = self._batches()

            def _batches(self) -> Iterator[dict[str, np.ndarray]]:
                for i in range(0, samples, batch):
                    yield {n: arrays[n][i:i + batch] for n in input_names}

            def get_next(self) -> dict[str, np.ndarray] | None:
                return next(self._it, None)

            def rewind(self) -> None:
                self._it = self._batches()

        return _Reader()


class LazyFeeds(Mapping[str, np.ndarray]):
    """Inputs that are computed on first use and known by ``key`` until then: a re-run
    whose every lookup hits the cache (keyed by ``key``) never computes them."""

    def __init__(self, make: Callable[[], Mapping[str, np.ndarray]], key: str,
                 size: int) -> None:
        self._make: Callable[[], Mapping[str, np.ndarray]] | None = make
        self._data: dict[str, np.ndarray] | None = None
        self.key, self.size = key, size

    def _arrays(self) -> dict[str, np.ndarray]:
        if self._data is None:
            assert self._make is not None
            self._data = {k: np.ascontiguousarray(v) for k, v in self._make().items()}
            self._make = None
        return self._data

    def __getitem__(self, name: str) -> np.ndarray:
        return self._arrays()[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._arrays())

    def __len__(self) -> int:
        return len(self._arrays())


class LazyCalibration(CalibrationSet):
    """A calibration set computed on first use (:class:`LazyFeeds`); its digest is the
    feeds' key, so cache lookups never compute it."""

    def __init__(self, feeds: LazyFeeds) -> None:
        self._feeds = feeds
        self.ranges = None
        self._ranges_model = None
        self._digest = feeds.key

    @property  # type: ignore[override]
    def arrays(self) -> dict[str, np.ndarray]:
        return dict(self._feeds)

    @property  # type: ignore[override]
    def samples(self) -> int:
        return self._feeds.size


def quantized_op_count(model: onnx.ModelProto) -> int:
    """QuantizeLinear nodes acting on activations (weights are stored pre-quantized)."""
    return sum(1 for n in model.graph.node if n.op_type == "QuantizeLinear")


def quantize(model: onnx.ModelProto, calib: CalibrationSet, config: QuantConfig = QuantConfig(),
             *, what: str = "model", require_quantized: bool = True,
             nodes_to_exclude: Sequence[str] = ()) -> onnx.ModelProto:
    """Static int8 QDQ quantization of ``model`` calibrated on ``calib``.

    Args:
        what: for messages ("head k3", "full model").
        nodes_to_exclude: node names left in float (the accuracy fallback).
        require_quantized: raise if no op could be quantized (an "int8" file that is
            really fp32 would mislead the edge's latency and memory budget).

    Raises:
        QuantizationError: ONNX Runtime failed, or nothing in the model is quantizable.
    """
    from onnxruntime.quantization import CalibrationMethod, QuantType

    names = [i.name for i in model.graph.input
             if i.name not in {w.name for w in model.graph.initializer}]
    try:
        act, wt = QuantType[config.activation_type], QuantType[config.weight_type]
        method = CalibrationMethod[config.calibrate_method]
    except KeyError as e:
        raise QuantizationError(f"unknown quantization setting {e}; types are QInt8/QUInt8, "
                                "methods MinMax/Entropy/Percentile") from e

    def computed() -> onnx.ModelProto:
        missing = [n for n in names if n not in calib.arrays]
        if missing:
            raise QuantizationError(f"calibration data lacks input(s) {missing} of the {what}")
        ranges = calib._ranges_for(model)
        try:
            return _quantize_static(model, calib, config, names, act, wt, method,
                                    nodes_to_exclude, ranges, what)
        except QuantizationError:
            if ranges is None or not ranges.is_file():
                raise
            # The shared ranges lack something this model needs: calibrate it on its own.
            log.debug("%s: shared calibration ranges do not fit; calibrating it alone", what)
            return _quantize_static(model, calib, config, names, act, wt, method,
                                    nodes_to_exclude, None, what)

    # The key is taken before the data is touched: a lazy calibration set stays unmade
    # on a hit.
    out = _cache.memoized_model(
        "quantize",
        lambda: _cache.key_of(_cache.digest_model(model), repr(config),
                              sorted(nodes_to_exclude), calib.digest, "static-qdq"),
        computed)
    return _checked_quantized(out, model, what, require_quantized)


def _quantize_static(model: onnx.ModelProto, calib: CalibrationSet, config: QuantConfig,
                     names: Sequence[str], act, wt, method, nodes_to_exclude: Sequence[str],
                     ranges: Path | None, what: str) -> onnx.ModelProto:
    from onnxruntime.quantization import QuantFormat, quantize_static

    meter = stages.current()
    calibrates = ranges is None or not ranges.is_file()
    with tempfile.TemporaryDirectory(prefix="tiersplit-quant-") as tmp, \
            meter.stage("calibrate" if calibrates else "quantize"):
        if calibrates:
            # The model's activations are calibrated once for every head; a device tail
            # is calibrated on its own head's int8 outputs (another distribution).
            meter.count("device-tail calibrations" if what.startswith("device tail")
                        else "calibrations")
        src, dst = Path(tmp) / "in.onnx", Path(tmp) / "out.onnx"
        onnx.save(model, str(src))
        demote = _DemoteRootRecords()
        logging.getLogger().addFilter(demote)
        try:
            with warnings.catch_warnings():
                # all-zero ranges (a mask's padding, a dead channel) divide by a zero scale
                # inside ORT's calibrator; it recovers, the warning only alarms.
                warnings.simplefilter("ignore", RuntimeWarning)
                quantize_static(
                    str(src), str(dst), calib.reader(names, config.batch),
                    quant_format=QuantFormat.QDQ, per_channel=config.per_channel,
                    reduce_range=config.reduce_range, activation_type=act, weight_type=wt,
                    calibrate_method=method, nodes_to_exclude=list(nodes_to_exclude),
                    extra_options={"CalibTensorRangeSymmetric": False},
                    calibration_cache_path=ranges,
                )
            return onnx.load(str(dst))
        except Exception as e:
            first = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
            raise QuantizationError(
                f"ONNX Runtime int8 quantization of the {what} failed: {type(e).__name__}: "
                f"{first} — try another cut, QUInt8 activations, or quantize this model "
                "yourself") from e
        finally:
            logging.getLogger().removeFilter(demote)


def _checked_quantized(out: onnx.ModelProto, model: onnx.ModelProto, what: str,
                       require_quantized: bool) -> onnx.ModelProto:
    if require_quantized and quantized_op_count(out) == 0:
        ops = sorted({n.op_type for n in model.graph.node})
        raise QuantizationError(
            f"nothing in the {what} can be quantized to int8 by ONNX Runtime (ops: "
            f"{', '.join(ops[:12])}); int8 needs ops like Conv, MatMul, Gemm — partition a "
            "model that has them")
    return out
