"""What the HTTP and gRPC faces of the Open Inference Protocol share.

Both adapters (``edge_agent.api`` on Starlette, ``edge_agent.grpc_api`` on grpcio) turn
their wire format into an :class:`InferRequest` and hand it to :func:`submit`; both
answer metadata, model config, statistics and the repository index from the functions
here, so a ``tritonclient.http`` and a ``tritonclient.grpc`` client see the same agent.

The model config and statistics are built as Triton's own protobuf messages
(``ModelConfig``, ``ModelStatisticsResponse``): the gRPC servicer returns them as they are
and the HTTP API serialises them with :func:`proto_to_dict` (int64 fields as JSON numbers,
zero fields included, the way Triton's HTTP endpoint writes them). ``tritonclient`` is
imported only when one of those is asked for.
"""

from __future__ import annotations

import importlib.metadata
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from contract import dtypes
from contract.bundle import Manifest, TensorSpec
from contract.deadline import Deadline
from edge_agent.errors import AgentNotReady, InvalidInput, ModelNotFound
from edge_agent.result import InferResult, RequestHandle
from edge_agent.runner import StatsSnapshot

__all__ = [
    "CUT_PARAM",
    "SERVER_NAME",
    "Dataplane",
    "InferRequest",
    "check_datatype",
    "check_model",
    "deadline_from",
    "model_config",
    "model_metadata",
    "model_statistics",
    "proto_to_dict",
    "repository_index",
    "result_parameters",
    "server_metadata",
    "spec_dtype",
    "submit",
    "v2_datatype",
]

SERVER_NAME = "tiersplit-edge"
#: The request parameter that forces a cut (``api.allow_cut_override``).
CUT_PARAM = "tiersplit_cut"
EXTENSIONS = ["binary_tensor_data", "parameters", "statistics", "model_configuration",
              "model_repository"]


class Dataplane(Protocol):
    """What the protocol adapters need from the agent."""

    @property
    def model_name(self) -> str: ...

    @property
    def manifest(self) -> Manifest: ...

    @property
    def ready(self) -> bool: ...

    def infer(self, inputs: dict[str, np.ndarray], deadline_ms: float | None = None,
              request_id: str | None = None, cut: str | None = None, *,
              deadline: Deadline | None = None,
              traceparent: str | None = None) -> RequestHandle: ...

    @property
    def allow_cut_override(self) -> bool: ...

    def status(self) -> dict[str, Any]: ...

    def stats(self) -> StatsSnapshot: ...

    def metrics_text(self) -> bytes: ...


@dataclass
class InferRequest:
    """A decoded v2 infer request, whichever protocol carried it."""

    id: str | None
    inputs: dict[str, np.ndarray]
    outputs: list[str] | None  # None = all
    binary: dict[str, bool]  # output name -> return as binary (HTTP only)
    binary_default: bool
    deadline: Deadline | None  # from "timeout" (µs) or "deadline_ms"
    cut: str | None = None  # "tiersplit_cut" parameter: a per-request override


# ----------------------------------------------------------------------------- tensors


def spec_dtype(spec: TensorSpec) -> dtypes.DType:
    """The dtype a manifest tensor declares (a name outside the table passes through)."""
    try:
        return dtypes.by_name(spec.dtype)
    except dtypes.UnknownDType:
        return dtypes.DType(spec.dtype, spec.dtype.upper(), "", 0)


def check_datatype(name: str, declared: Any, spec: TensorSpec | None) -> dtypes.DType:
    """The dtype of input ``name`` as declared, checked against the manifest's spec.

    Raises:
        InvalidInput: an unknown datatype, or one the model does not take (expected vs
            actual, both spellings).
    """
    if not isinstance(declared, str):
        raise InvalidInput(f"input {name!r}: datatype {declared!r} not supported; expected "
                           f"one of {sorted(d.v2 for d in dtypes.DTYPES)}")
    try:
        dt = dtypes.by_v2(declared)
    except dtypes.UnknownDType as e:
        raise InvalidInput(f"input {name!r}: datatype {declared!r} not supported; {e}") \
            from None
    if spec is not None and spec.dtype != dt.name:
        want = spec_dtype(spec)
        raise InvalidInput(f"input {name!r}: expected dtype {want.name} ({want.v2}), got "
                           f"{dt.name} ({dt.v2})")
    return dt


