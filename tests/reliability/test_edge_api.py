"""The edge agent's local API under bad input: a real ``tiersplit edge run`` process with a
bearer token and a 1 MiB body limit. Oversized bodies (declared, streamed and
gzip-inflated), malformed JSON, tensor sizes that disagree with their shapes, wrong
shapes and types, missing or wrong tokens: each gets a clear 4xx, the agent stays up, and
none of it reaches the inference pipeline (its counters move only for valid requests).
"""

from __future__ import annotations

import gzip
import json
from collections import Counter
from collections.abc import Iterator
from typing import Any

import httpx
import numpy as np
import pytest
import yaml
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from tests.reliability.conftest import INPUT, MODEL_A, OUTPUT
from tests.reliability.fleet import Metrics, cosine
from tiersplit.devtools.services import Service, tiersplit_cmd
from transport import keys

pytestmark = [pytest.mark.integration]

TOKEN = "s3cret-token-for-tests"
LIMIT = 1 << 20
INFER = f"/v2/models/{MODEL_A}/infer"


class Api:
    """An httpx client on the agent that tallies every answer by status code."""

    def __init__(self, url: str) -> None:
        self.http = httpx.Client(base_url=url, timeout=60)
        self.codes: Counter[int] = Counter()
        self.sent = 0

    def call(self, method: str, path: str, *, token: str | None = TOKEN,
             **kw: Any) -> httpx.Response:
        headers = dict(kw.pop("headers", {}))
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        self.sent += 1
        r = self.http.request(method, path, headers=headers, **kw)
        self.codes[r.status_code] += 1
        return r


@pytest.fixture(scope="module")
def agent_proc(repo, tmp_path_factory) -> Iterator[Service]:
    d = tmp_path_factory.mktemp("edge-api")
    token_file = d / "api.token"
    keys.write_secret(token_file, TOKEN.encode())
    cfg = {"agent_id": "api-test",
           "bundle": {"path": str(repo.path()), "public_key": str(repo.public_key)},
           "api": {"port": 0, "token_file": str(token_file), "max_body_bytes": LIMIT},
           "runtime": {"workers": 2, "warmup_runs": 1, "measure_runs": 1}}
    (d / "edge.yaml").write_text(yaml.safe_dump(cfg))
    svc = Service("edge-api", tiersplit_cmd("edge", "run", "--config", str(d / "edge.yaml")),
                  log_path=d / "edge.log").start(timeout=120)
    yield svc
    svc.stop(grace=10)


@pytest.fixture
def api(agent_proc: Service) -> Iterator[Api]:
    a = Api(agent_proc.ready["http"])
    yield a
    a.http.close()


def _body(x: np.ndarray, **over: Any) -> dict[str, Any]:
    t = {"name": INPUT, "datatype": "FP32", "shape": list(x.shape),
         "data": x.reshape(-1).tolist()}
    t.update(over)
    return {"inputs": [t]}


def _binary(x: np.ndarray, size: int | None = None, extra: bytes = b"",
            header_len: str | None = None) -> tuple[bytes, dict[str, str]]:
    blob = x.astype(np.float32).tobytes()
    head = json.dumps({"inputs": [{"name": INPUT, "datatype": "FP32", "shape": list(x.shape),
                                   "parameters": {"binary_data_size": size or len(blob)}}]}
                      ).encode()
    return head + blob + extra, {"Inference-Header-Content-Length": header_len or str(len(head)),
                                 "Content-Type": "application/octet-stream"}


def _edge_requests(api: Api) -> float:
    return Metrics(api.call("GET", "/metrics").text).total("tiersplit_edge_requests_total")


