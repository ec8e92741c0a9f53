"""The core on the partitioner's own bundles (``bundle_factory``: the zoo models, real
partitions, int8 heads), on the onnxruntime and torch backends: every cloud cut's output
equals the fp32 tail on the int8 head's output. This is where the torch backend's ONNX
interpreter meets the real operator mix (residual CNNs, depthwise convs, a transformer)."""

from __future__ import annotations

import numpy as np
import pytest

from cloud_core import CloudCore, parse_config
from tests.cloud.conftest import Inbox, make_request
from tiersplit.devtools import bundles as test_bundles

ZOO = ["digits_cnn", "resnet_like", "mobilenet_like", "transformer_encoder"]


@pytest.fixture(scope="module")
def zoo_bundles(bundle_factory):
    return [bundle_factory(m) for m in ZOO]


@pytest.mark.parametrize("backend", ["onnxruntime", "torch"])
def test_zoo_bundles_served_equal_reference(zoo_bundles, backend: str) -> None:
    first = zoo_bundles[0]
    core = CloudCore(parse_config({
        "repository": str(first.root), "signing_public_key": str(first.public_key),
        "models": [{"name": b.name, "versions": [b.version]} for b in zoo_bundles],
        "backend": {"kind": backend, "device": "cpu"}, "http": {"enabled": False},
        "admin": {"enabled": False},
    }), links=[])
    core.start()
    try:
        inbox = Inbox()
        rng = np.random.default_rng(2)
        sent = []
        for lv in core.repository.all_loaded():
            for cut in lv.tails:
                x = test_bundles.sample(lv.bundle.manifest.inputs[0], 2, rng)
                crossing, tail, _ = test_bundles.reference(lv.bundle, cut, x)
                req = make_request(lv, cut, crossing)
                core.on_request(req, inbox)
                sent.append((req, lv.name, cut, tail))
        assert len(sent) >= 3 * len(ZOO)
        for reply, (_, name, cut, tail) in zip(inbox.wait([s[0].request_id for s in sent]),
                                               sent, strict=True):
            assert reply.status == 0, (name, cut, reply.error)
            (out,) = reply.tensors.values()
            np.testing.assert_allclose(out, tail, rtol=1e-3, atol=1e-4,
                                       err_msg=f"{backend} {name}/{cut}")
    finally:
        core.stop(grace=5)
