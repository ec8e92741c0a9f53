"""Only an allow-listed agent can download a bundle, on either transport.

Downloads travel on the agent's own authenticated link: on ZeroMQ the Curve allow-list
decides (a key revoked at run time gets UNAUTHORIZED for its next fetch, an unknown key
never completes the handshake); on MQTT the per-agent AEAD keys decide (a message from an
agent the core has no key for is refused before it is decoded). A full update over MQTT
shows the same path works there.
"""

from __future__ import annotations

import uuid
from concurrent.futures import Future

import pytest

from contract.bundle import MANIFEST
from contract.deadline import Deadline
from tests.reliability.fleet import agent_config, cloud_doc, start_cloud, wait_until
from tests.rollout.conftest import MODEL
from tests.rollout.fleetops import wait_versions
from transport.config import ZmqClientConfig
from transport.errors import TransportError
from transport.messages import Chunk, Fetch, Reply, Status
from transport.zmq import ZmqClientLink

pytestmark = [pytest.mark.integration]


def _fetch(link, file: str = MANIFEST) -> Future:
    return link.submit(Fetch(uuid.uuid4().hex, "", MODEL, "1", file, 0, 4096,
                             Deadline.after_ms(5000)))


def _link(core, fleet, agent_id: str) -> ZmqClientLink:
    return ZmqClientLink(ZmqClientConfig(
        endpoint=core.zmq, secret_key=fleet.secret(agent_id),
        server_public_key=fleet.cloud_public, heartbeat_ivl_ms=200,
        heartbeat_timeout_ms=800, heartbeat_ttl_ms=1600), agent_id)


def test_revoked_or_unknown_agent_downloads_nothing_over_zmq(tmp_path, repo, fleet,
                                                             clouds) -> None:
    fleet.add("stranger", allow=False)
    core = start_cloud(tmp_path, cloud_doc(repo.root, repo.public_key, fleet, [MODEL],
                                           rollout={"state_file": str(tmp_path / "p.json")}))
    clouds.append(core)
    a0, stranger = _link(core, fleet, "a0"), _link(core, fleet, "stranger")
    try:
        assert a0.wait_connected(10)
        ok = _fetch(a0).result(10)
        assert isinstance(ok, Chunk) and ok.ok
        assert ok.data == (repo.path("1") / MANIFEST).read_bytes()[:4096]
        served = core.metrics().total("tiersplit_cloud_distribution_bytes_total")

        fleet.revoke("a0")
        assert core.admin("/v1/keys/reload") == {"allowed": {"zmq": 3}}
        refused = _fetch(a0).result(10)
        assert isinstance(refused, Reply) and refused.status == Status.UNAUTHORIZED

        assert not stranger.wait_connected(2)  # the handshake is refused
        with pytest.raises(TransportError):
            _fetch(stranger).result(10)
        assert core.metrics().total("tiersplit_cloud_distribution_bytes_total") == served
        assert core.metrics().total("tiersplit_cloud_rejected_total", reason="revoked") >= 1
    finally:
        a0.close()
        stranger.close()


def test_update_over_mqtt_and_unknown_agent_refused(tmp_path, repo, samples, fleet, clouds,
                                                    make_agent, mosquitto_broker) -> None:
    broker = mosquitto_broker.broker_config().model_dump(mode="json", exclude_none=True)
    doc = cloud_doc(repo.copy(tmp_path / "repo"), repo.public_key, fleet,
                    [{"name": MODEL, "versions": ["1"]}], zmq=False, mqtt_broker=broker,
                    rollout={"state_file": str(tmp_path / "plans.json"), "window_s": 5.0})
    core = start_cloud(tmp_path, doc)
    clouds.append(core)
    fleet.add("stranger", allow=False)
    agents = []
    for aid in ("a0", "stranger"):
        cfg = agent_config(aid, repo.path("1"), repo.public_key,
                           {"cloud": fleet.mqtt_link(aid, broker)},
                           update={"state_dir": str(tmp_path / f"state-{aid}"),
                                   "report_interval_s": 0.3, "retry_s": 0.5})
        agents.append(make_agent(cfg))
    a0, stranger = agents
    assert a0.wait_connected(30)
    core.admin(f"/v1/rollouts/{MODEL}/versions/2?canary=100%25")
    wait_versions([a0], ["2"])
    assert a0.infer(samples.inputs[0]).result(30).version == "2"
    # the stranger's reports and fetches never get an answer: it keeps v1, fetched nothing
    assert wait_until(lambda: core.metrics().total("tiersplit_cloud_rejected_total",
                                                   reason="unknown_agent") >= 3, 30)
    assert stranger.current_bundle().version == "1"
    assert stranger.updater.downloader.kept(MODEL) == []
    assert core.metrics().total("tiersplit_cloud_distribution_refused_total") == 0
