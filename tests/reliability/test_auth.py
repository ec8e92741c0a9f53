"""Who gets compute: an unknown Curve key, a client holding the wrong server key, and an
agent revoked at run time (allow-list file removed, then the core told to reload, over
the admin API and with SIGHUP) get none. Proof is in the core's own counters:
``tiersplit_cloud_backend_calls_total`` and ``..._items_total`` do not move.
"""

from __future__ import annotations

import contextlib
import signal
import time
from concurrent.futures import Future

import pytest
import zmq

from contract.bundle import Bundle
from contract.deadline import Deadline
from tests.reliability.conftest import MODEL_A
from tests.reliability.fleet import (
    Ledger,
    agent_config,
    cloud_doc,
    start_cloud,
    wait_until,
)
from transport import keys, wire
from transport.config import ZmqClientConfig
from transport.errors import LinkClosed, TransportError
from transport.messages import Reply, Request, Status
from transport.zmq import ZmqClientLink

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _bundle(repo) -> Bundle:
    return Bundle.load(repo.path(), keys.load_ed25519_public(repo.public_key), role="cloud")


def _request(b: Bundle, rid: str, x) -> Request:
    return Request(request_id=rid, agent_id="", model=b.name, version=b.version,
                   digest=b.digest, cut="cloud", deadline=Deadline.after_ms(5_000), tensors=x)


def _link(c, fleet, agent_id: str, server_public=None) -> ZmqClientLink:
    return ZmqClientLink(ZmqClientConfig(
        endpoint=c.zmq, secret_key=fleet.secret(agent_id),
        server_public_key=server_public or fleet.cloud_public, heartbeat_ivl_ms=200,
        heartbeat_timeout_ms=800, heartbeat_ttl_ms=1600), agent_id)


def _settle_link(ledger: Ledger, rid: str, fut: Future) -> Reply | None:
    try:
        reply = fut.result(30)
    except TransportError as e:
        ledger.error(rid, e)
        return None
    if reply.ok:
        ledger.result(rid, reply)
    else:
        ledger.error(rid, f"{reply.status.name}: {reply.error}")
    return reply


def _raw_dealer_gets_nothing(c, fleet, agent_id: str, server_public, b: Bundle, x) -> int:
    """A raw DEALER with these keys sends requests; returns how many answers came."""
    ctx = zmq.Context()
    s = ctx.socket(zmq.DEALER)
    s.linger = 0
    s.curve_publickey, s.curve_secretkey = keys.load_curve_secret(fleet.secret(agent_id))
    s.curve_serverkey = keys.load_curve_public(server_public)
    s.connect(c.zmq)
    try:
        for i in range(5):
            # zmq.Again: no handshake, nothing queued: the best possible outcome
            with contextlib.suppress(zmq.Again):
                s.send_multipart(wire.encode(_request(b, f"raw-{i}", x)), zmq.NOBLOCK)
        got = 0
        end = time.monotonic() + 2.0
        while time.monotonic() < end:
            if s.poll(100):
                s.recv_multipart()
                got += 1
        return got
    finally:
        s.close(0)
        ctx.term()


def test_unknown_key_and_wrong_server_key_get_no_compute(tmp_path, repo, samples, fleet, clouds,
                                                         make_agent) -> None:
    c = start_cloud(tmp_path / "c", cloud_doc(repo.root, repo.public_key, fleet, [MODEL_A]))
    clouds.append(c)
    b, x = _bundle(repo), samples.inputs[0]
    fleet.add("stranger", allow=False)
    keys.generate("curve", tmp_path / "other", "impostor")
    wrong_server = tmp_path / "other" / "impostor.pub"
    before = c.metrics()
    work0 = c.backend_work()

    ledger = Ledger()
    for who, agent_id, server in (("unknown", "stranger", None),
                                  ("wrong-server", "a0", wrong_server)):
        link = _link(c, fleet, agent_id, server)
        try:
            assert not link.wait_connected(2.0), f"{who}: handshake must fail"
            for i in range(5):
                rid = f"{who}-{i}"
                ledger.send(rid)
                fut = link.submit(_request(b, rid, x))
                assert _settle_link(ledger, rid, fut) is None
                assert isinstance(fut.exception(), LinkClosed)
        finally:
            link.close()
        assert _raw_dealer_gets_nothing(c, fleet, agent_id, server or fleet.cloud_public,
                                        b, x) == 0

    # an agent with an unknown key still answers its app: on the device, never the cloud
    agent = make_agent(agent_config("stranger", repo.path(), repo.public_key,
                                    {"c": fleet.zmq_link("stranger", c.zmq)}))
    assert not agent.wait_connected(2.0)
    for i in range(6):
        rid = f"agent-{i}"
        ledger.send(rid)
        res = agent.infer(samples.inputs[i % 4], request_id=rid).result(60)
        samples.checker()(i % 4, res)
        assert res.endpoint is None and res.path in ("fallback", "device")
        ledger.result(rid, res)

    ledger.settle(errors_allowed=True)
    assert len(ledger.errors) == 10 and len(ledger.results) == 6
    assert c.backend_work() == work0, "compute was spent on an unauthenticated peer"
    after = c.metrics()
    assert after.total("tiersplit_cloud_requests_total") == before.total(
        "tiersplit_cloud_requests_total")
    assert (after.total("tiersplit_cloud_rejected_total", reason="unknown_key")
            > before.total("tiersplit_cloud_rejected_total", reason="unknown_key"))
    assert c.alive()


