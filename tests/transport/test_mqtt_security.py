"""MQTT through a real mosquitto: forged, tampered, replayed and truncated payloads
published straight to the broker never reach the handler; replicas share the load."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pytest

from transport import aead, keys, wire
from transport.errors import LinkClosed, LinkTimeout
from transport.mqtt import make_paho_client

from .conftest import LinkEnv, RecordingHandler, make_request

pytestmark = [pytest.mark.integration, pytest.mark.mqtt]


@pytest.fixture
def env(mosquitto_broker, tmp_path: Path):  # type: ignore[no-untyped-def]
    e = LinkEnv("mqtt", tmp_path / "env", mosquitto_broker)
    yield e
    e.close()


class RawPublisher:
    """A plain paho client on the broker (an attacker with broker credentials)."""

    def __init__(self, env: LinkEnv) -> None:
        self.client = make_paho_client(env.broker.broker_config(), "raw-publisher")
        up = threading.Event()
        self.client.on_connect = lambda *a: up.set()
        self.client.connect(env.broker.host, env.broker.port, 5)
        self.client.loop_start()
        assert up.wait(10)

    def publish(self, topic: str, payload: bytes) -> None:
        self.client.publish(topic, payload, qos=1).wait_for_publish(10)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def _sealed_request(env: LinkEnv, agent_id: str, rid: str) -> bytes:
    secret = keys.load_x25519_private(env.root / f"{agent_id}.key")
    cloud = keys.load_x25519_public(env.root / "cloud.pub")
    sealer = aead.Sealer(aead.derive_key(secret, cloud, agent_id, "req"), agent_id, "req")
    req = make_request(rid, {"x": np.arange(4, dtype=np.float32)})
    req.agent_id = agent_id
    return sealer.seal(wire.pack_frames(wire.encode(req)))


def test_forged_payloads_never_reach_the_handler(env: LinkEnv,
                                                 handler: RecordingHandler) -> None:
    env.agent_keys("a1")
    env.agent_keys("a2")
    env.server(handler)
    pub = RawPublisher(env)
    try:
        topic = f"{env.prefix}/req/a1"
        good = _sealed_request(env, "a1", "good")
        pub.publish(topic, good)
        assert handler.wait_for(lambda h: len(h.requests) == 1)
        assert handler.requests[0].agent_id == "a1"

        fresh = _sealed_request(env, "a1", "fresh")  # never delivered: tamper with it
        cases = {
            "replay": good,
            "tampered": fresh[:-20] + bytes([fresh[-20] ^ 1]) + fresh[-19:],
            "truncated": fresh[: len(fresh) // 2],
            "tiny": good[:7],
            "plaintext": wire.pack_frames(wire.encode(make_request("p", {}))),
        }
        for i, payload in enumerate(cases.values(), start=1):
            pub.publish(topic, payload)
            assert handler.wait_for(lambda h, n=i: len(h.rejects) >= n), list(cases)[i - 1]
        pub.publish(f"{env.prefix}/req/a2", _sealed_request(env, "a1", "moved"))  # wrong topic
        pub.publish(f"{env.prefix}/req/nobody", _sealed_request(env, "a1", "unknown"))
        assert handler.wait_for(lambda h: len(h.rejects) >= len(cases) + 2)
        reasons = [r for r, _ in handler.rejects]
        assert reasons == ["replay", "auth", "auth", "auth", "auth", "auth", "unknown_agent"]
        assert [r.request_id for r in handler.requests] == ["good"]
    finally:
        pub.close()


def test_sealed_garbage_is_a_wire_error_not_a_crash(env: LinkEnv,
                                                    handler: RecordingHandler) -> None:
    env.agent_keys("a1")
    env.server(handler)
    secret = keys.load_x25519_private(env.root / "a1.key")
    sealer = aead.Sealer(aead.derive_key(secret, keys.load_x25519_public(env.root / "cloud.pub"),
                                         "a1", "req"), "a1", "req")
    pub = RawPublisher(env)
    try:
        pub.publish(f"{env.prefix}/req/a1", sealer.seal(b"\x00\x01not frames"))
        assert handler.wait_for(lambda h: len(h.rejects) == 1)
        assert handler.rejects[0][1] == "a1" and handler.requests == []
        client = env.client("a1")  # the server still serves afterwards
        assert client.submit(make_request("after", {"x": np.ones(2, np.float32)})).result(10).ok
    finally:
        pub.close()


def test_replicas_share_requests(env: LinkEnv) -> None:
    """Two cloud replicas in one shared-subscription group split the requests."""
    h1, h2 = RecordingHandler(), RecordingHandler()
    env.agent_keys("a1")
    env.server(h1)
    env.server(h2)
    client = env.client("a1")
    futs = [client.submit(make_request(f"q{i}", {"x": np.full(3, i, np.float32)}))
            for i in range(40)]
    for f in futs:
        assert f.result(20).ok
    assert len(h1.requests) + len(h2.requests) == 40  # each request handled exactly once
    assert h1.requests and h2.requests


def test_broker_loss_fails_futures_and_reconnects(env: LinkEnv,
                                                  handler: RecordingHandler) -> None:
    env.server(handler)
    client = env.client("a1")
    handler.hold = True
    fut = client.submit(make_request("lost", {"x": np.ones(2, np.float32)}, timeout=120))
    assert handler.wait_for(lambda h: len(h.held) == 1)
    env.broker.stop()
    with pytest.raises(LinkClosed):
        fut.result(30)
    assert client.connected is False
    handler.hold = False
    env.broker.restart()
    assert client.wait_connected(30)  # type: ignore[attr-defined]
    deadline = time.time() + 30
    while True:  # the server replica resubscribes a moment after the agent may
        try:
            reply = client.submit(make_request(f"b{time.time()}", {"x": np.ones(2, np.float32)},
                                               timeout=2)).result(15)
            assert reply.ok
            break
        except LinkTimeout:
            assert time.time() < deadline


def test_no_tls_refused_by_broker(env: LinkEnv, handler: RecordingHandler) -> None:
    """The broker only speaks TLS: a plaintext client never connects."""
    env.agent_keys("a1")
    env.server(handler)
    cfg = env.client_config("a1")
    cfg = cfg.model_copy(update={"broker": cfg.broker.model_copy(update={"tls": False})})
    from transport.mqtt import MqttClientLink

    link = MqttClientLink(cfg, "a1")
    try:
        assert not link.wait_connected(2)
    finally:
        link.close()
    time.sleep(0)


_SKEWED_AGENT = """
import json, sys
import numpy as np
from contract.deadline import Deadline
from transport import MqttClientConfig, make_client_link
from transport.errors import LinkTimeout
from transport.messages import Request
cfg = MqttClientConfig.model_validate_json(sys.argv[1])
link = make_client_link(cfg, "a1")
assert link.wait_connected(60), "no connection"
out = []
for i in range(3):
    req = Request(f"s{i}", "a1", "m", "1", "d" * 64, "c1", Deadline.after_ms(3000),
                  {"x": np.ones(2, np.float32)})
    try:
        out.append(link.submit(req).result(30).status.name)
    except LinkTimeout:
        out.append("timeout")
