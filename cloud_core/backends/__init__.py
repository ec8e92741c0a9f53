"""Tail engines behind one interface (:class:`Backend`): onnxruntime, torch, triton.

Engines are imported only when chosen, so a core on the ORT backend never loads torch.
"""

from __future__ import annotations

from collections.abc import Callable

from cloud_core.backends.base import Backend, tail_file
from cloud_core.config import BackendConfig

__all__ = ["Backend", "BackendFactory", "make_backend_factory", "tail_file"]

BackendFactory = Callable[[], Backend]


def make_backend_factory(cfg: BackendConfig) -> BackendFactory:
    """A callable that makes one unloaded backend per (bundle, cut) tail."""
    if cfg.kind == "onnxruntime":
        from cloud_core.backends.ort import OrtBackend

        return lambda: OrtBackend(cfg.device, cfg.threads)
    if cfg.kind == "torch":
        from cloud_core.backends.pytorch import TorchBackend

        return lambda: TorchBackend(cfg.device, cfg.threads)
    from cloud_core.backends.triton import TritonBackend

    return lambda: TritonBackend(cfg.triton_url, cfg.triton_protocol, cfg.triton_timeout_s)
