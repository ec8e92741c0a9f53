"""triton backend: forwards whole batches to a Triton Inference Server.

The tails must be served under the names ``tiersplit cloud export-triton`` writes
(``<model>__<cut>``, Triton version from the bundle version, see
:func:`cloud_core.triton_export.triton_model_version`). The batcher already groups
requests, so each ``run`` is one Triton request holding the whole batch; Triton may batch
further across cores. Clients are kept per worker thread: the HTTP client (gevent) is not
thread-safe and one gRPC channel per worker avoids head-of-line blocking.

Each infer carries the batch's ``traceparent`` (HTTP header or gRPC metadata), so a
Triton with tracing on continues the request's trace.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

import numpy as np

from cloud_core.backends.base import Backend
from cloud_core.errors import BackendError
from cloud_core.triton_export import triton_model_name, triton_model_version
from contract.bundle import Bundle, CutSpec
from contract.dtypes import by_name
from contract.tracing import TRACEPARENT, current_traceparent

__all__ = ["TritonBackend"]

log = logging.getLogger(__name__)


class TritonBackend(Backend):
    """One Triton model per tail; ``device`` is whatever the Triton server uses."""

    name = "triton"

    def __init__(self, url: str, protocol: str = "grpc", timeout_s: float = 30.0) -> None:
        super().__init__()
        self.device = "triton"
        self._url = url
        self._protocol = protocol
        self._timeout = timeout_s
        if protocol == "grpc":
            import tritonclient.grpc as client_mod
        else:
            import tritonclient.http as client_mod
        self._mod: Any = client_mod
        self._local = threading.local()
        self._clients: list[Any] = []
        self._lock = threading.Lock()
        self._model = ""
        self._version = ""

    def _client(self) -> Any:
        c = getattr(self._local, "client", None)
        if c is None:
            if self._protocol == "grpc":
                c = self._mod.InferenceServerClient(url=self._url)
            else:
                c = self._mod.InferenceServerClient(url=self._url,
                                                    connection_timeout=self._timeout,
                                                    network_timeout=self._timeout)
            self._local.client = c
            with self._lock:
                self._clients.append(c)
        return c

    def _load(self, bundle: Bundle, cut: CutSpec) -> None:
        self._model = triton_model_name(bundle.name, cut.id)
        self._version = str(triton_model_version(bundle.version))
        try:
            ready = self._client().is_model_ready(self._model, self._version)
        except Exception as e:  # tritonclient raises InferenceServerException and OS errors
            raise BackendError(f"Triton at {self._url} ({self._protocol}) unreachable: "
                               f"{str(e).splitlines()[0]}; start it or fix backend.triton_url"
                               ) from e
        if not ready:
            raise BackendError(f"Triton at {self._url} has no ready model {self._model!r} "
                               f"version {self._version}; load the repository written by "
                               "`tiersplit cloud export-triton`")
        log.info("triton tail %s:%s/%s -> %s v%s at %s", bundle.name, bundle.version, cut.id,
                 self._model, self._version, self._url)

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        reqs = []
        for name in self.input_names:
            arr = np.ascontiguousarray(inputs[name])
            inp = self._mod.InferInput(name, list(arr.shape), by_name(arr.dtype.name).v2)
            inp.set_data_from_numpy(arr)
            reqs.append(inp)
        outs = [self._mod.InferRequestedOutput(n) for n in self.output_names]
        kwargs: dict[str, Any] = ({"client_timeout": self._timeout}
                                  if self._protocol == "grpc" else {})
        tp = current_traceparent()
        if tp:
            kwargs["headers"] = {TRACEPARENT: tp}
        try:
            res = self._client().infer(self._model, reqs, model_version=self._version,
                                       outputs=outs, **kwargs)
        except Exception as e:
            raise BackendError(f"Triton infer {self._model} failed: "
                               f"{str(e).splitlines()[0]}") from e
        return self._check_outputs({n: res.as_numpy(n) for n in self.output_names})

    def close(self) -> None:
        # Close every client: an open client keeps PyTriton's shutdown waiting 30 s.
        with self._lock:
            clients, self._clients = self._clients, []
        for c in clients:
            try:
                c.close()
            except Exception as e:  # closing is best effort
                log.debug("closing triton client: %s", e)