link.close()
print(json.dumps(out))
"""


@pytest.mark.parametrize(("offset_s", "max_skew_s", "expect"), [
    (30.0, 120.0, "OK"), (-30.0, 120.0, "OK"),  # the default accepts a device 30 s off
    (30.0, 10.0, "timeout"), (-30.0, 10.0, "timeout"),  # a tight bound refuses it, says so
])
def test_skewed_device_clock(env: LinkEnv, handler: RecordingHandler,
                             caplog: pytest.LogCaptureFixture, offset_s: float,
                             max_skew_s: float, expect: str) -> None:
    """A real agent process whose wall clock is 30 s off (libfaketime). Within
    ``max_skew_s`` it is served as if the clocks agreed; beyond it every request is
    refused as a possible replay, and the cloud says so in exactly one warning naming the
    measured skew and the fix."""
    import json
    import subprocess
    import sys

    from tests.reliability.skew import faketime_missing, skewed_env

    if (why := faketime_missing()) is not None:
        pytest.skip(why)
    env.agent_keys("a1")
    env.server(handler, max_skew_s=max_skew_s)
    cfg = env.client_config("a1", max_skew_s=max_skew_s)
    caplog.set_level("WARNING", logger="transport.mqtt")
    run = subprocess.run([sys.executable, "-c", _SKEWED_AGENT, cfg.model_dump_json()],
                         env=skewed_env(offset_s), capture_output=True, text=True,
                         timeout=300, check=False)
    assert run.returncode == 0, run.stderr[-2000:]
    assert json.loads(run.stdout.splitlines()[-1]) == [expect] * 3
    skew_lines = [r.getMessage() for r in caplog.records if "max_skew_s" in r.getMessage()]
    if expect == "OK":
        assert len(handler.requests) == 3 and not skew_lines
        return
    assert handler.requests == []
    assert [reason for reason, _ in handler.rejects] == ["clock_skew"] * 3
    assert len(skew_lines) == 1, skew_lines
    line = skew_lines[0]
    measured = float(line.split("stamped ")[1].split(" s")[0])
    assert abs(measured - offset_s) < 5, line  # the skew it measured, give or take transit
    assert "requests of agent a1" in line and f"max_skew_s={max_skew_s:g}" in line
    assert "Sync the clocks" in line
