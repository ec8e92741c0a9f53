"""The torch backend's first choice: a ``torch.export`` program shipped in the bundle
(``tail-<cut>.pt2``), used instead of interpreting the ONNX tail."""

from __future__ import annotations

import io

import numpy as np
import torch
from onnx import numpy_helper

from cloud_core import CloudCore, parse_config
from tests.cloud.conftest import Inbox, make_request
from tiersplit.devtools import bundles as test_bundles
from transport import keys


class _MlpTail(torch.nn.Module):
    """The mlp's h1 tail (Gemm+Relu, Gemm) written in torch from the ONNX weights."""

    def __init__(self, w: dict[str, np.ndarray]) -> None:
        super().__init__()
        self.l2 = torch.nn.Linear(32, 32)
        self.l3 = torch.nn.Linear(32, 10)
        with torch.no_grad():
            for name, layer in (("l2", self.l2), ("l3", self.l3)):
                layer.weight.copy_(torch.from_numpy(w[f"{name}.w"].T.copy()))
                layer.bias.copy_(torch.from_numpy(w[f"{name}.b"].copy()))

    def forward(self, h1: torch.Tensor) -> torch.Tensor:
        return self.l3(torch.relu(self.l2(h1)))


def test_pt2_tail_is_preferred_and_equals_onnx_tail(tmp_path) -> None:
    graph = test_bundles.mlp(9)
    weights = {i.name: numpy_helper.to_array(i) for i in graph.model.graph.initializer}
    batch = torch.export.Dim("batch", min=1, max=1024)
    program = torch.export.export(_MlpTail(weights).eval(), (torch.zeros(2, 32),),
                                  dynamic_shapes={"h1": {0: batch}})
    buf = io.BytesIO()
    torch.export.save(program, buf)
    secret, public = keys.generate("ed25519", tmp_path / "k", "s")
    test_bundles.build_bundle(tmp_path / "b", "mlp", "1", graph, keys.load_ed25519_private(secret),
                          extra={"tail-h1.pt2": buf.getvalue()})
    core = CloudCore(parse_config({
        "repository": str(tmp_path / "b"), "signing_public_key": str(public),
        "models": [{"name": "mlp"}], "backend": {"kind": "torch", "device": "cpu"},
        "http": {"enabled": False}, "admin": {"enabled": False}}), links=[])
    core.start()
    try:
        lv = core.repository.active("mlp")
        assert lv.tails["h1"]._exported is not None  # the program, not the interpreter
        assert lv.tails["h2"]._program is not None  # no .pt2 for h2: ONNX interpreter
        x = test_bundles.sample(lv.bundle.manifest.inputs[0], 5, np.random.default_rng(1))
        crossing, tail, _ = test_bundles.reference(lv.bundle, "h1", x)
        inbox = Inbox()
        req = make_request(lv, "h1", crossing)
        core.on_request(req, inbox)
        reply = inbox.wait([req.request_id])[0]
        assert reply.ok, reply.error
        np.testing.assert_allclose(reply.tensors["y"], tail, rtol=1e-5, atol=1e-5)
    finally:
        core.stop(grace=5)
