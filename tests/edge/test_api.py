"""The local KServe v2 API, driven by an unmodified tritonclient.http client and httpx.

These agents have no cloud endpoint: every request runs on the device (path ``device``,
cut ``edge``).
The cloud paths are covered by test_integration.py."""

from __future__ import annotations

import json
import os

import httpx
import numpy as np
import pytest

from tests.edge.conftest import base_config
from tests.support.edge_bundle import assert_int8_close as _close
from tests.support.edge_bundle import sample_inputs as _inputs
from tiersplit.devtools.bundles import EDGE_CNN_INPUT as INPUT
from tiersplit.devtools.bundles import EDGE_CNN_OUTPUT as OUTPUT
from tiersplit.devtools.bundles import EDGE_CNN_SHAPE as IN_SHAPE
from tiersplit.devtools.bundles import full_reference as reference

httpclient = pytest.importorskip("tritonclient.http")


@pytest.fixture
def agent(edge_bundle, make_agent):
    return make_agent(base_config(edge_bundle, api={"port": 0, "max_body_bytes": 1 << 20}))


def _client(agent) -> httpclient.InferenceServerClient:
    return httpclient.InferenceServerClient(agent.http_url.removeprefix("http://"))


def test_health_and_metadata_through_tritonclient(agent) -> None:
    c = _client(agent)
    try:
        assert c.is_server_live() and c.is_server_ready()
        assert c.is_model_ready("edge_cnn")
        assert c.is_model_ready("edge_cnn", "1")
        assert not c.is_model_ready("nope")
        meta = c.get_model_metadata("edge_cnn")
        assert meta["inputs"] == [{"name": INPUT, "datatype": "FP32", "shape": [-1, *IN_SHAPE]}]
        assert meta["outputs"][0]["name"] == OUTPUT and meta["versions"] == ["1"]
        assert "binary_tensor_data" in c.get_server_metadata()["extensions"]
    finally:
        c.close()


@pytest.mark.parametrize("binary", [True, False])
@pytest.mark.parametrize("compression", [None, "gzip", "deflate"])
def test_infer_through_tritonclient(agent, edge_bundle, binary, compression) -> None:
    x = _inputs(3)
    c = _client(agent)
    try:
        inp = httpclient.InferInput(INPUT, list(x.shape), "FP32")
        inp.set_data_from_numpy(x, binary_data=binary)
        out = httpclient.InferRequestedOutput(OUTPUT, binary_data=binary)
        res = c.infer("edge_cnn", [inp], outputs=[out], request_id="r-1",
                      request_compression_algorithm=compression)
    finally:
        c.close()
    y = res.as_numpy(OUTPUT)
    assert y.shape == (3, 10) and y.dtype == np.float32
    _close(y, reference(edge_bundle.path, x))
    resp = res.get_response()
    assert resp["id"] == "r-1" and resp["model_version"] == "1"
    params = resp["parameters"]
    assert params["path"] == "device" and params["cut"] == "edge"
    assert params["total_ms"] > 0 and params["local_ms"] > 0


def test_infer_default_outputs_are_binary(agent) -> None:
    c = _client(agent)
    try:
        inp = httpclient.InferInput(INPUT, [1, *IN_SHAPE], "FP32")
        inp.set_data_from_numpy(_inputs(1))
        res = c.infer("edge_cnn", [inp])  # no outputs named: binary_data_output
        assert res.as_numpy(OUTPUT).shape == (1, 10)
    finally:
        c.close()


def test_in_process_infer_handle(agent, edge_bundle) -> None:
    x = _inputs(2, seed=4)
    handle = agent.infer({INPUT: x})
    assert handle.request_id
    res = handle.result(timeout=30)
    assert res.path == "device" and res.cut == "edge" and res.endpoint is None
    _close(res.outputs[OUTPUT], reference(edge_bundle.path, x))
    status = agent.status()
    assert status["counts"]["device"] >= 1
    assert status["bundle"]["digest"] == agent.runtime.bundle.digest


def _post(agent, body: bytes, headers: dict | None = None, model: str = "edge_cnn"):
    return httpx.post(f"{agent.http_url}/v2/models/{model}/infer", content=body,
                      headers=headers or {}, timeout=30)


def _json_req(shape, data, datatype="FP32") -> bytes:
    return json.dumps({"inputs": [{"name": INPUT, "shape": shape, "datatype": datatype,
                                   "data": data}]}).encode()


