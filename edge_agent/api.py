"""The local HTTP API for applications: Open Inference Protocol (KServe v2) REST.

Endpoints (so an unmodified ``tritonclient.http.InferenceServerClient`` works)::

    GET  /v2                                   server metadata
    GET  /v2/health/live | /v2/health/ready    liveness / readiness (no token needed)
    GET  /v2/models/<name>[/versions/<v>]      model metadata
    GET  /v2/models/<name>[/versions/<v>]/ready
    POST /v2/models/<name>[/versions/<v>]/infer
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
over the agent (``infer``, ``status``), which knows nothing of HTTP.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import math
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from contract import dtypes
from contract.bundle import Manifest, TensorSpec
from contract.deadline import Deadline
from edge_agent.errors import AgentNotReady, EdgeError, InvalidInput, ModelNotFound, Unauthorized
from edge_agent.result import InferResult, RequestHandle

__all__ = [
    "HEADER_LENGTH",
    "InferRequest",
    "build_app",
    "encode_infer_response",
    "parse_infer_request",
]

log = logging.getLogger(__name__)

HEADER_LENGTH = "Inference-Header-Content-Length"



class Dataplane(Protocol):
    """What the HTTP adapter needs from the agent."""

    @property
    def model_name(self) -> str: ...

    @property
    def manifest(self) -> Manifest: ...

    @property
    def ready(self) -> bool: ...

    def infer(self, inputs: dict[str, np.ndarray], deadline_ms: float | None = None,
              request_id: str | None = None, cut: str | None = None, *,
              deadline: Deadline | None = None) -> RequestHandle: ...

    @property
    def allow_cut_override(self) -> bool: ...

    def status(self) -> dict[str, Any]: ...

    def metrics_text(self) -> bytes: ...


# ----------------------------------------------------------------------------- pure


@dataclass
class InferRequest:
    """A decoded v2 infer request."""

    id: str | None
    inputs: dict[str, np.ndarray]
    outputs: list[str] | None  # None = all
    binary: dict[str, bool]  # output name -> return as binary
    binary_default: bool
    deadline: Deadline | None  # from "timeout" (µs) or "deadline_ms"
    cut: str | None = None  # "tiersplit_cut" parameter: a per-request override


def _shape(value: Any, where: str) -> tuple[int, ...]:
    if not isinstance(value, list) or not all(
            isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in value):
        raise InvalidInput(f"{where}: shape must be a list of non-negative integers")
    if len(value) > 16:
        raise InvalidInput(f"{where}: {len(value)} dimensions (at most 16)")
    return tuple(value)


CUT_PARAM = "tiersplit_cut"


def _param(obj: Mapping[str, Any], key: str, default: Any = None) -> Any:
    params = obj.get("parameters") or {}
    if not isinstance(params, dict):
        raise InvalidInput("'parameters' must be an object")
    return params.get(key, default)


def _datatype(name: str, declared: Any, spec: TensorSpec | None) -> dtypes.DType:
    """The dtype of input ``name`` as declared, checked against the manifest's spec."""
    if not isinstance(declared, str):
        raise InvalidInput(f"input {name!r}: datatype {declared!r} not supported; expected "
                           f"one of {sorted(d.v2 for d in dtypes.DTYPES)}")
    try:
        dt = dtypes.by_v2(declared)
    except dtypes.UnknownDType as e:
        raise InvalidInput(f"input {name!r}: datatype {declared!r} not supported; {e}") \
            from None
    if spec is not None and spec.dtype != dt.name:
        want = _spec_dtype(spec)
        raise InvalidInput(f"input {name!r}: expected dtype {want.name} ({want.v2}), got "
                           f"{dt.name} ({dt.v2})")
    return dt


def _spec_dtype(spec: TensorSpec) -> dtypes.DType:
    try:
        return dtypes.by_name(spec.dtype)
    except dtypes.UnknownDType:
        return dtypes.DType(spec.dtype, spec.dtype.upper(), "", 0)


