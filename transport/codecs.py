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
                int3m   per channel like int4c/int2c with 3 and 2 bits, but each channel's
                int2m   range is fitted to its values (the clipping that minimises the
                        squared error, searched per channel) and travels as float16
                        (scale, low) pairs inside the payload; levels bit-packed (3-bit:
                        eight values in three bytes). No header parameters: the channel
                        axis follows from the rank
    compressor  lz4     LZ4 block, declared decompressed size checked before allocation
                zstd    Zstandard level 3, same check

Examples: ``"raw"``, ``"fp16+zstd"``, ``"int8+lz4"``, ``"int8c+zstd"``, ``"int3m+zstd"``,
``"int2m"``.

With a compressor, the encoder sends a tensor's payload uncompressed when compressing it
would not save bytes (:func:`worth_compressing`); the tensor's own header entry then names
the base alone, so the decoder reads what was used. Tiny tensors (a pooled cut's 64
values) would otherwise pay a compressor frame larger than the data.

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
    "FITTED_BITS",
    "PER_CHANNEL_BITS",
    "CodecSpec",
    "compress",
    "decompress",
    "dequantize",
    "encoded_size",
    "int8c_axis",
    "parse_spec",
    "quantize",
    "worth_compressing",
]

BASES = ("raw", "fp16", "int8", "int8c", "int4c", "int2c", "int3m", "int2m")
#: Per-channel affine bases and their bits per value. Fewer bits shrink the cut's bytes
#: 2x / 4x below int8c; whether a cut keeps its accuracy at those levels is measured per
#: cut by the partitioner, not assumed here.
PER_CHANNEL_BITS = {"int8c": 8, "int4c": 4, "int2c": 2}
#: Per-channel bases with fitted ranges and float16 parameters in the payload, and their
#: bits per value.
FITTED_BITS = {"int3m": 3, "int2m": 2}
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
        has no channel axis, so a per-channel base becomes ``int8`` for it)."""
        if self.base != "raw" and dtype.kind != "f":
            return CodecSpec("raw", self.compressor)
        if ndim == 0 and (self.base in PER_CHANNEL_BITS or self.base in FITTED_BITS):
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
    """Values < 2**bits, first in the lowest bits: ``8 // bits`` to a byte for 2/4 bits,
    eight in three bytes (one little-endian 24-bit group) for 3 bits."""
    if bits == 8:
        return memoryview(q)
    if bits == 3:
        pad = (-q.size) % 8
        lanes = np.concatenate([q, np.zeros(pad, np.uint8)]).reshape(-1, 8).astype(np.uint32)
        acc = lanes[:, 0].copy()
        for i in range(1, 8):
            acc |= lanes[:, i] << np.uint32(3 * i)
        out3 = np.empty((acc.size, 3), np.uint8)
        for k in range(3):
            out3[:, k] = (acc >> np.uint32(8 * k)) & np.uint32(0xFF)
        return out3.reshape(-1)[:_packed_len(q.size, 3)].tobytes()
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
    if bits == 3:
        pad = (-packed.size) % 3
        grp = np.concatenate([packed, np.zeros(pad, np.uint8)]).reshape(-1, 3).astype(np.uint32)
        acc = grp[:, 0] | (grp[:, 1] << np.uint32(8)) | (grp[:, 2] << np.uint32(16))
        lanes3 = np.empty((acc.size, 8), np.uint8)
        for i in range(8):
            lanes3[:, i] = (acc >> np.uint32(3 * i)) & np.uint32(7)
        return lanes3.reshape(-1)[:n]
    per = 8 // bits
    mask = np.uint8((1 << bits) - 1)
    lanes = np.empty((packed.size, per), np.uint8)
    for i in range(per):
        lanes[:, i] = (packed >> np.uint8(bits * i)) & mask
    return lanes.reshape(-1)[:n]


#: Fractions of a channel's span tried as its clipped range (the full span first, so an
#: exact fit is never lost to a tie).
_FIT_FRACTIONS = tuple(1.0 - 0.05 * i for i in range(17))
_FP16_MAX = 65504.0
_FIT_SAMPLE = 256
_FIT_BLOCK = 1 << 20  # values per trial block


def _fp16_params(lo: np.ndarray, hi: np.ndarray, levels: int) -> tuple[np.ndarray, np.ndarray]:
    """(scale, low) as the decoder will see them (float16, widened), scale never zero."""
    lo16 = lo.astype(np.float16)
    scale16 = ((hi - lo) / levels).astype(np.float16)
    scale16 = np.where(scale16 > 0, scale16, np.float16(1.0))
    return scale16.astype(np.float32), lo16.astype(np.float32)


def _fit_channels(xs: np.ndarray, levels: int) -> tuple[np.ndarray, np.ndarray]:
    """Per row of ``xs`` ([C, M]), the (scale, low) whose uniform levels give the smallest
    squared error among clipped ranges: the top clipped with the bottom kept (post-ReLU
    channels keep their exact zeros), or both ends pulled towards the mean (bell-shaped
    channels). Outliers then cost their own clipping error instead of coarsening every
    other value's step."""
    lo0 = xs.min(axis=1, keepdims=True).astype(np.float64)
    hi0 = xs.max(axis=1, keepdims=True).astype(np.float64)
    mid = xs.mean(axis=1, keepdims=True, dtype=np.float64)
    if xs.shape[1] > 2 * _FIT_SAMPLE:
        # The error of each candidate range is estimated on an evenly strided sample of
        # the channel (the ranges themselves come from all of it): far less encode time
        # on a large feature map.
        xs = xs[:, ::xs.shape[1] // _FIT_SAMPLE]
    t = np.asarray(_FIT_FRACTIONS)[:, None, None]  # [K, 1, 1]: all ranges at once
    lo = np.concatenate([np.broadcast_to(lo0, (len(t), *lo0.shape)), mid - t[1:] * (mid - lo0)])
    hi = np.concatenate([lo0 + t * (hi0 - lo0), mid + t[1:] * (hi0 - mid)])
    scale, low = _fp16_params(lo, hi, levels)  # [K, C, 1]
    # Channels in blocks so that the [K, block, M] trial stays a few MiB.
    block = max(1, _FIT_BLOCK // (len(lo) * xs.shape[1]))
    pick = np.empty(xs.shape[0], np.intp)
    for c0 in range(0, xs.shape[0], block):
        x, s, lw = xs[None, c0:c0 + block], scale[:, c0:c0 + block], low[:, c0:c0 + block]
        err = np.subtract(x, lw)
        err /= s
        np.rint(err, out=err)
        np.clip(err, 0, levels, out=err)
        err *= s
        err += lw
        err -= x
        # argmin keeps the first of equal errors: the full range wins ties
        pick[c0:c0 + block] = np.einsum("kcm,kcm->kc", err, err).argmin(axis=0)
    rows = np.arange(xs.shape[0])
    return scale[pick, rows], low[pick, rows]


def _fitted_quantize(x: np.ndarray, base: str) -> bytes:
    bits = FITTED_BITS[base]
    if x.ndim == 0:
        raise CodecError(f"{base} needs at least one axis (use int8 for scalars)")
    if x.size == 0:
        return b""
    levels = (1 << bits) - 1
    axis = int8c_axis(x.ndim)
    # Parameters travel as float16: values beyond its range are clipped to it.
    xs = np.clip(np.moveaxis(x, axis, 0).reshape(x.shape[axis], -1), -_FP16_MAX, _FP16_MAX)
    scale, lo = _fit_channels(xs, levels)
    q = np.clip(np.rint((xs - lo) / scale), 0, levels).astype(np.uint8)
    q = np.moveaxis(q.reshape(np.moveaxis(x, axis, 0).shape), 0, axis).reshape(-1)
    head = np.concatenate([scale.reshape(-1), lo.reshape(-1)]).astype("<f2").tobytes()
    return head + bytes(_pack(q, bits))


def _fitted_dequantize(buf: memoryview, shape: tuple[int, ...], base: str) -> np.ndarray:
    bits = FITTED_BITS[base]
    n = 1
    for d in shape:
        n *= d
    if n == 0 or not shape:
        return np.zeros(shape, np.float32)
    axis = int8c_axis(len(shape))
    c = shape[axis]
    head = np.frombuffer(buf[: 4 * c], dtype="<f2").astype(np.float32)
    if not np.isfinite(head).all():
        raise CodecError(f"{base} tensor has non-finite channel parameters")
    u = _unpack(np.frombuffer(buf[4 * c:], dtype=np.uint8), n, bits)
    bshape = [1] * len(shape)
    bshape[axis] = c
    out = u.reshape(shape).astype(np.float32)
    out *= head[:c].reshape(bshape)
    out += head[c:].reshape(bshape)
    return out


def quantize(arr: np.ndarray, base: str) -> tuple[bytes | memoryview, dict]:
    """Encode one float array with a lossy base (``fp16``, ``int8``, ``int8c``/``int4c``/
    ``int2c``, ``int3m``/``int2m``).

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
    if base in FITTED_BITS:
        return _fitted_quantize(x, base), {}
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
    if base in FITTED_BITS:
        if n == 0 or not shape:
            return 0
        return 4 * shape[int8c_axis(len(shape))] + _packed_len(n, FITTED_BITS[base])
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
    if base in FITTED_BITS:
        return _fitted_dequantize(buf, shape, base)
    raise CodecError(f"not a lossy codec base: {base!r}")


def worth_compressing(plain: int, packed: int, compressor: str) -> bool:
    """Whether a compressed payload of ``packed`` bytes beats sending the ``plain`` bytes
    as they are, counting the ``+<compressor>`` the tensor's header entry then names."""
    return packed + 1 + len(compressor) < plain


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
