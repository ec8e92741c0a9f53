"""Errors of the partitioner and the bundle format.

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


class BundleError(PartitionError):
    """A bundle is malformed, incomplete or untrusted."""


class BundleExists(BundleError):
    """Bundles are immutable: that model/version directory already exists."""


class HashMismatch(BundleError):
    """A file's sha256 differs from the manifest (tampered or corrupt)."""


class SignatureError(BundleError):
    """Missing, malformed or wrong Ed25519 signature of the manifest."""