def test_revoked_agent_gets_no_compute_after_reload(tmp_path, repo, samples, fleet,
                                                   clouds) -> None:
    c = start_cloud(tmp_path / "c", cloud_doc(repo.root, repo.public_key, fleet, [MODEL_A]))
    clouds.append(c)
    b, x = _bundle(repo), samples.inputs[0]
    ledger = Ledger()
    links = {a: _link(c, fleet, a) for a in ("a0", "a1", "a2")}
    try:
        for link in links.values():
            assert link.wait_connected(10)

        def burst(agent_id: str, tag: str, n: int = 5) -> list[Reply | None]:
            out = []
            for i in range(n):
                rid = f"{agent_id}-{tag}-{i}"
                ledger.send(rid)
                out.append(_settle_link(ledger, rid, links[agent_id].submit(
                    _request(b, rid, x))))
            return out

        for a in links:
            assert all(r is not None and r.ok for r in burst(a, "before"))
        work0 = c.backend_work()
        m0 = c.metrics()

        # revoke a0 and reload through the admin API
        fleet.revoke("a0")
        assert c.admin("/v1/keys/reload") == {"allowed": {"zmq": 3}}
        replies = burst("a0", "revoked")
        assert all(r is not None and r.status == Status.UNAUTHORIZED for r in replies)
        # revoke a1 and reload with SIGHUP (what `systemctl reload` sends)
        fleet.revoke("a1")
        c.service.signal(signal.SIGHUP)

        def a1_refused() -> bool:
            r = burst("a1", f"hup{time.monotonic_ns()}", 1)[0]
            return r is not None and r.status == Status.UNAUTHORIZED

        assert wait_until(a1_refused, 10, step=0.2)
        work1 = c.backend_work()
        # a2 keeps its service
        assert all(r is not None and r.ok for r in burst("a2", "after"))
        # a revoked key cannot come back with a new connection either
        fresh = _link(c, fleet, "a0")
        try:
            assert not fresh.wait_connected(2.0)
        finally:
            fresh.close()
    finally:
        for link in links.values():
            link.close()
    ledger.settle(errors_allowed=True)
    a1_ok_after = [r for r in ledger.results if r.startswith("a1-hup")]
    refused = [r for r in ledger.errors if r.startswith(("a0-revoked", "a1-hup"))]
    assert len(ledger.errors) == len(refused), ledger.errors
    assert all("UNAUTHORIZED" in ledger.errors[r] for r in refused)
    # no compute for a0 after its revocation; a1's last OK requests (before SIGHUP took
    # effect) are the only work between work0 and work1
    assert work1[1] - work0[1] == len(a1_ok_after)
    assert c.backend_work()[1] - work1[1] == 5  # a2's burst only
    m1 = c.metrics()
    got_revoked = (m1.total("tiersplit_cloud_rejected_total", reason="revoked")
                   - m0.total("tiersplit_cloud_rejected_total", reason="revoked"))
    assert got_revoked == len(refused)
    ok = (m1.total("tiersplit_cloud_requests_total", status="OK")
          - m0.total("tiersplit_cloud_requests_total", status="OK"))
    assert ok == len(a1_ok_after) + 5
    assert (m1.total("tiersplit_cloud_rejected_total", reason="unknown_key")
            > m0.total("tiersplit_cloud_rejected_total", reason="unknown_key"))
