"""Fitted-range 3-bit and 2-bit codecs (int3m, int2m) and the compressor that steps aside
when it would not save bytes."""

from __future__ import annotations

import contextlib
import json
import tracemalloc

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from contract.deadline import Deadline
from transport import codecs, wire
from transport.errors import CodecError, WireError
from transport.messages import Reply, Request, Status

FITTED = ("int3m", "int2m")


def _roundtrip(x: np.ndarray, base: str) -> tuple[np.ndarray, int]:
    payload, params = codecs.quantize(x, base)
    assert params == {}  # everything the decoder needs travels in the payload
    data = bytes(payload)
    assert len(data) == codecs.encoded_size(x.shape, x.dtype, base)
    return codecs.dequantize(memoryview(data), x.shape, base, {}), len(data)


def _relu(shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    return np.maximum(np.random.default_rng(seed).normal(size=shape), 0).astype(np.float32)


@pytest.mark.parametrize("bits", [2, 3, 4])
@pytest.mark.parametrize("n", [1, 2, 7, 8, 9, 16, 17, 61])
def test_bit_packing_round_trips_every_level(bits: int, n: int) -> None:
    q = (np.arange(n) % (1 << bits)).astype(np.uint8)
    packed = np.frombuffer(bytes(codecs._pack(q, bits)), np.uint8)
    assert packed.size == -(-n * bits // 8)
    np.testing.assert_array_equal(codecs._unpack(packed, n, bits), q)


@pytest.mark.parametrize("base", FITTED)
@pytest.mark.parametrize("shape", [(2, 16, 7, 5), (3, 33), (1, 5, 3), (4, 1), (1, 64)])
def test_sizes_and_bounds(base: str, shape: tuple[int, ...]) -> None:
    x = _relu(shape, 1)
    y, n = _roundtrip(x, base)
    bits = codecs.FITTED_BITS[base]
    axis = codecs.int8c_axis(x.ndim)
    assert n == 4 * shape[axis] + -(-x.size * bits // 8)  # float16 (scale, low) per channel
    assert y.shape == x.shape and y.dtype == np.float32
    others = tuple(i for i in range(x.ndim) if i != axis)
    lo, hi = x.min(axis=others, keepdims=True), x.max(axis=others, keepdims=True)
    slack = 1e-3 * np.maximum(np.abs(lo), np.abs(hi)) + 1e-3  # float16 parameters
    assert np.all(y >= lo - slack) and np.all(y <= hi + slack)


def test_a_pooled_cut_costs_a_tenth_of_fp32() -> None:
    x = _relu((1, 64), 2)
    for base, want in (("int2m", 4 + 16), ("int3m", 4 + 24)):
        assert _roundtrip(x, base)[1] == want
    # on the wire: no compressor frame, and the header entry only names a longer codec
    extra = (wire.wire_bytes(wire.encode(_reply({"x": x}), codec="int2m+zstd"))
             - wire.wire_bytes(wire.encode(_reply({"x": x}))))
    assert x.nbytes + extra == 4 + 16 + len("int2m") - len("raw")
    assert (x.nbytes + extra) / x.nbytes < 0.1


def test_fitting_beats_the_full_range_when_a_channel_has_an_outlier() -> None:
    x = np.random.default_rng(3).normal(size=(1, 8, 16, 16)).astype(np.float32)
    x[0, :, 0, 0] = 40.0  # one spike per channel stretches the full range
    err = {b: float(np.mean((_roundtrip(x, b)[0] - x) ** 2)) for b in FITTED}
    p, prm = codecs.quantize(x, "int2c")
    y = codecs.dequantize(memoryview(bytes(p)), x.shape, "int2c", prm)
    assert err["int2m"] < 0.6 * float(np.mean((y - x) ** 2))
    assert err["int3m"] < err["int2m"]


def test_constant_empty_and_non_finite_inputs() -> None:
    x = np.full((1, 3, 4, 4), 2.5, np.float32)
    np.testing.assert_array_equal(_roundtrip(x, "int2m")[0], x)
    empty, n = _roundtrip(np.zeros((0, 4), np.float32), "int3m")
    assert empty.shape == (0, 4) and n == 0
    bad = np.array([[1.0, np.nan, 3.0, np.inf, -np.inf, 1e30]], np.float32)
    y, _ = _roundtrip(bad, "int3m")
    assert np.isfinite(y).all() and float(np.abs(y).max()) <= 65504.0 * 1.001  # float16 range
    with pytest.raises(CodecError):
        codecs.quantize(np.float32(1.0), "int2m")
    assert codecs.CodecSpec("int3m").for_array(np.dtype(np.float32), 0).base == "int8"
    assert codecs.CodecSpec("int3m").for_array(np.dtype(np.int64), 2).base == "raw"


@pytest.mark.parametrize("bad", [np.float16(np.nan), np.float16(np.inf), np.float16(-np.inf)])
def test_non_finite_parameters_are_refused(bad: np.float16) -> None:
    x = _relu((1, 4, 3, 3))
    data = bytearray(bytes(codecs.quantize(x, "int3m")[0]))
    data[2:4] = np.array([bad], "<f2").tobytes()
    with pytest.raises(CodecError, match="non-finite"):
        codecs.dequantize(memoryview(bytes(data)), x.shape, "int3m", {})


@settings(max_examples=60, deadline=None, database=None)
@given(st.sampled_from(FITTED), st.binary(min_size=1, max_size=64), st.integers(1, 4),
       st.integers(1, 9))
def test_arbitrary_payload_bytes_decode_finite_or_refuse(base: str, blob: bytes, c: int,
                                                          m: int) -> None:
    shape = (1, c, m, 1)
    need = codecs.encoded_size(shape, np.dtype(np.float32), base)
    data = (blob * (need // len(blob) + 1))[:need]
    try:
        y = codecs.dequantize(memoryview(data), shape, base, {})
    except CodecError:
        return
    assert y.shape == shape and np.isfinite(y).all()


# ----------------------------------------------------------------------------- wire

def _reply(tensors: dict[str, np.ndarray]) -> Reply:
    return Reply("r", Status.OK, "", tensors)


def test_wire_skips_a_compressor_that_does_not_pay_and_names_what_it_used() -> None:
    small, big = _relu((1, 64), 4), _relu((1, 16, 32, 32), 5)
    frames = wire.encode(_reply({"s": small, "b": big}), codec="int2m+zstd")
    head = json.loads(bytes(frames[0])[2:])
    assert [d["c"] for d in head["t"]] == ["int2m", "int2m+zstd"]
    assert len(frames[1]) == codecs.encoded_size(small.shape, small.dtype, "int2m")
    got = wire.decode([bytes(f) for f in frames]).tensors
    for name, x in (("s", small), ("b", big)):
        np.testing.assert_array_equal(got[name], _roundtrip(x, "int2m")[0])


_LIMITS = wire.WireLimits(max_header_bytes=4096, max_tensors=4, max_tensor_bytes=1 << 16,
                          max_total_bytes=1 << 16, max_ndim=6)
_BASES = [[bytes(f) for f in wire.encode(Request(
    "r", "a", "m", "1", "d", "c", Deadline.after_ms(1000),
    {"x": _relu((1, 4, 5, 3), 7), "p": _relu((1, 64), 8), "i": np.arange(3, dtype=np.int16)},
    codec=codec))] for codec in ("int3m", "int2m", "int3m+zstd", "int2m+lz4")]


@st.composite
def _mutated(draw: st.DrawFn) -> list[bytes]:
    frames = list(draw(st.sampled_from(_BASES)))
    if draw(st.booleans()):
        head = json.loads(frames[0][2:])
        d = head["t"][draw(st.integers(0, len(head["t"]) - 1))]
        key = draw(st.sampled_from(["c", "s", "d", "ax"]))
        d[key] = draw(st.one_of(
            st.sampled_from(["int3m", "int2m", "int3m+zstd", "int2m+lz4", "int4c", "raw"]),
            st.lists(st.integers(-2, 1 << 20), max_size=5), st.integers(-5, 1 << 40),
            st.sampled_from(["float32", "int16", "bool"])))
        frames[0] = frames[0][:2] + json.dumps(head).encode()
    else:
        i = draw(st.integers(1, len(frames) - 1))
        f = bytearray(frames[i])
        if f and draw(st.booleans()):
            f[draw(st.integers(0, len(f) - 1))] ^= draw(st.integers(1, 255))
        else:
            del f[draw(st.integers(0, len(f))):]
        frames[i] = bytes(f)
    return frames


@settings(max_examples=300, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(frames=_mutated())
def test_hostile_messages_with_fitted_codecs_only_raise_wire_errors(frames: list[bytes]
                                                                    ) -> None:
    tracemalloc.start()
    try:
        with contextlib.suppress(WireError):
            msg = wire.decode(frames, _LIMITS)
            assert all(np.isfinite(v).all() for k, v in msg.tensors.items() if k != "i")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak <= 2 * _LIMITS.max_total_bytes + (256 << 10)
