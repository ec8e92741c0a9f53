"""The agent with real processes: `tiersplit cloud serve` cores (CurveZMQ), the link
emulator between agent and cloud, tritonclient in front. Outputs are compared with the
fp32 full model; placement is observed through the agent's /status."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import httpx
import numpy as np
import pytest

from contract.bundle import EDGE_CUT
from edge_agent import BundleRefused, EdgeAgent, parse_config
from tests.edge.cloud_proc import Keyring, start_cloud
from tests.edge.conftest import base_config
from tiersplit.devtools.bundles import EDGE_CNN_INPUT as INPUT
from tiersplit.devtools.bundles import EDGE_CNN_OUTPUT as OUTPUT
from tiersplit.devtools.bundles import EDGE_CNN_SHAPE as IN_SHAPE
from tiersplit.devtools.bundles import full_reference as reference
from transport.linkemu import LinkEmulator, LinkProfile

pytestmark = pytest.mark.integration

# The emulated device: ~0.1 GMAC/s, so the whole model takes ~34 ms on the edge and
# sending a shallow cut to the cloud pays off on a fast link (this host is far faster).
SLOW_DEVICE = {"emulate_gmacs": 0.1, "workers": 2, "warmup_runs": 1, "measure_runs": 2}
DEPTH = {"cloud": 0, "k2": 2, "k4": 4, "k6": 6, "k8": 8, "edge": 12}


@pytest.fixture(scope="module")
def ring(tmp_path_factory) -> Keyring:
    return Keyring.create(tmp_path_factory.mktemp("edge-keys") / "k")


@pytest.fixture(scope="module")
def cloud(tmp_path_factory, edge_bundle, ring):
    proc = start_cloud(tmp_path_factory.mktemp("cloud-a"), edge_bundle.root,
                       edge_bundle.public_key, ring, "edge_cnn", name="a")
    yield proc
    proc.stop()


@pytest.fixture
def emulator(cloud):
    emu = LinkEmulator(("127.0.0.1", cloud.port), LinkProfile.symmetric(100e6, 2.0),
                       seed=1).start()
    yield emu
    emu.stop()


def agent_config(bundle, ring, endpoints: dict[str, str], **policy) -> dict:
    pol = {"probe_interval_s": 0.3, "seed": 3, "explore_fraction": 0.0}
    pol.update(policy)
    return base_config(
        bundle, runtime=SLOW_DEVICE, policy=pol,
        endpoints=[{"name": n, "region": "eu", "link": ring.client_link(ep)}
                   for n, ep in endpoints.items()])


def _x(batch: int = 1, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((batch, *IN_SHAPE)).astype(np.float32)


def _close(a: np.ndarray, ref: np.ndarray) -> None:
    cos = float((a * ref).sum() / (np.linalg.norm(a) * np.linalg.norm(ref)))
    assert cos >= 0.99, cos
    assert np.abs(a - ref).max() <= 0.1 * np.abs(ref).max()


@pytest.mark.parametrize("cut", ["k2", "k8", None])
def test_tritonclient_through_agent_and_cloud(edge_bundle, ring, emulator, make_agent,
                                              cut) -> None:
    httpclient = pytest.importorskip("tritonclient.http")
    agent = make_agent(agent_config(edge_bundle, ring, {"a": f"tcp://127.0.0.1:{emulator.port}"},
                                    fixed_cut=cut))
    assert agent.wait_connected(15)
    client = httpclient.InferenceServerClient(agent.http_url.removeprefix("http://"))
    paths = []
    try:
        for i in range(40):
            x = _x(2, seed=i)
            inp = httpclient.InferInput(INPUT, list(x.shape), "FP32")
            inp.set_data_from_numpy(x)
            res = client.infer("edge_cnn", [inp])
            params = res.get_response()["parameters"]
            paths.append((params["path"], params["cut"]))
            _close(res.as_numpy(OUTPUT), reference(edge_bundle.path, x))
            if params["path"] == "remote":
                assert params["endpoint"] == "a" and params["remote_ms"] > 0
                if cut is not None or i > 10:
                    break
            time.sleep(0.05)  # let the probes measure the link
    finally:
        client.close()
    path, served = paths[-1]
    assert path == "remote" and served == (cut or served) and served != EDGE_CUT, paths
    if cut is None:  # the policy found that a shallow cut beats the slow device
        assert DEPTH[served] < DEPTH[EDGE_CUT]


def _drive(agent: EdgeAgent, until, limit: int = 150) -> str:
    """Sequential requests until ``until(current_cut)`` holds; returns that cut."""
    x = _x()
    cut = None
    for _ in range(limit):
        agent.infer({INPUT: x}).result(30)
        cut = httpx.get(f"{agent.http_url}/status", timeout=10).json()["current_cut"]
        if until(cut):
            return cut
        time.sleep(0.01)
    pytest.fail(f"current cut stayed {cut} for {limit} requests: {agent.status()['policy']}")


@pytest.mark.slow
def test_cut_follows_the_emulated_bandwidth(edge_bundle, ring, emulator, make_agent) -> None:
    agent = make_agent(agent_config(edge_bundle, ring, {"a": f"tcp://127.0.0.1:{emulator.port}"}))
    assert agent.wait_connected(15)
    fast = _drive(agent, lambda c: c not in (None, EDGE_CUT))
    emulator.set_rate(2e6, 2e6)  # 100 -> 2 Mbit/s: bytes now cost more than edge compute
    slow = _drive(agent, lambda c: DEPTH[c] > DEPTH[fast])
    emulator.set_rate(100e6, 100e6)
    back = _drive(agent, lambda c: DEPTH[c] < DEPTH[slow])
    assert DEPTH[fast] < DEPTH[slow] and DEPTH[back] < DEPTH[slow]
    m = httpx.get(f"{agent.http_url}/metrics", timeout=10).text
    assert f'tiersplit_edge_current_cut{{cut="{back}"}} 1.0' in m
    for served in (fast, slow):  # the requests metric labels the cut that served
        assert f'tiersplit_edge_requests_total{{outcome="ok",path="{served}"}}' in m
    assert agent.status()["counts"].get("remote", 0) > 0


@pytest.mark.slow
def test_killing_cloud_cores_loses_no_request(tmp_path, edge_bundle, ring, make_agent) -> None:
    a = start_cloud(tmp_path / "a", edge_bundle.root, edge_bundle.public_key, ring,
                    "edge_cnn", name="a")
    b = start_cloud(tmp_path / "b", edge_bundle.root, edge_bundle.public_key, ring,
                    "edge_cnn", name="b")
    try:
        agent = make_agent(agent_config(edge_bundle, ring, {"a": a.zmq, "b": b.zmq},
                                        fixed_cut="k2"))
        assert agent.wait_connected(15, count=2)
        results, errors = [], []
        lock = threading.Lock()
        stop = threading.Event()
        ref_x = _x(1, seed=9)
        ref = reference(edge_bundle.path, ref_x)

        def sender() -> None:
            while not stop.is_set():
                h = agent.infer({INPUT: ref_x}, deadline_ms=3000)
                try:
                    r = h.result(60)
                except Exception as e:  # any error is a lost request: recorded, fails below
                    with lock:
                        errors.append(repr(e))
                    continue
                with lock:
                    results.append(r)

        threads = [threading.Thread(target=sender, name=f"sender-{i}") for i in range(3)]
        for t in threads:
            t.start()

        def wait_for(n: int) -> None:
            deadline = time.monotonic() + 60
            while len(results) < n and time.monotonic() < deadline:
                time.sleep(0.02)

        wait_for(30)
        first = Counter(r.endpoint for r in results).most_common(1)[0][0]
        victim, survivor = (a, "b") if first == "a" else (b, "a")
        victim.kill()  # SIGKILL mid-run: requests in flight there must not be lost
        n_kill = len(results)
        wait_for(n_kill + 60)
        after_first = results[n_kill:]
        (b if victim is a else a).kill()  # now no cloud at all: everything local
        n_kill2 = len(results)
        wait_for(n_kill2 + 30)
        stop.set()
        for t in threads:
            t.join(60)
    finally:
        a.kill()
        b.kill()
    assert not errors, errors[:3]
    assert len(results) >= n_kill2 + 30
    for r in results:
        _close(r.outputs[OUTPUT], ref)
    paths = Counter(r.path for r in results)
    assert paths["remote"] > 0 and paths["fallback"] + paths["device"] > 0, paths
    assert all(r.cut == "k2" for r in results if r.path == "remote")
    assert any(r.endpoint == survivor for r in after_first), Counter(
        (r.path, r.endpoint) for r in after_first)
    # no cloud left: on the device, as a fallback or by the policy
    assert all(r.path in ("fallback", "device") for r in results[n_kill2 + 10:])
    st = agent.status()
    assert st["counts"].get("fallback", 0) == paths["fallback"]
    # every failed cloud attempt is in some request's records, and only those
    failed = [a for r in results for a in r.attempts if not a.ok and not a.skipped]
    assert len(failed) == sum(ep["failed"] for ep in st["endpoints"].values()), failed[:3]
    assert all(a.cut == "k2" and a.endpoint in ("a", "b") for a in failed)
    assert st["endpoints"][first]["failed"] + st["endpoints"][survivor]["failed"] >= 1


def _copy_bundle(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    for p in [dst, *dst.rglob("*")]:
        os.chmod(p, 0o755 if p.is_dir() else 0o644)
    return dst


def test_tampered_unsigned_or_foreign_bundle_is_refused(edge_bundle, tmp_path, key_dir) -> None:
    from transport import keys

    tampered = _copy_bundle(edge_bundle.path, tmp_path / "t" / "edge_cnn" / "1")
    head = tampered / "head-k2.int8.onnx"
    data = bytearray(head.read_bytes())
    data[len(data) // 2] ^= 0x01
    head.write_bytes(bytes(data))
    cfg = base_config(edge_bundle)
    cfg["bundle"] = {"path": str(tampered), "public_key": str(edge_bundle.public_key)}
    with pytest.raises(BundleRefused, match="tampered"):
        EdgeAgent(parse_config(cfg)).start()

    unsigned = _copy_bundle(edge_bundle.path, tmp_path / "u" / "edge_cnn" / "1")
    (unsigned / "manifest.yaml.sig").unlink()
    cfg["bundle"]["path"] = str(unsigned)
    with pytest.raises(BundleRefused, match="unsigned"):
        EdgeAgent(parse_config(cfg)).start()

    _, other_pub = keys.generate("ed25519", key_dir, "other")
    cfg["bundle"] = {"path": str(edge_bundle.path), "public_key": str(other_pub)}
    with pytest.raises(BundleRefused, match="bad signature"):
        EdgeAgent(parse_config(cfg)).start()

    # and the daemon itself: one clear line, exit 2, nothing served
    import yaml

    cfg["bundle"] = {"path": str(tampered), "public_key": str(edge_bundle.public_key)}
    path = tmp_path / "edge.yaml"
    path.write_text(yaml.safe_dump(cfg))
    r = subprocess.run([sys.executable, "-m", "tiersplit.cli", "edge", "run", "--config",
                        str(path)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "READY" not in r.stdout
    assert "refusing bundle" in " ".join(r.stderr.split())


@pytest.mark.mqtt
def test_agent_over_mqtt_with_a_real_broker(tmp_path, edge_bundle, mosquitto_broker,
                                            make_agent) -> None:
    """The same agent over MQTT (TLS to mosquitto, AEAD payloads): served by the cloud."""
    from transport import keys

    kd = tmp_path / "x25519"
    cloud_sk, cloud_pk = keys.generate("x25519", kd, "cloud")
    agent_sk, agent_pk = keys.generate("x25519", kd, "edge-test")
    allowed = kd / "agents"
    allowed.mkdir()
    shutil.copy(agent_pk, allowed / "edge-test.pub")
    broker = mosquitto_broker.broker_config().model_dump(mode="json", exclude_none=True)
    ring = Keyring.create(tmp_path / "curve")  # unused zmq keys: the core needs a transport
    cloud = start_cloud(tmp_path / "cloud", edge_bundle.root, edge_bundle.public_key, ring,
                        "edge_cnn", name="mqtt", transports=[{
                            "kind": "mqtt", "broker": broker, "secret_key": str(cloud_sk),
                            "allowed_keys_dir": str(allowed)}])
    try:
        cfg = base_config(edge_bundle, runtime=SLOW_DEVICE,
                          policy={"fixed_cut": "k4", "probe_interval_s": 0.5},
                          endpoints=[{"name": "broker", "link": {
                              "kind": "mqtt", "broker": broker, "secret_key": str(agent_sk),
                              "server_public_key": str(cloud_pk)}}])
        agent = make_agent(cfg)
        assert agent.wait_connected(20)
        x = _x(2, seed=5)
        for _ in range(20):  # the first requests may race the cloud's subscription
            res = agent.infer({INPUT: x}).result(30)
            if res.path == "remote":
                break
            time.sleep(0.2)
        assert (res.path, res.cut, res.endpoint) == ("remote", "k4", "broker"), res.attempts
        _close(res.outputs[OUTPUT], reference(edge_bundle.path, x))
    finally:
        cloud.stop()


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_breaker_probes_a_restarted_core_back(tmp_path, edge_bundle, ring, make_agent) -> None:
    port = _free_port()
    transports = [{"kind": "zmq", "endpoints": [f"tcp://127.0.0.1:{port}"],
                   "secret_key": str(ring.cloud_secret), "allowed_keys_dir": str(ring.allowed),
                   "heartbeat_ivl_ms": 300, "heartbeat_timeout_ms": 1000,
                   "heartbeat_ttl_ms": 2000}]
    core = start_cloud(tmp_path / "c1", edge_bundle.root, edge_bundle.public_key, ring,
                       "edge_cnn", name="c", transports=transports)
    cfg = agent_config(edge_bundle, ring, {"c": f"tcp://127.0.0.1:{port}"}, fixed_cut="k4")
    cfg["retry"] = {"breaker_failures": 1, "breaker_open_s": 0.5}
    agent = make_agent(cfg)
    try:
        assert agent.wait_connected(15)
        x = {INPUT: _x()}

        def drive(want) -> list[str]:
            paths = []
            for _ in range(200):
                paths.append(agent.infer(x, deadline_ms=3000).result(30).path)
                if want(paths[-1]):
                    return paths
                time.sleep(0.05)
            pytest.fail(f"never reached the wanted path: {Counter(paths)} "
                        f"{agent.status()['endpoints']}")

        drive(lambda p: p == "remote")
        core.kill()
        drive(lambda p: p in ("fallback", "device"))
        ep = agent.status()["endpoints"]["c"]
        assert ep["breaker"] != "closed" or not ep["connected"]
        core = start_cloud(tmp_path / "c2", edge_bundle.root, edge_bundle.public_key, ring,
                           "edge_cnn", name="c", transports=transports)
        drive(lambda p: p == "remote")  # reconnected, probed back, served by the cloud again
        assert agent.status()["endpoints"]["c"]["breaker"] == "closed"
    finally:
        core.kill()


@pytest.mark.slow
def test_zoo_digits_split_equals_whole(tmp_path, digits_bundle, ring, make_agent) -> None:
    """The partitioner's real digits bundle: every cut through a cloud core agrees with the
    fp32 full model on held-out digits (int8 head tolerance), and so does the device."""
    import onnxruntime as ort

    from partitioner import zoo

    core = start_cloud(tmp_path / "cloud", digits_bundle.root, digits_bundle.public_key, ring,
                       digits_bundle.name, name="digits",
                       models=[{"name": digits_bundle.name,
                                "versions": [digits_bundle.version]}],
                       batching={"max_batch": 64, "max_queue_delay_ms": 0.5})
    try:
        x_all, _ = zoo.get("digits_cnn").heldout()
        x = np.ascontiguousarray(x_all[:64], dtype=np.float32)
        inp = digits_bundle.manifest.inputs[0].name
        out = digits_bundle.manifest.outputs[0].name
        full = ort.InferenceSession(str(digits_bundle.path / digits_bundle.manifest.full_fp32),
                                    providers=["CPUExecutionProvider"])
        ref = full.run([out], {inp: x})[0]
        cuts = [c.id for c in digits_bundle.manifest.cuts if c.depth >= 1]
        for cut in cuts:
            cfg = base_config(digits_bundle, policy={"fixed_cut": cut, "probe_interval_s": 0},
                              codec="raw",
                              endpoints=[{"name": "c", "link": ring.client_link(core.zmq)}])
            agent = make_agent(cfg, serve_http=False)
            assert agent.wait_connected(15)
            res = agent.infer({inp: x}, deadline_ms=10_000).result(60)
            path = "device" if cut == EDGE_CUT else "remote"
            assert (res.path, res.cut) == (path, cut), (cut, res.attempts)
            y = res.outputs[out]
            if path == "remote":  # raw codec: the link's own count covers every tensor byte
                crossing = digits_bundle.manifest.cut(cut).bytes * len(x)
                assert res.bytes_sent >= crossing, (cut, res.bytes_sent, crossing)
            agree = float((y.argmax(1) == ref.argmax(1)).mean())
            spec = digits_bundle.manifest.cut(cut)
            floor = min(0.97, (spec.accuracy.top1_agreement or 1.0) - 0.02)
            assert agree >= floor, (cut, agree)
            if spec.accuracy.samples:
                assert np.abs(y - ref).max() <= 3 * spec.accuracy.max_abs + 1e-3, cut
            agent.stop()
    finally:
        core.stop()


def test_placement_prior_guides_the_first_requests(tmp_path, edge_bundle, ring, cloud,
                                                   make_agent) -> None:
    """A `tiersplit place tune` prior (format 1) picks the cut until the link is measured;
    a missing or unreadable prior never stops the agent."""
    from placement import (
        BandwidthRange,
        ModelPrior,
        PlacementPrior,
        PriorTable,
        dump_prior,
    )

    table = PriorTable("4g", 40.0, 1.0, (BandwidthRange(0.0, float("inf"), "k6"),))
    prior = tmp_path / "placement.yaml"
    dump_prior(PlacementPrior({"edge_cnn": ModelPrior("edge_cnn", "1", "", (table,))}), prior)
    cfg = agent_config(edge_bundle, ring, {"a": cloud.zmq}, probe_interval_s=0)
    cfg["placement_prior"] = str(prior)
    agent = make_agent(cfg, serve_http=False)
    assert agent.wait_connected(15)
    res = agent.infer({INPUT: _x()}).result(30)
    assert (res.path, res.cut) == ("remote", "k6")
    # the request's one attempt, as the record the runner returned
    (attempt,) = res.attempts
    assert (attempt.endpoint, attempt.cut, attempt.outcome) == ("a", "k6", "ok")
    assert attempt.bytes == res.bytes_sent > 0 and attempt.timings["remote"] > 0
    assert agent.status()["policy"]["last_choice"]["reason"] == "prior"
    for bad in (tmp_path / "missing.yaml", tmp_path / "garbage.yaml"):
        if bad.name == "garbage.yaml":
            bad.write_text("format: 99\n")
        cfg["placement_prior"] = str(bad)
        other = make_agent(cfg, serve_http=False)
        assert other.infer({INPUT: _x()}).result(30).outputs[OUTPUT].shape == (1, 10)
