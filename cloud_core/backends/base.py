"""The one small interface every tail engine implements.

A backend instance serves exactly one (bundle, cut) tail. ``run`` takes a whole batch
(batch dimension first, already concatenated by the batcher) and returns every manifest
output for it. ``run`` is called from the core's sized executor, possibly from several
worker threads at once, so implementations must be thread-safe (ORT sessions and torch
modules under ``inference_mode`` are; the Triton client is kept per thread).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path

import numpy as np

from cloud_core.errors import BackendError, CutNotFound
from contract.bundle import Bundle, CutSpec

__all__ = ["Backend", "tail_file"]


def tail_file(bundle: Bundle, cut: CutSpec) -> Path:
    """The fp32 ONNX file that computes the outputs from ``cut``'s crossing tensors.

    The ``cloud`` cut runs the whole fp32 model (its crossing tensors are the inputs);
    the ``edge`` cut has no tail and cannot be served by a cloud.
    """
    if cut.tail:
        return bundle.file(cut.tail)
    if cut.is_cloud:
        return bundle.file(bundle.manifest.full_fp32)
    raise CutNotFound(f"cut {cut.id!r} of {bundle.name}:{bundle.version} has no tail to run "
                      "in the cloud (it runs entirely on the edge)")


class Backend(ABC):
    """Runs one tail. Construct, then :meth:`load` once, then :meth:`run` many times."""

    name: str = "base"

    def __init__(self) -> None:
        self.device = "cpu"
        self.input_names: list[str] = []
        self.output_names: list[str] = []

    def load(self, bundle: Bundle, cut: CutSpec) -> None:
        """Prepare the tail of ``cut``; raises BackendError with advice on failure."""
        self.input_names = [t.name for t in cut.tensors]
        self.output_names = [t.name for t in bundle.manifest.outputs]
        self._load(bundle, cut)

    @abstractmethod
    def _load(self, bundle: Bundle, cut: CutSpec) -> None: ...

    @abstractmethod
    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Compute the manifest outputs for one batch. Raises BackendError."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release sessions, device memory or connections."""

    def _check_outputs(self, outputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        missing = [n for n in self.output_names if n not in outputs]
        if missing:
            raise BackendError(f"{self.name} backend returned no {missing}; "
                               f"got {sorted(outputs)}")
        return {n: outputs[n] for n in self.output_names}
