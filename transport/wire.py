"""Wire format: messages to frames and back. Pure functions, no sockets.

A message is a list of frames::

    frame 0      b"\\x01" (wire version) + kind byte + UTF-8 JSON header
    frame 1..n   one buffer per tensor (request/reply), in header order
                 or one payload frame (ping/pong)

A request's header carries its deadline as ``budget_ms``, the milliseconds left when it
was encoded; the decoder re-anchors it on the receiver's monotonic clock
(:class:`contract.deadline.Deadline`), so sender and receiver never compare wall clocks.
An optional ``tp`` key carries the sender's W3C traceparent; a malformed one is dropped
and counted (``contract.tracing.bad_traceparents``), never an error.

The header of a request/reply lists its tensors as ``{"n": name, "d": dtype, "s": shape,
"c": codec, ...codec params}``. ``raw`` tensors are sent as memoryviews of the caller's
arrays and decoded as ``np.frombuffer`` views over the received frames (zero-copy both
ways; the decoded arrays are read-only when the frames are). Lossy codecs decode to
float32 (see :mod:`transport.codecs`).

Decoding is strict and checks sizes declared by the header against :class:`WireLimits`
*before* allocating anything; every violation raises a subclass of
:class:`transport.errors.WireError`, never another exception.

For transports that move one payload per message (MQTT), :func:`pack_frames` and
:func:`unpack_frames` join and split frames (length-prefixed, zero-copy on split).
"""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Sequence
from typing import Any

import numpy as np

from contract.deadline import Deadline
from contract.dtypes import DTYPES
from contract.tracing import clean_traceparent
from transport import codecs
from transport.config import WireLimits
from transport.errors import CodecError, DTypeError, LimitError, VersionError, WireError
from transport.messages import (
    Chunk,
    Directive,
    Fetch,
    LoadReport,
    Message,
    Ping,
    Pong,
    Reply,
    Report,
    Request,
    Status,
)

__all__ = [
    "ALLOWED_DTYPES",
    "WIRE_VERSION",
    "WireLimits",
    "decode",
    "encode",
    "encode_replies",
    "pack_frames",
    "peek_request_id",
    "unpack_frames",
    "wire_bytes",
]

#: 2: requests carry the budget left (``budget_ms``) instead of a wall-clock deadline.
WIRE_VERSION = 2
_KIND_REQUEST, _KIND_REPLY, _KIND_PING, _KIND_PONG = 1, 2, 3, 4
# Model distribution and rollout control (agent <-> core, on the authenticated link).
_KIND_FETCH, _KIND_CHUNK, _KIND_REPORT, _KIND_DIRECTIVE = 5, 6, 7, 8
_KINDS = (_KIND_REQUEST, _KIND_REPLY, _KIND_PING, _KIND_PONG, _KIND_FETCH, _KIND_CHUNK,
          _KIND_REPORT, _KIND_DIRECTIVE)
_MAX_LABELS = 64

#: dtypes a tensor may have on the wire: the :mod:`contract.dtypes` vocabulary, each
#: little-endian on the wire whatever the host.
ALLOWED_DTYPES: dict[str, np.dtype] = {d.name: d.numpy.newbyteorder("<") for d in DTYPES}
_MAX_STR = 4096
# Native-order dtype -> wire name: a dict hit instead of numpy's ``dtype.name`` (Python
# code in numpy) on every tensor of every message.
_WIRE_NAME: dict[np.dtype, str] = {np.dtype(d.numpy): d.name for d in DTYPES}
_RAW = codecs.CodecSpec("raw")
# Native byte order is the wire's (little-endian): a native array is sent as it is.
_NATIVE_IS_WIRE = all(np.dtype(d.numpy) == ALLOWED_DTYPES[d.name] for d in DTYPES)


