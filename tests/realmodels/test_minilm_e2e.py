"""The real all-MiniLM-L6-v2 end to end: a real ``tiersplit edge run`` agent and a real
``tiersplit cloud serve`` core (CurveZMQ), int64 ``input_ids``/``attention_mask`` over the
agent's v2 HTTP API at two sequence lengths other than the one the bundle was partitioned
at, at every interior cut. Answers must come from the cloud path and match the fp32
sentence-transformers embedding on sentences never used for calibration; the core must
only ever batch requests of the same shape (read from its own Prometheus counters).

Skips, saying why, when the ``real-models`` extra is not installed.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import httpx
import numpy as np
import pytest
import yaml

from partitioner import minilm
from partitioner.codec_accuracy import best_codec
from partitioner.text_corpus import EVALUATION
from tests.edge.cloud_proc import CloudProc, Keyring, start_cloud
from tiersplit.devtools.bundles import BuiltBundle
from tiersplit.devtools.services import Service, tiersplit_cmd

_REASON = minilm.missing()
# partitioning the real model takes minutes on a loaded CI machine
pytestmark = [pytest.mark.skipif(_REASON is not None, reason=_REASON or ""),
              pytest.mark.integration, pytest.mark.timeout(1800)]

LENGTHS = (16, 48)  # the bundle was partitioned at 32 tokens
MODEL = "minilm"
INFER = f"/v2/models/{MODEL}/infer"
FLOOR = 0.99  # the bundle's floor: mean cosine over the held-back sentences
WORST = 0.97  # no single sentence far below it


@dataclass
class Stack:
    cloud: CloudProc
    agent: Service
    http: httpx.Client
    interior: list[str]  # interior cut ids, shallow to deep
    codec: str


def _interior(bundle: BuiltBundle) -> list[str]:
    return [c.id for c in bundle.manifest.cuts if c.head and c.tail and not c.is_cloud]


def _codec(bundle: BuiltBundle, cuts: list[str]) -> str:
    """The smallest codec the manifest says keeps the floor at every cut used here."""
    allowed = None
    for cid in cuts:
        ok = {k.codec: k.ratio for k in bundle.manifest.cut(cid).codecs if k.meets_floor}
        allowed = ok if allowed is None else {k: max(v, ok[k]) for k, v in allowed.items()
                                              if k in ok}
    assert allowed, "no codec keeps the floor at every interior cut"
    for cid in cuts:
        assert best_codec(bundle.manifest.cut(cid)) is not None
    return min(allowed, key=lambda k: allowed[k])


@pytest.fixture(scope="module")
def stack(minilm_bundle: BuiltBundle, tmp_path_factory: pytest.TempPathFactory
          ) -> Iterator[Stack]:
    work = tmp_path_factory.mktemp("minilm-e2e")
    ring = Keyring.create(work / "keys")
    interior = _interior(minilm_bundle)
    assert interior, [c.id for c in minilm_bundle.manifest.cuts]
    codec = _codec(minilm_bundle, interior)
    # a queue delay long enough that concurrent requests of one shape meet in a batch
    cloud = start_cloud(work / "cloud", minilm_bundle.root, minilm_bundle.public_key, ring,
                        MODEL, name="minilm-core",
                        batching={"max_batch": 16, "max_queue_delay_ms": 40})
    cfg = {"agent_id": ring.agent_id,
           "bundle": {"path": str(minilm_bundle.path),
                      "public_key": str(minilm_bundle.public_key)},
           "endpoints": [{"name": "core", "region": "eu",
                          "link": ring.client_link(cloud.zmq)}],
           "api": {"port": 0, "allow_cut_override": True},
           "runtime": {"workers": 8, "warmup_runs": 1, "measure_runs": 1},
           "policy": {"fixed_cut": interior[-1], "probe_interval_s": 0.5,
                      "explore_fraction": 0.0},
           "deadlines": {"default_ms": 60000},
           "codec": codec}
    (work / "edge.yaml").write_text(yaml.safe_dump(cfg))
    agent = None
    try:
        agent = Service("minilm-edge", tiersplit_cmd("edge", "run", "--config",
                                                    str(work / "edge.yaml")),
                        log_path=work / "edge.log").start(timeout=180)
        http = httpx.Client(base_url=agent.ready["http"], timeout=120)
        _wait_connected(http)
        yield Stack(cloud, agent, http, interior, codec)
        http.close()
    finally:
        if agent is not None:
            agent.stop(grace=10)
        cloud.stop()


def _wait_connected(http: httpx.Client) -> None:
    import time

    for _ in range(300):
        eps = http.get("/status").json().get("endpoints", {})
        if eps.get("core", {}).get("connected"):
            return
        time.sleep(0.1)
    pytest.fail(f"the agent never connected to the core: {http.get('/status').json()}")


def _reference(sentences: list[str], length: int) -> np.ndarray:
    """The fp32 sentence-transformers embedding (torch, not the bundle)."""
    import torch

    feeds = minilm.tokenize(sentences, length)
    with torch.no_grad():
        return minilm.make()(torch.from_numpy(feeds["input_ids"]),
                             torch.from_numpy(feeds["attention_mask"])).numpy()


def _body(feeds: dict[str, np.ndarray], cut: str | None = None) -> dict:
    doc: dict = {"inputs": [{"name": k, "datatype": "INT64", "shape": list(v.shape),
                             "data": v.reshape(-1).tolist()} for k, v in feeds.items()]}
    if cut is not None:
        doc["parameters"] = {"tiersplit_cut": cut}
    return doc


def _infer(http: httpx.Client, feeds: dict[str, np.ndarray], cut: str | None = None
           ) -> tuple[np.ndarray, dict]:
    r = http.post(INFER, json=_body(feeds, cut))
    assert r.status_code == 200, r.text
    doc = r.json()
    out = doc["outputs"][0]
    return np.asarray(out["data"], np.float32).reshape(out["shape"]), doc["parameters"]


def _cos_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def _cloud_counts(cloud: CloudProc) -> dict[str, float]:
    """OK answers by cut, backend calls and every refusal, from the core's /metrics."""
    text = httpx.get(f"{cloud.http}/metrics", timeout=10).text
    out: dict[str, float] = {}
    for m in re.finditer(r"^(tiersplit_cloud_\w+_total)\{([^}]*)\} ([0-9.e+]+)$", text, re.M):
        labels = dict(re.findall(r'(\w+)="([^"]*)"', m.group(2)))
        value = float(m.group(3))
        if m.group(1) == "tiersplit_cloud_requests_total":
            key = f"{labels['status']}:{labels['cut']}"
        elif m.group(1) == "tiersplit_cloud_backend_calls_total":
            key = "backend_calls"
        elif m.group(1) == "tiersplit_cloud_rejected_total":
            key = "rejected"
        else:
            continue
        out[key] = out.get(key, 0.0) + value
    return out