def parse_infer_request(body: bytes, header_length: int | None,
                        max_elements: int = 1 << 28,
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
        dt_name = tin.get("datatype")
        dtype = _datatype(name, dt_name, (specs or {}).get(name)).numpy
        shape = _shape(tin.get("shape"), f"input {name!r}")
        count = math.prod(shape)
        if count > max_elements:
            raise InvalidInput(f"input {name!r}: {count} elements exceed the limit")
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
            arr = np.frombuffer(binary[offset:offset + size], dtype=dtype).reshape(shape)
            offset += size
        else:
            data = tin.get("data")
            if data is None:
                raise InvalidInput(f"input {name!r}: neither 'data' nor binary_data_size")
            try:
                arr = np.asarray(data, dtype=dtype)
            except (ValueError, TypeError, OverflowError) as e:
                raise InvalidInput(f"input {name!r}: data is not {dt_name}: {e}") from None
            if arr.size != count:
                raise InvalidInput(f"input {name!r}: {arr.size} values for shape "
                                   f"{list(shape)} ({count} expected)")
            arr = arr.reshape(shape)
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
    deadline = _deadline(_param(doc, "timeout"), _param(doc, "deadline_ms"))
    rid = doc.get("id")
    if rid is not None and not isinstance(rid, str):
        raise InvalidInput("'id' must be a string")
    cut = _param(doc, CUT_PARAM)
    if cut is not None and not isinstance(cut, str):
        raise InvalidInput(f"parameter {CUT_PARAM!r} must be a cut id string")
    return InferRequest(rid, inputs, outputs, flags, binary_default, deadline, cut)


def _deadline(timeout_us: Any, deadline_ms: Any) -> Deadline | None:
    """The request's deadline from the standard ``timeout`` (microseconds) or this API's
    ``deadline_ms`` (wins when both are given), anchored as the request is decoded."""
    budget_ms = None
    for value, per_ms, key in ((timeout_us, 1e3, "timeout"), (deadline_ms, 1.0, "deadline_ms")):
        if value is None:
            continue
        try:
            ok = isinstance(value, int | float) and not isinstance(value, bool)
            budget_ms = float(value) / per_ms if ok else math.nan
        except OverflowError:
            budget_ms = math.nan
        if not math.isfinite(budget_ms) or budget_ms <= 0:
            raise InvalidInput(f"parameter {key!r} must be a positive number")
    return None if budget_ms is None else Deadline.after_ms(budget_ms)


def _v2_datatype(arr: np.ndarray) -> str:
    try:
        return dtypes.by_name(arr.dtype.name).v2
    except dtypes.UnknownDType:
        raise InvalidInput(f"output dtype {arr.dtype} has no v2 datatype") from None


def encode_infer_response(req: InferRequest, res: InferResult, model: str, version: str,
                          known_outputs: list[str]) -> tuple[bytes, dict[str, str]]:
    """The v2 response body and headers for a finished request."""
    names = req.outputs if req.outputs is not None else known_outputs
    unknown = [n for n in names if n not in res.outputs]
    if unknown:
        raise InvalidInput(f"unknown outputs {unknown}; the model has {known_outputs}")
    outs, blobs = [], []
    for name in names:
        arr = np.ascontiguousarray(res.outputs[name])
        if arr.dtype.byteorder == ">":
            arr = arr.astype(arr.dtype.newbyteorder("<"))
        entry: dict[str, Any] = {"name": name, "datatype": _v2_datatype(arr),
                                 "shape": list(arr.shape)}
        if req.binary.get(name, req.binary_default):
            blob = arr.tobytes()
            entry["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        else:
            entry["data"] = arr.reshape(-1).tolist()
        outs.append(entry)
    params: dict[str, Any] = {"path": res.path, "cut": res.cut,
                              "endpoint": res.endpoint or "", "bytes_sent": res.bytes_sent,
                              "deadline_missed": res.deadline_missed,
                              "explored": res.explored}
    params.update({f"{k}_ms": round(v, 3) for k, v in res.timings.items()})
    if res.cascade is not None:
        params["cascade"] = res.cascade
        if res.confidence is not None:
            params["confidence"] = round(res.confidence, 6)
    if res.fallback is not None:
        params["fallback"] = res.fallback
    doc: dict[str, Any] = {"model_name": model, "model_version": version,
                           "parameters": params, "outputs": outs}
    if req.id is not None:
        doc["id"] = req.id
    head = json.dumps(doc, separators=(",", ":")).encode()
    if not blobs:
        return head, {"content-type": "application/json"}
    return head + b"".join(blobs), {"content-type": "application/octet-stream",
                                    HEADER_LENGTH: str(len(head))}


def _tensor_meta(t: TensorSpec) -> dict[str, Any]:
    return {"name": t.name, "datatype": _spec_dtype(t).v2, "shape": list(t.shape)}


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
              max_body_bytes: int = 64 << 20) -> Starlette:
    """The Starlette app serving ``plane``."""
    expected = f"Bearer {token}".encode() if token else None

    def check_auth(request: Request) -> None:
        if expected is None:
            return
        got = request.headers.get("authorization", "").encode()
        if not hmac.compare_digest(got, expected):
            raise Unauthorized("missing or wrong bearer token")

    def check_model(request: Request) -> None:
        name = request.path_params["model"]
        if name != plane.model_name:
            raise ModelNotFound(f"unknown model {name!r}; this agent serves "
                                f"{plane.model_name!r}")
        version = request.path_params.get("version")
        if version not in (None, "", plane.manifest.version):
            raise ModelNotFound(f"model {name!r} has no version {version!r}; it serves "
                                f"version {plane.manifest.version!r}")

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
        return JSONResponse({"name": "tiersplit-edge", "version": "1",
                             "extensions": ["binary_tensor_data", "parameters"]})

    async def model_meta(_request: Request) -> Response:
        m = plane.manifest
        return JSONResponse({"name": plane.model_name, "versions": [m.version],
                             "platform": "tiersplit", "inputs": [_tensor_meta(t) for t in m.inputs],
                             "outputs": [_tensor_meta(t) for t in m.outputs]})

    async def model_ready(_request: Request) -> Response:
        ok = plane.ready
        return JSONResponse({"name": plane.model_name, "ready": ok},
                            status_code=200 if ok else 503)

    async def infer(request: Request) -> Response:
        if not plane.ready:
            raise AgentNotReady("the edge agent is not ready")
        body = await _read_body(request, max_body_bytes)
        hl = request.headers.get(HEADER_LENGTH.lower())
        if hl is not None and not hl.isdigit():
            raise InvalidInput(f"{HEADER_LENGTH} must be an integer")
        # decoding JSON tensors can take a while: keep the event loop free meanwhile
        specs = {t.name: t for t in plane.manifest.inputs}
        req = await run_in_threadpool(parse_infer_request, body,
                                      int(hl) if hl is not None else None, 1 << 28, specs)
        known = [t.name for t in plane.manifest.outputs]
        bad = [n for n in (req.outputs or []) if n not in known]
        if bad:
            raise InvalidInput(f"unknown outputs {bad}; the model has {known}")
        # the app's "id" is echoed back, never used on the wire: ids there must be unique
        if req.cut is not None and not plane.allow_cut_override:
            raise InvalidInput(f"parameter {CUT_PARAM!r} is refused: per-request cut "
                               "overrides are off (api.allow_cut_override)")
        handle = plane.infer(req.inputs, cut=req.cut, deadline=req.deadline)
        res = await asyncio.wrap_future(handle.future)
        content, headers = await run_in_threadpool(
            encode_infer_response, req, res, plane.model_name, plane.manifest.version, known)
        media = headers.pop("content-type")
        return Response(content, media_type=media, headers=headers)

    async def status(_request: Request) -> Response:
        return JSONResponse(plane.status())

    async def metrics(_request: Request) -> Response:
        from edge_agent.metrics import CONTENT_TYPE

        return Response(plane.metrics_text(), media_type=CONTENT_TYPE)

    model_routes = []
    for prefix in ("/v2/models/{model}", "/v2/models/{model}/versions/{version}"):
        model_routes += [
            Route(prefix, guarded(model_meta, model=True)),
            Route(prefix + "/ready", guarded(model_ready, model=True)),
            Route(prefix + "/infer", guarded(infer, model=True), methods=["POST"]),
        ]
    routes = [
        Route("/v2/health/live", guarded(live, auth=False)),
        Route("/v2/health/ready", guarded(ready, auth=False)),
        Route("/v2", guarded(server_meta)),
        *model_routes,
        Route("/status", guarded(status)),
        Route("/metrics", guarded(metrics)),
    ]
    return Starlette(routes=routes)