class _SpecCache:
    """Parsed codec specs by their string: every message names one, and parsing it is
    pure. Only specs that parsed are kept, and at most ``size`` of them (a peer cannot
    grow it without bound by sending spellings)."""

    def __init__(self, size: int = 64) -> None:
        self._size = size
        self._specs: dict[str, codecs.CodecSpec] = {}

    def get(self, spec: str) -> codecs.CodecSpec:
        hit = self._specs.get(spec) if isinstance(spec, str) else None
        if hit is None:
            hit = codecs.parse_spec(spec)
            if len(self._specs) < self._size:
                self._specs[spec] = hit
        return hit


_SPECS = _SpecCache()
_SPECS.get("raw")
_SPECS._specs["raw"] = _RAW  # the one raw spec, so ``spec is _RAW`` finds it


# ----------------------------------------------------------------------------- encode

def _tensor_frames(tensors: dict[str, np.ndarray], spec: codecs.CodecSpec
                   ) -> tuple[list[dict[str, Any]], list[bytes | memoryview]]:
    descs: list[dict[str, Any]] = []
    frames: list[bytes | memoryview] = []
    for name, value in tensors.items():
        arr = value if value.__class__ is np.ndarray else np.asarray(value)
        dname = _WIRE_NAME.get(arr.dtype)
        if (spec is _RAW and dname is not None and _NATIVE_IS_WIRE
                and arr.flags.c_contiguous):
            # The common case (a reply, a raw request): a view of the caller's array.
            descs.append({"n": name if name.__class__ is str else str(name), "d": dname,
                          "s": list(arr.shape), "c": "raw"})
            frames.append(memoryview(arr.reshape(-1).view(np.uint8)))
            continue
        dname = dname or arr.dtype.name
        if dname not in ALLOWED_DTYPES:
            raise DTypeError(f"tensor {name!r}: dtype {arr.dtype} not allowed on the wire; "
                             f"allowed {sorted(ALLOWED_DTYPES)}")
        t_spec = spec if spec is _RAW else spec.for_array(arr.dtype, arr.ndim)
        desc: dict[str, Any] = {"n": str(name), "d": dname, "s": list(arr.shape),
                                "c": str(t_spec)}
        if t_spec.base == "raw":
            wire_dtype = ALLOWED_DTYPES[dname]
            # Only non-contiguous or big-endian arrays are copied; the rest is a view.
            arr = np.ascontiguousarray(arr, dtype=wire_dtype)
            payload: bytes | memoryview = memoryview(arr.reshape(-1).view(np.uint8))
        else:
            payload, params = codecs.quantize(arr, t_spec.base)
            desc.update(params)
        if t_spec.compressor is not None:
            packed = codecs.compress(payload, t_spec.compressor)
            if codecs.worth_compressing(len(payload), len(packed), t_spec.compressor):
                payload = packed
            else:  # sent plain: the tensor's entry names the base alone
                desc["c"] = t_spec.base
        descs.append(desc)
        frames.append(payload)
    return descs, frames


# One encoder for every header (``json.dumps`` with options builds a new one per call).
_ENCODER = json.JSONEncoder(separators=(",", ":"), allow_nan=False)
_PREFIX = {k: bytes((WIRE_VERSION, k)) for k in _KINDS}


def _head(kind: int, header: dict[str, Any]) -> bytes:
    return _PREFIX[kind] + _ENCODER.encode(header).encode()