#: Largest tensor (elements) a request may declare, whichever protocol.
MAX_ELEMENTS = 1 << 28


def input_shape(value: Any, where: str) -> tuple[int, ...]:
    """A declared shape, checked: non-negative integers, at most 16 dimensions."""
    if not isinstance(value, list | tuple) or not all(
            isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in value):
        raise InvalidInput(f"{where}: shape must be a list of non-negative integers")
    if len(value) > 16:
        raise InvalidInput(f"{where}: {len(value)} dimensions (at most 16)")
    count = math.prod(value)
    if count > MAX_ELEMENTS:
        raise InvalidInput(f"{where}: {count} elements exceed the limit")
    return tuple(value)


def tensor_from_bytes(name: str, dtype: np.dtype, shape: tuple[int, ...],
                      data: bytes | memoryview) -> np.ndarray:
    """An input sent as raw little-endian bytes (HTTP binary data, gRPC raw contents).

    Raises:
        InvalidInput: the byte count disagrees with the shape (expected vs actual).
    """
    want = math.prod(shape) * dtype.itemsize
    if len(data) != want:
        raise InvalidInput(f"input {name!r}: {len(data)} bytes of data for shape "
                           f"{list(shape)} x {dtype.itemsize} bytes ({want} expected)")
    return np.frombuffer(data, dtype=dtype).reshape(shape)


def tensor_from_values(name: str, dt: dtypes.DType, shape: tuple[int, ...],
                       values: Any) -> np.ndarray:
    """An input sent as a flat (or nested) list of values (HTTP JSON, gRPC typed contents).

    Raises:
        InvalidInput: values that are not of the datatype, or too many or too few.
    """
    try:
        arr = np.asarray(values, dtype=dt.numpy)
    except (ValueError, TypeError, OverflowError) as e:
        raise InvalidInput(f"input {name!r}: data is not {dt.v2}: {e}") from None
    count = math.prod(shape)
    if arr.size != count:
        raise InvalidInput(f"input {name!r}: {arr.size} values for shape "
                           f"{list(shape)} ({count} expected)")
    return arr.reshape(shape)


def v2_datatype(arr: np.ndarray) -> str:
    try:
        return dtypes.by_name(arr.dtype.name).v2
    except dtypes.UnknownDType:
        raise InvalidInput(f"output dtype {arr.dtype} has no v2 datatype") from None


def deadline_from(timeout_us: Any, deadline_ms: Any) -> Deadline | None:
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


# ----------------------------------------------------------------------------- requests


def check_model(plane: Dataplane, name: str, version: str | None) -> None:
    """Raise ModelNotFound unless ``name`` (and ``version``, when given) is served here."""
    if name != plane.model_name:
        raise ModelNotFound(f"unknown model {name!r}; this agent serves "
                            f"{plane.model_name!r}")
    if version not in (None, "", plane.manifest.version):
        raise ModelNotFound(f"model {name!r} has no version {version!r}; it serves "
                            f"version {plane.manifest.version!r}")


