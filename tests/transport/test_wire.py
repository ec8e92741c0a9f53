"""Wire format and codecs: round trips, zero-copy, strictness, codec accuracy and size."""

from __future__ import annotations

import json

import numpy as np
import pytest

from contract.deadline import Deadline
from transport import codecs, wire
from transport.errors import CodecError, DTypeError, LimitError, VersionError, WireError
from transport.messages import LoadReport, Ping, Pong, Reply, Request, Status


def _req(tensors: dict[str, np.ndarray], codec: str = "raw") -> Request:
    return Request(request_id="r-1", agent_id="a", model="m", version="3", digest="ab" * 32,
                   cut="c2", deadline=Deadline.after_ms(1000), tensors=tensors, codec=codec)


def _relu_activation(seed: int = 0) -> np.ndarray:
    """A ReLU-conv-like cut activation: about half zeros, smooth positive values."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((1, 32, 28, 28)).astype(np.float32)
    x = (x + np.roll(x, 1, axis=2) + np.roll(x, 1, axis=3)) / 3  # spatial correlation
    return np.maximum(x * rng.uniform(0.5, 2, size=(1, 32, 1, 1)).astype(np.float32), 0)


@pytest.mark.parametrize("codec", ["raw", "fp16", "int8", "int8c", "raw+lz4", "raw+zstd",
                                   "fp16+lz4", "int8+lz4", "int8+zstd", "int8c+lz4",
                                   "int8c+zstd"])
def test_request_round_trip_every_codec(codec: str) -> None:
    x = _relu_activation()
    mask = np.array([True, False, True])
    msg = wire.decode(wire.encode(_req({"act": x, "mask": mask}, codec)))
    assert isinstance(msg, Request)
    assert (msg.request_id, msg.model, msg.version, msg.cut, msg.codec) == (
        "r-1", "m", "3", "c2", codec)
    np.testing.assert_array_equal(msg.tensors["mask"], mask)
    got = msg.tensors["act"]
    assert got.shape == x.shape and got.dtype == np.float32
    base = codec.split("+")[0]
    if base == "raw":
        np.testing.assert_array_equal(got, x)
    elif base == "fp16":
        np.testing.assert_allclose(got, x, rtol=1e-3, atol=1e-3)
    else:
        step = float(x.max() - x.min()) / 255  # int8c is per channel: at least this good
        assert float(np.abs(got - x).max()) <= step / 2 + 1e-6


def test_reply_ping_pong_round_trip() -> None:
    y = np.arange(12, dtype=np.int64).reshape(3, 4)
    r = wire.decode(wire.encode(Reply("r-9", Status.VERSION_MISMATCH, "stale", {"y": y},
                                      queue_ms=1.25, compute_ms=7.0)))
    assert isinstance(r, Reply) and r.status == Status.VERSION_MISMATCH and r.error == "stale"
    assert (r.queue_ms, r.compute_ms) == (1.25, 7.0)
    np.testing.assert_array_equal(r.tensors["y"], y)
    p = wire.decode(wire.encode(Ping(nonce=5, sent_at=12.5, payload=b"abc", reply_bytes=99)))
    assert p == Ping(nonce=5, sent_at=12.5, payload=b"abc", reply_bytes=99)
    pong = Pong(nonce=5, sent_at=12.5, server_time=13.0, received_bytes=3,
                load=LoadReport(2, 1.5, 0.5, 1), payload=b"zz")
    assert wire.decode(wire.encode(pong)) == pong


def test_raw_is_zero_copy_both_ways() -> None:
    x = np.random.default_rng(1).standard_normal((64, 1024)).astype(np.float32)
    frames = wire.encode(_req({"x": x}))
    assert isinstance(frames[1], memoryview)
    assert np.shares_memory(np.frombuffer(frames[1], np.uint8), x)  # encode: a view of x
    received = [bytes(f) for f in frames]  # what a socket hands over
    got = wire.decode(received).tensors["x"]
    assert np.shares_memory(got, np.frombuffer(received[1], np.uint8))  # decode: a view
    assert not got.flags.writeable


def test_non_contiguous_and_big_endian_inputs() -> None:
    x = np.arange(24, dtype=np.float32).reshape(4, 6)[:, ::2]
    be = np.arange(5, dtype=">i4")
    got = wire.decode(wire.encode(_req({"x": x, "be": be}))).tensors
    np.testing.assert_array_equal(got["x"], x)
    np.testing.assert_array_equal(got["be"], be)


def test_encode_refuses_unknown_dtype_and_codec() -> None:
    with pytest.raises(DTypeError):
        wire.encode(_req({"c": np.zeros(2, np.complex64)}))
    with pytest.raises(CodecError):
        wire.encode(_req({"x": np.zeros(2, np.float32)}, codec="int4"))
    with pytest.raises(CodecError):
        wire.encode(_req({"x": np.zeros(2, np.float32)}, codec="raw+gzip"))


def _frames_with_header(mutate, tensors=None, codec="raw"):  # type: ignore[no-untyped-def]
    frames = [bytes(f) for f in wire.encode(_req(tensors or {"x": np.ones((2, 3), np.float32)},
                                                 codec))]
    head = json.loads(frames[0][2:])
    mutate(head)
    frames[0] = frames[0][:2] + json.dumps(head).encode()
    return frames


@pytest.mark.parametrize(("mutate", "error"), [
    (lambda h: h["t"][0].update(d="complex64"), DTypeError),
    (lambda h: h["t"][0].update(d="object"), DTypeError),
    (lambda h: h["t"][0].update(s=[2, 4]), WireError),  # shape x itemsize != buffer
    (lambda h: h["t"][0].update(s=[-2, -3]), WireError),
    (lambda h: h["t"][0].update(s=[1 << 40, 1 << 40]), LimitError),
    (lambda h: h["t"][0].update(s=[1] * 20), WireError),
    (lambda h: h["t"][0].update(c="nope"), CodecError),
    (lambda h: h["t"].append(dict(h["t"][0])), WireError),  # header lists a missing frame
    (lambda h: h.update(budget_ms="soon"), WireError),
    (lambda h: h.pop("budget_ms"), WireError),
    (lambda h: h.update(id=7), WireError),
    (lambda h: h.pop("model"), WireError),
    (lambda h: h.update(t={"x": 1}), WireError),
])
def test_strict_header_checks(mutate, error) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(error):
        wire.decode(_frames_with_header(mutate))


def test_version_kind_and_header_limits() -> None:
    frames = [bytes(f) for f in wire.encode(_req({"x": np.ones(3, np.float32)}))]
    with pytest.raises(VersionError):
        wire.decode([bytes((wire.WIRE_VERSION + 1,)) + frames[0][1:], frames[1]])
    with pytest.raises(WireError):
        wire.decode([frames[0][:1] + b"\x09" + frames[0][2:], frames[1]])
    with pytest.raises(WireError):
        wire.decode([])
    with pytest.raises(LimitError):
        wire.decode(frames, wire.WireLimits(max_header_bytes=32))
    with pytest.raises(LimitError):
        wire.decode(frames, wire.WireLimits(max_tensor_bytes=8))
    many = {f"t{i}": np.zeros(1, np.float32) for i in range(5)}
    with pytest.raises(LimitError):
        wire.decode(wire.encode(_req(many)), wire.WireLimits(max_tensors=4))
    two = {"a": np.zeros(100, np.float32), "b": np.zeros(100, np.float32)}
    with pytest.raises(LimitError):
        wire.decode(wire.encode(_req(two)), wire.WireLimits(max_total_bytes=600))
    with pytest.raises(WireError):
        wire.decode([frames[0] + b"\xff\xfe", frames[1]])  # not UTF-8 / JSON


def test_decompression_bomb_refused_before_inflating() -> None:
    """A tiny zstd frame that would inflate past the limit is refused from the header."""
    big = np.zeros((4096, 4096), np.float32)  # 64 MiB of zeros compresses to ~KiB
    frames = wire.encode(_req({"x": big}, "raw+zstd"))
    assert wire.wire_bytes(frames) < 100_000
    with pytest.raises(LimitError):
        wire.decode(frames, wire.WireLimits(max_tensor_bytes=1 << 20, max_total_bytes=1 << 20))
    # A lying header: claims a small shape, payload inflates further. Refused, bounded.
    lie = _frames_with_header(lambda h: h["t"][0].update(s=[2, 2]),
                              {"x": np.zeros((512, 512), np.float32)}, "raw+lz4")
    with pytest.raises(CodecError):
        wire.decode(lie)


def test_int8_parameters_checked() -> None:
    for bad in ([1.0], ["a", 0], [True, 0.0], None):
        with pytest.raises(WireError):
            wire.decode(_frames_with_header(lambda h, b=bad: h["t"][0].update(q=b),
                                            codec="int8"))


def test_peek_request_id() -> None:
    frames = wire.encode(_req({"x": np.ones(2, np.float32)}))
    broken = [frames[0], b"short"]
    assert wire.peek_request_id(broken) == "r-1"
    with pytest.raises(WireError):
        wire.decode(broken)
    assert wire.peek_request_id([b"\x01\x01{not json"]) is None
    assert wire.peek_request_id([]) is None


def test_pack_unpack_frames() -> None:
    frames = wire.encode(_req({"x": np.arange(10, dtype=np.float32)}, "int8+lz4"))
    packed = wire.pack_frames(frames)
    views = wire.unpack_frames(packed)
    assert [bytes(v) for v in views] == [bytes(f) for f in frames]
    for cut in (0, 3, 11, len(packed) - 1):
        with pytest.raises(WireError):
            wire.unpack_frames(packed[:cut])
    with pytest.raises(WireError):
        wire.unpack_frames(packed + b"x")


def test_int8_lz4_shrinks_a_relu_activation() -> None:
    x = _relu_activation()
    raw = wire.wire_bytes(wire.encode(_req({"x": x}, "raw")))
    small = wire.wire_bytes(wire.encode(_req({"x": x}, "int8+lz4")))
    assert small <= 0.3 * raw, (small, raw)


def test_codec_spec_parsing() -> None:
    assert str(codecs.parse_spec("INT8C+ZSTD")) == "int8c+zstd"
    assert codecs.parse_spec("raw") == codecs.CodecSpec("raw", None)
    for bad in ("", "int8+lz4+zstd", "lz4", "raw+", 3):
        with pytest.raises(CodecError):
            codecs.parse_spec(bad)  # type: ignore[arg-type]


def test_int8c_is_per_channel() -> None:
    """Channels of very different scales keep their own precision with int8c."""
    x = np.stack([np.linspace(0, 1e-3, 64), np.linspace(0, 1e3, 64)]).astype(np.float32)
    x = x[None, :, :, None]  # NCHW, 2 channels
    per_tensor = wire.decode(wire.encode(_req({"x": x}, "int8"))).tensors["x"]
    per_channel = wire.decode(wire.encode(_req({"x": x}, "int8c"))).tensors["x"]
    small = slice(None), 0
    assert np.abs(per_channel[small] - x[small]).max() < 1e-5
    assert np.abs(per_tensor[small] - x[small]).max() > 1e-4


def test_non_finite_values_survive_quantization() -> None:
    x = np.array([0.0, 1.0, np.inf, -np.inf, np.nan, 2.0], np.float32)
    got = wire.decode(wire.encode(_req({"x": x}, "int8"))).tensors["x"]
    assert got.shape == x.shape and np.isfinite(got).all()


# ----------------------------------------------------------------------------- deadlines

def _header(frames: list) -> dict:
    return json.loads(bytes(frames[0])[2:])


def test_deadline_travels_as_the_budget_left() -> None:
    frames = wire.encode(_req({"x": np.ones(2, np.float32)}))
    head = _header(frames)
    assert "deadline" not in head and "sent_at" not in head  # no wall clock on the wire
    assert 0 < head["budget_ms"] <= 1000
    got = wire.decode(frames)
    assert isinstance(got, Request)
    assert 0 < got.deadline.remaining_ms() <= head["budget_ms"]


@pytest.mark.parametrize("budget", [0, -250.5])
def test_spent_budget_decodes_and_is_already_expired(budget: float) -> None:
    """A request whose budget ran out in transit is well-formed: the core answers it
    DEADLINE_EXCEEDED rather than refusing it as malformed."""
    frames = _frames_with_header(lambda h: h.update(budget_ms=budget))
    got = wire.decode(frames)
    assert isinstance(got, Request) and got.deadline.expired()


@pytest.mark.parametrize("bad", ["NaN", "Infinity", "-Infinity", "1e999"])
def test_non_finite_budget_is_malformed(bad: str) -> None:
    frames = [bytes(f) for f in wire.encode(_req({"x": np.ones(2, np.float32)}))]
    head = frames[0][:2] + frames[0][2:].replace(b'"budget_ms":', b'"budget_ms":' +
                                                  bad.encode() + b',"old":')
    with pytest.raises(WireError):
        wire.decode([head, *frames[1:]])


def test_infinite_deadline_is_refused_at_encode() -> None:
    req = _req({"x": np.ones(2, np.float32)})
    req.deadline = Deadline(float("inf"))
    with pytest.raises(ValueError, match="finite"):
        wire.encode(req)


_SKEWED_SENDER = """
import sys
import numpy as np
from contract.deadline import Deadline
from transport import wire
from transport.messages import Request
req = Request("skewed", "a", "m", "1", "d" * 64, "c", Deadline.after_ms(5000),
              {"x": np.ones((1, 4), np.float32)})
