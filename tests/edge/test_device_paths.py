"""What the device does on its own: finish from the cut, answer easy inputs, and never
send what the privacy floor bars. A real `tiersplit cloud serve` core and a bundle that
ships device tails and a (hand-written) privacy audit in its signed manifest; what the
cloud received is read from the core's own Prometheus counters."""

from __future__ import annotations

import logging
import re
import time
from collections import Counter

import httpx
import numpy as np
import onnxruntime as ort
import pytest

from edge_agent import ConfigError
from partitioner.zoo import get
from placement.cascade import confidence
from tests.edge.cloud_proc import Keyring, start_cloud
from tests.edge.conftest import base_config
from tiersplit.devtools.bundles import EDGE_CNN_INPUT as INPUT
from tiersplit.devtools.bundles import EDGE_CNN_OUTPUT as OUTPUT
from tiersplit.devtools.bundles import EDGE_CNN_SHAPE as IN_SHAPE
from tiersplit.devtools.bundles import audit, build_edge_cnn
from transport.linkemu import LinkEmulator, LinkProfile

pytestmark = pytest.mark.integration

SLOW_DEVICE = {"emulate_gmacs": 0.1, "workers": 2, "warmup_runs": 1, "measure_runs": 2}
#: audited reconstruction quality (SSIM) per cut: shallow cuts leak the image
RISK = {"cloud": 0.99, "k2": 0.8, "k4": 0.5, "k6": 0.2, "k8": 0.1}
RISK_FLOOR = {"min_depth": 1, "max_reconstruction": 0.3}  # only k6 and k8 may be sent


@pytest.fixture(scope="module")
def tails_bundle(tmp_path_factory):
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        base = tmp_path_factory.mktemp("tails-bundle")
        return build_edge_cnn(base / "repo", base / "keys", device_tails=True,
                              privacy_audit=audit(RISK))
    finally:
        root.setLevel(level)


@pytest.fixture(scope="module")
def ring(tmp_path_factory) -> Keyring:
    return Keyring.create(tmp_path_factory.mktemp("paths-keys") / "k")


@pytest.fixture(scope="module")
def cloud(tmp_path_factory, tails_bundle, ring):
    proc = start_cloud(tmp_path_factory.mktemp("paths-cloud"), tails_bundle.root,
                       tails_bundle.public_key, ring, "edge_cnn", name="paths")
    yield proc
    proc.stop()


def _config(bundle, ring, endpoint: str, region: str = "eu", **policy):
    pol = {"seed": 3, "explore_fraction": 0.0, "probe_interval_s": 0.3}
    pol.update(policy)
    return base_config(bundle, runtime=SLOW_DEVICE, policy=pol, codec="int8",
                       endpoints=[{"name": "a", "region": region,
                                   "link": ring.client_link(endpoint)}])


def received(cloud) -> Counter[str]:
    """Requests the core answered OK, by cut (its ``tiersplit_cloud_requests_total``)."""
    text = httpx.get(f"{cloud.http}/metrics", timeout=10).text
    out: Counter[str] = Counter()
    for m in re.finditer(r'^tiersplit_cloud_requests_total\{([^}]*)\} ([0-9.e+]+)$', text,
                         re.M):
        labels = dict(re.findall(r'(\w+)="([^"]*)"', m.group(1)))
        if labels.get("status") == "OK":
            out[labels["cut"]] += int(float(m.group(2)))
    return out