def submit(plane: Dataplane, req: InferRequest,
           traceparent: str | None = None) -> RequestHandle:
    """Check what only the protocol layer knows (outputs asked for, cut override) and
    hand the request to the agent. The app's ``id`` is echoed back, never sent on: ids
    on the wire must be unique per agent.

    Raises:
        AgentNotReady: the agent is starting or stopping.
        InvalidInput: unknown outputs, or a cut override while overrides are off.
    """
    if not plane.ready:
        raise AgentNotReady("the edge agent is not ready")
    known = [t.name for t in plane.manifest.outputs]
    bad = [n for n in (req.outputs or []) if n not in known]
    if bad:
        raise InvalidInput(f"unknown outputs {bad}; the model has {known}")
    if req.cut is not None and not plane.allow_cut_override:
        raise InvalidInput(f"parameter {CUT_PARAM!r} is refused: per-request cut "
                           "overrides are off (api.allow_cut_override)")
    return plane.infer(req.inputs, cut=req.cut, deadline=req.deadline,
                       traceparent=traceparent)


def result_parameters(res: InferResult) -> dict[str, Any]:
    """How a request was served: path, cut, endpoint, bytes sent and its timings (ms)."""
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
    return params


# ----------------------------------------------------------------------------- metadata


def package_version() -> str:
    """The installed tiersplit distribution's version (``0+unknown`` from a bare tree)."""
    try:
        return importlib.metadata.version("tiersplit")
    except importlib.metadata.PackageNotFoundError:
        return "0+unknown"


def server_metadata() -> dict[str, Any]:
    return {"name": SERVER_NAME, "version": package_version(), "extensions": EXTENSIONS}


def tensor_meta(t: TensorSpec) -> dict[str, Any]:
    return {"name": t.name, "datatype": spec_dtype(t).v2, "shape": list(t.shape)}


def model_metadata(plane: Dataplane) -> dict[str, Any]:
    m = plane.manifest
    return {"name": plane.model_name, "versions": [m.version], "platform": "tiersplit",
            "inputs": [tensor_meta(t) for t in m.inputs],
            "outputs": [tensor_meta(t) for t in m.outputs]}


def _pb() -> tuple[Any, Any]:
    from tritonclient.grpc import model_config_pb2, service_pb2

    return model_config_pb2, service_pb2


def _triton_type(mc: Any, spec: TensorSpec) -> int:
    v2 = spec_dtype(spec).v2
    name = "TYPE_STRING" if v2 == "BYTES" else f"TYPE_{v2}"
    try:
        return int(mc.DataType.Value(name))
    except ValueError:
        return int(mc.DataType.Value("TYPE_INVALID"))


def model_config(plane: Dataplane) -> Any:
    """The served model as Triton's ``ModelConfig``, built from the signed manifest.

    ``max_batch_size`` is 0 and the dims are the manifest's full shapes (batch dimension
    included, -1 where variable): the agent takes any batch its inputs declare, so there
    is no batch limit to report. Numeric bundle versions become a ``specific`` version
    policy; the cuts and the bundle digest travel as string parameters.
    """
    mc, _ = _pb()
    m = plane.manifest
    cfg = mc.ModelConfig(name=plane.model_name, platform="tiersplit", max_batch_size=0)
    for spec, field in ((m.inputs, cfg.input), (m.outputs, cfg.output)):
        for t in spec:
            field.add(name=t.name, data_type=_triton_type(mc, t), dims=list(t.shape))
    if m.version.isdigit():
        cfg.version_policy.specific.versions.append(int(m.version))
    else:
        cfg.version_policy.latest.num_versions = 1
    cfg.parameters["tiersplit_cuts"].string_value = ",".join(m.cut_ids)
    cfg.parameters["tiersplit_version"].string_value = m.version
    status = plane.status()
    digest = status.get("bundle", {}).get("digest")
    if digest:
        cfg.parameters["tiersplit_digest"].string_value = digest
    return cfg