def _delta(after: dict[str, float], before: dict[str, float]) -> dict[str, float]:
    return {k: v - before.get(k, 0.0) for k, v in after.items() if v != before.get(k, 0.0)}


def test_int64_inputs_two_lengths_every_interior_cut_from_the_cloud(
        stack: Stack, minilm_bundle: BuiltBundle) -> None:
    digest = stack.http.get("/status").json()["bundle"]["digest"]
    before = _cloud_counts(stack.cloud)
    sentences = EVALUATION[:12]  # never seen by the calibration
    sent: dict[str, int] = {}
    for length in LENGTHS:
        ref = _reference(sentences, length)
        feeds = minilm.tokenize(sentences, length)
        for cut in stack.interior:
            got, params = _infer(stack.http, feeds, cut)
            assert (params["path"], params["cut"]) == ("remote", cut), params
            assert params["endpoint"] == "core" and params["remote_ms"] > 0
            assert got.shape == (len(sentences), 384)
            cos = _cos_rows(ref, got)
            assert cos.mean() >= FLOOR and cos.min() >= WORST, (cut, length, stack.codec, cos)
            sent[f"OK:{cut}"] = sent.get(f"OK:{cut}", 0) + 1
        # the policy's own (fixed) cut, with no override: still the cloud path
        got, params = _infer(stack.http, feeds)
        assert (params["path"], params["cut"]) == ("remote", stack.interior[-1]), params
        assert _cos_rows(ref, got).mean() >= FLOOR
        sent[f"OK:{stack.interior[-1]}"] += 1
    done = _delta(_cloud_counts(stack.cloud), before)
    answered = {k: v for k, v in done.items() if ":" in k}  # by status and cut
    assert answered == sent and "rejected" not in done, done  # all by the core, none refused
    status = stack.http.get("/status").json()
    assert status["bundle"]["digest"] == digest  # one bundle served both lengths
    assert [p.name for p in (minilm_bundle.root / MODEL).iterdir()] == ["1"]
    assert status["counts"].get("fallback", 0) == 0 and status["counts"]["remote"] >= len(sent)
    assert status["device_runs"].get("edge", 0) == 0  # the full model never ran


def test_tritonclient_int64(stack: Stack) -> None:
    httpclient = pytest.importorskip("tritonclient.http")
    length = LENGTHS[1]
    sentences = EVALUATION[12:18]
    feeds = minilm.tokenize(sentences, length)
    client = httpclient.InferenceServerClient(stack.agent.ready["http"].removeprefix("http://"))
    try:
        inputs = []
        for name, arr in feeds.items():
            inp = httpclient.InferInput(name, list(arr.shape), "INT64")
            inp.set_data_from_numpy(arr)
            inputs.append(inp)
        res = client.infer(MODEL, inputs)
    finally:
        client.close()
    params = res.get_response()["parameters"]
    assert params["path"] == "remote", params
    out_name = res.get_response()["outputs"][0]["name"]
    got = res.as_numpy(out_name)
    assert _cos_rows(_reference(sentences, length), got).mean() >= FLOOR


