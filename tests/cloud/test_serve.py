"""Integration with real processes: `tiersplit cloud serve` as a subprocess, agents as real
transport client links over ZeroMQ (CurveZMQ) and MQTT (a real mosquitto, TLS + AEAD).

One suite for both links: two models and two versions to several agents at once; every
kind of bad request answered with its error and counted in /metrics; the service keeps
serving; SIGTERM drains in-flight work and exits 0."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import yaml

import transport
from contract.bundle import Bundle
from tests.cloud.conftest import make_request
from tiersplit.devtools import bundles as test_bundles
from transport import keys
from transport.config import MqttClientConfig, ZmqClientConfig
from transport.errors import LinkClosed, LinkTimeout
from transport.messages import Status

pytestmark = [pytest.mark.integration, pytest.mark.slow]

AGENTS = ["agent-1", "agent-2", "agent-3"]


class Served:
    """A `tiersplit cloud serve` process, its config and how to reach it."""

    def __init__(self, kind: str, root: Path, cloud_repo: Any, broker: Any = None,
                 args: tuple[str, ...] = (), **over: Any) -> None:
        self.kind, self.root, self.broker = kind, root, broker
        self.key_kind = "curve" if kind == "zmq" else "x25519"
        self.prefix = f"t{uuid.uuid4().hex[:8]}"
        allowed = root / "allowed"
        allowed.mkdir(parents=True)
        keys.generate(self.key_kind, root, "cloud")
        for agent in [*AGENTS, "stranger"]:
            keys.generate(self.key_kind, root, agent)
            if agent != "stranger":
                shutil.copy(root / f"{agent}.pub", allowed / f"{agent}.pub")
        if kind == "zmq":
            link: dict[str, Any] = {"kind": "zmq", "endpoints": ["tcp://127.0.0.1:0"],
                                    "secret_key": "cloud.key", "allowed_keys_dir": "allowed"}
        else:
            link = {"kind": "mqtt", "prefix": self.prefix, "secret_key": "cloud.key",
                    "allowed_keys_dir": "allowed",
                    "broker": broker.broker_config().model_dump(mode="json",
                                                                exclude_none=True)}
        cfg: dict[str, Any] = {
            "repository": str(cloud_repo.root), "signing_public_key": str(cloud_repo.public_key),
            "models": [{"name": "mlp", "versions": ["all"]}, {"name": "cnn"}],
            "transports": [link], "http": {"port": 0}, "admin": {"port": 0}, "grace_s": 20,
            "batching": {"max_batch": 64, "max_queue_delay_ms": 2},
            "limits": {"max_request_bytes": 2048},
        }
        cfg.update(over)
        self.config = root / "cloud.yaml"
        self.config.write_text(yaml.safe_dump(cfg))
        self.proc = subprocess.Popen(
            [sys.executable, "-X", "faulthandler", "-m", "tiersplit.cli", "cloud", "serve",
             "--config", str(self.config), *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            text=True, env=dict(os.environ, PYTHONUNBUFFERED="1"))
        self.lines: list[str] = []
        try:
            ready = self._wait_ready(120)
        except BaseException:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait(timeout=10)
            raise
        fields = dict(part.split("=", 1) for part in ready.split()[1:])
        self.http = fields["http"]
        self.endpoint = fields.get("zmq", "")
        self.clients: list[transport.ClientLink] = []

    def _pump(self) -> None:
        # Keep draining the child's output (a full pipe would block its logging) and
        # spot the READY line; a thread, because select() cannot see text buffered by
        # readline().
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.rstrip())
            if line.startswith("READY "):
                self._ready_line = line
                self._ready.set()
        self._ready.set()

    def _wait_ready(self, timeout: float) -> str:
        self._ready = threading.Event()
        self._ready_line = ""
        self._reader = threading.Thread(target=self._pump, name="serve-output", daemon=True)
        self._reader.start()
        self._ready.wait(timeout)
        if self._ready_line:
            return self._ready_line
        if self.proc.poll() is None:  # stuck: faulthandler dumps every thread on SIGABRT
            self.proc.send_signal(signal.SIGABRT)
            self.proc.wait(timeout=30)
            self._reader.join(timeout=10)
        raise AssertionError("cloud serve did not get ready:\n" + "\n".join(self.lines[-80:]))

    def client(self, agent: str) -> transport.ClientLink:
        secret = self.root / f"{agent}.key"
        if self.kind == "zmq":
            cfg: Any = ZmqClientConfig(endpoint=self.endpoint, secret_key=secret,
                                       server_public_key=self.root / "cloud.pub")
        else:
            cfg = MqttClientConfig(broker=self.broker.broker_config(), prefix=self.prefix,
                                   secret_key=secret, server_public_key=self.root / "cloud.pub")
        link = transport.make_client_link(cfg, agent)
        self.clients.append(link)
        return link

    def metric(self, name: str, **labels: str) -> float:
        text = httpx.get(f"{self.http}/metrics").text
        want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
        prefix = f"{name}{{{want}}} " if labels else f"{name} "
        for line in text.splitlines():
            if line.startswith(prefix):
                return float(line.split()[-1])
        return 0.0

    def terminate(self, timeout: float = 60) -> int:
        for c in self.clients:
            c.close()
        self.clients.clear()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            rc = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            rc = self.proc.wait(timeout=10)
        self._reader.join(timeout=10)
        return rc


@pytest.fixture(params=["zmq", "mqtt"])
def served(request, cloud_repo, tmp_path: Path):
    broker = request.getfixturevalue("mosquitto_broker") if request.param == "mqtt" else None
    s = Served(request.param, tmp_path / "serve", cloud_repo, broker)
    try:
        yield s
    finally:
        s.terminate()


def _wait_connected(link: transport.ClientLink, timeout: float = 15) -> None:
    end = time.monotonic() + timeout
    while not link.connected and time.monotonic() < end:
        time.sleep(0.05)
    assert link.connected, "client link did not connect"


def test_serves_two_models_two_versions_to_several_agents(served: Served, cloud_repo) -> None:
    key = keys.load_ed25519_public(cloud_repo.public_key)
    bundles = [Bundle.load(cloud_repo.root / n / v, key, role="all")
               for n, v in (("mlp", "1"), ("mlp", "2"), ("cnn", "1"))]
    links = [served.client(a) for a in AGENTS]
    for link in links:
        _wait_connected(link)
    rng = np.random.default_rng(21)
    work = []
    for i in range(36):
        b = bundles[i % 3]
        cut = [c.id for c in b.manifest.cuts if not c.is_edge][i % 3]
        x = test_bundles.sample(b.manifest.inputs[0], 1 + i % 3, rng)
        crossing, tail, full = test_bundles.reference(b, cut, x)
        work.append((links[i % len(links)], make_request(b, cut, crossing), b, cut, tail, full))
    with ThreadPoolExecutor(6) as pool:
        futures = [pool.submit(lambda w: w[0].submit(w[1]).result(30), w) for w in work]
        replies = [f.result() for f in futures]
    for reply, (_, _req, b, cut, tail, full) in zip(replies, work, strict=True):
        assert reply.status == Status.OK, (b.name, b.version, cut, reply.error)
        np.testing.assert_allclose(reply.tensors["y"], tail, rtol=1e-4, atol=1e-5)
        tol = max(4 * b.manifest.cut(cut).accuracy.max_abs, 1e-3)
        assert np.abs(reply.tensors["y"] - full).max() <= tol
    assert served.metric("tiersplit_cloud_requests_total", model="mlp", cut="h1",
                         status="OK") > 0


def test_bad_requests_get_errors_are_counted_and_service_keeps_serving(served: Served,
                                                                       cloud_repo) -> None:
    key = keys.load_ed25519_public(cloud_repo.public_key)
    b = Bundle.load(cloud_repo.root / "mlp" / "1", key, role="cloud")
    link = served.client("agent-1")
    _wait_connected(link)
    good = {"h1": np.ones((2, 32), np.float32)}
    cases = [
        (make_request(b, "h1", good, digest="f" * 64), Status.VERSION_MISMATCH,
         "version_mismatch"),
        (make_request(b, "nope", good), Status.CUT_NOT_FOUND, "cut_not_found"),
        (make_request(b, "h1", {"h1": np.ones((2, 31), np.float32)}), Status.INVALID_INPUT,
         "shape"),
        (make_request(b, "h1", {"h1": np.ones((2, 32), np.float64)}), Status.INVALID_INPUT,
         "dtype"),
        (make_request(b, "h1", {"h1": np.ones((20, 32), np.float32)}), Status.INVALID_INPUT,
         "oversize"),
    ]
    calls_before = served.metric("tiersplit_cloud_backend_calls_total", backend="onnxruntime")
    for req, status, reason in cases:
        reply = link.submit(req).result(30)
        assert reply.status == status, (reason, reply.error)
        assert reply.error
        assert served.metric("tiersplit_cloud_rejected_total", reason=reason) >= 1, reason
    # Expired deadline: refused at validation (the client's own future may time out first).
    late = make_request(b, "h1", good, deadline_s=-5)
    with contextlib.suppress(LinkTimeout):
        assert link.submit(late).result(10).status == Status.DEADLINE_EXCEEDED
    _eventually(lambda: served.metric("tiersplit_cloud_rejected_total", reason="deadline") >= 1)
    # Unknown key: no compute, refused by the link, counted.
    stranger = served.client("stranger")
    time.sleep(1.0)
    with pytest.raises((LinkClosed, LinkTimeout)):
        stranger.submit(make_request(b, "h1", good, deadline_s=2)).result(15)
    _eventually(lambda: served.metric("tiersplit_cloud_rejected_total", reason="unknown_key")
                + served.metric("tiersplit_cloud_rejected_total", reason="unknown_agent") >= 1)
    assert served.metric("tiersplit_cloud_backend_calls_total",
                         backend="onnxruntime") == calls_before
    # Still serving.
    reply = link.submit(make_request(b, "h1", good)).result(30)
    assert reply.status == Status.OK and reply.tensors["y"].shape == (2, 10)


def _eventually(pred, timeout: float = 10.0) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return
        time.sleep(0.1)
    assert pred()


def test_sigterm_drains_in_flight_and_exits_zero(cloud_repo, tmp_path: Path) -> None:
    s = Served("zmq", tmp_path / "serve", cloud_repo,
               args=("--json-logs",), batching={"max_batch": 1, "max_queue_delay_ms": 0},
               executor_workers=1, debug={"tail_delay_ms": 200})
    try:
        key = keys.load_ed25519_public(cloud_repo.public_key)
        b = Bundle.load(cloud_repo.root / "cnn" / "1", key, role="cloud")
        link = s.client("agent-2")
        _wait_connected(link)
        futs = [link.submit(make_request(b, "p1", {"p1": np.ones((1, 4, 4, 4), np.float32)}))
                for _ in range(5)]
        _eventually(lambda: s.metric("tiersplit_cloud_backend_calls_total",
                                     backend="onnxruntime") >= 1)
        s.proc.send_signal(signal.SIGTERM)
        statuses = [f.result(30).status for f in futs]
        assert statuses == [Status.OK] * 5
        assert s.terminate() == 0
        logs = [json.loads(x) for x in s.lines if x.startswith("{")]
        assert any(x["msg"] == "cloud core stopped" for x in logs), s.lines[-10:]
    finally:
        s.terminate()