def test_bad_requests_get_clear_4xx_and_the_agent_stays_up(api: Api, agent_proc: Service,
                                                           samples) -> None:
    x = samples.inputs[0][INPUT]
    ref = samples.refs[(MODEL_A, "1")][0]
    served0 = _edge_requests(api)
    sent0 = api.sent
    bin_ok, bin_hdr = _binary(x)
    cases: list[tuple[str, int, dict[str, Any], str]] = [
        # (name, expected status, request kwargs, text the error must contain)
        ("no token", 401, {"json": _body(x), "token": None}, "token"),
        ("wrong token", 401, {"json": _body(x), "token": "nope"}, "token"),
        ("token prefix only", 401, {"json": _body(x), "token": TOKEN[:-1]}, "token"),
        ("status without token", 401, {"token": None, "path": "/status", "method": "GET"},
         "token"),
        ("metrics without token", 401, {"token": None, "path": "/metrics", "method": "GET"},
         "token"),
        ("declared oversize", 413, {"content": b"{" + b" " * (LIMIT + 10) + b"}"}, "limit"),
        ("streamed oversize", 413, {"content": iter([b" " * (64 << 10)] * 20)}, "limit"),
        ("gzip bomb", 413, {"content": gzip.compress(b" " * (8 * LIMIT)),
                            "headers": {"Content-Encoding": "gzip"}}, "limit"),
        ("bad gzip", 400, {"content": b"not gzip at all",
                           "headers": {"Content-Encoding": "gzip"}}, "gzip"),
        ("malformed JSON", 400, {"content": b'{"inputs": [ {"name": '}, "JSON"),
        ("not UTF-8", 400, {"content": b"\xff\xfe\x00{"}, "JSON"),
        ("JSON list", 400, {"json": [1, 2, 3]}, "inputs"),
        ("inputs not a list", 400, {"json": {"inputs": {"x": 1}}}, "inputs"),
        ("too few values", 400, {"json": _body(x, data=[0.0] * 10)}, "values"),
        ("too many values", 400, {"json": _body(x, data=[0.0] * (x.size + 1))}, "values"),
        ("values not numbers", 400, {"json": _body(x, data=["a"] * x.size)}, "FP32"),
        ("wrong shape", 400, {"json": _body(np.zeros((1, 3, 16, 16), np.float32))}, "shape"),
        ("negative dim", 400, {"json": _body(x, shape=[1, -3, 32, 32])}, "shape"),
        ("huge declared shape", 400, {"json": _body(x, shape=[1 << 20] * 4)}, "limit"),
        ("unknown datatype", 400, {"json": _body(x, datatype="BYTES")}, "datatype"),
        ("wrong input name", 400, {"json": _body(x, name="y")}, INPUT),
        ("binary size lies", 400, dict(zip(("content", "headers"),
                                           _binary(x, size=100), strict=True)),
         "binary_data_size"),
        ("binary data short", 400, {"content": bin_ok[:-8], "headers": bin_hdr}, "binary"),
        ("binary data extra", 400, dict(zip(("content", "headers"),
                                            _binary(x, extra=b"xx"), strict=True)), "binary"),
        ("header length not a number", 400, {"content": bin_ok,
                                             "headers": {**bin_hdr,
                                                         "Inference-Header-Content-Length":
                                                         "abc"}}, "Inference-Header"),
        ("header length past the body", 400,
         {"content": bin_ok, "headers": {**bin_hdr, "Inference-Header-Content-Length":
                                         str(len(bin_ok) + 1)}}, "Inference-Header"),
        ("bad deadline", 400, {"json": {**_body(x), "parameters": {"deadline_ms": -5}}},
         "deadline"),
        ("unknown output", 400, {"json": {**_body(x), "outputs": [{"name": "nope"}]}}, "nope"),
        ("unknown model", 404, {"path": "/v2/models/nope/infer", "json": _body(x)}, "nope"),
        ("unknown version", 404, {"path": f"/v2/models/{MODEL_A}/versions/9/infer",
                                  "json": _body(x)}, "version"),
    ]
    for name, code, kw, text in cases:
        kw = dict(kw)
        path = kw.pop("path", INFER)
        method = kw.pop("method", "POST")
        token = kw.pop("token", TOKEN)
        r = api.call(method, path, token=token, **kw)
        assert r.status_code == code, (name, r.status_code, r.text[:300])
        err = r.json()["error"]
        assert text.lower() in err.lower(), (name, err)
        assert api.call("GET", "/v2/health/live", token=None).status_code == 200, name
    # health needs no token; everything else answers normally afterwards
    assert api.call("GET", "/v2/health/ready", token=None).status_code == 200
    for kw in ({"json": _body(x)}, dict(zip(("content", "headers"), _binary(x), strict=True)),
               {"content": gzip.compress(json.dumps(_body(x)).encode()),
                "headers": {"Content-Encoding": "gzip"}}):
        r = api.call("POST", INFER, **kw)
        assert r.status_code == 200, r.text[:300]
        out = r.json()["outputs"][0]
        assert out["name"] == OUTPUT
        assert cosine(np.asarray(out["data"], np.float32), ref) > 0.99
    assert agent_proc.alive()
    # accounting: every request answered (2xx or the 4xx its case expects), none lost;
    # only the three valid inferences reached the pipeline
    assert sum(api.codes.values()) == api.sent
    assert not [c for c in api.codes if c >= 500], api.codes
    assert api.sent - sent0 == 2 * len(cases) + 1 + 3
    assert _edge_requests(api) - served0 == 3