def encode(msg: Message, codec: str | None = None) -> list[bytes | memoryview]:
    """Frames for ``msg``.

    Args:
        msg: a Request, Reply, Ping or Pong.
        codec: codec spec for the tensors; defaults to ``request.codec`` for requests and
            ``"raw"`` for replies (the cloud answers with what the tail produced).

    Raises:
        DTypeError: a tensor dtype outside :data:`ALLOWED_DTYPES`.
        CodecError: unknown codec spec.
        ValueError: a request whose deadline is not finite.
    """
    if isinstance(msg, Request):
        descs, frames = _tensor_frames(msg.tensors, _SPECS.get(codec or msg.codec))
        head = _head(_KIND_REQUEST, {
            "id": msg.request_id, "agent": msg.agent_id, "model": msg.model,
            "version": msg.version, "digest": msg.digest, "cut": msg.cut,
            "budget_ms": _budget_ms(msg.deadline), "codec": codec or msg.codec,
            "t": descs, **({"tp": msg.traceparent} if msg.traceparent else {})})
        return [head, *frames]
    if isinstance(msg, Reply):
        descs, frames = _tensor_frames(msg.tensors, _SPECS.get(codec) if codec else _RAW)
        return [_reply_head(msg, descs), *frames]
    if isinstance(msg, Ping):
        return [_head(_KIND_PING, {"nonce": int(msg.nonce), "sent_at": float(msg.sent_at),
                                   "reply_bytes": int(msg.reply_bytes)}), msg.payload]
    if isinstance(msg, Pong):
        load = None
        if msg.load is not None:
            load = {"queue_depth": int(msg.load.queue_depth),
                    "queue_ms": float(msg.load.queue_ms),
                    "utilisation": float(msg.load.utilisation),
                    "inflight": int(msg.load.inflight)}
        return [_head(_KIND_PONG, {"nonce": int(msg.nonce), "sent_at": float(msg.sent_at),
                                   "server_time": float(msg.server_time),
                                   "received_bytes": int(msg.received_bytes),
                                   "load": load}), msg.payload]
    control = _encode_control(msg)
    if control is not None:
        return control
    raise TypeError(f"cannot encode {type(msg).__name__}")


_json_str = json.encoder.encode_basestring_ascii  # JSON string literal (C): "..."


def _json_num(x: float) -> str:
    """A finite float as JSON writes it (``float.__repr__``); non-finite is refused."""
    x = float(x)
    if not math.isfinite(x):
        raise ValueError(f"non-finite number in a header: {x!r}")
    return repr(x)


def _reply_head(msg: Reply, descs: list[dict[str, Any]]) -> bytes:
    """A reply's header, written directly: every tensor of every reply has one, and the
    general encoder costs several times more. The JSON is what :func:`_head` writes for
    the same fields (descriptors other than a plain raw one go through the encoder)."""
    parts = []
    for d in descs:
        if len(d) == 4 and d["c"] == "raw" and d["d"] in ALLOWED_DTYPES:
            parts.append(_raw_desc(d["n"], d["d"], d["s"]))
        else:
            parts.append(_ENCODER.encode(d))
    return _reply_head_with(msg, ",".join(parts))


def _raw_desc(name: str, wire_dtype: str, shape: Sequence[int]) -> str:
    """A plain raw tensor's descriptor, as the general encoder writes it."""
    dims = ",".join([str(int(x)) for x in shape])
    return f'{{"n":{_json_str(name)},"d":"{wire_dtype}","s":[{dims}],"c":"raw"}}'


def _reply_head_with(msg: Reply, descs: str) -> bytes:
    """A reply's header around its tensors' descriptors, already written as JSON."""
    body = (f'{{"id":{_json_str(msg.request_id)},"status":{int(msg.status)},'
            f'"error":{_json_str(msg.error)},"queue_ms":{_json_num(msg.queue_ms)},'
            f'"compute_ms":{_json_num(msg.compute_ms)},"t":[{descs}]}}')
    return _PREFIX[_KIND_REPLY] + body.encode()


