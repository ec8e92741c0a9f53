"""MQTT end to end through a real Mosquitto (TLS, password, client certificate): a broker
restart under load, hostile payloads published by a client holding broker credentials,
and a rogue ``#`` subscriber that must see no plaintext activation.

The broker is not trusted with activations: anyone who can
publish or subscribe on it may forge, replay, reorder or truncate payloads, and reads
everything it routes. The cloud core (a ``tiersplit cloud serve`` process) must refuse
and count what fails authentication without computing anything, and answer exactly once
what is genuine.
"""

from __future__ import annotations

import threading
from typing import Any

import numpy as np
import pytest

from contract.bundle import Bundle
from contract.deadline import Deadline
from tests.reliability.conftest import INPUT, MODEL_A, OUTPUT
from tests.reliability.fleet import (
    Ledger,
    LoadGen,
    agent_config,
    cloud_doc,
    delta,
    finished,
    start_cloud,
    wait_until,
)
from transport import aead, keys, wire
from transport.messages import Reply, Request, Status
from transport.mqtt import make_paho_client

pytestmark = [pytest.mark.integration, pytest.mark.mqtt, pytest.mark.slow]


def _broker_doc(broker: Any) -> dict[str, Any]:
    return broker.broker_config().model_dump(mode="json", exclude_none=True)


class Rogue:
    """A plain paho client with broker credentials: publishes anything, records what the
    broker delivers to its subscriptions."""

    def __init__(self, broker: Any, name: str) -> None:
        self.client = make_paho_client(broker.broker_config(), name)
        self.captured: list[tuple[str, bytes]] = []
        self._lock = threading.Lock()
        up = threading.Event()
        self.client.on_connect = lambda *a: up.set()
        self.client.on_message = self._on_message
        self.client.connect(broker.host, broker.port, 5)
        self.client.loop_start()
        assert up.wait(10), "rogue client could not connect"

    def _on_message(self, client: Any, userdata: Any, msg: Any) -> None:
        with self._lock:
            self.captured.append((msg.topic, bytes(msg.payload)))

    def subscribe(self, topic: str) -> None:
        done = threading.Event()
        self.client.on_subscribe = lambda *a: done.set()
        self.client.subscribe(topic, qos=1)
        assert done.wait(10)

    def publish(self, topic: str, payload: bytes) -> None:
        self.client.publish(topic, payload, qos=1).wait_for_publish(10)

    def messages(self, prefix: str = "") -> list[tuple[str, bytes]]:
        with self._lock:
            return [m for m in self.captured if m[0].startswith(prefix)]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def _offloading_agents(repo: Any, fleet: Any, broker: dict[str, Any], make_agent: Any,
                       **extra: Any) -> list[Any]:
    """Two connected agents that send every request over MQTT at cut k2 (no policy
    choice), so the cloud side sees the whole load."""
    agents = [make_agent(agent_config(f"a{i}", repo.path(), repo.public_key,
                                      {"m": fleet.mqtt_link(f"a{i}", broker)},
                                      policy={"fixed_cut": "k2"}, **extra))
              for i in range(2)]
    for ag in agents:
        assert ag.wait_connected(20)
    return agents


def test_broker_restart_under_load_retries_or_finishes_locally_without_duplicates(
        tmp_path, repo, samples, fleet, clouds, make_agent, mosquitto_broker) -> None:
    broker = _broker_doc(mosquitto_broker)
    c = start_cloud(tmp_path / "c", cloud_doc(repo.root, repo.public_key, fleet, [MODEL_A],
                                              zmq=False, mqtt_broker=broker))
    clouds.append(c)
    agents = _offloading_agents(repo, fleet, broker, make_agent)
    ledger = Ledger()
    load = LoadGen(ledger, agents, samples.inputs, samples.checker(), threads=2).start()
    try:
        assert load.wait_for(30)
        m = load.mark()
        mosquitto_broker.restart()  # in-flight QoS 1 messages die with it (no persistence)
        back = wait_until(lambda: sum(1 for r in load.since(m)
                                      if ledger.results[r].endpoint == "m") >= 10, 60)
        around = load.since(m)
    finally:
        load.stop()
    ledger.settle()
    assert back, ledger.paths(around)
    paths = ledger.paths(around)
    assert paths["fallback"] + paths["device"] >= 1, paths  # broker down: on the device
    # one result per request id, each carrying its own id (LoadGen checks it)
    assert len(ledger.results) == len(set(ledger.results)) == len(ledger.sent)
    counts = sum(finished(ag.status()["counts"]) for ag in agents)
    assert counts == len(ledger.sent)
    cloud_ok = sum(1 for r in ledger.results.values() if r.endpoint == "m")
    m_ = c.metrics()
    # the core may compute a redelivered request twice, never fewer than the agents got
    assert m_.total("tiersplit_cloud_requests_total", status="OK") >= cloud_ok