def model_statistics(plane: Dataplane, name: str = "", version: str = "") -> Any:
    """Triton's ``ModelStatisticsResponse`` for the served model, from the agent's counters.

    ``success`` and ``fail`` count finished and failed requests with their end-to-end time;
    ``queue`` is the cloud core's queueing, ``compute_input`` the device's head plus
    encoding, ``compute_infer`` the tail (cloud compute, or the device's own run),
    ``compute_output`` the rest of the remote round trip (network and decoding). An empty
    ``name`` asks for every model (there is one); another name is unknown (404).
    """
    if name:
        check_model(plane, name, version or None)
    _, sp = _pb()
    s = plane.stats()
    out = sp.ModelStatisticsResponse()
    ms = out.model_stats.add(name=plane.model_name, version=plane.manifest.version,
                             last_inference=s.last_inference_ms,
                             inference_count=s.inference_count,
                             execution_count=s.execution_count)
    st = ms.inference_stats
    for field, (count, ns) in (("success", s.success), ("fail", s.fail), ("queue", s.queue),
                               ("compute_input", s.compute_input),
                               ("compute_infer", s.compute_infer),
                               ("compute_output", s.compute_output)):
        getattr(st, field).count = count
        getattr(st, field).ns = ns
    return out


def repository_index(plane: Dataplane) -> list[dict[str, str]]:
    """The one model this agent serves, its version and state (Triton's index shape)."""
    state = "READY" if plane.ready else "UNAVAILABLE"
    return [{"name": plane.model_name, "version": plane.manifest.version, "state": state,
             "reason": "" if plane.ready else "the edge agent is not ready"}]


def proto_to_dict(msg: Any) -> dict[str, Any]:
    """A protobuf message as Triton's HTTP endpoint writes it: field names as declared,
    fields at their default included, 64-bit integers as JSON numbers (the proto3 JSON
    mapping would write them as strings)."""
    from google.protobuf import json_format

    doc = json_format.MessageToDict(msg, preserving_proto_field_name=True,
                                    always_print_fields_with_no_presence=True)
    _int64_as_numbers(msg, doc)
    return doc


_INT64 = {3, 4, 6, 16, 18}  # FieldDescriptor.TYPE_INT64, UINT64, FIXED64, SFIXED64, SINT64
_MESSAGE = 11  # FieldDescriptor.TYPE_MESSAGE


def _int64_as_numbers(msg: Any, doc: dict[str, Any]) -> None:
    for field in msg.DESCRIPTOR.fields:
        if field.name not in doc:
            continue
        value = getattr(msg, field.name)
        if field.type == _MESSAGE:
            entry = field.message_type
            if entry.GetOptions().map_entry:
                vfield = entry.fields_by_name["value"]
                for key, item in value.items():
                    if vfield.type == _MESSAGE:
                        _int64_as_numbers(item, doc[field.name][str(key)])
                    elif vfield.type in _INT64:
                        doc[field.name][str(key)] = int(item)
            elif _repeated(field):
                for item, sub in zip(value, doc[field.name], strict=True):
                    _int64_as_numbers(item, sub)
            else:
                _int64_as_numbers(value, doc[field.name])
        elif field.type in _INT64:
            doc[field.name] = [int(v) for v in value] if _repeated(field) else int(value)


def _repeated(field: Any) -> bool:
    flag = getattr(field, "is_repeated", None)
    if flag is not None:
        return bool(flag)
    return field.label == 3  # LABEL_REPEATED, for protobuf releases before is_repeated


def outputs_of(req: InferRequest, res: InferResult,
               known: list[str]) -> list[tuple[str, np.ndarray]]:
    """The outputs to return, in order, little-endian and contiguous.

    Raises:
        InvalidInput: an output was asked for that the result does not have.
    """
    names = req.outputs if req.outputs is not None else known
    unknown = [n for n in names if n not in res.outputs]
    if unknown:
        raise InvalidInput(f"unknown outputs {unknown}; the model has {known}")
    out = []
    for name in names:
        arr = np.ascontiguousarray(res.outputs[name])
        if arr.dtype.byteorder == ">":
            arr = arr.astype(arr.dtype.newbyteorder("<"))
        out.append((name, arr))
    return out


def specs_of(plane: Dataplane) -> Mapping[str, TensorSpec]:
    return {t.name: t for t in plane.manifest.inputs}