def encode_replies(replies: Sequence[Reply]) -> list[list[bytes | memoryview]]:
    """Frames for each of ``replies`` (a batch's), as :func:`encode` gives them.

    The replies of one batch carry tensors of the same names, dtypes and shapes, so the
    header text describing them is written once per distinct layout, not once per reply;
    a reply whose tensors are not plain native, contiguous arrays goes through
    :func:`encode`. Raises what :func:`encode` raises, for the first reply that fails.
    """
    layouts: dict[tuple, str] = {}
    out: list[list[bytes | memoryview]] = []
    for msg in replies:
        frames: list[bytes | memoryview] = []
        key = []
        for name, arr in msg.tensors.items():
            if (arr.__class__ is not np.ndarray or name.__class__ is not str
                    or arr.dtype not in _WIRE_NAME or not arr.flags.c_contiguous):
                break
            key.append((name, arr.dtype, arr.shape))
            frames.append(memoryview(arr.reshape(-1).view(np.uint8)))
        else:
            k = tuple(key)
            descs = layouts.get(k)
            if descs is None:
                descs = ",".join(_raw_desc(n, _WIRE_NAME[d], shape) for n, d, shape in k)
                layouts[k] = descs
            if _NATIVE_IS_WIRE:
                out.append([_reply_head_with(msg, descs), *frames])
                continue
        out.append(encode(msg))
    return out


def _encode_control(msg: Message) -> list[bytes | memoryview] | None:
    """Frames of a distribution/rollout message, or None for another type."""
    if isinstance(msg, Fetch):
        return [_head(_KIND_FETCH, {
            "id": msg.request_id, "agent": msg.agent_id, "model": msg.model,
            "version": msg.version, "file": msg.file, "offset": int(msg.offset),
            "length": int(msg.length), "budget_ms": _budget_ms(msg.deadline)})]
    if isinstance(msg, Chunk):
        return [_head(_KIND_CHUNK, {
            "id": msg.request_id, "status": int(msg.status), "error": msg.error,
            "file": msg.file, "offset": int(msg.offset), "total": int(msg.total),
            "sha256": msg.sha256}), msg.data]
    if isinstance(msg, Report):
        return [_head(_KIND_REPORT, {
            "id": msg.request_id, "agent": msg.agent_id, "model": msg.model,
            "version": msg.version, "digest": msg.digest, "staged": msg.staged,
            "previous": msg.previous, "labels": [str(x) for x in msg.labels],
            "requests": int(msg.requests), "cloud": int(msg.cloud),
            "errors": int(msg.errors),
            "p50_ms": float(msg.p50_ms), "p99_ms": float(msg.p99_ms),
            "update_error": msg.update_error, "budget_ms": _budget_ms(msg.deadline)})]
    if isinstance(msg, Directive):
        target = None if msg.target is None else {
            "model": str(msg.target["model"]), "version": str(msg.target["version"]),
            "digest": str(msg.target["digest"])}
        return [_head(_KIND_DIRECTIVE, {"id": msg.request_id, "status": int(msg.status),
                                        "error": msg.error, "target": target})]
    return None


def _budget_ms(deadline: Deadline) -> float:
    budget = deadline.remaining_ms()
    if not math.isfinite(budget):
        raise ValueError(f"request deadline must be finite, got {budget} ms left")
    return round(budget, 3)


def wire_bytes(frames: Sequence[bytes | memoryview]) -> int:
    """Total payload bytes of a frame list (what a link moves, before its own framing)."""
    return sum(memoryview(f).nbytes for f in frames)


# ----------------------------------------------------------------------------- decode

def _buf(frame: Any) -> memoryview:
    """A flat byte view of a frame: bytes, memoryview or a zmq.Frame-like buffer."""
    try:
        mv = memoryview(getattr(frame, "buffer", frame))
    except TypeError:
        raise WireError(f"frame of type {type(frame).__name__} is not a buffer") from None
    if mv.ndim != 1 or mv.itemsize != 1:
        mv = mv.cast("B") if mv.c_contiguous else memoryview(mv.tobytes())
    return mv


def _reject_constant(name: str) -> float:
    raise ValueError(f"non-finite number {name}")


# One decoder for every header (``json.loads`` with options builds a new one per call).
_JSON = json.JSONDecoder(parse_constant=_reject_constant)


