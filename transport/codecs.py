"""Tensor codecs for cut activations: pure functions from arrays to bytes and back.

Spec strings (chosen per request, recorded per tensor in the wire header)::

    <base>[+<compressor>]

    base        raw     the array's own dtype, bytes as they are (zero-copy)
                fp16    float tensors cast to float16 (decoded back to float32)
                int8    affine uint8 per tensor: x ~ scale * q + low, one (scale, low)
                int8c   affine uint8 per channel (axis 1 for 4-D NCHW, 0 for 2-D [N, C], else
                        the last axis); the scales/lows travel in front of the data
                int4c   the same with 4-bit levels, two to a byte
                int2c   the same with 2-bit levels, four to a byte
    compressor  lz4     LZ4 block, declared decompressed size checked before allocation
                zstd    Zstandard level 3, same check

Examples: ``"raw"``, ``"fp16+zstd"``, ``"int8+lz4"``, ``"int8c+zstd"``, ``"int4c+zstd"``.
Lossy bases only apply to floating tensors; integer and bool tensors travel ``raw`` (with
the compressor, if any) whatever the spec says, because quantizing indices or masks would
corrupt them.

Quantized tensors decode to float32. Every decode path bounds its output size from the
header *before* allocating; violations raise :class:`transport.errors.CodecError` or
:class:`transport.errors.LimitError`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from transport.errors import CodecError, LimitError

__all__ = [
    "BASES",
    "COMPRESSORS",
    "PER_CHANNEL_BITS",
    "CodecSpec",
    "compress",
    "decompress",
    "dequantize",
    "encoded_size",
    "int8c_axis",
    "parse_spec",
    "quantize",
]

BASES = ("raw", "fp16", "int8", "int8c", "int4c", "int2c")
#: Per-channel affine bases and their bits per value. Fewer bits shrink the cut's bytes
#: 2x / 4x below int8c; whether a cut keeps its accuracy at those levels is measured per
#: cut by the partitioner, not assumed here.
PER_CHANNEL_BITS = {"int8c": 8, "int4c": 4, "int2c": 2}
COMPRESSORS = ("lz4", "zstd")
_ZSTD_LEVEL = 3
_LZ4_MAX = 0x7E000000  # lz4.block cannot address more than ~2 GiB in one block


@dataclass(frozen=True, slots=True)
class CodecSpec:
    """A parsed codec spec. ``str(spec)`` gives the canonical spec string."""

    base: str = "raw"
    compressor: str | None = None

    def __str__(self) -> str:
        return self.base if self.compressor is None else f"{self.base}+{self.compressor}"

    def for_array(self, dtype: np.dtype, ndim: int) -> CodecSpec:
        """The spec that actually applies to one tensor (lossy only for floats; a scalar
        has no channel axis, so ``int8c`` becomes ``int8`` for it)."""
        if self.base != "raw" and dtype.kind != "f":
            return CodecSpec("raw", self.compressor)
        if self.base == "int8c" and ndim == 0:
            return CodecSpec("int8", self.compressor)
        return self


def parse_spec(spec: str) -> CodecSpec:
    """Parse ``"int8+lz4"`` style specs; unknown parts raise :class:`CodecError`."""
    if not isinstance(spec, str) or len(spec) > 32:
        raise CodecError("codec spec must be a short string such as 'int8+lz4'")
    parts = spec.strip().lower().split("+")
    if len(parts) > 2 or parts[0] not in BASES:
        raise CodecError(f"unknown codec {spec!r}; bases {BASES}, compressors {COMPRESSORS}")
    comp = parts[1] if len(parts) == 2 else None
    if comp is not None and comp not in COMPRESSORS:
        raise CodecError(f"unknown compressor in {spec!r}; expected one of {COMPRESSORS}")
    return CodecSpec(parts[0], comp)


def int8c_axis(ndim: int) -> int:
    """Channel axis of the per-channel bases: 1 for 4-D NCHW activations, 0 (one range per
    sample) for 2-D ``[N, C]`` vectors, else the last (hidden size of ``[N, S, H]``).

    A flattened or pooled cut ``[1, C]`` split along C would carry 8 bytes of scale and
    low per value, more than the value itself; one range per sample costs 8 bytes in all.
    """
    if ndim == 4:
        return 1
    return 0 if ndim <= 2 else ndim - 1


def _finite(x: np.ndarray) -> np.ndarray:
    """NaN -> 0 and +/-inf -> the finite extremes, so one bad value cannot poison a scale."""
    if np.isfinite(x).all():
        return x
    ok = x[np.isfinite(x)]
    lo, hi = (float(ok.min()), float(ok.max())) if ok.size else (0.0, 0.0)
    return np.nan_to_num(x, nan=0.0, posinf=hi, neginf=lo)


def _finite_range(x: np.ndarray, axis: tuple[int, ...] | None) -> tuple[np.ndarray, np.ndarray]:
    # float64 so that hi - lo cannot overflow for extreme float32 values.
    lo = np.min(x, axis=axis, keepdims=axis is not None).astype(np.float64)
    hi = np.max(x, axis=axis, keepdims=axis is not None).astype(np.float64)
    return lo, hi


def _packed_len(n: int, bits: int) -> int:
    return -(-n * bits // 8)


def _pack(q: np.ndarray, bits: int) -> bytes | memoryview:
    """``8 // bits`` values per byte, the first in the lowest bits (values < 2**bits)."""
    if bits == 8:
        return memoryview(q)
    per = 8 // bits
    pad = (-q.size) % per
    if pad:
        q = np.concatenate([q, np.zeros(pad, np.uint8)])
    lanes = q.reshape(-1, per)
    out = lanes[:, 0].copy()
    for i in range(1, per):
        out |= lanes[:, i] << np.uint8(bits * i)
    return out.tobytes()


