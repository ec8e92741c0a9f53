"""The local HTTP API for applications: Open Inference Protocol (KServe v2) REST.

Endpoints (so an unmodified ``tritonclient.http.InferenceServerClient`` works)::

    GET  /v2                                   server metadata
    GET  /v2/health/live | /v2/health/ready    liveness / readiness (no token needed)
    GET  /v2/models/<name>[/versions/<v>]      model metadata
    GET  /v2/models/<name>[/versions/<v>]/ready
    POST /v2/models/<name>[/versions/<v>]/infer
    GET  /v2/models/<name>[/versions/<v>]/config   Triton's model config (JSON)
    GET  /v2/models[/<name>[/versions/<v>]]/stats  Triton's statistics shape
    POST /v2/repository/index                  the served model and its state
    GET  /status                               agent status (JSON)
    GET  /metrics                              Prometheus

Infer bodies are JSON tensors or JSON followed by raw tensor bytes (the binary tensor
data extension, ``Inference-Header-Content-Length``); gzip/deflate request bodies are
accepted. Bodies over ``api.max_body_bytes`` get 413 before being read; malformed JSON,
unknown datatypes and sizes that disagree with shapes get 400; a configured bearer token
is required (401) everywhere except the health checks. Input datatypes are checked
against the manifest (any numeric v2 datatype, e.g. FP32, FP16, INT64, INT32, BOOL for a
text model's ``input_ids`` and ``attention_mask``). Response ``parameters`` say how the
request was served — ``path`` (``remote``, ``device`` or ``fallback``) and ``cut`` (the
cut id used) — and its timings.

The tensor (de)serialisation below is pure; the Starlette handlers are thin adapters
over the agent (``infer``, ``status``), which knows nothing of HTTP. What the gRPC face
(``edge_agent.grpc_api``) answers identically lives in ``edge_agent.v2``. A W3C
``traceparent`` header makes the request part of the caller's trace.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import time
import zlib
from collections.abc import Mapping
from typing import Any

import numpy as np
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from contract.bundle import TensorSpec
from contract.tracing import TRACEPARENT, Tracer, TracingConfig, clean_traceparent
from edge_agent import v2
from edge_agent.errors import AgentNotReady, EdgeError, InvalidInput, Unauthorized
from edge_agent.result import InferResult
from edge_agent.v2 import CUT_PARAM, Dataplane, InferRequest

__all__ = [
    "HEADER_LENGTH",
    "InferRequest",
    "build_app",
    "encode_infer_response",
    "parse_infer_request",
]

log = logging.getLogger(__name__)

HEADER_LENGTH = "Inference-Header-Content-Length"
_NO_TRACER = Tracer(TracingConfig(), "tiersplit-edge")


# ----------------------------------------------------------------------------- pure


def _param(obj: Mapping[str, Any], key: str, default: Any = None) -> Any:
    params = obj.get("parameters") or {}
    if not isinstance(params, dict):
        raise InvalidInput("'parameters' must be an object")
    return params.get(key, default)


def parse_infer_request(body: bytes, header_length: int | None,
                        specs: Mapping[str, TensorSpec] | None = None) -> InferRequest:
    """Decode a v2 infer body (JSON, or JSON + binary tensor data).

    ``specs`` (the manifest's inputs by name) checks each input's datatype before its
    data is decoded; inputs it does not name are left to the runtime's validation.

    Raises:
        InvalidInput: malformed JSON, unknown datatype or one the model does not take, or
            data whose size disagrees with its shape (expected vs actual in the message).
    """
    if header_length is not None:
        if not 0 < header_length <= len(body):
            raise InvalidInput(f"{HEADER_LENGTH} {header_length} outside the body "
                               f"({len(body)} bytes)")
        head, binary = body[:header_length], memoryview(body)[header_length:]
    else:
        head, binary = body, memoryview(b"")
    try:
        doc = json.loads(head)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise InvalidInput(f"malformed JSON in the request header: {e}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("inputs"), list):
        raise InvalidInput("the request must be an object with an 'inputs' list")
    offset = 0
    inputs: dict[str, np.ndarray] = {}
    for i, tin in enumerate(doc["inputs"]):
        if not isinstance(tin, dict) or not isinstance(tin.get("name"), str):
            raise InvalidInput(f"inputs[{i}] must be an object with a 'name'")
        name = tin["name"]
        if name in inputs:
            raise InvalidInput(f"input {name!r} given twice")
        dt = v2.check_datatype(name, tin.get("datatype"), (specs or {}).get(name))
        dtype = dt.numpy
        shape = v2.input_shape(tin.get("shape"), f"input {name!r}")
        count = int(np.prod(shape))
        size = _param(tin, "binary_data_size")
        if size is not None:
            if not isinstance(size, int) or size < 0:
                raise InvalidInput(f"input {name!r}: binary_data_size must be an integer")
            if size != count * dtype.itemsize:
                raise InvalidInput(f"input {name!r}: binary_data_size {size} != shape "
                                   f"{list(shape)} x {dtype.itemsize} bytes "
                                   f"({count * dtype.itemsize})")
            if offset + size > len(binary):
                raise InvalidInput(f"input {name!r}: binary data ends at byte "
                                   f"{offset + size}, body has {len(binary)}")
            arr = v2.tensor_from_bytes(name, dtype, shape, binary[offset:offset + size])
            offset += size
        else:
            data = tin.get("data")
            if data is None:
                raise InvalidInput(f"input {name!r}: neither 'data' nor binary_data_size")
            arr = v2.tensor_from_values(name, dt, shape, data)
        inputs[name] = arr
    if offset != len(binary):
        raise InvalidInput(f"{len(binary) - offset} bytes of binary data not claimed by any "
                           "input's binary_data_size")
    binary_default = bool(_param(doc, "binary_data_output", False))
    outputs = None
    flags: dict[str, bool] = {}
    if doc.get("outputs") is not None:
        if not isinstance(doc["outputs"], list):
            raise InvalidInput("'outputs' must be a list")
        outputs = []
        for i, tout in enumerate(doc["outputs"]):
            if not isinstance(tout, dict) or not isinstance(tout.get("name"), str):
                raise InvalidInput(f"outputs[{i}] must be an object with a 'name'")
            outputs.append(tout["name"])
            flags[tout["name"]] = bool(_param(tout, "binary_data", binary_default))
    deadline = v2.deadline_from(_param(doc, "timeout"), _param(doc, "deadline_ms"))
    rid = doc.get("id")
    if rid is not None and not isinstance(rid, str):
        raise InvalidInput("'id' must be a string")
    cut = _param(doc, CUT_PARAM)
    if cut is not None and not isinstance(cut, str):
        raise InvalidInput(f"parameter {CUT_PARAM!r} must be a cut id string")
    return InferRequest(rid, inputs, outputs, flags, binary_default, deadline, cut)


def encode_infer_response(req: InferRequest, res: InferResult, model: str, version: str,
                          known_outputs: list[str]) -> tuple[bytes, dict[str, str]]:
    """The v2 response body and headers for a finished request."""
    outs, blobs = [], []
    for name, arr in v2.outputs_of(req, res, known_outputs):
        entry: dict[str, Any] = {"name": name, "datatype": v2.v2_datatype(arr),
                                 "shape": list(arr.shape)}
        if req.binary.get(name, req.binary_default):
            blob = arr.tobytes()
            entry["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        else:
            entry["data"] = arr.reshape(-1).tolist()
        outs.append(entry)
    doc: dict[str, Any] = {"model_name": model, "model_version": version,
                           "parameters": v2.result_parameters(res), "outputs": outs}
    if req.id is not None:
        doc["id"] = req.id
    head = json.dumps(doc, separators=(",", ":")).encode()
    if not blobs:
        return head, {"content-type": "application/json"}
    return head + b"".join(blobs), {"content-type": "application/octet-stream",
                                    HEADER_LENGTH: str(len(head))}


# ----------------------------------------------------------------------------- HTTP


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


class _TooLarge(Exception):
    pass


async def _read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise _TooLarge(f"request body of {declared} bytes exceeds the {limit} byte limit")
    chunks, total = [], 0
    async for chunk in request.stream():
        total += len(chunk)
        if total > limit:
            raise _TooLarge(f"request body exceeds the {limit} byte limit")
        chunks.append(chunk)
    body = b"".join(chunks)
    encoding = request.headers.get("content-encoding", "identity").lower()
    if encoding in ("gzip", "deflate"):
        wbits = 16 + zlib.MAX_WBITS if encoding == "gzip" else zlib.MAX_WBITS
        d = zlib.decompressobj(wbits)
        try:
            body = d.decompress(body, limit + 1)
        except zlib.error as e:
            raise InvalidInput(f"body is not valid {encoding}: {e}") from None
        if len(body) > limit or d.unconsumed_tail:
            raise _TooLarge(f"decompressed body exceeds the {limit} byte limit")
    elif encoding != "identity":
        raise InvalidInput(f"unsupported Content-Encoding {encoding!r}")
    return body


def build_app(plane: Dataplane, *, token: str | None = None,
              max_body_bytes: int = 64 << 20, tracer: Tracer | None = None) -> Starlette:
    """The Starlette app serving ``plane``; ``tracer`` makes each infer an ``infer`` span
    (under the request's ``traceparent`` header) with a ``decode`` child and the
    agent's ``request`` span below it."""
    expected = f"Bearer {token}".encode() if token else None

    def check_auth(request: Request) -> None:
        if expected is None:
            return
        got = request.headers.get("authorization", "").encode()
        if not hmac.compare_digest(got, expected):
            raise Unauthorized("missing or wrong bearer token")

    def check_model(request: Request) -> None:
        v2.check_model(plane, request.path_params["model"],
                       request.path_params.get("version"))

    def guarded(handler: Any, auth: bool = True, model: bool = False) -> Any:
        async def wrapped(request: Request) -> Response:
            try:
                if auth:
                    check_auth(request)
                if model:
                    check_model(request)
                return await handler(request)
            except _TooLarge as e:
                return _error(413, str(e))
            except EdgeError as e:
                return _error(e.http_status, str(e))
        return wrapped

    async def live(_request: Request) -> Response:
        return JSONResponse({"live": True})

    async def ready(_request: Request) -> Response:
        ok = plane.ready
        return JSONResponse({"ready": ok}, status_code=200 if ok else 503)

    async def server_meta(_request: Request) -> Response:
        return JSONResponse(v2.server_metadata())

    async def model_meta(_request: Request) -> Response:
        return JSONResponse(v2.model_metadata(plane))

    async def model_ready(_request: Request) -> Response:
        ok = plane.ready
        return JSONResponse({"name": plane.model_name, "ready": ok},
                            status_code=200 if ok else 503)

    async def model_config(_request: Request) -> Response:
        config = await run_in_threadpool(v2.model_config, plane)
        return JSONResponse(v2.proto_to_dict(config))

    async def model_stats(request: Request) -> Response:
        stats = await run_in_threadpool(v2.model_statistics, plane,
                                        request.path_params.get("model", ""),
                                        request.path_params.get("version", ""))
        return JSONResponse(v2.proto_to_dict(stats))

    async def repository_index(_request: Request) -> Response:
        return JSONResponse(v2.repository_index(plane))

    async def infer(request: Request) -> Response:
        if not plane.ready:
            raise AgentNotReady("the edge agent is not ready")
        trace = (tracer or _NO_TRACER).span(
            "infer", clean_traceparent(request.headers.get(TRACEPARENT)),
            {"rpc.system": "http", "tiersplit.model": plane.model_name,
             "tiersplit.version": plane.manifest.version})
        try:
            return await _infer(request, trace.traceparent)
        except BaseException as e:
            trace.error(f"{type(e).__name__}: {e}")
            raise
        finally:
            trace.end()

    async def _infer(request: Request, traceparent: str | None) -> Response:
        body = await _read_body(request, max_body_bytes)
        hl = request.headers.get(HEADER_LENGTH.lower())
        if hl is not None and not hl.isdigit():
            raise InvalidInput(f"{HEADER_LENGTH} must be an integer")
        # decoding JSON tensors can take a while: keep the event loop free meanwhile
        start_ns = time.time_ns()
        req = await run_in_threadpool(parse_infer_request, body,
                                      int(hl) if hl is not None else None,
                                      v2.specs_of(plane))
        (tracer or _NO_TRACER).record("decode", traceparent, start_ns, time.time_ns(),
                                      {"tiersplit.bytes": len(body)})
        handle = v2.submit(plane, req, traceparent)
        res = await asyncio.wrap_future(handle.future)
        known = [t.name for t in plane.manifest.outputs]
        content, headers = await run_in_threadpool(
            encode_infer_response, req, res, plane.model_name, plane.manifest.version, known)
        media = headers.pop("content-type")
        return Response(content, media_type=media, headers=headers)

    async def status(_request: Request) -> Response:
        return JSONResponse(plane.status())

    async def metrics(_request: Request) -> Response:
        from edge_agent.metrics import CONTENT_TYPE

        return Response(plane.metrics_text(), media_type=CONTENT_TYPE)

    model_routes = [Route("/v2/models/stats", guarded(model_stats))]
    for prefix in ("/v2/models/{model}", "/v2/models/{model}/versions/{version}"):
        model_routes += [
            Route(prefix, guarded(model_meta, model=True)),
            Route(prefix + "/ready", guarded(model_ready, model=True)),
            Route(prefix + "/config", guarded(model_config, model=True)),
            Route(prefix + "/stats", guarded(model_stats, model=True)),
            Route(prefix + "/infer", guarded(infer, model=True), methods=["POST"]),
        ]
    routes = [
        Route("/v2/health/live", guarded(live, auth=False)),
        Route("/v2/health/ready", guarded(ready, auth=False)),
        Route("/v2", guarded(server_meta)),
        Route("/v2/repository/index", guarded(repository_index), methods=["POST"]),
        *model_routes,
        Route("/status", guarded(status)),
        Route("/metrics", guarded(metrics)),
    ]
    return Starlette(routes=routes)
