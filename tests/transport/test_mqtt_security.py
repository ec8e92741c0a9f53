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

    link = MqttClientLink.from_config(cfg, "a1")
    try:
        assert not link.wait_connected(2)
    finally:
        link.close()
    time.sleep(0)