_json = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
                     lambda kids: st.lists(kids, max_size=4)
                     | st.dictionaries(st.text(max_size=8), kids, max_size=4), max_leaves=20)
_tensor = st.fixed_dictionaries({}, optional={
    "name": st.sampled_from([INPUT, "y", ""]) | st.text(max_size=5),
    "datatype": st.sampled_from(["FP32", "FP16", "INT8", "BYTES", "fp32"]) | _json,
    "shape": st.lists(st.integers(-2, 40), max_size=5) | _json,
    "data": st.lists(st.floats(allow_nan=False, width=32), max_size=40) | _json,
    "parameters": st.fixed_dictionaries({}, optional={"binary_data_size": st.integers(-5, 99)})
    | _json,
})
_doc = st.fixed_dictionaries({}, optional={
    "inputs": st.lists(_tensor, max_size=3) | _json,
    "outputs": st.lists(st.fixed_dictionaries({"name": st.text(max_size=6)}), max_size=2)
    | _json,
    "parameters": st.fixed_dictionaries({}, optional={
        "deadline_ms": st.floats() | _json, "timeout": st.integers() | _json}) | _json,
    "id": st.text(max_size=8) | _json,
})


def test_non_string_datatype_is_a_clear_400(api: Api, samples) -> None:
    x = samples.inputs[0][INPUT]
    for bad in (["FP32"], {"t": "FP32"}):
        r = api.call("POST", INFER, json=_body(x, datatype=bad))
        assert r.status_code == 400, (bad, r.status_code, r.text[:200])
        assert "datatype" in r.json()["error"]


def test_fuzzed_infer_bodies_never_break_the_agent(api: Api, agent_proc: Service) -> None:
    served0 = _edge_requests(api)
    sent0 = api.sent
    codes: Counter[int] = Counter()

    @settings(max_examples=400, deadline=None, database=None, derandomize=True,
              suppress_health_check=list(HealthCheck), phases=[Phase.generate])
    @given(doc=_doc | _json)
    def run(doc: Any) -> None:
        body = json.dumps(doc, allow_nan=True).encode()
        r = api.call("POST", INFER, content=body,
                     headers={"Content-Type": "application/json"})
        codes[r.status_code] += 1
        assert r.status_code in (200, 400, 413), (r.status_code, r.text[:300], doc)
        if r.status_code != 200:
            assert r.json()["error"]

    run()
    assert agent_proc.alive()
    assert api.call("GET", "/v2/health/live", token=None).status_code == 200
    assert sum(codes.values()) == api.sent - sent0 - 1 >= 400
    assert _edge_requests(api) - served0 == codes[200]