def _parse_head(frames: Sequence[Any], limits: WireLimits) -> tuple[int, dict[str, Any]]:
    if not isinstance(frames, Sequence) or len(frames) == 0:
        raise WireError("empty message")
    if len(frames) > limits.max_tensors + 1:
        raise LimitError(f"{len(frames)} frames; at most {limits.max_tensors + 1} allowed")
    head = _buf(frames[0])
    if len(head) < 2:
        raise WireError("header frame shorter than 2 bytes")
    if head[0] != WIRE_VERSION:
        raise VersionError(f"wire version {head[0]}, expected {WIRE_VERSION}")
    kind = head[1]
    if kind not in _KINDS:
        raise WireError(f"unknown message kind {kind}")
    if len(head) > limits.max_header_bytes:
        raise LimitError(f"header of {len(head)} bytes exceeds {limits.max_header_bytes}")
    try:
        header = _JSON.decode(str(head[2:], "utf-8"))
    except (ValueError, RecursionError) as e:
        raise WireError(f"header is not valid JSON ({type(e).__name__})") from None
    if not isinstance(header, dict):
        raise WireError("header is not a JSON object")
    return kind, header


def _str(h: dict[str, Any], key: str, default: str | None = None) -> str:
    v = h.get(key, default)
    if v.__class__ is not str or len(v) > _MAX_STR:  # JSON makes exact str, never subclasses
        raise WireError(f"header field {key!r} must be a string of at most {_MAX_STR} chars")
    return v


# A request's string fields and their defaults (None: required), checked in one call.
_REQUEST_STRS = (("id", None), ("agent", ""), ("model", None), ("version", ""),
                 ("digest", ""), ("cut", None), ("codec", "raw"))
_REPLY_STRS = (("id", None), ("error", ""))
# Status by code without an enum call per reply (a code with no status is a KeyError,
# reported as a wire error like any other malformed field).
_STATUS = {int(s): s for s in Status}


def _strs(h: dict[str, Any], fields: tuple[tuple[str, str | None], ...]) -> list[str]:
    """Several :func:`_str` checks in one pass (a request has seven string fields)."""
    out = []
    for key, default in fields:
        v = h.get(key, default)
        if v.__class__ is not str or len(v) > _MAX_STR:
            raise WireError(f"header field {key!r} must be a string of at most {_MAX_STR} "
                            "chars")
        out.append(v)
    return out


def _num(h: dict[str, Any], key: str, default: float | None = None) -> float:
    v = h.get(key, default)
    if isinstance(v, bool) or not isinstance(v, int | float):
        raise WireError(f"header field {key!r} must be a number")
    v = float(v) if isinstance(v, float) or abs(v) < 2 ** 63 else math.inf
    if not math.isfinite(v):
        raise WireError(f"header field {key!r} must be finite")
    return v


def _int(h: dict[str, Any], key: str, default: int | None = None, lo: int = 0,
         hi: int = 2 ** 63 - 1) -> int:
    v = h.get(key, default)
    if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
        raise WireError(f"header field {key!r} must be an integer in [{lo}, {hi}]")
    return v


# (dtype name, codec string, rank) -> (dtype, spec) for combinations already checked:
# every message of a stream names the same ones. Only combinations that passed go in,
# and there are few of them (dtypes x codec spellings x ranks), bounded anyway.
_KIND_OK: dict[tuple[str, str, int], tuple[np.dtype, codecs.CodecSpec]] = {}
_KIND_OK_MAX = 512


def _tensor_kind(name: str, dname: str, cstr: str, shape: Any, limits: WireLimits
                 ) -> tuple[np.dtype, codecs.CodecSpec]:
    """The dtype and codec of one tensor descriptor, after checking its dtype against the
    allow-list, its shape's form and rank, and that its codec applies to it."""
    if dname not in ALLOWED_DTYPES:
        raise DTypeError(f"tensor {name!r}: dtype {dname!r} not in the allow-list")
    if (shape.__class__ is not list or len(shape) > limits.max_ndim
            or not all(x.__class__ is int and x >= 0 for x in shape)):
        raise WireError(f"tensor {name!r}: shape must be a list of at most "
                        f"{limits.max_ndim} non-negative integers")
    key = (dname, cstr, len(shape))
    hit = _KIND_OK.get(key)
    if hit is not None:
        return hit
    dtype = ALLOWED_DTYPES[dname]
    spec = _SPECS.get(cstr)
    if spec.for_array(dtype, len(shape)) != spec:
        raise CodecError(f"tensor {name!r}: codec {spec} does not apply to {dname} "
                         f"of rank {len(shape)}")
    if len(_KIND_OK) < _KIND_OK_MAX:
        _KIND_OK[key] = (dtype, spec)
    return dtype, spec