def _sealer(fleet, agent_id: str) -> aead.Sealer:
    k = aead.derive_key(keys.load_x25519_private(fleet.x_secret(agent_id)),
                        keys.load_x25519_public(fleet.cloud_x_public), agent_id, "req")
    return aead.Sealer(k, agent_id, "req")


def _opener(fleet, agent_id: str, direction: str = "rep") -> aead.Opener:
    k = aead.derive_key(keys.load_x25519_private(fleet.x_secret(agent_id)),
                        keys.load_x25519_public(fleet.cloud_x_public), agent_id, direction)
    return aead.Opener(k, agent_id, direction)  # type: ignore[arg-type]


def test_forged_replayed_reordered_truncated_payloads(tmp_path, repo, samples, fleet, clouds,
                                                      mosquitto_broker) -> None:
    broker = _broker_doc(mosquitto_broker)
    c = start_cloud(tmp_path / "c", cloud_doc(repo.root, repo.public_key, fleet, [MODEL_A],
                                              zmq=False, mqtt_broker=broker))
    clouds.append(c)
    b = Bundle.load(repo.path(), keys.load_ed25519_public(repo.public_key), role="cloud")
    x = samples.inputs[0]
    ref = samples.refs[(MODEL_A, "1")][0]
    sealer = _sealer(fleet, "a0")

    def sealed(rid: str, s: aead.Sealer = sealer) -> bytes:
        req = Request(request_id=rid, agent_id="a0", model=b.name, version=b.version,
                      digest=b.digest, cut="cloud", deadline=Deadline.after_ms(60_000),
                      tensors=x)
        return s.seal(wire.pack_frames(wire.encode(req)))

    rogue = Rogue(mosquitto_broker, "rogue-publisher")
    try:
        rogue.subscribe("tiersplit/rep/a0")
        before = c.metrics()
        work0 = c.backend_work()
        topic = "tiersplit/req/a0"
        s1, s2, s3 = sealed("s1"), sealed("s2"), sealed("s3")
        s4, s5 = sealed("s4"), sealed("s5")
        # an attacker's own key, claiming to be a0
        keys.generate("x25519", tmp_path / "mallory", "m")
        mallory = aead.Sealer(aead.derive_key(
            keys.load_x25519_private(tmp_path / "mallory" / "m.key"),
            keys.load_x25519_public(fleet.cloud_x_public), "a0", "req"), "a0", "req")
        a1_sealed = sealed("moved", _sealer(fleet, "a1"))
        flipped = bytearray(sealed("flip"))
        flipped[-20] ^= 0x01
        hostile = {  # payload -> reason the core must count
            "replay s1": (topic, s1, "replay"), "replay s2": (topic, s2, "replay"),
            "replay s3": (topic, s3, "replay"),
            "random bytes": (topic, np.random.default_rng(1).bytes(300), "auth"),
            "wrong key": (topic, sealed("mallory", mallory), "auth"),
            "bit flip": (topic, bytes(flipped), "auth"),
            "other agent's payload": (topic, a1_sealed, "auth"),
            "plaintext": (topic, wire.pack_frames(wire.encode(Request(
                request_id="plain", agent_id="a0", model=b.name, version=b.version,
                digest=b.digest, cut="cloud", deadline=Deadline.after_ms(0), tensors=x))), "auth"),
            "truncated half": (topic, s4[: len(s4) // 2], "auth"),
            "truncated tiny": (topic, s4[:10], "auth"),
            "unknown agent": ("tiersplit/req/mallory", s5, "unknown_agent"),
        }
        # reordered: s3, s1, s2 (within the replay window: all genuine, all answered)
        for p in (s3, s1, s2):
            rogue.publish(topic, p)
        assert wait_until(lambda: len(rogue.messages("tiersplit/rep/")) >= 3, 30)
        for _, (t, p, _) in hostile.items():
            rogue.publish(t, p)
        # the truncated copies did not poison the window: the whole s4, then s5, still work
        rogue.publish(topic, s4)
        rogue.publish(topic, s5)
        assert wait_until(lambda: len(rogue.messages("tiersplit/rep/")) >= 5, 30)
        expected: dict[str, float] = {}
        for _, (_, _, reason) in hostile.items():
            expected[reason] = expected.get(reason, 0) + 1
        assert wait_until(lambda: delta(c.metrics().by("tiersplit_cloud_rejected_total",
                                                       "reason"),
                                        before.by("tiersplit_cloud_rejected_total", "reason"))
                          == expected, 30), delta(
            c.metrics().by("tiersplit_cloud_rejected_total", "reason"),
            before.by("tiersplit_cloud_rejected_total", "reason"))
        # give any stray reply time to arrive, then settle
        assert not wait_until(lambda: len(rogue.messages("tiersplit/rep/")) > 5, 2)
    finally:
        rogue.close()
    opener = _opener(fleet, "a0")
    replies: list[Reply] = []
    for _, payload in rogue.messages("tiersplit/rep/"):
        msg = wire.decode(wire.unpack_frames(opener.open(payload).plaintext))
        assert isinstance(msg, Reply)
        replies.append(msg)
    ids = sorted(r.request_id for r in replies)
    assert ids == ["s1", "s2", "s3", "s4", "s5"], ids  # genuine ones, each exactly once
    for r in replies:
        assert r.status == Status.OK, (r.request_id, r.status, r.error)
        cos = float(np.dot(r.tensors[OUTPUT].ravel(), ref.ravel())
                    / (np.linalg.norm(r.tensors[OUTPUT]) * np.linalg.norm(ref)))
        assert cos > 0.999
    # accounting: sent = answered (5) + refused and counted (len(hostile)); no compute
    after = c.metrics()
    sent = 5 + len(hostile)
    refused = sum(delta(after.by("tiersplit_cloud_rejected_total", "reason"),
                        before.by("tiersplit_cloud_rejected_total", "reason")).values())
    ok = (after.total("tiersplit_cloud_requests_total", status="OK")
          - before.total("tiersplit_cloud_requests_total", status="OK"))
    assert sent == ok + refused, (sent, ok, refused)
    calls, items = c.backend_work()
    assert items - work0[1] == 5 and calls - work0[0] <= 5
    assert c.alive()


def test_rogue_subscriber_sees_no_plaintext_activation(tmp_path, repo, samples, fleet, clouds,
                                                       make_agent, mosquitto_broker) -> None:
    broker = _broker_doc(mosquitto_broker)
    c = start_cloud(tmp_path / "c", cloud_doc(repo.root, repo.public_key, fleet, [MODEL_A],
                                              zmq=False, mqtt_broker=broker))
    clouds.append(c)
    rogue = Rogue(mosquitto_broker, "rogue-observer")
    try:
        rogue.subscribe("#")
        agent = make_agent(agent_config("a0", repo.path(), repo.public_key,
                                        {"m": fleet.mqtt_link("a0", broker)},
                                        policy={"fixed_cut": "k2"}, codec="raw"))
        assert agent.wait_connected(20)
        ledger = Ledger()
        for i in range(12):
            rid = f"obs-{i}"
            ledger.send(rid)
            res = agent.infer(samples.inputs[i % 4], request_id=rid).result(60)
            samples.checker()(i % 4, res)
            ledger.result(rid, res)
        assert wait_until(lambda: len(rogue.messages("tiersplit/rep/a0")) >= 12, 20)
    finally:
        rogue.close()
    ledger.settle()
    assert ledger.paths() == {"remote": 12}, ledger.paths()
    assert {res.cut for res in ledger.results.values()} == {"k2"}
    reqs = rogue.messages("tiersplit/req/a0")
    reps = rogue.messages("tiersplit/rep/a0")
    assert len(reqs) >= 12 and len(reps) >= 12
    # What the activations are: the test holds a0's key, so it can open what was captured
    # (the broker cannot). Every captured request carries a k2 activation in the clear
    # inside the envelope; none of its bytes may be visible in what the broker delivered.
    opener = _opener(fleet, "a0", "req")
    needles: list[bytes] = []
    opened = [wire.decode(wire.unpack_frames(opener.open(p).plaintext)) for _, p in reqs]
    requests = [m for m in opened if isinstance(m, Request)]  # the rest are probe pings
    assert len(requests) >= 12 and all(m.cut == "k2" for m in requests)
    for msg in requests:
        for arr in msg.tensors.values():
            raw = np.ascontiguousarray(arr).tobytes()
            assert len(raw) >= 4096
            needles += [raw[i:i + 32] for i in range(0, len(raw) - 32, len(raw) // 8)]
    needles += [np.ascontiguousarray(x[INPUT]).tobytes()[:32] for x in samples.inputs]
    needles += [b'"digest"', MODEL_A.encode(), b"obs-"]
    everything = [p for _, p in rogue.messages()]
    # positive control: the needles are found in the plaintext they came from
    first = next(p for (_, p), m in zip(reqs, opened, strict=True) if isinstance(m, Request))
    plain = _opener(fleet, "a0", "req").open(first).plaintext
    assert sum(n in plain for n in needles) >= 8 and b"obs-" in plain
    for payload in everything:
        for n in needles:
            assert n not in payload, "plaintext visible to a broker-side observer"


def test_revoked_agent_over_mqtt_gets_no_compute(tmp_path, repo, samples, fleet, clouds,
                                                 make_agent, mosquitto_broker) -> None:
    """Per-agent payload keys are the MQTT allow-list: removing an agent's key and
    reloading stops its compute at once; the agent's app still gets every answer (on the
    device)."""
    broker = _broker_doc(mosquitto_broker)
    c = start_cloud(tmp_path / "c", cloud_doc(repo.root, repo.public_key, fleet, [MODEL_A],
                                              zmq=False, mqtt_broker=broker))
    clouds.append(c)
    agent = make_agent(agent_config("a0", repo.path(), repo.public_key,
                                    {"m": fleet.mqtt_link("a0", broker)},
                                    policy={"fixed_cut": "k2"},
                                    deadlines={"default_ms": 1500, "local_reserve": 3.0}))
    assert agent.wait_connected(20)
    ledger = Ledger()

    def burst(tag: str, n: int) -> list[str]:
        rids = []
        for i in range(n):
            rid = f"{tag}-{i}"
            ledger.send(rid)
            res = agent.infer(samples.inputs[i % 4], request_id=rid).result(60)
            samples.checker()(i % 4, res)
            ledger.result(rid, res)
            rids.append(rid)
        return rids

    before = burst("before", 6)
    assert all(ledger.results[r].endpoint == "m" for r in before), ledger.paths(before)
    fleet.revoke("a0")
    assert c.admin("/v1/keys/reload") == {"allowed": {"mqtt": 3}}
    work0 = c.backend_work()
    m0 = c.metrics()
    after = burst("after", 6)
    ledger.settle()
    assert all(ledger.results[r].endpoint is None
               and ledger.results[r].path in ("fallback", "device") for r in after), \
        ledger.paths(after)
    assert c.backend_work() == work0, "compute was spent on a revoked agent"
    m1 = c.metrics()
    attempts = sum(1 for r in after for at in ledger.results[r].attempts
                   if not at.skipped)
    refused = (m1.total("tiersplit_cloud_rejected_total", reason="unknown_agent")
               - m0.total("tiersplit_cloud_rejected_total", reason="unknown_agent"))
    assert attempts >= 1 and refused >= attempts  # (probe pings are refused as well)
    assert (m1.total("tiersplit_cloud_requests_total")
            == m0.total("tiersplit_cloud_requests_total"))


def test_mqtt_cloud_replica_sigkill_under_load_loses_nothing(tmp_path, repo, samples, fleet,
                                                             clouds, make_agent,
                                                             mosquitto_broker) -> None:
    """Two cloud replicas share the request topic (``$share/<group>/...``); one is
    SIGKILLed under load. Requests it held end by their deadline on the device, the
    other replica takes the traffic, and a restarted replica rejoins the group."""
    broker = _broker_doc(mosquitto_broker)
    doc = cloud_doc(repo.root, repo.public_key, fleet, [MODEL_A], zmq=False,
                    mqtt_broker=broker, debug={"tail_delay_ms": 20})
    a = start_cloud(tmp_path / "a", doc, "a")
    clouds.append(a)
    b = start_cloud(tmp_path / "b", doc, "b")
    clouds.append(b)
    agents = _offloading_agents(repo, fleet, broker, make_agent,
                                deadlines={"default_ms": 1500, "local_reserve": 3.0})
    ledger = Ledger()
    load = LoadGen(ledger, agents, samples.inputs, samples.checker(), threads=2).start()
    try:
        assert load.wait_for(30)
        assert a.metrics().total("tiersplit_cloud_requests_total", status="OK") >= 1
        a.kill()
        b_ok = b.metrics().total("tiersplit_cloud_requests_total", status="OK")
        m1 = load.mark()
        assert load.wait_for(len(ledger) + 40)
        after_kill = load.since(m1)
        a2 = a.restart()
        clouds.append(a2)
        assert wait_until(lambda: a2.metrics().total("tiersplit_cloud_requests_total",
                                                     status="OK") >= 5, 60)
    finally:
        load.stop()
    ledger.settle()
    assert sum(1 for r in after_kill if ledger.results[r].endpoint == "m") >= 10, \
        ledger.paths(after_kill)
    assert b.metrics().total("tiersplit_cloud_requests_total", status="OK") >= b_ok + 10
    assert sum(finished(ag.status()["counts"]) for ag in agents) == len(ledger.sent)