def test_json_infer_with_httpx(agent) -> None:
    x = _inputs(1)
    r = _post(agent, _json_req([1, *IN_SHAPE], x.reshape(-1).tolist()))
    assert r.status_code == 200, r.text
    doc = r.json()
    assert doc["outputs"][0]["shape"] == [1, 10] and len(doc["outputs"][0]["data"]) == 10


@pytest.mark.parametrize(("body", "headers", "status", "fragment"), [
    (b"{not json", {}, 400, "malformed JSON"),
    (b'{"inputs": 3}', {}, 400, "'inputs' list"),
    (_json_req([1, *IN_SHAPE], [0.0] * 5), {}, 400, "values for shape"),
    (_json_req([1, 3, 8, 8], [0.0] * 192), {}, 400, "expected shape"),
    (_json_req([1, *IN_SHAPE], [0] * 3072, "INT64"), {}, 400, "expected dtype float32"),
    (_json_req([1, *IN_SHAPE], [0] * 3072, "BYTES"), {}, 400, "datatype 'BYTES'"),
    (json.dumps({"inputs": [{"name": INPUT, "shape": [1, *IN_SHAPE], "datatype": "FP32",
                             "parameters": {"binary_data_size": 100}}]}).encode() + b"\0" * 100,
     "header", 400, "binary_data_size 100"),
    (json.dumps({"inputs": [{"name": "other", "shape": [1], "datatype": "FP32",
                             "data": [1.0]}]}).encode(), {}, 400, "missing ['x']"),
])
def test_bad_requests_get_400(agent, body, headers, status, fragment) -> None:
    if headers == "header":
        headers = {"Inference-Header-Content-Length": str(len(body) - 100)}
    r = _post(agent, body, headers)
    assert r.status_code == status, r.text
    assert fragment in r.json()["error"]


def test_binary_size_lies_get_400(agent) -> None:
    x = _inputs(1)
    head = json.dumps({"inputs": [{"name": INPUT, "shape": [1, *IN_SHAPE], "datatype": "FP32",
                                   "parameters": {"binary_data_size": x.nbytes}}]}).encode()
    short = head + x.tobytes()[:-8]
    r = _post(agent, short, {"Inference-Header-Content-Length": str(len(head))})
    assert r.status_code == 400 and "binary data ends" in r.json()["error"]
    extra = head + x.tobytes() + b"junk"
    r = _post(agent, extra, {"Inference-Header-Content-Length": str(len(head))})
    assert r.status_code == 400 and "not claimed" in r.json()["error"]
    r = _post(agent, head, {"Inference-Header-Content-Length": str(len(head) + 50)})
    assert r.status_code == 400


def test_oversize_body_gets_413_and_unknown_model_404(agent) -> None:
    big = b"{" + b" " * (1 << 20) + b"}"
    r = _post(agent, big)
    assert r.status_code == 413 and "limit" in r.json()["error"]
    # a small gzip bomb is caught after decompression
    import gzip

    bomb = gzip.compress(b"[" + b"0," * (1 << 20) + b"0]")
    r = _post(agent, bomb, {"Content-Encoding": "gzip"})
    assert r.status_code == 413
    r = _post(agent, _json_req([1, *IN_SHAPE], [0.0] * 3072), model="resnet")
    assert r.status_code == 404 and "edge_cnn" in r.json()["error"]
    r = httpx.get(f"{agent.http_url}/v2/models/edge_cnn/versions/9", timeout=10)
    assert r.status_code == 404


def test_bearer_token(edge_bundle, make_agent, tmp_path) -> None:
    token_file = tmp_path / "api.token"
    token_file.write_text("s3cret\n")
    os.chmod(token_file, 0o600)
    agent = make_agent(base_config(edge_bundle, api={"port": 0,
                                                     "token_file": str(token_file)}))
    url = agent.http_url
    assert httpx.get(f"{url}/v2/health/ready", timeout=10).status_code == 200  # probes open
    assert httpx.get(f"{url}/v2/models/edge_cnn", timeout=10).status_code == 401
    assert httpx.get(f"{url}/status", timeout=10).status_code == 401
    bad = {"Authorization": "Bearer nope"}
    assert httpx.get(f"{url}/v2/models/edge_cnn", headers=bad, timeout=10).status_code == 401
    c = httpclient.InferenceServerClient(url.removeprefix("http://"))
    try:
        inp = httpclient.InferInput(INPUT, [1, *IN_SHAPE], "FP32")
        inp.set_data_from_numpy(_inputs(1))
        with pytest.raises(httpclient.InferenceServerException, match="bearer"):
            c.infer("edge_cnn", [inp])
        res = c.infer("edge_cnn", [inp], headers={"Authorization": "Bearer s3cret"})
        assert res.as_numpy(OUTPUT).shape == (1, 10)
    finally:
        c.close()


