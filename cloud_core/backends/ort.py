"""ONNX Runtime backend: the default. CUDA execution provider when present, else CPU."""

from __future__ import annotations

import logging

import numpy as np
import onnxruntime as ort

from cloud_core.backends.base import Backend, tail_file
from cloud_core.errors import BackendError
from contract.bundle import Bundle, CutSpec

__all__ = ["OrtBackend", "ort_providers"]

log = logging.getLogger(__name__)


def ort_providers(device: str) -> list[str]:
    """Execution providers for ``device`` (``auto``, ``cpu`` or ``cuda``).

    Raises:
        BackendError: ``cuda`` was asked for but this onnxruntime build has no CUDA EP.
    """
    available = ort.get_available_providers()
    if device == "cpu":
        return ["CPUExecutionProvider"]
    if "CUDAExecutionProvider" in available:
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    if device == "cuda":
        raise BackendError("backend.device is cuda but this onnxruntime has no "
                           f"CUDAExecutionProvider (available: {available}); install "
                           "onnxruntime-gpu or set device: auto")
    return ["CPUExecutionProvider"]


class OrtBackend(Backend):
    """One ``InferenceSession`` per tail; ``run`` is thread-safe in ORT."""

    name = "onnxruntime"

    def __init__(self, device: str = "auto", threads: int = 0) -> None:
        super().__init__()
        self._want = device
        self._threads = threads
        self._session: ort.InferenceSession | None = None

    def _load(self, bundle: Bundle, cut: CutSpec) -> None:
        path = tail_file(bundle, cut)
        opts = ort.SessionOptions()
        if self._threads:
            opts.intra_op_num_threads = self._threads
        providers = ort_providers(self._want)
        if providers[0] == "CPUExecutionProvider":
            # Between two batches a server does I/O on the same cores; pool threads that
            # spin-wait for the next run would take those cores from it.
            opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
            opts.add_session_config_entry("session.inter_op.allow_spinning", "0")
        try:
            self._session = ort.InferenceSession(str(path), opts, providers=providers)
        except Exception as e:  # ORT raises its own exception types (Fail, InvalidGraph...)
            raise BackendError(f"onnxruntime cannot load {path}: {str(e).splitlines()[0]}; "
                               "check the bundle's opset against this onnxruntime") from e
        used = self._session.get_providers()
        self.device = "cuda" if used and used[0] == "CUDAExecutionProvider" else "cpu"
        names = {i.name for i in self._session.get_inputs()}
        if names != set(self.input_names):
            raise BackendError(f"{path} takes inputs {sorted(names)} but the manifest's cut "
                               f"{cut.id!r} crosses {sorted(self.input_names)}")
        log.info("onnxruntime tail %s:%s/%s on %s", bundle.name, bundle.version, cut.id,
                 self.device)

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        assert self._session is not None, "load() first"
        try:
            values = self._session.run(self.output_names, inputs)
        except Exception as e:
            raise BackendError(f"onnxruntime run failed: {str(e).splitlines()[0]}") from e
        return dict(zip(self.output_names, values, strict=True))

    def close(self) -> None:
        self._session = None
