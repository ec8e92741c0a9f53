"""The local API over gRPC: Triton's ``inference.GRPCInferenceService``.

The service stubs are the ones ``tritonclient[grpc]`` ships, so an unmodified
``tritonclient.grpc.InferenceServerClient`` works: health, server and model metadata,
model config, statistics, the repository index and ``ModelInfer`` with inputs as
``raw_input_contents`` or as typed ``contents``. Everything it shares with the HTTP API
(request checks, metadata, config and statistics messages) comes from ``edge_agent.v2``,
so both faces answer the same thing.

A configured bearer token is required (metadata ``authorization: Bearer ...``) for every
call except ServerLive/ServerReady, as on HTTP; errors map to gRPC codes from the same
typed exceptions (400 → INVALID_ARGUMENT, 401 → UNAUTHENTICATED, 404 → NOT_FOUND, 503 →
UNAVAILABLE, 500 → INTERNAL). A request's time budget is its ``timeout`` or
``deadline_ms`` parameter, else the call's gRPC deadline. A ``traceparent`` metadata
entry makes the request part of the caller's trace. Methods the agent has no use for
(shared memory, model load/unload, streaming, trace and log settings) answer
UNIMPLEMENTED, the servicer base class's default.
"""

from __future__ import annotations

import hmac
import logging
import time
from collections.abc import Callable
from concurrent import futures
from typing import Any

import grpc
import numpy as np
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc as pb_grpc

from contract import dtypes
from contract.deadline import Deadline
from contract.tracing import TRACEPARENT, Tracer, TracingConfig, clean_traceparent
from edge_agent import v2
from edge_agent.errors import EdgeError, InvalidInput, Unauthorized
from edge_agent.v2 import CUT_PARAM, Dataplane, InferRequest

__all__ = ["GrpcServer", "InferenceServicer", "parse_model_infer"]

log = logging.getLogger(__name__)

_CODES = {400: grpc.StatusCode.INVALID_ARGUMENT, 401: grpc.StatusCode.UNAUTHENTICATED,
          404: grpc.StatusCode.NOT_FOUND, 413: grpc.StatusCode.RESOURCE_EXHAUSTED,
          503: grpc.StatusCode.UNAVAILABLE}

#: The typed-contents field that carries each v2 datatype (FP16/BF16 travel raw only).
_CONTENTS = {"BOOL": "bool_contents", "INT8": "int_contents", "INT16": "int_contents",
             "INT32": "int_contents", "INT64": "int64_contents", "UINT8": "uint_contents",
             "UINT16": "uint_contents", "UINT32": "uint_contents",
             "UINT64": "uint64_contents", "FP32": "fp32_contents", "FP64": "fp64_contents"}


def _param_value(p: Any) -> Any:
    kind = p.WhichOneof("parameter_choice")
    return None if kind is None else getattr(p, kind)


def _to_param(target: Any, value: Any) -> None:
    if isinstance(value, bool):
        target.bool_param = value
    elif isinstance(value, int):
        target.int64_param = value
    elif isinstance(value, float):
        target.double_param = value
    else:
        target.string_param = str(value)


def parse_model_infer(request: Any, specs: Any,
                      grpc_budget_s: float | None = None) -> InferRequest:
    """A ``ModelInferRequest`` as the agent's :class:`~edge_agent.v2.InferRequest`.

    Raises:
        InvalidInput: unknown or mismatched datatype, a bad shape, data whose size
            disagrees with its shape, raw contents for some inputs but not all, or an
            input given twice.
    """
    raw = list(request.raw_input_contents)
    if raw and len(raw) != len(request.inputs):
        raise InvalidInput(f"{len(raw)} raw_input_contents for {len(request.inputs)} "
                           "inputs: give raw contents for every input or for none")
    inputs: dict[str, np.ndarray] = {}
    for i, tin in enumerate(request.inputs):
        name = tin.name
        if name in inputs:
            raise InvalidInput(f"input {name!r} given twice")
        dt = v2.check_datatype(name, tin.datatype, specs.get(name))
        shape = v2.input_shape(list(tin.shape), f"input {name!r}")
        if raw:
            inputs[name] = v2.tensor_from_bytes(name, dt.numpy, shape, raw[i])
        else:
            inputs[name] = _from_contents(name, dt, shape, tin.contents)
    params = {k: _param_value(p) for k, p in request.parameters.items()}
    deadline = v2.deadline_from(params.get("timeout"), params.get("deadline_ms"))
    if deadline is None and grpc_budget_s is not None:
        deadline = Deadline.after_ms(max(grpc_budget_s * 1e3, 1e-3))
    cut = params.get(CUT_PARAM)
    if cut is not None and not isinstance(cut, str):
        raise InvalidInput(f"parameter {CUT_PARAM!r} must be a cut id string")
    outputs = [o.name for o in request.outputs] or None
    return InferRequest(request.id or None, inputs, outputs, {}, True, deadline, cut)


def _from_contents(name: str, dt: dtypes.DType, shape: tuple[int, ...],
                   contents: Any) -> np.ndarray:
    field = _CONTENTS.get(dt.v2)
    if field is None:
        raise InvalidInput(f"input {name!r}: datatype {dt.v2} travels only as "
                           "raw_input_contents")
    return v2.tensor_from_values(name, dt, shape, list(getattr(contents, field)))


