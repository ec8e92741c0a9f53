"""hypothesis fuzzes ``wire.decode`` with >= 10,000 malformed messages: it may only raise
``WireError`` subclasses, and must never allocate beyond the configured limits (measured
with tracemalloc's peak around each decode; numpy reports its buffers to tracemalloc)."""

from __future__ import annotations

import contextlib
import json
import tracemalloc

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from contract.deadline import Deadline
from transport import wire
from transport.errors import WireError
from transport.messages import (
    Chunk,
    Directive,
    Fetch,
    Message,
    Ping,
    Pong,
    Reply,
    Report,
    Request,
    Status,
)

LIMITS = wire.WireLimits(max_header_bytes=4096, max_tensors=8, max_tensor_bytes=1 << 20,
                         max_total_bytes=1 << 20, max_ndim=6)
# Output plus one intermediate (decompressed payload or uint8 codes) plus small change.
PEAK_BOUND = 2 * LIMITS.max_total_bytes + (256 << 10)


def _bases() -> list[list[bytes]]:
    rng = np.random.default_rng(0)
    x = np.maximum(rng.standard_normal((2, 4, 3, 3)), 0).astype(np.float32)
    msgs: list[Message] = []
    for codec in ("raw", "fp16", "int8", "int8c", "raw+lz4", "int8+zstd", "int8c+lz4"):
        msgs.append(Request("r", "a", "m", "1", "d", "c", Deadline.after_ms(1000),
                            {"x": x, "i": np.arange(3, dtype=np.int16)}, codec=codec))
    msgs.append(Reply("r", Status.OK, "", {"y": x[0]}))
    msgs.append(Ping(1, 2.0, b"pp", 10))
    msgs.append(Pong(1, 2.0, 3.0, 2, None, b"qq"))
    # model distribution and rollout control
    msgs.append(Fetch("f", "a", "m", "2", "head.onnx", 0, 4096, Deadline.after_ms(1000)))
    msgs.append(Chunk("f", Status.OK, "", "head.onnx", 0, 10, "ab" * 32, b"0123456789"))
    msgs.append(Report("p", "a", "m", "1", "d" * 64, Deadline.after_ms(1000), staged="2",
                       labels=["eu"], requests=5, cloud=3, errors=1, p50_ms=2.0, p99_ms=9.0))
    msgs.append(Directive("p", target={"model": "m", "version": "2", "digest": "e" * 64}))
    return [[bytes(f) for f in wire.encode(m)] for m in msgs]


BASES = _bases()

_scalars = (st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False)
            | st.text(max_size=12))
json_values = _scalars | st.lists(_scalars, max_size=4) | st.fixed_dictionaries(
    {}, optional={"n": _scalars, "s": _scalars, "x": _scalars})
huge_ints = st.integers(min_value=-(1 << 70), max_value=1 << 70)
shapes = st.lists(st.one_of(st.integers(-3, 10), huge_ints, st.sampled_from([1 << 20, 1 << 31])),
                  max_size=9)


@st.composite
def header_mutations(draw: st.DrawFn) -> list[bytes]:
    frames = list(draw(st.sampled_from(BASES)))
    head = json.loads(frames[0][2:])
    for _ in range(draw(st.integers(1, 3))):
        descs = head.get("t")
        if isinstance(descs, list) and descs and isinstance(descs[0], dict) and draw(
                st.booleans()):
            d = descs[draw(st.integers(0, len(descs) - 1))]
            key = draw(st.sampled_from(["n", "d", "s", "c", "q", "ax", "zz"]))
            d[key] = draw(st.one_of(
                json_values, shapes, huge_ints,
                st.sampled_from(["float32", "int8", "bool", "complex64", "<f4", "O",
                                 "raw", "int8+lz4", "int8c+zstd", "fp16+zstd", "raw+zstd"])))
        else:
            key = draw(st.sampled_from([*sorted(head), "t", "extra"]))
            head[key] = draw(json_values | huge_ints)
    body = json.dumps(head).encode()
    frames[0] = frames[0][:2] + body
    if draw(st.booleans()):  # lie about the count of frames too
        frames = frames[:draw(st.integers(0, len(frames)))]
    return frames


@st.composite
def byte_mutations(draw: st.DrawFn) -> list[bytes]:
    frames = [bytearray(f) for f in draw(st.sampled_from(BASES))]
    for _ in range(draw(st.integers(1, 4))):
        i = draw(st.integers(0, len(frames) - 1))
        f = frames[i]
        op = draw(st.sampled_from(["flip", "truncate", "extend", "drop", "dup"]))
        if op == "flip" and f:
            pos = draw(st.integers(0, len(f) - 1))
            f[pos] ^= draw(st.integers(1, 255))
        elif op == "truncate":
            del f[draw(st.integers(0, len(f))):]
        elif op == "extend":
            f.extend(draw(st.binary(min_size=1, max_size=64)))
        elif op == "drop" and len(frames) > 1:
            frames.pop(i)
        elif op == "dup":
            frames.insert(i, bytearray(f))
    return [bytes(f) for f in frames]


random_frames = st.lists(st.binary(max_size=128), max_size=6).map(
    lambda fs: fs if not fs else [bytes((wire.WIRE_VERSION,)) + fs[0][:1] + fs[0][1:],
                                  *fs[1:]])
malformed = st.one_of(header_mutations(), byte_mutations(), random_frames)


@pytest.mark.slow
@settings(max_examples=10_000, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                 ])
@given(frames=malformed)
def test_decode_only_raises_wire_errors_within_limits(frames: list[bytes]) -> None:
    # Trace only the decode itself: tracing hypothesis too would make this slow.
    tracemalloc.start()
    try:
        try:
            msg = wire.decode(frames, LIMITS)
        except WireError:
            msg = None
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak <= PEAK_BOUND, f"decode allocated {peak} bytes"
    if isinstance(msg, Request | Reply):
        total = sum(t.nbytes for t in msg.tensors.values())
        assert total <= LIMITS.max_total_bytes
        assert len(msg.tensors) <= LIMITS.max_tensors


def test_unpack_frames_only_raises_wire_errors() -> None:
    """The MQTT payload splitter, fuzzed more cheaply with seeded random bytes."""
    rng = np.random.default_rng(7)
    packed = wire.pack_frames(BASES[0])
    for _ in range(3000):
        buf = bytearray(packed)
        for _ in range(rng.integers(1, 4)):
            buf[rng.integers(0, len(buf))] = rng.integers(0, 256)
        cut = int(rng.integers(0, len(buf) + 1))
        for candidate in (bytes(buf), bytes(buf[:cut])):
            with contextlib.suppress(WireError):
                wire.decode(wire.unpack_frames(candidate, LIMITS), LIMITS)


def test_tracemalloc_sees_decode_allocations() -> None:
    """The allocation bound above is meaningful: decoding 512 KiB shows up in the peak."""
    x = np.ones((128, 1024), np.float32)
    req = Request("r", "a", "m", "1", "d", "c", Deadline.after_ms(0), {"x": x}, codec="raw+lz4")
    frames = [bytes(f) for f in wire.encode(req)]
    tracemalloc.start()
    try:
        wire.decode(frames, LIMITS)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak >= x.nbytes
