"""Faults under load: a cloud core SIGKILLed, link blackouts, a 100x bandwidth collapse,
connection resets, and a slow cloud. Real ``tiersplit cloud serve`` processes (CurveZMQ),
real in-process edge agents, the link emulator in between where the link misbehaves.

Each test settles the ledger (sent = results + errors, lost = 0; here errors = 0 too:
the design promises every request completes, in the cloud or on the device) and checks
the counters of the agents and cores involved.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections import Counter

import pytest

from contract.bundle import EDGE_CUT
from contract.deadline import Deadline
from tests.reliability.conftest import MODEL_A
from tests.reliability.fleet import (
    Ledger,
    LoadGen,
    agent_config,
    cloud_doc,
    finished,
    start_cloud,
    wait_until,
)
from transport import make_client_link
from transport.config import ZmqClientConfig
from transport.linkemu import LinkEmulator, LinkProfile
from transport.messages import Request, Status

pytestmark = [pytest.mark.integration, pytest.mark.slow]

DEVICE = ("fallback", "device")  # paths that ran on the device


def test_cloud_core_sigkill_under_load_loses_nothing(tmp_path, repo, samples, fleet, clouds,
                                                     make_agent) -> None:
    """Two cores, three agents; SIGKILL one core, then the other, then bring the first back
    on the same port: every request completes (second core or locally) and the agents
    reconnect and offload again."""
    # each batch takes >= 20 ms in the cloud, so requests are in flight when one dies
    doc = cloud_doc(repo.root, repo.public_key, fleet, [MODEL_A], debug={"tail_delay_ms": 20})
    a = start_cloud(tmp_path / "a", doc, "a")
    clouds.append(a)
    b = start_cloud(tmp_path / "b", doc, "b")
    clouds.append(b)
    agents = [make_agent(agent_config(
        f"a{i}", repo.path(), repo.public_key,
        {"a": fleet.zmq_link(f"a{i}", a.zmq), "b": fleet.zmq_link(f"a{i}", b.zmq)},
        policy={"fixed_cut": "k2"})) for i in range(3)]
    for ag in agents:
        assert ag.wait_connected(20, count=2), ag.status()["endpoints"]
    ledger = Ledger()
    load = LoadGen(ledger, agents, samples.inputs, samples.checker(), threads=2).start()
    procs = {"a": a, "b": b}
    try:
        assert load.wait_for(30)
        # kill a core the moment the agents have requests in flight on it
        inflight: Counter[str] = Counter()

        def busy() -> bool:
            inflight.clear()
            for ag in agents:
                for name, ep in ag.status()["endpoints"].items():
                    inflight[name] += ep["inflight"]
            return sum(inflight.values()) > 0

        assert wait_until(busy, 30, step=0.005)
        victim = inflight.most_common(1)[0][0]
        survivor = "b" if victim == "a" else "a"
        procs[victim].kill()
        m1 = load.mark()
        assert load.wait_for(len(ledger) + 40)
        after_kill = load.since(m1)
        procs[survivor].kill()  # no cloud left: everything on the device
        m2 = load.mark()
        assert load.wait_for(len(ledger) + 30)
        alone = load.since(m2)
        back = procs[victim].restart()  # same port: the agents' DEALERs reconnect
        clouds.append(back)
        m3 = load.mark()
        resumed = wait_until(lambda: sum(1 for r in load.since(m3)
                                         if ledger.results[r].endpoint == victim) >= 10, 60)
        again = load.since(m3)
    finally:
        load.stop()
    ledger.settle()
    assert resumed, ledger.paths(again)
    # requests caught on the victim were failed over, not lost
    caught = [r for r in after_kill + load.order[:m1]
              if any(at.endpoint == victim and not at.ok and not at.skipped
                     for at in ledger.results[r].attempts)]
    assert caught, "no request was in flight on the killed core"
    assert all(ledger.results[r].endpoint == survivor or ledger.results[r].path in DEVICE
               for r in caught)
    assert survivor in {ledger.results[r].endpoint for r in after_kill}, ledger.paths(after_kill)
    assert all(ledger.results[r].path in DEVICE for r in alone[10:]), ledger.paths(alone)
    for ag in agents:
        st = ag.status()
        assert st["endpoints"][victim]["connected"], st["endpoints"]
        assert st["endpoints"]["a"]["failed"] + st["endpoints"]["b"]["failed"] >= 1
        assert finished(st["counts"]) == sum(
            1 for r in ledger.sent if r.startswith(ag.config.agent_id + "-"))
    m = back.metrics()
    assert m.total("tiersplit_cloud_requests_total", status="OK") >= 10
    assert m.total("tiersplit_cloud_backend_items_total") >= 10


def _emu_agent(repo, fleet, emu, make_agent):
    return make_agent(agent_config(
        "a0", repo.path(), repo.public_key,
        {"c": fleet.zmq_link("a0", f"tcp://127.0.0.1:{emu.port}")},
        deadlines={"default_ms": 2000, "local_reserve": 5.0}))


def _recovers(load: LoadGen, ledger: Ledger, n: int = 8, timeout: float = 60) -> bool:
    """The policy offloads again: ``n`` consecutive results served by the cloud."""
    m = load.mark()

    def ok() -> bool:
        rids = load.since(m)
        run = 0
        for r in rids:
            run = run + 1 if ledger.results[r].endpoint else 0
            if run >= n:
                return True
        return False

    return wait_until(ok, timeout)


def test_link_blackout_collapse_and_resets_keep_answers_coming(tmp_path, repo, samples, fleet,
                                                               clouds, make_agent) -> None:
    """Through the emulated link: a 3 s blackout, a 100x bandwidth collapse and connection
    resets. Requests keep ending in results within their deadline (fallback to the
    device); after each fault the policy goes back to offloading."""
    c = start_cloud(tmp_path / "c", cloud_doc(repo.root, repo.public_key, fleet, [MODEL_A]))
    clouds.append(c)
    fast = LinkProfile.symmetric(100e6, 2.0, name="fast")
    emu = LinkEmulator(("127.0.0.1", c.port), fast, seed=1).start()
    try:
        agent = _emu_agent(repo, fleet, emu, make_agent)
        assert agent.wait_connected(20)
        ledger = Ledger()
        load = LoadGen(ledger, [agent], samples.inputs, samples.checker(), threads=2).start()
        phases: dict[str, list[str]] = {}
        try:
            assert _recovers(load, ledger), ledger.paths()
            m = load.mark()
            emu.blackout(3.0)
            time.sleep(3.5)
            phases["blackout"] = load.since(m)
            assert _recovers(load, ledger), ledger.paths(load.since(m))

            m = load.mark()
            emu.set_rate(1e6, 1e6)  # 100x less
            time.sleep(4.0)
            emu.set_rate(100e6, 100e6)
            phases["collapse"] = load.since(m)
            assert _recovers(load, ledger), ledger.paths(load.since(m))

            m = load.mark()
            for _ in range(3):
                emu.reset_connections()
                time.sleep(1.0)
            phases["reset"] = load.since(m)
            assert _recovers(load, ledger), ledger.paths(load.since(m))
        finally:
            load.stop()
        st = agent.status()  # before the emulator goes away with the link
    finally:
        emu.stop()
    ledger.settle()
    missed = [r for r, res in ledger.results.items() if res.deadline_missed]
    assert not missed, f"{len(missed)} answers after their deadline"
    for name, rids in phases.items():
        assert len(rids) >= 5, (name, len(rids))  # answers kept coming during the fault
    # during the blackout the answers came from the device
    assert sum(ledger.paths(phases["blackout"])[p] for p in DEVICE) >= 1, ledger.paths(
        phases["blackout"])
    assert st["endpoints"]["c"]["connected"]
    assert st["endpoints"]["c"]["failed"] >= 1
    assert finished(st["counts"]) == len(ledger.sent)
    m = c.metrics()
    assert m.total("tiersplit_cloud_requests_total", status="OK") >= 8




@pytest.mark.parametrize("threads", [1, 2])
def test_policy_follows_a_bandwidth_collapse_and_recovers(threads, tmp_path, repo, samples,
                                                          fleet, clouds, make_agent) -> None:
    """During a 100x collapse the policy itself leaves the shallow cut (deeper cut or the
    device); when the link is restored it offloads at the shallow cut again."""
    c = start_cloud(tmp_path / "c", cloud_doc(repo.root, repo.public_key, fleet, [MODEL_A]))
    clouds.append(c)
    emu = LinkEmulator(("127.0.0.1", c.port), LinkProfile.symmetric(100e6, 2.0), seed=2).start()
    try:
        # a deadline long enough that slow transfers never time out: the circuit breaker
        # stays closed and only the policy's estimates can move the cut
        agent = make_agent(agent_config(
            "a0", repo.path(), repo.public_key,
            {"c": fleet.zmq_link("a0", f"tcp://127.0.0.1:{emu.port}")},
            deadlines={"default_ms": 10000, "local_reserve": 5.0}))
        assert agent.wait_connected(20)
        depth = {k: v["depth"] for k, v in agent.status()["policy"]["cuts"].items()}

        def cut() -> str:
            return agent.status()["policy"]["current_cut"]

        ledger = Ledger()
        load = LoadGen(ledger, [agent], samples.inputs, samples.checker(),
                       threads=threads).start()
        try:
            assert _recovers(load, ledger), ledger.paths()
            fast_cut = cut()
            assert fast_cut not in (EDGE_CUT, "cloud"), fast_cut
            emu.set_rate(1e6, 1e6)
            moved = wait_until(lambda: depth[cut()] > depth[fast_cut], 20, step=0.1)
            during = cut()
            emu.set_rate(100e6, 100e6)
            back = moved and _recovers(load, ledger) and wait_until(
                lambda: depth[cut()] <= depth[fast_cut], 30, step=0.1)
        finally:
            load.stop()
    finally:
        emu.stop()
    ledger.settle()
    assert not [r for r, res in ledger.results.items() if res.deadline_missed]
    assert moved, f"still at {during} (fast-link cut {fast_cut}) 20 s into the collapse"
    assert back, f"did not return to offloading at {fast_cut}; now {cut()}"


def _slow_cloud(tmp_path, repo, fleet, clouds):
    c = start_cloud(tmp_path / "slow", cloud_doc(
        repo.root, repo.public_key, fleet, [MODEL_A],
        batching={"max_batch": 1, "max_queue": 4}, debug={"tail_delay_ms": 150}))
    clouds.append(c)
    return c


def _slow_cloud_agents(repo, fleet, c, make_agent) -> list:
    """Agents that start out offloading: they assume a fast link (and a fast cloud)."""
    agents = [make_agent(agent_config(f"a{i}", repo.path(), repo.public_key,
                                      {"slow": fleet.zmq_link(f"a{i}", c.zmq)},
                                      runtime={"workers": 4},
                                      policy={"initial_up_Bps": 1e9, "initial_rtt_ms": 1.0}))
              for i in range(3)]
    for ag in agents:
        assert ag.wait_connected(20)
    return agents


def test_slow_cloud_answers_overloaded_with_bounded_queue_and_work_goes_edgeward(
        tmp_path, repo, samples, fleet, clouds, make_agent) -> None:
    """``debug.tail_delay_ms`` makes every batch slow. The agents' requests get OVERLOADED
    replies and finish on the device, and their placement policies (not only the
    per-request fallback) move to the all-edge cut; a flood gets OVERLOADED replies, never
    an unbounded queue; the core's memory stays flat."""
    c = _slow_cloud(tmp_path, repo, fleet, clouds)
    rss0 = c.rss()
    depths: list[float] = []
    sampling = threading.Event()

    def sample_depth() -> None:
        while not sampling.is_set():
            with contextlib.suppress(Exception):  # a scrape racing a busy core: try again
                # the bound is per queue (one per cut here): the deepest one at this instant
                by_cut = c.metrics().by("tiersplit_cloud_queue_depth", "cut")
                depths.append(max(by_cut.values(), default=0.0))
            time.sleep(0.05)

    sampler = threading.Thread(target=sample_depth, daemon=True)
    sampler.start()
    # 1) the agents' work moves to the device
    agents = _slow_cloud_agents(repo, fleet, c, make_agent)
    ledger = Ledger()
    load = LoadGen(ledger, agents, samples.inputs, samples.checker(), threads=4).start()
    try:
        assert load.wait_for(60)
        m1 = load.mark()
        assert load.wait_for(len(ledger) + 90)
        late = load.since(m1)
    finally:
        load.stop()
    ledger.settle()
    early = load.order[:m1]
    tried_cloud = [r for r in early if ledger.results[r].attempts]
    assert len(tried_cloud) >= 3, ledger.paths(early)  # they did start out offloading
    late_device = sum(1 for r in late if ledger.results[r].path in DEVICE) / len(late)
    assert late_device >= 0.8, ledger.paths(late)
    for ag in agents:  # the placement policy itself moved edge-ward, not only the fallback
        assert ag.status()["policy"]["current_cut"] == EDGE_CUT, ag.status()["policy"]
    # back-pressure reached the agents as explicit replies (while they still offloaded:
    # once they learned it, they stopped sending, which is the point)
    overloaded = sum(1 for res in ledger.results.values() for at in res.attempts
                     if at.outcome == "status: overloaded")
    assert overloaded >= 1
    m_agents = c.metrics()
    served = sum(1 for r in ledger.results.values() if r.endpoint == "slow")
    assert m_agents.total("tiersplit_cloud_requests_total", status="OK") == served

    # 2) a flood over a real link: every request is answered, OK or OVERLOADED
    link = make_client_link(ZmqClientConfig(
        endpoint=c.zmq, secret_key=fleet.secret("a3"), server_public_key=fleet.cloud_public),
        "a3")
    try:
        assert link.wait_connected(20)
        from contract.bundle import Bundle
        from transport import keys

        b = Bundle.load(repo.path(), keys.load_ed25519_public(repo.public_key), role="cloud")
        x = samples.inputs[0]
        futs = [link.submit(Request(request_id=f"flood-{i}", agent_id="a3", model=b.name,
                                    version=b.version, digest=b.digest, cut="cloud",
                                    deadline=Deadline.after_ms(30_000), tensors=x))
                for i in range(40)]
        replies = [f.result(60) for f in futs]
    finally:
        sampling.set()
        link.close()
    sampler.join(5)
    statuses = [r.status for r in replies]
    assert len(replies) == 40
    assert set(statuses) <= {Status.OK, Status.OVERLOADED}, set(statuses)
    assert statuses.count(Status.OVERLOADED) >= 20, statuses.count(Status.OVERLOADED)
    assert statuses.count(Status.OK) >= 4
    assert depths and max(depths) <= 4, max(depths, default=None)
    m = c.metrics()

    def grew(name: str, **labels: str) -> float:
        return m.total(name, **labels) - m_agents.total(name, **labels)

    assert grew("tiersplit_cloud_rejected_total", reason="overloaded") == statuses.count(
        Status.OVERLOADED)
    assert grew("tiersplit_cloud_requests_total", status="OK") == statuses.count(Status.OK)
    assert grew("tiersplit_cloud_backend_items_total") == statuses.count(Status.OK)
    rss1 = c.rss()
    assert rss1 - rss0 < 64 << 20, (rss0, rss1)
    assert max(m.by("tiersplit_cloud_queue_depth", "cut").values(), default=0) <= 4
