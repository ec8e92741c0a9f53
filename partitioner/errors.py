"""Errors of the partitioner (the bundle format's own live in :mod:`contract.errors`).

The CLI prints ``str(error)`` as one line and exits non-zero; the cloud core maps
``BundleError`` subclasses to a refused load. Each message says what to try.
"""

from __future__ import annotations


class PartitionError(Exception):
    """Base of every partitioner failure."""


class UnknownModel(PartitionError):
    """A ``zoo:`` name, callable path or file that cannot be resolved to a model."""


class ExportError(PartitionError):
    """torch -> ONNX export failed; the message carries advice."""


class GraphError(PartitionError):
    """The ONNX graph cannot be analysed or split as asked."""


class QuantizationError(PartitionError):
    """ONNX Runtime static quantization failed (e.g. unsupported ops)."""


class VerificationError(PartitionError):
    """head -> tail differs from the full model beyond tolerance."""


class InputError(PartitionError):
    """An input declaration or user data (calibration, evaluation) the model cannot take."""


class AccuracyError(PartitionError):
    """No head meets the accuracy floor, or the user's accuracy metric failed."""


class MemoryBudgetError(PartitionError):
    """The estimated peak memory of a partition run exceeds the given budget."""
