"""The dtype vocabulary: one table for every name a tensor's element type goes by.

A tensor's dtype is named four ways across the system: numpy (``float32``; the manifest
and the wire use these names), the Open Inference Protocol / KServe v2 (``FP32``), Triton's
model configuration (``TYPE_FP32``) and ONNX's ``TensorProto`` element type (1). Every
conversion goes through :data:`DTYPES`, so adding a type is one line here.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["DTYPES", "DType", "UnknownDType", "by_name", "by_onnx", "by_v2", "numpy_dtype"]


class UnknownDType(ValueError):
    """A dtype name that is not in the vocabulary; the message lists the known ones."""


@dataclass(frozen=True, slots=True)
class DType:
    """One element type under each of its names."""

    name: str  # numpy / manifest / wire name
    v2: str  # KServe v2 / Triton HTTP+gRPC datatype
    triton: str  # Triton model-config data_type
    onnx: int  # onnx.TensorProto element type

    @property
    def numpy(self) -> np.dtype:
        return np.dtype(np.bool_ if self.name == "bool" else self.name)

    @property
    def itemsize(self) -> int:
        return self.numpy.itemsize


DTYPES: tuple[DType, ...] = (
    DType("float32", "FP32", "TYPE_FP32", 1),
    DType("uint8", "UINT8", "TYPE_UINT8", 2),
    DType("int8", "INT8", "TYPE_INT8", 3),
    DType("uint16", "UINT16", "TYPE_UINT16", 4),
    DType("int16", "INT16", "TYPE_INT16", 5),
    DType("int32", "INT32", "TYPE_INT32", 6),
    DType("int64", "INT64", "TYPE_INT64", 7),
    DType("bool", "BOOL", "TYPE_BOOL", 9),
    DType("float16", "FP16", "TYPE_FP16", 10),
    DType("float64", "FP64", "TYPE_FP64", 11),
    DType("uint32", "UINT32", "TYPE_UINT32", 12),
    DType("uint64", "UINT64", "TYPE_UINT64", 13),
)

_BY_NAME = {d.name: d for d in DTYPES}
_BY_V2 = {d.v2: d for d in DTYPES}
_BY_ONNX = {d.onnx: d for d in DTYPES}


def by_name(name: str) -> DType:
    """The dtype with this numpy/manifest name (``"float32"``)."""
    try:
        return _BY_NAME[name]
    except (KeyError, TypeError):
        raise UnknownDType(f"unknown dtype {name!r}; known: {', '.join(_BY_NAME)}") from None


def by_v2(datatype: str) -> DType:
    """The dtype with this KServe v2 datatype (``"FP32"``)."""
    try:
        return _BY_V2[datatype]
    except (KeyError, TypeError):
        raise UnknownDType(f"unsupported datatype {datatype!r}; supported: "
                           f"{', '.join(_BY_V2)}") from None


def by_onnx(elem_type: int) -> DType:
    """The dtype with this ONNX ``TensorProto`` element type."""
    try:
        return _BY_ONNX[elem_type]
    except (KeyError, TypeError):
        raise UnknownDType(f"unsupported ONNX element type {elem_type!r}") from None


def numpy_dtype(name: str) -> np.dtype:
    """``np.dtype`` for a manifest/wire dtype name."""
    return by_name(name).numpy
