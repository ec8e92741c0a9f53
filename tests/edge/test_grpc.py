"""The agent's gRPC face (Triton's GRPCInferenceService), driven by tritonclient.grpc.

The cases of the HTTP suite (test_api.py) run here through ``tritonclient.grpc``: health,
metadata, infer with raw and typed contents, the tiersplit parameters, bad requests,
the bearer token, and the Triton tooling (model config, statistics, repository index),
which must answer exactly what the HTTP API answers.
"""

from __future__ import annotations

import os

import httpx
import numpy as np
import pytest

from edge_agent.v2 import proto_to_dict
from tests.edge.conftest import base_config
from tests.support.edge_bundle import assert_int8_close as _close
from tests.support.edge_bundle import sample_inputs as _inputs
from tiersplit.devtools.bundles import EDGE_CNN_INPUT as INPUT
from tiersplit.devtools.bundles import EDGE_CNN_OUTPUT as OUTPUT
from tiersplit.devtools.bundles import EDGE_CNN_SHAPE as IN_SHAPE
from tiersplit.devtools.bundles import full_reference as reference

grpcclient = pytest.importorskip("tritonclient.grpc")
httpclient = pytest.importorskip("tritonclient.http")
grpc = pytest.importorskip("grpc")
from tritonclient.grpc import service_pb2, service_pb2_grpc  # noqa: E402


@pytest.fixture
def agent(edge_bundle, make_agent):
    return make_agent(base_config(edge_bundle, api={"port": 0, "grpc_port": 0,
                                                    "max_body_bytes": 1 << 20}))


@pytest.fixture
def client(agent):
    c = grpcclient.InferenceServerClient(agent.grpc_url)
    yield c
    c.close()