def test_core_batches_same_shapes_only(stack: Stack) -> None:
    """Concurrent single-sentence requests of both lengths: the core joins requests into
    batches (fewer backend calls than requests) and never mixes lengths (a mixed batch
    cannot be concatenated: it would be refused, and every answer must match)."""
    cut = stack.interior[-1]
    sentences = EVALUATION[18:34]
    jobs = [(s, LENGTHS[i % 2]) for i, s in enumerate(sentences)]
    refs = {length: dict(zip(sentences, _reference(sentences, length), strict=True))
            for length in LENGTHS}

    def one(job: tuple[str, int]) -> tuple[str, int, np.ndarray, dict]:
        s, length = job
        got, params = _infer(stack.http, minilm.tokenize([s], length), cut)
        return s, length, got, params

    batched = False
    for _round in range(3):
        before = _cloud_counts(stack.cloud)
        with ThreadPoolExecutor(len(jobs)) as pool:
            results = list(pool.map(one, jobs))
        cos = []
        for s, length, got, params in results:
            assert (params["path"], params["cut"]) == ("remote", cut), params
            cos.append(_cos_rows(refs[length][s][None], got)[0])
        assert np.mean(cos) >= FLOOR and min(cos) >= WORST, cos
        done = _delta(_cloud_counts(stack.cloud), before)
        assert done.get(f"OK:{cut}") == len(jobs) and "rejected" not in done, done
        assert not any(k.startswith(("INVALID", "INTERNAL", "UNAVAILABLE")) for k in done)
        if done["backend_calls"] < len(jobs):
            batched = True
            break
    assert batched, "the core never joined concurrent requests into one batch"



def test_device_tail_finishes_when_the_core_does_not_answer(
        minilm_bundle: BuiltBundle, tmp_path_factory: pytest.TempPathFactory) -> None:
    """A core that holds every request past its deadline: each request's head runs on the
    device, the cloud attempt fails, and the partitioner's int8 device tail finishes from
    the head's tensors (never the full model). The tail is part of the full model's work,
    so it costs less than rerunning the full model would (medians, agent's own timings)."""
    from edge_agent import EdgeAgent, parse_config

    work = tmp_path_factory.mktemp("minilm-fault")
    ring = Keyring.create(work / "keys")
    cut = next(c for c in minilm_bundle.manifest.cuts if c.device_tail)  # the shallowest
    core = start_cloud(work / "cloud", minilm_bundle.root, minilm_bundle.public_key, ring,
                       MODEL, name="slow-core", debug={"tail_delay_ms": 5000})
    agent = EdgeAgent(parse_config({
        "agent_id": ring.agent_id,
        "bundle": {"path": str(minilm_bundle.path),
                   "public_key": str(minilm_bundle.public_key)},
        "endpoints": [{"name": "core", "region": "eu", "link": ring.client_link(core.zmq)}],
        "api": {"port": 0},
        "runtime": {"workers": 1, "warmup_runs": 1, "measure_runs": 3},
        "policy": {"fixed_cut": cut.id, "probe_interval_s": 0.5, "explore_fraction": 0.0},
        # keep trying the core (an open breaker would send requests to the full model)
        "retry": {"breaker_failures": 1000},
        "codec": "int8+lz4"}))
    try:
        agent.start()
        assert agent.wait_connected(30)
        sentences = EVALUATION[:8]
        ref = _reference(sentences, 32)
        before = dict(agent.runtime.runs)
        results = [agent.infer(minilm.tokenize([s], 32), deadline_ms=400).result(60)
                   for s in sentences]
        ran = {k: v - before.get(k, 0) for k, v in agent.runtime.runs.items()
               if v != before.get(k, 0)}
        full_ms = [agent.runtime.run_full(minilm.tokenize([s], 32))[1] for s in sentences]
    finally:
        agent.stop(grace=5)
        core.stop()
    for r in results:
        assert (r.path, r.cut, r.fallback) == ("fallback", cut.id, "device_tail"), r.attempts
        assert "local" not in r.timings
    assert ran == {cut.id: len(sentences), f"tail:{cut.id}": len(sentences)}, ran
    got = np.concatenate([r.outputs[minilm_bundle.manifest.outputs[0].name] for r in results])
    cos = _cos_rows(ref, got)
    assert cos.mean() >= FLOOR and cos.min() >= WORST, cos
    tail = float(np.median([r.timings["tail"] for r in results]))
    both = float(np.median([r.timings["head"] + r.timings["tail"] for r in results]))
    full = float(np.median(full_ms))
    print(f"MINILM FALLBACK at {cut.id}: device tail {tail:.2f} ms (head + tail {both:.2f} "
          f"ms) vs the full int8 model {full:.2f} ms, medians of {len(results)}")
    # the tail is a strict part of the full model's work: generous margin for a shared CPU
    assert tail <= 1.25 * full, (tail, full)
