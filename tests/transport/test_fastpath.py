"""The hot path's shortcuts keep the checks and the behaviour they replace.

- The decoder remembers dtype/codec/rank combinations it has accepted; a later message
  of an accepted kind still has its shape, sizes and frame lengths checked, and a refused
  kind is refused every time.
- A batch's replies encoded together are, byte for byte, what each encodes alone, and a
  reply that cannot be encoded raises as it would alone.
"""

from __future__ import annotations

import numpy as np
import pytest

from transport import aead, wire
from transport.errors import AuthError, CodecError, DTypeError, WireError
from transport.messages import Reply, Request, Status

from .conftest import make_request


def _frames(req: Request) -> list[bytes]:
    return [bytes(f) for f in wire.encode(req)]


def test_a_remembered_tensor_kind_still_gets_its_sizes_checked() -> None:
    good = _frames(make_request("ok", {"x": np.ones((2, 3), np.float32)}))
    assert wire.decode(good).tensors["x"].shape == (2, 3)
    assert wire.decode(good).tensors["x"].shape == (2, 3)  # the remembered path
    short = [good[0], good[1][:-4]]
    with pytest.raises(WireError, match="needs 24 bytes"):
        wire.decode(short)
    lying = _frames(make_request("big", {"x": np.ones((2, 4), np.float32)}))
    with pytest.raises(WireError):
        wire.decode([lying[0], good[1]])  # header says 2x4, frame holds 2x3
    negative = good[0].replace(b'"s":[2,3]', b'"s":[2,-3]')
    with pytest.raises(WireError, match="non-negative"):
        wire.decode([negative, good[1]])


def test_a_refused_tensor_kind_is_refused_every_time() -> None:
    good = _frames(make_request("ok", {"x": np.ones((2, 3), np.float32)}))
    bad_dtype = good[0].replace(b'"d":"float32"', b'"d":"object"')
    bad_codec = good[0].replace(b'"c":"raw"', b'"c":"int8c+zip"')
    for _ in range(2):
        with pytest.raises(DTypeError):
            wire.decode([bad_dtype, good[1]])
        with pytest.raises(CodecError):
            wire.decode([bad_codec, good[1]])


def test_reply_status_codes_round_trip_and_unknown_ones_are_refused() -> None:
    for status in Status:
        frames = _frames(Reply(request_id="r", status=status, error="e"))
        assert wire.decode(frames).status is status
    frames = _frames(Reply(request_id="r"))
    with pytest.raises(WireError):
        wire.decode([frames[0].replace(b'"status":0', b'"status":99')])


def test_sealed_envelopes_open_from_any_buffer() -> None:
    key = bytes(range(32))
    sealer, opener = aead.Sealer(key, "a1", "req"), aead.Opener(key, "a1", "req")
    payload = np.arange(1000, dtype=np.float32)
    env = sealer.seal(memoryview(payload).cast("B"))
    assert len(env) == payload.nbytes + aead.ENVELOPE_OVERHEAD
    assert opener.open(bytes(env)).plaintext == payload.tobytes()
    tampered = bytearray(sealer.seal(b"abc"))
    tampered[-1] ^= 1
    with pytest.raises(AuthError):
        opener.open(tampered)


@pytest.mark.integration
@pytest.mark.parametrize("codec", [None, "int8"])
def test_reply_header_written_directly_is_the_general_encoders(codec: str | None) -> None:
    import json

    reply = Reply(request_id='ü"id\\', status=Status.INTERNAL, error="bad\n\"x",
                  queue_ms=1.25, compute_ms=3,
                  tensors={"y": np.zeros((2, 10), np.float32), "zé": np.ones((3,), np.int64)})
    head = bytes(wire.encode(reply, codec)[0])
    descs = wire._tensor_frames(reply.tensors, wire._SPECS.get(codec or "raw"))[0]
    general = wire._head(2, {"id": reply.request_id, "status": 8, "error": reply.error,
                             "queue_ms": 1.25, "compute_ms": 3.0, "t": descs})
    assert head == general
    assert json.loads(head[2:])["error"] == "bad\n\"x"
    with pytest.raises(ValueError):
        wire.encode(Reply(request_id="n", queue_ms=float("nan")))


def test_replies_encoded_together_are_what_each_encodes_alone() -> None:
    batch = np.arange(30, dtype=np.float32).reshape(3, 10)
    replies = [Reply(request_id=f"r{i}", tensors={"y": batch[i:i + 1], "é": np.ones(2, np.int64)},
                     queue_ms=0.5 * i, compute_ms=3) for i in range(3)]
    replies.append(Reply(request_id="err", status=Status.INTERNAL, error='bad "x"'))
    replies.append(Reply(request_id="strided", tensors={"y": batch[:, ::2]}))  # general path
    together = wire.encode_replies(replies)
    for reply, frames in zip(replies, together, strict=True):
        alone = wire.encode(reply)
        assert [bytes(f) for f in frames] == [bytes(f) for f in alone]
    with pytest.raises(DTypeError):
        wire.encode_replies([Reply(request_id="c", tensors={"z": np.zeros(2, np.complex64)})])
