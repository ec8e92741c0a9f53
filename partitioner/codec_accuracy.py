"""Which wire codecs a cut allows: bytes and the accuracy each keeps, on held-back data.

A lossy codec's error is not judged on the tensor it compresses but where it matters, at
the model's outputs: the shipped int8 head runs on the held-back inputs, each sample's
crossing tensors go through the codec's encode/decode round trip exactly as the wire does
it (per tensor, batch 1, lossy bases only on float tensors), the fp32 tail finishes, and
the outputs are compared with the fp32 full model. A codec *meets the floor* by the rule
every shipped head is held to (mean cosine, top-1 agreement for classifiers and the user
metric, on the held-back samples); ``cosine`` records the worst single sample, so a
reader can apply a stricter rule. The result is recorded per cut in the manifest
(:class:`contract.bundle.CutCodec`): agents and the cost model pick the fewest bytes among
the codecs a cut allows.
"""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Callable, Mapping, Sequence

import numpy as np
import onnx

from contract.bundle import CutCodec, CutSpec
from partitioner import ortutil
from partitioner.recipes import Floor
from partitioner.split import compare
from transport import codecs

__all__ = ["CANDIDATES", "best_codec", "measure_codecs", "roundtrip"]

#: The codecs measured at every interior cut, from exact to smallest. The fitted bases
#: (``int3m``, ``int2m``, see :mod:`transport.codecs`) keep more accuracy per bit than
#: ``int4c``/``int2c`` on most cuts and carry half their per-channel bytes. On a small
#: tensor (a pooled cut) the wire drops ``+zstd`` when its frame would cost more than it
#: saves, and the ratio recorded is what was sent.
CANDIDATES = ("raw", "fp16+lz4", "int8+lz4", "int8c+zstd", "int4c+zstd", "int2c+zstd",
              "int3m+zstd", "int2m+zstd")


def _header_extra(used: codecs.CodecSpec, params: Mapping[str, object]) -> int:
    """Header bytes the tensor's entry spends beyond an fp32 ``raw`` entry's: the longer
    codec name and each codec parameter (``,"ax":1``, int8's ``,"q":[scale,low]``),
    written as the wire writes its JSON header."""
    extra = len(str(used)) - len("raw")
    for k, v in params.items():
        extra += 1 + len(json.dumps({k: v}, separators=(",", ":"), allow_nan=False)) - 2
    return extra


def _encode(arr: np.ndarray, spec: codecs.CodecSpec
            ) -> tuple[codecs.CodecSpec, bytes | memoryview, dict, int]:
    """One tensor encoded as the wire does it: (the spec its header entry names, the
    payload as sent, codec params, plain payload bytes). A compressor that does not save
    bytes is dropped for the tensor, as on the wire."""
    t_spec = spec.for_array(arr.dtype, arr.ndim)
    params: dict = {}
    if t_spec.base == "raw":
        payload: bytes | memoryview = memoryview(arr.reshape(-1).view(np.uint8))
    else:
        payload, params = codecs.quantize(arr, t_spec.base)
    plain = len(payload)
    if t_spec.compressor is not None:
        packed = codecs.compress(payload, t_spec.compressor)
        if codecs.worth_compressing(plain, len(packed), t_spec.compressor):
            payload = packed
        else:
            t_spec = codecs.CodecSpec(t_spec.base)
    return t_spec, payload, params, plain


def roundtrip(arr: np.ndarray, spec: codecs.CodecSpec) -> tuple[np.ndarray, int]:
    """One tensor through ``spec`` as the wire encodes and decodes it.

    Returns:
        (the decoded array, bytes sent beyond what the header of an fp32 ``raw`` tensor
        costs: the payload, compressor frame included, plus the header's codec name and
        parameters)
    """
    back, size, _ = _timed_roundtrip(arr, spec)
    return back, size