def test_token_file_must_be_private(edge_bundle, tmp_path) -> None:
    from edge_agent import ConfigError, EdgeAgent, parse_config

    token_file = tmp_path / "api.token"
    token_file.write_text("s3cret")
    os.chmod(token_file, 0o644)
    agent = EdgeAgent(parse_config(base_config(edge_bundle, api={
        "port": 0, "token_file": str(token_file)})))
    with pytest.raises(ConfigError, match="chmod 600"):
        agent.start()


def test_status_and_metrics(agent) -> None:
    _post(agent, _json_req([1, *IN_SHAPE], [0.0] * 3072))
    st = httpx.get(f"{agent.http_url}/status", timeout=10).json()
    assert st["bundle"]["model"] == "edge_cnn" and st["bundle"]["signed"] is True
    assert st["current_cut"] == "edge" and st["counts"] == {"device": 1}
    assert set(st["policy"]["cuts"]) == {"cloud", "k2", "k4", "k6", "k8", "edge"}
    m = httpx.get(f"{agent.http_url}/metrics", timeout=10).text
    assert 'tiersplit_edge_requests_total{outcome="ok",path="edge"} 1.0' in m
    assert 'tiersplit_edge_current_cut{cut="edge"} 1.0' in m
    # durations in seconds, the Prometheus base unit: no metric name ends in _ms
    names = {ln.split("{")[0].split(" ")[0] for ln in m.splitlines()
             if ln and not ln.startswith("#")}
    assert not [n for n in names if n.endswith("_ms")], names
    head_ms = st["policy"]["cuts"]["k2"]["head_ms"]
    line = next(ln for ln in m.splitlines()
                if ln.startswith('tiersplit_edge_head_seconds{cut="k2"}'))
    assert float(line.split()[-1]) == pytest.approx(head_ms / 1e3)


def test_cut_override_parameter_is_parsed() -> None:
    import json as _json

    from edge_agent.api import parse_infer_request

    body = _json.dumps({"inputs": [{"name": "x", "shape": [1, 2], "datatype": "FP32",
                                    "data": [1.0, 2.0]}],
                        "parameters": {"tiersplit_cut": "edge"}}).encode()
    assert parse_infer_request(body, None).cut == "edge"
    bad = _json.dumps({"inputs": [], "parameters": {"tiersplit_cut": 3}}).encode()
    with pytest.raises(Exception, match="tiersplit_cut"):
        parse_infer_request(bad, None)


def _infer_json(agent, params: dict) -> httpx.Response:
    x = _inputs(1)
    body = {"inputs": [{"name": INPUT, "shape": list(x.shape), "datatype": "FP32",
                        "data": x.reshape(-1).tolist()}], "parameters": params}
    return httpx.post(f"{agent.http_url}/v2/models/edge_cnn/infer", json=body, timeout=30)


def test_time_budget_becomes_the_requests_deadline(agent) -> None:
    """``timeout`` (µs, the protocol's) and ``deadline_ms`` set the deadline the answer is
    judged by; a budget already spent still gets outputs, flagged late."""
    late = _infer_json(agent, {"timeout": 1})
    assert late.status_code == 200 and late.json()["parameters"]["deadline_missed"] is True
    ok = _infer_json(agent, {"timeout": 1, "deadline_ms": 60_000})  # deadline_ms wins
    assert ok.status_code == 200 and ok.json()["parameters"]["deadline_missed"] is False
    for bad in ({"timeout": 0}, {"deadline_ms": -1}, {"deadline_ms": "soon"},
                {"timeout": 10**400}):
        r = _infer_json(agent, bad)
        assert r.status_code == 400 and "must be a positive number" in r.text, bad


def test_cut_override_refused_unless_enabled(agent) -> None:
    r = _infer_json(agent, {"tiersplit_cut": "edge"})
    assert r.status_code == 400 and "allow_cut_override" in r.text
    assert _infer_json(agent, {}).status_code == 200  # the agent keeps serving


def test_cut_override_forces_the_cut_when_enabled(edge_bundle, make_agent) -> None:
    a = make_agent(base_config(edge_bundle, api={"port": 0, "allow_cut_override": True}))
    r = _infer_json(a, {"tiersplit_cut": "edge"})
    assert r.status_code == 200, r.text
    assert r.json()["parameters"]["path"] == "device"
    assert r.json()["parameters"]["cut"] == "edge"
    r = _infer_json(a, {"tiersplit_cut": "no-such-cut"})
    assert r.status_code == 400 and "no-such-cut" in r.text