def _decode_tensors(header: dict[str, Any], frames: Sequence[Any], limits: WireLimits
                    ) -> dict[str, np.ndarray]:
    descs = header.get("t", [])
    if not isinstance(descs, list):
        raise WireError("header field 't' must be a list of tensor descriptors")
    if len(descs) > limits.max_tensors:
        raise LimitError(f"{len(descs)} tensors; at most {limits.max_tensors} allowed")
    if len(frames) != 1 + len(descs):
        raise WireError(f"header lists {len(descs)} tensors but {len(frames) - 1} "
                        f"data frames arrived")
    # Pass 1: validate every descriptor and the totals before decoding anything.
    plan = []
    total = 0
    for i, d in enumerate(descs):
        if d.__class__ is not dict:
            raise WireError(f"tensor descriptor {i} is not an object")
        name, dname = _str(d, "n"), _str(d, "d")
        shape = d.get("s")
        dtype, spec = _tensor_kind(name, dname, _str(d, "c"), shape, limits)
        shape_t = tuple(shape)
        axis = 0
        if spec.base in codecs.PER_CHANNEL_BITS:
            axis = _int(d, "ax", lo=0, hi=max(len(shape_t) - 1, 0))
        n = math.prod(shape_t)
        if spec.base == "raw":
            out_bytes = payload_bytes = n * dtype.itemsize
        else:
            out_bytes = n * 4
            payload_bytes = codecs.encoded_size(shape_t, dtype, spec.base, axis)
        if max(out_bytes, payload_bytes) > limits.max_tensor_bytes:
            raise LimitError(f"tensor {name!r} declares {max(out_bytes, payload_bytes)} "
                             f"bytes; limit {limits.max_tensor_bytes}")
        total += out_bytes
        if total > limits.max_total_bytes:
            raise LimitError(f"tensors declare more than {limits.max_total_bytes} bytes")
        buf = _buf(frames[1 + i])
        if spec.compressor is None and len(buf) != payload_bytes:
            raise WireError(f"tensor {name!r}: shape {shape_t} x {dname} with codec {spec} "
                            f"needs {payload_bytes} bytes, frame has {len(buf)}")
        if spec.compressor is not None and len(buf) > limits.max_tensor_bytes:
            raise LimitError(f"tensor {name!r}: compressed frame of {len(buf)} bytes "
                             f"exceeds {limits.max_tensor_bytes}")
        plan.append((name, dtype, shape_t, spec, axis, payload_bytes, buf, d))
    if len(plan) > 1 and len({p[0] for p in plan}) != len(plan):
        raise WireError("duplicate tensor names")
    # Pass 2: decode (allocation now bounded by the checks above).
    out: dict[str, np.ndarray] = {}
    for name, dtype, shape_t, spec, axis, payload_bytes, buf, d in plan:
        if spec.compressor is not None:
            buf = codecs.decompress(buf, spec.compressor, payload_bytes)
        if spec.base == "raw":
            out[name] = np.frombuffer(buf, dtype=dtype).reshape(shape_t)
        else:
            out[name] = codecs.dequantize(buf, shape_t, spec.base, {**d, "ax": axis})
    return out


def _payload(frames: Sequence[Any], limits: WireLimits) -> bytes:
    if len(frames) != 2:
        raise WireError(f"ping/pong needs 2 frames, got {len(frames)}")
    buf = _buf(frames[1])
    if len(buf) > limits.max_total_bytes:
        raise LimitError(f"probe payload of {len(buf)} bytes exceeds {limits.max_total_bytes}")
    return bytes(buf)