def _x(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((1, *IN_SHAPE)).astype(np.float32)


def _close(a: np.ndarray, ref: np.ndarray) -> None:
    cos = float((a * ref).sum() / (np.linalg.norm(a) * np.linalg.norm(ref)))
    assert cos >= 0.99, cos
    assert np.abs(a - ref).max() <= 0.1 * np.abs(ref).max()


def test_fallback_continues_from_the_cut_with_the_device_tail(tails_bundle, ring, cloud,
                                                              make_agent) -> None:
    emu = LinkEmulator(("127.0.0.1", cloud.port), LinkProfile.symmetric(100e6, 2.0),
                       seed=1).start()
    try:
        agent = make_agent(_config(tails_bundle, ring, f"tcp://127.0.0.1:{emu.port}",
                                   fixed_cut="k4"))
        assert agent.wait_connected(15)
        assert agent.status()["device_tails"] == ["k2", "k4", "k6", "k8"]
        x = {INPUT: _x(1)}
        served = agent.infer(x, deadline_ms=5000).result(30)
        assert (served.path, served.cut) == ("remote", "k4"), served.attempts
        before = dict(agent.runtime.runs)
        emu.blackout(2.0)  # the cloud's reply will not come in time
        emu.stop_replay()  # returns once the emulator's loop has applied the blackout
        res = agent.infer(x, deadline_ms=600).result(30)
    finally:
        emu.stop()
    assert (res.path, res.cut, res.fallback) == ("fallback", "k4", "device_tail"), res.attempts
    assert res.attempts and res.attempts[0].outcome in ("timeout", "peer lost")
    _close(res.outputs[OUTPUT], served.outputs[OUTPUT])  # the cloud's answer, int8 tail
    ran = {k: v - before.get(k, 0) for k, v in agent.runtime.runs.items()
           if v != before.get(k, 0)}
    assert ran == {"k4": 1, "tail:k4": 1}, ran  # the head once, no full model
    full_ms = agent.runtime.head_ms["edge"]
    assert "local" not in res.timings and res.timings["tail"] < full_ms
    print(f"FALLBACK device tail {res.timings['tail']:.1f} ms after head "
          f"{res.timings['head']:.1f} ms; full int8 model {full_ms:.1f} ms")
    assert agent.status()["counts"]["fallback_device_tail"] == 1
    metrics = agent.metrics_text().decode()
    assert 'tiersplit_edge_fallbacks_total{kind="device_tail"} 1.0' in metrics


def test_risk_stated_floor_never_sends_above_it(tails_bundle, ring, cloud,
                                                make_agent) -> None:
    before = received(cloud)
    # exploration on: every cut the floor admits gets tried, and only those
    agent = make_agent(_config(tails_bundle, ring, cloud.zmq, privacy_floor=RISK_FLOOR,
                               explore_fraction=0.5, explore_max_ratio=50.0))
    assert agent.wait_connected(15)
    paths = Counter()
    for i in range(30):
        res = agent.infer({INPUT: _x(i)}, deadline_ms=5000).result(30)
        paths[res.path] += 1
        assert res.cut in ("k6", "k8", "edge"), res.cut
    sent = received(cloud) - before
    assert sent and set(sent) <= {"k6", "k8"}, sent
    assert sum(sent.values()) == paths["remote"]
    barred = agent.status()["policy"]["privacy_barred"]
    assert set(barred) == {"cloud", "k2", "k4"}
    assert "audited ssim 0.500 > max_reconstruction 0.3" in barred["k4"]
    with pytest.raises(ConfigError, match="barred by privacy_floor"):
        make_agent(_config(tails_bundle, ring, cloud.zmq, privacy_floor=RISK_FLOOR,
                           fixed_cut="k2"))


def test_cascade_answers_confident_inputs_on_the_device(tails_bundle, ring, cloud,
                                                        make_agent) -> None:
    full = ort.InferenceSession(str(tails_bundle.path / "full.int8.onnx"),
                                providers=["CPUExecutionProvider"])
    xs = [_x(100 + i) for i in range(24)]
    scores = np.array([confidence(full.run([OUTPUT], {INPUT: x})[0])[0] for x in xs])
    s = np.sort(scores)
    threshold = float((s[11] + s[12]) / 2)  # about half the inputs are "easy"
    easy = scores >= threshold
    cascade = {"enabled": True, "threshold": threshold, "kind": "max-softmax"}
    before = received(cloud)
    agent = make_agent(_config(tails_bundle, ring, cloud.zmq, privacy_floor=RISK_FLOOR,
                               cascade=cascade))
    assert agent.wait_connected(15)
    results = [agent.infer({INPUT: x}, deadline_ms=5000).result(30) for x in xs]
    for r, is_easy, x in zip(results, easy, xs, strict=True):
        if is_easy:
            assert (r.path, r.cut, r.cascade, r.bytes_sent) == ("device", "edge", "local", 0)
            _close(r.outputs[OUTPUT], full.run([OUTPUT], {INPUT: x})[0])
        else:
            assert r.cascade == "split" and r.cut in ("k6", "k8", "edge"), r
    n_local, n_split = int(easy.sum()), int((~easy).sum())
    counts = agent.status()["counts"]
    assert (counts["cascade_local"], counts["cascade_split"]) == (n_local, n_split)
    sent = received(cloud) - before  # the floor holds on the split path too
    assert set(sent) <= {"k6", "k8"}
    assert sum(sent.values()) == sum(r.path == "remote" for r in results) <= n_split
    metrics = agent.metrics_text().decode()
    assert f'tiersplit_edge_cascade_total{{outcome="local"}} {float(n_local)}' in metrics
    # residency on the cascade path: no endpoint in an allowed region, nothing sent
    before = received(cloud)
    abroad = make_agent(_config(tails_bundle, ring, cloud.zmq, region="eu",
                                cascade=cascade) | {"allowed_regions": ["us"]})
    for x in xs[:6]:
        assert abroad.infer({INPUT: x}).result(30).path == "device"
    assert received(cloud) == before


# ---- a partitioner-made bundle: device tails searched and written by `partition` ----

@pytest.fixture(scope="module")
def partitioned(tmp_path_factory, partition_cache):
    """The trained digits CNN partitioned with device tails (the default), signed; through
    the session partition cache, which other areas' digits builds share."""
    from partitioner import partition
    from tiersplit.devtools.bundles import load_built, signing_keys

    base = tmp_path_factory.mktemp("partitioned")
    (base / "keys").mkdir()
    secret, public = signing_keys(base / "keys")
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        path = partition("zoo:digits_cnn", None, base / "repo", signing_key=secret,
                         progress=False, cache_dir=partition_cache)
    finally:
        root.setLevel(level)
    return load_built(path, base / "repo", secret, public)


def test_partitioned_device_tail_finishes_when_the_core_dies_after_the_head(
        partitioned, ring, tmp_path_factory, make_agent) -> None:
    """The core is killed while it holds the request (the head already ran on the device):
    the agent finishes from the cut with the partitioner's int8 device tail, without
    running the head again or the full model, and answers like the cloud did."""
    m = partitioned.manifest
    tails = [c for c in m.cuts if c.device_tail]
    assert tails and all(c.device_tail == f"device-tail-{c.id}.int8.onnx" for c in tails)
    cut = tails[0]  # the shallowest: the most work left to the tail
    core = start_cloud(tmp_path_factory.mktemp("doomed-cloud"), partitioned.root,
                       partitioned.public_key, ring, m.name, name="doomed",
                       debug={"tail_delay_ms": 1500})  # holds each request 1.5 s
    try:
        agent = make_agent(base_config(
            partitioned, policy={"seed": 3, "explore_fraction": 0.0, "probe_interval_s": 0.3,
                                 "fixed_cut": cut.id},
            codec="int8", runtime={"workers": 2, "warmup_runs": 1, "measure_runs": 3},
            endpoints=[{"name": "a", "region": "eu", "link": ring.client_link(core.zmq)}]))
        assert agent.wait_connected(15)
        assert cut.id in agent.status()["device_tails"]
        x = {m.inputs[0].name: get("digits_cnn").heldout()[0][:1].astype(np.float32)}
        served = agent.infer(x, deadline_ms=10000).result(30)
        assert (served.path, served.cut) == ("remote", cut.id), served.attempts
        before = dict(agent.runtime.runs)
        handle = agent.infer(x, deadline_ms=8000)
        time.sleep(0.5)  # the head ran; the core is sleeping on the request
        core.kill()
        res = handle.result(30)
    finally:
        core.kill()
    out = m.outputs[0].name
    assert (res.path, res.cut, res.fallback) == ("fallback", cut.id, "device_tail"), \
        res.attempts
    assert res.attempts and res.attempts[0].outcome in ("timeout", "peer lost"), res.attempts
    ran = {k: v - before.get(k, 0) for k, v in agent.runtime.runs.items()
           if v != before.get(k, 0)}
    assert ran == {cut.id: 1, f"tail:{cut.id}": 1}, ran  # head once, no full model
    assert "local" not in res.timings
    _close(res.outputs[out], served.outputs[out])  # the cloud's answer, int8 tail
    assert res.outputs[out].argmax() == served.outputs[out].argmax()
    print(f"FALLBACK {cut.id}: head {res.timings['head']:.3f} ms + device tail "
          f"{res.timings['tail']:.3f} ms; full int8 model {agent.runtime.head_ms['edge']:.3f} "
          "ms (measured at start)")