sys.stdout.buffer.write(wire.pack_frames(wire.encode(req)))
"""


@pytest.mark.parametrize("offset_s", [3600.0, -3600.0, 30.0])
def test_request_from_a_skewed_sender_keeps_its_budget(offset_s: float) -> None:
    """A sender whose wall clock is an hour off (a real process under libfaketime) sends
    a 5 s budget, and the receiver sees 5 s minus the time in between, not an hour more
    or an already expired request."""
    import subprocess
    import sys

    from tests.reliability.skew import faketime_missing, skewed_env

    if (why := faketime_missing()) is not None:
        pytest.skip(why)
    env = skewed_env(offset_s)
    out = subprocess.run([sys.executable, "-c", _SKEWED_SENDER], env=env, capture_output=True,
                         check=True, timeout=120).stdout
    frames = wire.unpack_frames(out)
    assert 0 < _header(frames)["budget_ms"] <= 5000  # what the sender had left
    got = wire.decode(frames)
    assert isinstance(got, Request) and got.request_id == "skewed"
    assert 0 < got.deadline.remaining_ms() <= 5000


def test_traceparent_travels_and_a_bad_one_is_dropped_and_counted() -> None:
    from contract.tracing import bad_traceparents

    tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    req = _req({"x": np.zeros((1, 2), np.float32)})
    assert "tp" not in _header(wire.encode(req))  # untraced: no key at all
    req.traceparent = tp
    frames = wire.encode(req)
    assert _header(frames)["tp"] == tp
    assert wire.decode(frames).traceparent == tp
    for bad in ("garbage", "00-" + "0" * 32 + "-00f067aa0ba902b7-01", 42,
                "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"):
        head = _header(frames) | {"tp": bad}
        body = json.dumps(head).encode()
        before = bad_traceparents()
        got = wire.decode([bytes(frames[0][:2]) + body, *frames[1:]])
        assert got.traceparent == "" and got.request_id == req.request_id
        assert bad_traceparents() == before + 1
