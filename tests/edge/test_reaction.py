"""How fast the cut follows the link, through the real link emulator and a real core.

The agent's current cut is read from its ``/status`` after every request; the figure is
the number of requests served after a 10x bandwidth change until the cut has moved.
"""

from __future__ import annotations

import time

import httpx
import numpy as np
import pytest

from contract.bundle import EDGE_CUT
from tests.edge.cloud_proc import Keyring, start_cloud
from tests.edge.conftest import base_config
from tiersplit.devtools.bundles import EDGE_CNN_INPUT as INPUT
from tiersplit.devtools.bundles import EDGE_CNN_SHAPE as IN_SHAPE
from transport.linkemu import LinkEmulator, LinkProfile

pytestmark = pytest.mark.integration

# ~34 ms for the whole model on the emulated device; at 20 Mbit/s the shallow cut k2 is
# best (~13 ms), at 2 Mbit/s nothing is worth sending (k2 ~72 ms, the device ~34 ms).
SLOW_DEVICE = {"emulate_gmacs": 0.1, "workers": 2, "warmup_runs": 1, "measure_runs": 2}
FAST, SLOW = 20e6, 2e6
X = {INPUT: np.random.default_rng(0).standard_normal((1, *IN_SHAPE)).astype(np.float32)}


@pytest.fixture(scope="module")
def ring(tmp_path_factory) -> Keyring:
    return Keyring.create(tmp_path_factory.mktemp("react-keys") / "k")


@pytest.fixture(scope="module")
def cloud(tmp_path_factory, edge_bundle, ring):
    proc = start_cloud(tmp_path_factory.mktemp("react-cloud"), edge_bundle.root,
                       edge_bundle.public_key, ring, "edge_cnn", name="react")
    yield proc
    proc.stop()


@pytest.fixture
def emulator(cloud):
    emu = LinkEmulator(("127.0.0.1", cloud.port), LinkProfile.symmetric(FAST, 2.0),
                       seed=1).start()
    yield emu
    emu.stop()


def _set_rate(emu: LinkEmulator, bps: float) -> None:
    """Change both directions and return once the emulator's loop has applied it
    (``set_rate`` only schedules; ``stop_replay`` waits for the loop, after it)."""
    emu.set_rate(bps, bps)
    emu.stop_replay()


def _agent(make_agent, bundle, ring, emulator, **policy):
    pol = {"seed": 3, "explore_fraction": 0.0, "probe_interval_s": 0.0}
    pol.update(policy)
    cfg = base_config(bundle, runtime=SLOW_DEVICE, policy=pol, codec="int8",
                      endpoints=[{"name": "a", "region": "eu", "link": ring.client_link(
                          f"tcp://127.0.0.1:{emulator.port}")}])
    agent = make_agent(cfg)
    assert agent.wait_connected(15)
    return agent


def _cut(agent) -> str:
    return httpx.get(f"{agent.http_url}/status", timeout=10).json()["current_cut"]


def _link(agent) -> dict:
    return httpx.get(f"{agent.http_url}/status", timeout=10).json()["policy"]["endpoints"]["a"]


def _serve(agent, pause_s: float = 0.0) -> str:
    agent.infer(X, deadline_ms=5000).result(30)
    time.sleep(pause_s)
    return _cut(agent)


def _settle(agent, want, limit: int = 80, pause_s: float = 0.0, runs: int = 5) -> str:
    """Serve until ``want(cut)`` held after ``runs`` requests in a row."""
    streak = 0
    for _ in range(limit):
        cut = _serve(agent, pause_s)
        streak = streak + 1 if want(cut) else 0
        if streak >= runs:
            return cut
    pytest.fail(f"the cut never settled: {agent.status()['policy']}")


def _requests_to_move(agent, before: str, limit: int = 40, pause_s: float = 0.0) -> int:
    for n in range(1, limit + 1):
        if _serve(agent, pause_s) != before:
            return n
    return limit + 1


def test_one_10x_slow_request_does_not_move_the_cut(edge_bundle, ring, emulator,
                                                    make_agent) -> None:
    # The link stalls for the one request alone (a blackout it sits out): the probe its
    # suspicious sample wakes right after the reply must find the link as it was.
    agent = _agent(make_agent, edge_bundle, ring, emulator, probe_interval_s=1.0)
    cut = _settle(agent, lambda c: c == "k2", pause_s=0.05)
    steady = []
    for _ in range(5):  # steady on the fast link
        res = agent.infer(X, deadline_ms=5000).result(30)
        assert (res.cut, _cut(agent)) == (cut, cut), agent.status()["policy"]["endpoints"]
        steady.append(res.timings["remote"])
    for _ in range(200):  # a probe on the link would sit the blackout out too
        if _link(agent)["transfers_in_flight"] == 0:
            break
        time.sleep(0.01)
    emulator.blackout(10 * float(np.median(steady)) / 1e3)
    res = agent.infer(X, deadline_ms=5000).result(30)  # one request 10x slower
    assert (res.path, res.cut) == ("remote", cut)
    assert res.timings["remote"] > 3 * min(steady)  # it was an outlier
    for _ in range(6):
        assert _serve(agent) == cut, agent.status()["policy"]


def test_cut_moves_within_three_requests_of_a_10x_drop_and_recovery(
        edge_bundle, ring, emulator, make_agent) -> None:
    """Down: the first slow request is held back as a suspicion, which wakes a probe at
    once; the probe (or the next request) confirms it. Back up: on the device nothing is
    sent, so the probes show it (a suspicious probe is confirmed at once). Timing noise
    from a loaded CPU widens the change detector's band by what the pings show, so it is
    neither taken for a change nor hides one. Requests come at an app's pace: 10 per
    second while they carry the news, 3 per second on the device, where only the probes
    (every 0.15 s) can see the link return. Counted in requests, never in time."""
    agent = _agent(make_agent, edge_bundle, ring, emulator, probe_interval_s=0.15)
    fast = _settle(agent, lambda c: c == "k2", pause_s=0.1)
    _set_rate(emulator, SLOW)
    down = _requests_to_move(agent, fast, pause_s=0.1)
    slow = _cut(agent)
    _set_rate(emulator, FAST)
    up = _requests_to_move(agent, slow, pause_s=0.3)
    back = _cut(agent)
    print(f"REACTION requests to move: 10x drop {down} ({fast}->{slow}), "
          f"recovery {up} ({slow}->{back})")
    assert slow == EDGE_CUT and back == "k2"
    assert down <= 3 and up <= 3, (down, up)