def _only_head(frames: Sequence[Any]) -> None:
    if len(frames) != 1:
        raise WireError(f"control message needs 1 frame, got {len(frames)}")


def _decode_control(kind: int, h: dict[str, Any], frames: Sequence[Any],
                    limits: WireLimits) -> Message:
    """A Fetch, Chunk, Report or Directive from its parsed header and frames."""
    if kind == _KIND_FETCH:
        _only_head(frames)
        return Fetch(request_id=_str(h, "id"), agent_id=_str(h, "agent", ""),
                     model=_str(h, "model"), version=_str(h, "version"),
                     file=_str(h, "file"), offset=_int(h, "offset"),
                     length=_int(h, "length", hi=limits.max_total_bytes),
                     deadline=Deadline.after_ms(_num(h, "budget_ms")))
    if kind == _KIND_CHUNK:
        if len(frames) != 2:
            raise WireError(f"chunk needs 2 frames, got {len(frames)}")
        data = _buf(frames[1])
        if len(data) > limits.max_total_bytes:
            raise LimitError(f"chunk of {len(data)} bytes exceeds {limits.max_total_bytes}")
        return Chunk(request_id=_str(h, "id"),
                     status=Status(_int(h, "status", lo=0, hi=max(Status))),
                     error=_str(h, "error", ""), file=_str(h, "file", ""),
                     offset=_int(h, "offset", 0), total=_int(h, "total", 0),
                     sha256=_str(h, "sha256", ""), data=bytes(data))
    if kind == _KIND_REPORT:
        _only_head(frames)
        labels = h.get("labels", [])
        if not isinstance(labels, list) or len(labels) > _MAX_LABELS:
            raise WireError(f"report 'labels' must be a list of at most {_MAX_LABELS}")
        return Report(request_id=_str(h, "id"), agent_id=_str(h, "agent", ""),
                      model=_str(h, "model"), version=_str(h, "version"),
                      digest=_str(h, "digest", ""), staged=_str(h, "staged", ""),
                      previous=_str(h, "previous", ""),
                      labels=[_str({"l": x}, "l") for x in labels],
                      requests=_int(h, "requests", 0), cloud=_int(h, "cloud", 0),
                      errors=_int(h, "errors", 0),
                      p50_ms=_num(h, "p50_ms", 0.0), p99_ms=_num(h, "p99_ms", 0.0),
                      update_error=_str(h, "update_error", ""),
                      deadline=Deadline.after_ms(_num(h, "budget_ms")))
    _only_head(frames)
    target_h = h.get("target")
    target = None
    if target_h is not None:
        if not isinstance(target_h, dict):
            raise WireError("directive 'target' must be an object or null")
        target = {k: _str(target_h, k) for k in ("model", "version", "digest")}
    return Directive(request_id=_str(h, "id"),
                     status=Status(_int(h, "status", lo=0, hi=max(Status))),
                     error=_str(h, "error", ""), target=target)


