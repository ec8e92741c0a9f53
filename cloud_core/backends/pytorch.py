"""torch backend: the tail as a ``torch.export`` program, else the fp32 ONNX tail.

Choice (documented in configs/cloud.yaml): when the manifest lists ``tail-<cut>.pt2``
(a program saved with ``torch.export.save``), it is loaded with ``torch.export.load``;
otherwise the fp32 ONNX tail runs through :mod:`cloud_core.backends.onnx_to_torch`, a small
operator-by-operator interpreter on ``torch.nn.functional``. Either way calls run under
``torch.inference_mode`` on CUDA when available (``device: auto``) or as configured.
A tail using operators the interpreter lacks is refused at load with the list of them.
"""

from __future__ import annotations

import logging

import numpy as np
import torch

from cloud_core.backends.base import Backend, tail_file
from cloud_core.backends.onnx_to_torch import OnnxTorchProgram, UnsupportedOnnx
from cloud_core.errors import BackendError
from contract.bundle import Bundle, CutSpec

__all__ = ["TorchBackend", "torch_device"]

log = logging.getLogger(__name__)


def torch_device(device: str) -> torch.device:
    """``auto`` -> CUDA when available else CPU; ``cuda`` without CUDA is an error."""
    if device == "cuda" and not torch.cuda.is_available():
        raise BackendError("backend.device is cuda but torch sees no CUDA device; "
                           "set device: auto or cpu")
    if device in ("auto", "cuda") and torch.cuda.is_available():
        return torch.device("cuda")
    return torch.device("cpu")


class TorchBackend(Backend):
    """Runs one tail with torch; thread-safe (no state mutated by ``run``)."""

    name = "torch"

    def __init__(self, device: str = "auto", threads: int = 0) -> None:
        super().__init__()
        self._dev = torch_device(device)
        self.device = self._dev.type
        if threads:
            torch.set_num_threads(threads)
        self._program: OnnxTorchProgram | None = None
        self._exported: torch.nn.Module | None = None

    def _load(self, bundle: Bundle, cut: CutSpec) -> None:
        pt2 = f"tail-{cut.id}.pt2"
        if pt2 in bundle.manifest.files:
            path = bundle.file(pt2)
            try:
                self._exported = torch.export.load(str(path)).module().to(self._dev)
            except Exception as e:  # torch.export raises many kinds
                raise BackendError(f"torch.export.load({path}) failed: {e}; re-export the "
                                   "tail with this torch version or use the ONNX tail") from e
            log.info("torch tail %s:%s/%s from %s on %s", bundle.name, bundle.version,
                     cut.id, pt2, self.device)
            return
        path = tail_file(bundle, cut)
        try:
            self._program = OnnxTorchProgram(path, self._dev)
        except UnsupportedOnnx as e:
            raise BackendError(f"{path}: {e}") from e
        missing = set(self.input_names) - set(self._program.inputs)
        if missing:
            raise BackendError(f"{path} lacks inputs {sorted(missing)} of cut {cut.id!r}")
        log.info("torch tail %s:%s/%s via ONNX interpreter on %s", bundle.name,
                 bundle.version, cut.id, self.device)

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        with torch.inference_mode():
            # Wire tensors are read-only zero-copy views; torch wants writable memory.
            feeds = {k: torch.from_numpy(v if v.flags.writeable and v.flags.c_contiguous
                                         else np.array(v, order="C")).to(self._dev)
                     for k, v in inputs.items()}
            try:
                if self._exported is not None:
                    args = [feeds[n] for n in self.input_names]
                    result = self._exported(*args)
                    if isinstance(result, torch.Tensor):
                        result = (result,)
                    out = dict(zip(self.output_names, result, strict=True))
                else:
                    assert self._program is not None, "load() first"
                    out = self._program(feeds)
            except (RuntimeError, UnsupportedOnnx, ValueError) as e:
                raise BackendError(f"torch run failed: {e}") from e
            return self._check_outputs({k: v.detach().cpu().numpy() for k, v in out.items()})

    def close(self) -> None:
        self._program = None
        self._exported = None