# ---- datatypes: one table (contract.dtypes), checked against the manifest ------------


@pytest.mark.parametrize(("datatype", "dtype", "values"), [
    ("INT64", "int64", [[1, 2, 3], [4, 5, -6]]),
    ("INT32", "int32", [[7, 8, 9], [0, -1, 2]]),
    ("BOOL", "bool", [[True, False, True], [False, False, True]]),
    ("FP16", "float16", [[0.5, -1.25, 2.0], [3.5, 0.0, -0.125]]),
])
@pytest.mark.parametrize("binary", [False, True])
def test_v2_decodes_each_datatype_the_manifest_declares(datatype, dtype, values,
                                                        binary) -> None:
    from contract.bundle import TensorSpec
    from edge_agent.api import parse_infer_request

    want = np.asarray(values, dtype=dtype)
    spec = {"t": TensorSpec(name="t", shape=[-1, 3], dtype=dtype)}
    entry = {"name": "t", "shape": [2, 3], "datatype": datatype}
    if binary:
        entry["parameters"] = {"binary_data_size": want.nbytes}
        head = json.dumps({"inputs": [entry]}).encode()
        req = parse_infer_request(head + want.tobytes(), len(head), specs=spec)
    else:
        entry["data"] = want.reshape(-1).tolist()
        req = parse_infer_request(json.dumps({"inputs": [entry]}).encode(), None, specs=spec)
    got = req.inputs["t"]
    assert got.dtype == want.dtype and got.shape == (2, 3)
    assert np.array_equal(got, want)
    # the same tensor declared as another datatype: expected vs actual, both spellings
    entry = {"name": "t", "shape": [2, 3], "datatype": "FP32", "data": [0.0] * 6}
    if dtype != "float32":
        with pytest.raises(Exception, match=rf"expected dtype {dtype} \({datatype}\), got "
                                            r"float32 \(FP32\)"):
            parse_infer_request(json.dumps({"inputs": [entry]}).encode(), None, specs=spec)


@pytest.fixture
def text_agent(text_bundle, make_agent):
    return make_agent(base_config(text_bundle))


def _text_inputs(batch: int = 2) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(3)
    ids = rng.integers(0, 32, size=(batch, 8)).astype(np.int64)
    mask = np.ones((batch, 8), dtype=np.int64)
    mask[:, 6:] = 0  # padding
    return {"input_ids": ids, "attention_mask": mask}


def test_text_model_takes_int64_ids_and_mask(text_agent, text_bundle) -> None:
    """A model with ``input_ids`` + ``attention_mask`` (int64) served end to end, as JSON
    and as binary tensors; a float tensor in their place is refused with both dtypes."""
    import onnxruntime as ort

    x = _text_inputs()
    ref = ort.InferenceSession(str(text_bundle.path / "full.onnx"),
                               providers=["CPUExecutionProvider"]).run(["y"], x)[0]
    url = f"{text_agent.http_url}/v2/models/text/infer"
    body = {"inputs": [{"name": k, "shape": list(v.shape), "datatype": "INT64",
                        "data": v.reshape(-1).tolist()} for k, v in x.items()]}
    r = httpx.post(url, json=body, timeout=30)
    assert r.status_code == 200, r.text
    y = np.asarray(r.json()["outputs"][0]["data"], dtype=np.float32).reshape(2, 4)
    _close(y, ref)
    head = json.dumps({"inputs": [
        {"name": k, "shape": list(v.shape), "datatype": "INT64",
         "parameters": {"binary_data_size": v.nbytes}} for k, v in x.items()]}).encode()
    blob = b"".join(v.tobytes() for v in x.values())
    r = httpx.post(url, content=head + blob,
                   headers={"Inference-Header-Content-Length": str(len(head))}, timeout=30)
    assert r.status_code == 200, r.text
    _close(np.asarray(r.json()["outputs"][0]["data"], dtype=np.float32).reshape(2, 4), ref)
    meta = httpx.get(f"{text_agent.http_url}/v2/models/text", timeout=10).json()
    assert [t["datatype"] for t in meta["inputs"]] == ["INT64", "INT64"]
    body["inputs"][1]["datatype"] = "FP32"
    r = httpx.post(url, json=body, timeout=30)
    assert r.status_code == 400
    assert "'attention_mask': expected dtype int64 (INT64), got float32 (FP32)" in \
        r.json()["error"]
    assert text_agent.status()["counts"] == {"device": 2}  # the refusal cost nothing