def _unpack(packed: np.ndarray, n: int, bits: int) -> np.ndarray:
    """Inverse of :func:`_pack`: the first ``n`` values."""
    if bits == 8:
        return packed[:n]
    per = 8 // bits
    mask = np.uint8((1 << bits) - 1)
    lanes = np.empty((packed.size, per), np.uint8)
    for i in range(per):
        lanes[:, i] = (packed >> np.uint8(bits * i)) & mask
    return lanes.reshape(-1)[:n]


def quantize(arr: np.ndarray, base: str) -> tuple[bytes | memoryview, dict]:
    """Encode one float array with a lossy base (``fp16``, ``int8``, ``int8c``/``int4c``/``int2c``).

    Returns:
        (payload, params) where params are the JSON-able header fields the decoder needs.
    """
    x = np.asarray(arr, dtype=np.float32)
    if base != "fp16":
        x = _finite(x)
    if base == "fp16":
        return memoryview(np.ascontiguousarray(x, dtype="<f2").reshape(-1).view(np.uint8)), {}
    if base == "int8":
        if x.size == 0:
            return b"", {"q": [1.0, 0.0]}
        lo64, hi64 = _finite_range(x, None)
        scale = np.float32(float(hi64 - lo64) / 255.0 or 1.0)
        lo = np.float32(lo64)
        q = np.clip(np.rint((x - lo) / scale), 0, 255).astype(np.uint8)
        return memoryview(q.reshape(-1)), {"q": [float(scale), float(lo)]}
    if base in PER_CHANNEL_BITS:
        bits = PER_CHANNEL_BITS[base]
        axis = int8c_axis(x.ndim)
        if x.ndim == 0:
            raise CodecError(f"{base} needs at least one axis (use int8 for scalars)")
        if x.size == 0:
            return b"", {"ax": axis}
        levels = (1 << bits) - 1
        others = tuple(i for i in range(x.ndim) if i != axis)
        lo64, hi64 = _finite_range(x, others)
        scale = np.where(hi64 > lo64, (hi64 - lo64) / levels, 1.0).astype(np.float32)
        lo = lo64.astype(np.float32)
        q = np.clip(np.rint((x - lo) / scale), 0, levels).astype(np.uint8)
        head = np.concatenate([scale.reshape(-1), lo.reshape(-1)]).astype("<f4")
        return head.tobytes() + _pack(q.reshape(-1), bits), {"ax": axis}
    raise CodecError(f"not a lossy codec base: {base!r}")