def _timed_roundtrip(arr: np.ndarray, spec: codecs.CodecSpec) -> tuple[np.ndarray, int, float]:
    """:func:`roundtrip` plus the edge-side encode time in ms (quantize + compress)."""
    arr = np.ascontiguousarray(arr)
    t0 = time.perf_counter()
    used, payload, params, plain = _encode(arr, spec)
    encode_ms = (time.perf_counter() - t0) * 1e3
    size = len(payload) + _header_extra(used, params)
    if used.compressor is not None:
        payload = codecs.decompress(memoryview(payload), used.compressor, plain)
    if used.base == "raw":
        return np.frombuffer(payload, dtype=arr.dtype).reshape(arr.shape), size, encode_ms
    return (codecs.dequantize(memoryview(payload), arr.shape, used.base, params), size,
            encode_ms)


def _row_cosines(ref: Sequence[np.ndarray], got: Sequence[np.ndarray]) -> np.ndarray:
    r = np.concatenate([np.asarray(x, np.float64).reshape(len(x), -1) for x in ref], 1)
    a = np.concatenate([np.asarray(x, np.float64).reshape(len(x), -1) for x in got], 1)
    den = np.linalg.norm(r, axis=1) * np.linalg.norm(a, axis=1)
    return np.where(den > 0, (r * a).sum(1) / np.where(den > 0, den, 1.0), 1.0)


def measure_codecs(head_int8: onnx.ModelProto, tail: onnx.ModelProto,
                   eval_inputs: Mapping[str, np.ndarray], reference: Sequence[np.ndarray],
                   floor: Floor, classification: bool, *,
                   candidates: Sequence[str] = CANDIDATES,
                   tick: Callable[[str], None] | None = None) -> list[CutCodec]:
    """Bytes and end-to-end accuracy of each candidate codec at one cut.

    Args:
        head_int8 / tail: the shipped head and the fp32 tail of the cut.
        eval_inputs: held-back model inputs (batch first).
        reference: the fp32 full model's outputs on ``eval_inputs``.
    """
    hs, ts = ortutil.session(head_int8), ortutil.session(tail)
    names = [o.name for o in hs.get_outputs()]
    mids = dict(zip(names, ortutil.run_chunked(hs, names, {i.name: eval_inputs[i.name]
                                                           for i in hs.get_inputs()},
                                               ortutil.chunk_for(head_int8)), strict=True))
    del hs
    n = len(next(iter(mids.values())))
    tail_in = [i.name for i in ts.get_inputs()]
    tail_chunk = ortutil.chunk_for(tail)
    out: list[CutCodec] = []
    for text in candidates:
        spec = codecs.parse_spec(text)
        decoded: dict[str, list[np.ndarray]] = {k: [] for k in names}
        ratios, times = [], []
        for i in range(n):
            sample = {k: v[i:i + 1] for k, v in mids.items()}
            sent = raw = 0
            took = 0.0
            for k, arr in sample.items():
                back, size, ms = _timed_roundtrip(arr, spec)
                decoded[k].append(back.astype(arr.dtype, copy=False))
                sent += size
                raw += arr.nbytes
                took += ms
            ratios.append(sent / max(raw, 1))
            times.append(took)
        joined = {k: np.concatenate(v) for k, v in decoded.items()}
        feeds = {k: joined[k] if k in joined else eval_inputs[k] for k in tail_in}
        got = ortutil.run_chunked(ts, None, feeds, tail_chunk)
        cmp = compare(reference, got, classification)
        metric = floor.score(reference, got)
        out.append(CutCodec(codec=str(spec), ratio=round(float(np.mean(ratios)), 5),
                            cosine=round(float(_row_cosines(reference, got).min()), 6),
                            top1=cmp.top1_agreement,
                            encode_ms=round(statistics.median(times), 4),
                            meets_floor=floor.met(cmp, metric, classification)))
        if tick is not None:
            tick(f"codec {spec}: {out[-1].ratio:.3f}x cos {cmp.cosine:.4f}")
    return out


def best_codec(spec: CutSpec) -> CutCodec | None:
    """The fewest-bytes codec that meets the floor at this cut (None: not measured)."""
    ok = [c for c in spec.codecs if c.meets_floor]
    return min(ok, key=lambda c: (c.ratio, c.encode_ms)) if ok else None
