"""The bytes the partitioner records per codec are the bytes the wire spends: payload,
compressor frame and the tensor's header entry beyond an fp32 one."""

from __future__ import annotations

import numpy as np
import pytest

from partitioner.codec_accuracy import CANDIDATES, roundtrip
from transport import codecs, wire
from transport.messages import Reply, Status


def _relu(shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    return np.maximum(np.random.default_rng(seed).normal(size=shape), 0).astype(np.float32)


def _reply(tensors: dict[str, np.ndarray]) -> Reply:
    return Reply("r", Status.OK, "", tensors)


@pytest.mark.parametrize("codec", CANDIDATES)
@pytest.mark.parametrize("shape", [(1, 64), (1, 16, 8, 8)])
def test_recorded_bytes_are_what_the_wire_spends_beyond_fp32(codec: str,
                                                             shape: tuple[int, ...]) -> None:
    """The partitioner's per-codec bytes equal fp32's payload plus the wire's extra bytes
    over an fp32 message carrying the same tensor: header entry, parameters, frames."""
    x = _relu(shape, 6)
    extra = (wire.wire_bytes(wire.encode(_reply({"x": x}), codec=codec))
             - wire.wire_bytes(wire.encode(_reply({"x": x}))))
    _, sent = roundtrip(x, codecs.parse_spec(codec))
    assert sent == x.nbytes + extra