def _infer(c, x: np.ndarray, **kw):
    inp = grpcclient.InferInput(INPUT, list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    return c.infer("edge_cnn", [inp], **kw)


def test_grpc_is_off_unless_configured(edge_bundle, make_agent) -> None:
    a = make_agent(base_config(edge_bundle))
    assert a.grpc_url is None and a.status()["grpc"] is None


def test_health_and_metadata(agent, client) -> None:
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready("edge_cnn") and client.is_model_ready("edge_cnn", "1")
    assert not client.is_model_ready("nope")
    assert not client.is_model_ready("edge_cnn", "9")
    meta = client.get_model_metadata("edge_cnn", as_json=True)
    assert meta["inputs"] == [{"name": INPUT, "datatype": "FP32",
                               "shape": [str(d) for d in (-1, *IN_SHAPE)]}]
    assert meta["outputs"][0]["name"] == OUTPUT and meta["versions"] == ["1"]
    server = client.get_server_metadata(as_json=True)
    assert server["name"] == "tiersplit-edge"
    assert "binary_tensor_data" in server["extensions"]
    http = httpx.get(f"{agent.http_url}/v2", timeout=10).json()
    assert server["version"] == http["version"] != "1"  # the package's own version
    with pytest.raises(grpcclient.InferenceServerException, match="unknown model"):
        client.get_model_metadata("resnet")


def test_infer_raw_contents(agent, client, edge_bundle) -> None:
    x = _inputs(3)
    res = _infer(client, x, request_id="g-1",
                 outputs=[grpcclient.InferRequestedOutput(OUTPUT)])
    y = res.as_numpy(OUTPUT)
    assert y.shape == (3, 10) and y.dtype == np.float32
    _close(y, reference(edge_bundle.path, x))
    resp = res.get_response(as_json=True)
    assert resp["id"] == "g-1" and resp["model_version"] == "1"
    params = resp["parameters"]
    assert params["path"]["string_param"] == "device"
    assert params["cut"]["string_param"] == "edge"
    assert params["total_ms"]["double_param"] > 0
    assert params["deadline_missed"]["bool_param"] is False
    # the same request over HTTP gives the same answer
    hc = httpclient.InferenceServerClient(agent.http_url.removeprefix("http://"))
    try:
        hin = httpclient.InferInput(INPUT, list(x.shape), "FP32")
        hin.set_data_from_numpy(x)
        np.testing.assert_array_equal(hc.infer("edge_cnn", [hin]).as_numpy(OUTPUT), y)
    finally:
        hc.close()


def _typed_request(x: np.ndarray, datatype: str = "FP32",
                   **params: object) -> service_pb2.ModelInferRequest:
    req = service_pb2.ModelInferRequest(model_name="edge_cnn", id="typed")
    tin = req.inputs.add(name=INPUT, datatype=datatype, shape=list(x.shape))
    tin.contents.fp32_contents.extend(x.reshape(-1).tolist())
    for k, v in params.items():
        if isinstance(v, str):
            req.parameters[k].string_param = v
        else:
            req.parameters[k].int64_param = int(v)  # type: ignore[call-overload]
    return req


def test_infer_typed_contents_through_the_stub(agent, edge_bundle) -> None:
    """Typed ``contents`` (what a client without raw buffers sends) decode like raw ones."""
    x = _inputs(1, seed=5)
    with grpc.insecure_channel(agent.grpc_url) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        reply = stub.ModelInfer(_typed_request(x), timeout=30)
        assert reply.id == "typed" and reply.outputs[0].name == OUTPUT
        assert list(reply.outputs[0].shape) == [1, 10]
        y = np.frombuffer(reply.raw_output_contents[0], dtype=np.float32).reshape(1, 10)
        _close(y, reference(edge_bundle.path, x))
        # too few values for the shape, and a datatype the model does not take
        short = _typed_request(x)
        del short.inputs[0].contents.fp32_contents[5:]
        with pytest.raises(grpc.RpcError) as e:
            stub.ModelInfer(short, timeout=30)
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "values for shape" in e.value.details()
        with pytest.raises(grpc.RpcError) as e:
            stub.ModelInfer(_typed_request(x, "INT64"), timeout=30)
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "expected dtype float32" in e.value.details()
        # a cut override is refused unless the config allows it
        with pytest.raises(grpc.RpcError) as e:
            stub.ModelInfer(_typed_request(x, tiersplit_cut="edge"), timeout=30)
        assert "allow_cut_override" in e.value.details()
        # a spent time budget still gets outputs, flagged late
        late = stub.ModelInfer(_typed_request(x, timeout=1), timeout=30)
        assert late.parameters["deadline_missed"].bool_param is True
    assert agent.status()["counts"] == {"device": 2}  # refusals cost nothing


def test_bad_raw_requests(client) -> None:
    x = _inputs(1)
    inp = grpcclient.InferInput(INPUT, [1, 3, 8, 8], "FP32")  # shape and data disagree
    inp.set_data_from_numpy(np.zeros((1, 3, 8, 8), np.float32))
    inp.set_shape([1, *IN_SHAPE])
    with pytest.raises(grpcclient.InferenceServerException, match="bytes of data for shape"):
        client.infer("edge_cnn", [inp])
    with pytest.raises(grpcclient.InferenceServerException, match="unknown model"):
        inp2 = grpcclient.InferInput(INPUT, list(x.shape), "FP32")
        inp2.set_data_from_numpy(x)
        client.infer("resnet", [inp2])
    with pytest.raises(grpcclient.InferenceServerException, match="unknown outputs"):
        _infer(client, x, outputs=[grpcclient.InferRequestedOutput("nope")])


def test_bearer_token(edge_bundle, make_agent, tmp_path) -> None:
    token_file = tmp_path / "api.token"
    token_file.write_text("s3cret\n")
    os.chmod(token_file, 0o600)
    a = make_agent(base_config(edge_bundle, api={"port": 0, "grpc_port": 0,
                                                 "token_file": str(token_file)}))
    c = grpcclient.InferenceServerClient(a.grpc_url)
    try:
        assert c.is_server_ready()  # probes need no token, as on HTTP
        with pytest.raises(grpcclient.InferenceServerException, match="bearer"):
            c.get_model_metadata("edge_cnn")
        with pytest.raises(grpcclient.InferenceServerException, match="bearer"):
            _infer(c, _inputs(1), headers={"authorization": "Bearer nope"})
        res = _infer(c, _inputs(1), headers={"authorization": "Bearer s3cret"})
        assert res.as_numpy(OUTPUT).shape == (1, 10)
    finally:
        c.close()


def test_triton_tooling_answers_the_same_on_both_protocols(agent, client) -> None:
    """Model config, statistics and repository index over gRPC and over HTTP (as the
    tritonclient.http calls read them) are the same documents, filled from the agent."""
    hc = httpclient.InferenceServerClient(agent.http_url.removeprefix("http://"))
    try:
        cfg = hc.get_model_config("edge_cnn")
        assert cfg == hc.get_model_config("edge_cnn", "1")
        assert cfg["name"] == "edge_cnn" and cfg["max_batch_size"] == 0
        assert cfg["input"] == [{**cfg["input"][0], "name": INPUT, "data_type": "TYPE_FP32",
                                 "dims": [-1, *IN_SHAPE]}]
        assert cfg["output"][0]["name"] == OUTPUT
        assert cfg["version_policy"] == {"specific": {"versions": [1]}}
        assert cfg["parameters"]["tiersplit_cuts"]["string_value"].split(",") == [
            "cloud", "k2", "k4", "k6", "k8", "edge"]
        assert cfg["parameters"]["tiersplit_digest"]["string_value"] == \
            agent.runtime.bundle.digest
        assert proto_to_dict(client.get_model_config("edge_cnn").config) == cfg
        with pytest.raises(httpclient.InferenceServerException):
            hc.get_model_config("edge_cnn", "9")

        before = hc.get_inference_statistics("edge_cnn")["model_stats"][0]
        assert before["inference_count"] == 0 and before["last_inference"] == 0
        _infer(client, _inputs(3))
        _infer(client, _inputs(2))
        stats = hc.get_inference_statistics("edge_cnn")
        ms = stats["model_stats"][0]
        assert ms["name"] == "edge_cnn" and ms["version"] == "1"
        assert ms["execution_count"] == 2 and ms["inference_count"] == 5
        assert ms["inference_stats"]["success"]["count"] == 2
        assert ms["inference_stats"]["success"]["ns"] > 0
        assert ms["inference_stats"]["fail"]["count"] == 0
        assert ms["inference_stats"]["compute_infer"]["ns"] > 0  # the device's own run
        assert ms["last_inference"] > 1_600_000_000_000  # epoch ms
        assert hc.get_inference_statistics() == stats  # all models: the one served
        assert proto_to_dict(client.get_inference_statistics("edge_cnn")) == stats
        with pytest.raises(httpclient.InferenceServerException):
            hc.get_inference_statistics("resnet")

        index = hc.get_model_repository_index()
        assert index == [{"name": "edge_cnn", "version": "1", "state": "READY",
                          "reason": ""}]
        assert client.get_model_repository_index(as_json=True)["models"] == [
            {"name": "edge_cnn", "version": "1", "state": "READY"}]
    finally:
        hc.close()

