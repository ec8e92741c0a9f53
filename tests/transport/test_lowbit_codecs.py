"""Per-channel 4-bit and 2-bit activation codecs: exact sizes, bounded error, hostile bytes."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from transport import codecs
from transport.errors import CodecError

BASES = ("int8c", "int4c", "int2c")


def _roundtrip(x: np.ndarray, base: str) -> tuple[np.ndarray, int]:
    payload, params = codecs.quantize(x, base)
    data = bytes(payload)
    assert len(data) == codecs.encoded_size(x.shape, x.dtype, base, params["ax"])
    return codecs.dequantize(memoryview(data), x.shape, base, params), len(data)


@pytest.mark.parametrize("base", BASES)
@pytest.mark.parametrize("shape", [(2, 16, 7, 5), (3, 33), (1, 5, 3), (4, 1), (1, 64, 1, 1)])
def test_error_is_within_half_a_level_per_channel(base: str, shape: tuple[int, ...]) -> None:
    rng = np.random.default_rng(7)
    x = np.maximum(rng.normal(size=shape), 0).astype(np.float32)
    y, _ = _roundtrip(x, base)
    axis = codecs.int8c_axis(x.ndim)
    others = tuple(i for i in range(x.ndim) if i != axis)
    span = x.max(axis=others, keepdims=True) - x.min(axis=others, keepdims=True)
    step = span / ((1 << codecs.PER_CHANNEL_BITS[base]) - 1)
    assert np.all(np.abs(x - y) <= step / 2 + 1e-5)
    assert y.dtype == np.float32 and y.shape == x.shape


def test_fewer_bits_fewer_bytes() -> None:
    x = np.random.default_rng(1).random((1, 64, 28, 28), dtype=np.float32)
    sizes = {b: _roundtrip(x, b)[1] for b in BASES}
    header = 8 * 64
    assert sizes["int8c"] - header == x.size
    assert sizes["int4c"] - header == x.size // 2
    assert sizes["int2c"] - header == x.size // 4


def test_odd_counts_pad_the_last_byte() -> None:
    x = np.arange(7, dtype=np.float32).reshape(1, 1, 7)
    for base, bits in (("int4c", 4), ("int2c", 2)):
        y, n = _roundtrip(x, base)
        assert n == 8 * 7 + -(-7 * bits // 8)
        np.testing.assert_allclose(y, x, atol=1e-5)  # one value per channel: exact


def test_a_flat_vector_carries_one_range_per_sample() -> None:
    # A pooled / flattened cut [N, C]: per value scales would outweigh the values.
    x = np.random.default_rng(3).random((2, 512), dtype=np.float32)
    for base, bits in (("int8c", 8), ("int4c", 4), ("int2c", 2)):
        y, n = _roundtrip(x, base)
        assert n == 8 * 2 + x.size * bits // 8
        step = (x.max(axis=1, keepdims=True) - x.min(axis=1, keepdims=True)) / ((1 << bits) - 1)
        assert np.all(np.abs(x - y) <= step / 2 + 1e-5)


def test_non_finite_values_do_not_poison_the_scale() -> None:
    x = np.array([[1.0, np.nan, 3.0, np.inf], [0.0, 1.0, -np.inf, 2.0]], np.float32).T
    y, _ = _roundtrip(x, "int4c")
    assert np.isfinite(y).all()


def test_non_finite_channel_parameters_are_refused() -> None:
    x = np.ones((2, 4), np.float32)
    payload, params = codecs.quantize(x, "int2c")
    data = bytearray(bytes(payload))
    data[0:4] = np.float32(np.nan).tobytes()
    with pytest.raises(CodecError, match="non-finite"):
        codecs.dequantize(memoryview(bytes(data)), x.shape, "int2c", params)


@settings(max_examples=150, deadline=None)
@given(st.sampled_from(("int4c", "int2c")), st.binary(min_size=0, max_size=200),
       st.integers(1, 5), st.integers(1, 9))
def test_arbitrary_bytes_of_the_right_length_decode_or_refuse(base: str, blob: bytes,
                                                               c: int, n: int) -> None:
    shape = (n, c)
    need = codecs.encoded_size(shape, np.dtype(np.float32), base, 1)
    data = (blob * (need // max(len(blob), 1) + 1))[:need] if blob else bytes(need)
    try:
        y = codecs.dequantize(memoryview(data), shape, base, {"ax": 1})
    except CodecError:
        return
    assert y.shape == shape and y.dtype == np.float32