class InferenceServicer(pb_grpc.GRPCInferenceServiceServicer):
    """``GRPCInferenceService`` over the agent (the same dataplane the HTTP API adapts)."""

    def __init__(self, plane: Dataplane, token: str | None = None,
                 tracer: Tracer | None = None) -> None:
        self._plane = plane
        self._expected = f"Bearer {token}".encode() if token else None
        self._tracer = tracer

    # ---- plumbing ----------------------------------------------------------------

    def _guard(self, context: Any, call: Callable[[], Any], auth: bool = True) -> Any:
        try:
            if auth and self._expected is not None:
                got = dict(context.invocation_metadata()).get("authorization", "")
                if not hmac.compare_digest(str(got).encode(), self._expected):
                    raise Unauthorized("missing or wrong bearer token")
            return call()
        except EdgeError as e:
            context.abort(_CODES.get(e.http_status, grpc.StatusCode.INTERNAL), str(e))

    # ---- health and metadata -----------------------------------------------------

    def ServerLive(self, request: Any, context: Any) -> Any:
        return pb.ServerLiveResponse(live=True)

    def ServerReady(self, request: Any, context: Any) -> Any:
        return pb.ServerReadyResponse(ready=self._plane.ready)

    def ModelReady(self, request: Any, context: Any) -> Any:
        def ready() -> Any:
            try:
                v2.check_model(self._plane, request.name, request.version or None)
            except EdgeError:
                return pb.ModelReadyResponse(ready=False)
            return pb.ModelReadyResponse(ready=self._plane.ready)
        return self._guard(context, ready)

    def ServerMetadata(self, request: Any, context: Any) -> Any:
        return self._guard(context, lambda: pb.ServerMetadataResponse(**v2.server_metadata()))

    def ModelMetadata(self, request: Any, context: Any) -> Any:
        def meta() -> Any:
            v2.check_model(self._plane, request.name, request.version or None)
            doc = v2.model_metadata(self._plane)
            return pb.ModelMetadataResponse(
                name=doc["name"], versions=doc["versions"], platform=doc["platform"],
                inputs=[pb.ModelMetadataResponse.TensorMetadata(**t) for t in doc["inputs"]],
                outputs=[pb.ModelMetadataResponse.TensorMetadata(**t)
                         for t in doc["outputs"]])
        return self._guard(context, meta)

    def ModelConfig(self, request: Any, context: Any) -> Any:
        def config() -> Any:
            v2.check_model(self._plane, request.name, request.version or None)
            return pb.ModelConfigResponse(config=v2.model_config(self._plane))
        return self._guard(context, config)

    def ModelStatistics(self, request: Any, context: Any) -> Any:
        return self._guard(context, lambda: v2.model_statistics(
            self._plane, request.name, request.version))

    def RepositoryIndex(self, request: Any, context: Any) -> Any:
        return self._guard(context, lambda: pb.RepositoryIndexResponse(models=[
            pb.RepositoryIndexResponse.ModelIndex(**m)
            for m in v2.repository_index(self._plane)]))

    # ---- inference -----------------------------------------------------------------

    def ModelInfer(self, request: Any, context: Any) -> Any:
        def infer() -> Any:
            plane = self._plane
            v2.check_model(plane, request.model_name, request.model_version or None)
            tracer = self._tracer or _NO_TRACER
            tp = clean_traceparent(dict(context.invocation_metadata()).get(TRACEPARENT))
            span = tracer.span("infer", tp, {"rpc.system": "grpc",
                                             "tiersplit.model": plane.model_name,
                                             "tiersplit.version": plane.manifest.version})
            try:
                start_ns = time.time_ns()
                req = parse_model_infer(request, v2.specs_of(plane), context.time_remaining())
                tracer.record("decode", span.traceparent, start_ns, time.time_ns(),
                              {"tiersplit.bytes": request.ByteSize()})
                res = v2.submit(plane, req, span.traceparent).future.result()
                known = [t.name for t in plane.manifest.outputs]
                reply = pb.ModelInferResponse(model_name=plane.model_name,
                                              model_version=plane.manifest.version,
                                              id=request.id)
                for name, arr in v2.outputs_of(req, res, known):
                    reply.outputs.add(name=name, datatype=v2.v2_datatype(arr),
                                      shape=list(arr.shape))
                    reply.raw_output_contents.append(arr.tobytes())
                for key, value in v2.result_parameters(res).items():
                    _to_param(reply.parameters[key], value)
                return reply
            except BaseException as e:
                span.error(f"{type(e).__name__}: {e}")
                raise
            finally:
                span.end()
        return self._guard(context, infer)


_NO_TRACER = Tracer(TracingConfig(), "tiersplit-edge")


class GrpcServer:
    """A grpcio server running :class:`InferenceServicer` on ``host:port``.

    Args:
        plane: the agent.
        host, port: where to listen (port 0: a free one, see :attr:`port`).
        token: the bearer token calls must carry (None: no token).
        workers: threads serving calls (each infer holds one while it runs).
        max_message_bytes: largest request accepted (the HTTP API's body limit).
    """

    def __init__(self, plane: Dataplane, host: str, port: int, *, token: str | None = None,
                 workers: int = 8, max_message_bytes: int = 64 << 20,
                 tracer: Tracer | None = None) -> None:
        self._server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="edge-grpc"),
            options=[("grpc.max_receive_message_length", max_message_bytes),
                     ("grpc.max_send_message_length", -1),
                     ("grpc.so_reuseport", 0)])
        pb_grpc.add_GRPCInferenceServiceServicer_to_server(
            InferenceServicer(plane, token, tracer), self._server)
        address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        try:
            self.port = self._server.add_insecure_port(address)
        except RuntimeError as e:
            raise OSError(f"cannot listen on {address}: {e}") from e
        if self.port == 0:
            raise OSError(f"cannot listen on {address}")
        self.host = host

    @property
    def url(self) -> str:
        """``host:port`` as ``tritonclient.grpc`` takes it."""
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    def start(self) -> None:
        self._server.start()

    def stop(self, grace: float) -> None:
        """Refuse new calls, let those in flight finish within ``grace`` seconds."""
        self._server.stop(grace).wait(grace + 1.0)