def encoded_size(shape: tuple[int, ...], dtype: np.dtype, base: str, axis: int = 0) -> int:
    """Bytes the (uncompressed) payload of this tensor must have, from the header alone."""
    n = 1
    for d in shape:
        n *= d
    if base == "raw":
        return n * dtype.itemsize
    if base == "fp16":
        return n * 2
    if base == "int8":
        return n
    if base in PER_CHANNEL_BITS:
        if n == 0 or not shape:
            return 0
        return 8 * shape[axis] + _packed_len(n, PER_CHANNEL_BITS[base])
    raise CodecError(f"unknown codec base {base!r}")


def dequantize(buf: memoryview, shape: tuple[int, ...], base: str, params: dict) -> np.ndarray:
    """Decode a lossy payload (already length-checked) into a new float32 array."""
    if base == "fp16":
        return np.frombuffer(buf, dtype="<f2").astype(np.float32).reshape(shape)
    if base == "int8":
        q = params.get("q")
        if (not isinstance(q, list) or len(q) != 2
                or not all(isinstance(v, int | float) and not isinstance(v, bool) for v in q)
                or not all(np.isfinite(v) for v in q)):
            raise CodecError("int8 tensor needs finite [scale, low] parameters")
        scale, lo = np.float32(q[0]), np.float32(q[1])
        u = np.frombuffer(buf, dtype=np.uint8).reshape(shape)
        out = u.astype(np.float32)
        out *= scale
        out += lo
        return out
    if base in PER_CHANNEL_BITS:
        n = 1
        for d in shape:
            n *= d
        if n == 0 or not shape:
            return np.zeros(shape, np.float32)
        axis = params["ax"]
        c = shape[axis]
        head = np.frombuffer(buf[: 8 * c], dtype="<f4")
        if not np.isfinite(head).all():
            raise CodecError(f"{base} tensor has non-finite channel parameters")
        bshape = [1] * len(shape)
        bshape[axis] = c
        scale, lo = head[:c].reshape(bshape), head[c:].reshape(bshape)
        u = _unpack(np.frombuffer(buf[8 * c:], dtype=np.uint8), n,
                    PER_CHANNEL_BITS[base]).reshape(shape)
        out = u.astype(np.float32)
        out *= scale
        out += lo
        return out
    raise CodecError(f"not a lossy codec base: {base!r}")


def compress(data: bytes | memoryview, compressor: str) -> bytes:
    """Compress one payload; the caller records ``len(data)`` as the declared size."""
    if compressor == "lz4":
        import lz4.block

        if len(data) > _LZ4_MAX:
            raise LimitError("tensor too large for an lz4 block; use zstd or raw")
        return lz4.block.compress(data, store_size=False)
    if compressor == "zstd":
        import zstandard

        return zstandard.ZstdCompressor(level=_ZSTD_LEVEL, write_content_size=True).compress(
            data)
    raise CodecError(f"unknown compressor {compressor!r}")


def decompress(data: memoryview, compressor: str, expected: int) -> memoryview:
    """Decompress to exactly ``expected`` bytes (already checked against the limits).

    Raises:
        CodecError: corrupt payload, or one that does not inflate to ``expected`` bytes.
    """
    if expected == 0:
        if len(data) > 64:
            raise CodecError("compressed payload for an empty tensor")
        return memoryview(b"")
    try:
        if compressor == "lz4":
            import lz4.block

            out = lz4.block.decompress(data, uncompressed_size=expected)
        elif compressor == "zstd":
            import zstandard

            declared = zstandard.frame_content_size(data)
            if declared not in (-1, expected):
                raise CodecError("zstd frame declares a size that differs from the header")
            out = zstandard.ZstdDecompressor().decompress(data, max_output_size=expected)
        else:
            raise CodecError(f"unknown compressor {compressor!r}")
    except CodecError:
        raise
    except Exception as e:  # lz4/zstd raise their own error types on corrupt input
        raise CodecError(f"corrupt {compressor} payload ({type(e).__name__})") from None
    if len(out) != expected:
        raise CodecError(
            f"{compressor} payload inflates to {len(out)} bytes, header says {expected}")
    return memoryview(out)
