"""Calibration and held-back evaluation data for one partition run.

Accuracy figures are measured on samples the quantizer never saw: the user's evaluation
data when given, else a held-back part of the user's calibration data, else a fresh
draw (another seed) of the model's example inputs. Every array is checked against the
model's declared inputs before any work starts, so bad data costs one clear line.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from contract.arrays import read_npz_inputs
from partitioner.errors import AccuracyError, InputError, UnknownModel
from partitioner.inputs import InputDecl, check_feeds
from partitioner.load import Loaded
from partitioner.quantize import CalibrationSet

log = logging.getLogger(__name__)

__all__ = ["CALIBRATION_SAMPLES", "EVAL_SAMPLES", "Data", "decls_from", "load_metric",
           "prepare"]

CALIBRATION_SAMPLES = 64
EVAL_SAMPLES = 64
_MIN_SPLIT = 8  # given calibration data this large gives up a quarter for evaluation


@dataclass(frozen=True)
class Data:
    calib: CalibrationSet
    calib_source: str
    eval: dict[str, np.ndarray]
    eval_source: str

    @property
    def eval_samples(self) -> int:
        return len(next(iter(self.eval.values())))


def _read(data: Any, names: list[str], what: str) -> tuple[dict[str, np.ndarray], str]:
    if isinstance(data, CalibrationSet):
        return dict(data.arrays), "given"
    if isinstance(data, Mapping):
        return {k: np.asarray(v) for k, v in data.items()}, "given"
    path = Path(data)
    try:
        return read_npz_inputs(path, names, what), path.name
    except ValueError as e:
        raise InputError(str(e)) from e


def _checked(loaded: Loaded, data: Any, what: str) -> tuple[dict[str, np.ndarray], str]:
    names = [d.name or "" for d in loaded.inputs]
    arrays, source = _read(data, names, what)
    arrays = {k: v for k, v in arrays.items() if k in names} or arrays
    lengths = {len(v) for v in arrays.values()}
    if len(lengths) > 1:
        raise InputError(f"{what} arrays differ in sample count: {sorted(lengths)}")
    if lengths == {0}:
        raise InputError(f"{what} is empty")
    return check_feeds(loaded.inputs, arrays, what), source


def prepare(loaded: Loaded, calib_data: Any = None, eval_data: Any = None) -> Data:
    """Calibration set and held-back evaluation inputs.

    Raises:
        InputError: unreadable data, a missing input, wrong dtype or shape.
    """
    if calib_data is None:
        if loaded.examples is not None:
            calib = loaded.examples(CALIBRATION_SAMPLES, 0)
        else:
            calib = loaded.random(CALIBRATION_SAMPLES, 0)
        calib_source = "generated"
    else:
        calib, calib_source = _checked(loaded, calib_data, "calibration data")
    if eval_data is not None:
        evald, eval_source = _checked(loaded, eval_data, "evaluation data")
    elif calib_source != "generated" and len(next(iter(calib.values()))) >= _MIN_SPLIT:
        n = len(next(iter(calib.values())))
        keep = n - max(2, n // 4)
        evald = {k: v[keep:] for k, v in calib.items()}
        calib = {k: v[:keep] for k, v in calib.items()}
        eval_source = f"held back from {calib_source}"
    elif loaded.heldout is not None:
        evald, eval_source = dict(loaded.heldout[0]), "held-out split"
    elif loaded.examples is not None:
        evald, eval_source = loaded.examples(EVAL_SAMPLES, 1), "generated"
    else:
        evald, eval_source = loaded.random(EVAL_SAMPLES, 1), "generated"
        if calib_source != "generated":
            log.warning("calibration data has fewer than %d samples: accuracy is measured on "
                        "random inputs; pass evaluation data for a meaningful figure",
                        _MIN_SPLIT)
    return Data(CalibrationSet(calib), calib_source, evald, eval_source)


def load_metric(ref: str):
    """Import a user metric ``pkg.mod:fn`` (``fn(reference, actual) -> float``, higher is
    better).

    Raises:
        UnknownModel / AccuracyError: not importable or not callable.
    """
    if ":" not in ref:
        raise AccuracyError(f"metric {ref!r} must be 'package.module:function'")
    mod_name, _, attr = ref.partition(":")
    try:
        fn = getattr(importlib.import_module(mod_name), attr)
    except ImportError as e:
        raise UnknownModel(f"cannot import metric module {mod_name!r}: {e}") from e
    except AttributeError as e:
        raise AccuracyError(f"module {mod_name!r} has no metric {attr!r}") from e
    if not callable(fn):
        raise AccuracyError(f"metric {ref!r} is not callable")
    return fn


def decls_from(data: Any) -> list[InputDecl]:
    """Input declarations read off calibration data (a torch model given no ``--input``):
    names from the arrays (``arr_0``... stay positional), shapes and dtypes as given."""
    if isinstance(data, CalibrationSet):
        raw = dict(data.arrays)
    elif isinstance(data, Mapping):
        raw = {k: np.asarray(v) for k, v in data.items()}
    else:
        try:
            with np.load(Path(data), allow_pickle=False) as z:
                raw = {k: z[k] for k in z.files}
        except (OSError, ValueError) as e:
            raise InputError(f"cannot read calibration data {data}: {e}") from e
    if not raw:
        raise InputError("calibration data is empty")
    keys = sorted(raw, key=lambda k: int(k[4:]) if k.startswith("arr_") and k[4:].isdigit()
                  else -1) if all(k.startswith("arr_") for k in raw) else list(raw)
    return [InputDecl(None if k.startswith("arr_") else k, (1, *raw[k].shape[1:]),
                      "bool" if raw[k].dtype == np.bool_ else raw[k].dtype.name)
            for k in keys]