def decode(frames: Sequence[Any], limits: WireLimits = WireLimits()) -> Message:
    """Decode frames into a message, strictly.

    Args:
        frames: bytes, memoryviews or zmq.Frame-like buffers, as received.
        limits: bounds checked before any allocation.

    Raises:
        WireError: (or a subclass) for anything malformed, lying or oversize.
    """
    try:
        kind, h = _parse_head(frames, limits)
        if kind == _KIND_REQUEST:
            rid, agent, model, version, digest, cut, codec = _strs(h, _REQUEST_STRS)
            tp = h.get("tp")
            return Request(
                request_id=rid, agent_id=agent, model=model, version=version, digest=digest,
                cut=cut, deadline=Deadline.after_ms(_num(h, "budget_ms")), codec=codec,
                tensors=_decode_tensors(h, frames, limits),
                traceparent=(clean_traceparent(tp) or "") if tp is not None else "")
        if kind == _KIND_REPLY:
            code = _int(h, "status", lo=0, hi=max(Status))
            rid, error = _strs(h, _REPLY_STRS)
            return Reply(
                request_id=rid, status=_STATUS[code], error=error,
                queue_ms=_num(h, "queue_ms", 0.0), compute_ms=_num(h, "compute_ms", 0.0),
                tensors=_decode_tensors(h, frames, limits))
        if kind == _KIND_PING:
            return Ping(nonce=_int(h, "nonce"), sent_at=_num(h, "sent_at"),
                        reply_bytes=_int(h, "reply_bytes", 0, hi=limits.max_total_bytes),
                        payload=_payload(frames, limits))
        if kind != _KIND_PONG:
            return _decode_control(kind, h, frames, limits)
        load_h = h.get("load")
        load = None
        if load_h is not None:
            if not isinstance(load_h, dict):
                raise WireError("pong 'load' must be an object or null")
            load = LoadReport(queue_depth=_int(load_h, "queue_depth", 0),
                              queue_ms=_num(load_h, "queue_ms", 0.0),
                              utilisation=_num(load_h, "utilisation", 0.0),
                              inflight=_int(load_h, "inflight", 0))
        return Pong(nonce=_int(h, "nonce"), sent_at=_num(h, "sent_at"),
                    server_time=_num(h, "server_time"),
                    received_bytes=_int(h, "received_bytes"), load=load,
                    payload=_payload(frames, limits))
    except WireError:
        raise
    except (ValueError, TypeError, OverflowError, MemoryError, IndexError, KeyError) as e:
        # Defence in depth: anything the explicit checks missed is still a wire error.
        raise WireError(f"malformed message ({type(e).__name__})") from None


def peek_request_id(frames: Sequence[Any]) -> str | None:
    """The request id of a (possibly undecodable) request, so a server can answer it."""
    try:
        kind, h = _parse_head(frames, WireLimits())
    except WireError:
        return None
    rid = h.get("id") if kind not in (_KIND_PING, _KIND_PONG) else None
    return rid if isinstance(rid, str) and len(rid) <= _MAX_STR else None


# ----------------------------------------------------------------------------- packing

_COUNT = struct.Struct("<I")
_LEN = struct.Struct("<Q")


def pack_frames(frames: Sequence[bytes | memoryview]) -> bytes:
    """Join frames into one payload: u32 count, u64 lengths, then the frames."""
    views = [memoryview(f).cast("B") if memoryview(f).ndim != 1 or memoryview(f).itemsize != 1
             else memoryview(f) for f in frames]
    head = _COUNT.pack(len(views)) + b"".join(_LEN.pack(len(v)) for v in views)
    return b"".join([head, *views])


def unpack_frames(payload: bytes | memoryview, limits: WireLimits = WireLimits()
                  ) -> list[memoryview]:
    """Split a :func:`pack_frames` payload into zero-copy views.

    Raises:
        WireError: counts or lengths that do not add up to the payload.
    """
    buf = memoryview(payload).cast("B") if not isinstance(payload, bytes) else memoryview(
        payload)
    if len(buf) < _COUNT.size:
        raise WireError("packed payload shorter than its frame count")
    (count,) = _COUNT.unpack_from(buf, 0)
    if count == 0 or count > limits.max_tensors + 1:
        raise LimitError(f"packed payload declares {count} frames")
    off = _COUNT.size + count * _LEN.size
    if len(buf) < off:
        raise WireError("packed payload truncated in its length table")
    out = []
    for i in range(count):
        (n,) = _LEN.unpack_from(buf, _COUNT.size + i * _LEN.size)
        if n > len(buf) - off:
            raise WireError("packed payload truncated: a frame runs past the end")
        out.append(buf[off:off + n])
        off += n
    if off != len(buf):
        raise WireError(f"packed payload has {len(buf) - off} trailing bytes")
    return out
