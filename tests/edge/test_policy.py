"""Runtime placement policy: pure logic, no sockets."""

from __future__ import annotations

import pytest

from edge_agent.client import BreakerState, CircuitBreaker
from edge_agent.config import PolicyConfig
from edge_agent.policy import CutInfo, EndpointInfo, LinkEstimator, Policy, RobustEwma

# A chain where deeper cuts cost more edge time and send fewer bytes (per sample).
CUTS = [
    CutInfo("cloud", 0, raw_bytes=48_000, int8_bytes=12_000, reply_bytes=40, accuracy=1.0,
            head_flops=0, tail_flops=100),
    CutInfo("k2", 2, raw_bytes=64_000, int8_bytes=16_000, reply_bytes=40, accuracy=1.0,
            head_flops=10, tail_flops=90),
    CutInfo("k4", 4, raw_bytes=32_000, int8_bytes=8_000, reply_bytes=40, accuracy=1.0,
            head_flops=40, tail_flops=60),
    CutInfo("k6", 6, raw_bytes=4_000, int8_bytes=1_000, reply_bytes=40, accuracy=1.0,
            head_flops=80, tail_flops=20),
    CutInfo("edge", 9, raw_bytes=0, int8_bytes=0, reply_bytes=0, accuracy=1.0,
            head_flops=100, tail_flops=0),
]
HEAD_MS = {"cloud": 0.0, "k2": 4.0, "k4": 16.0, "k6": 30.0, "edge": 40.0}


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def make_policy(endpoints=(EndpointInfo("a", "eu"),), clock=None, **cfg) -> Policy:
    cfg.setdefault("explore_fraction", 0.0)
    cfg.setdefault("seed", 7)
    allowed = cfg.pop("allowed", None)
    pol = Policy(CUTS, list(endpoints), PolicyConfig(**cfg), codec="int8",
                 allowed_regions=allowed, clock=clock or Clock())
    for cut, ms in HEAD_MS.items():
        pol.observe_head(cut, ms)
    return pol


def feed_link(pol: Policy, endpoint: str, up_Bps: float, rtt_ms: float, n: int = 8) -> None:
    """Pings as a real link with this bandwidth and RTT would answer them."""
    for _ in range(n):
        pol.observe_ping(endpoint, 0, rtt_ms)
        size = pol.probe_bytes(endpoint)
        pol.observe_ping(endpoint, size, rtt_ms + size / up_Bps * 1e3)


def depth(cut_id: str) -> int:
    return next(c.depth for c in CUTS if c.cut_id == cut_id)


def test_cut_moves_deeper_as_bandwidth_drops_and_back() -> None:
    pol = make_policy()
    chosen = []
    for mbit in (100, 20, 5, 1, 0.2, 20, 100):
        feed_link(pol, "a", mbit * 125_000, rtt_ms=4)
        chosen.append(pol.decide().cut_id)
    depths = [depth(c) for c in chosen]
    assert depths[:5] == sorted(depths[:5]), chosen  # deeper (never shallower) as it drops
    assert depths[0] < depths[4], chosen
    assert chosen[4] == "edge", chosen  # 0.2 Mbit/s: nothing is worth sending
    assert chosen[-1] == chosen[0] == "k2", chosen  # bandwidth back: shallow again


def test_privacy_floor_excludes_shallow_cuts() -> None:
    # Lavish bandwidth: with floor 0 sending the raw inputs is the fastest of all.
    pol0 = make_policy(privacy_floor=0)
    feed_link(pol0, "a", 1e10, rtt_ms=1)
    assert pol0.decide().cut_id == "cloud"
    pol1 = make_policy()  # default floor 1: raw inputs never leave the device
    feed_link(pol1, "a", 1e10, rtt_ms=1)
    assert pol1.decide().cut_id == "k2"
    pol5 = make_policy(privacy_floor=5)
    feed_link(pol5, "a", 1e10, rtt_ms=1)
    assert pol5.decide().cut_id == "k6"
    assert not pol5.snapshot()["cuts"]["k4"]["admitted"]
    with pytest.raises(ValueError, match="privacy_floor"):
        make_policy(privacy_floor=5, fixed_cut="k4")


def test_data_residency_never_uses_a_foreign_endpoint() -> None:
    eps = (EndpointInfo("home", "eu"), EndpointInfo("abroad", "us"))
    pol = make_policy(endpoints=eps, allowed=["eu"])
    feed_link(pol, "abroad", 1e10, rtt_ms=0.5)  # far better, but not allowed
    feed_link(pol, "home", 2e6, rtt_ms=20)
    for _ in range(20):
        choice = pol.decide()
        assert "abroad" not in choice.endpoints
    assert "abroad" not in pol.snapshot()["endpoints"]
    # home down: local execution, still never abroad
    pol.set_available("home", False)
    choice = pol.decide()
    assert choice.cut_id == "edge" and choice.endpoints == ()


def test_endpoint_order_is_by_predicted_latency() -> None:
    eps = (EndpointInfo("slow", "eu"), EndpointInfo("fast", "eu"))
    pol = make_policy(endpoints=eps)
    feed_link(pol, "slow", 2e6, rtt_ms=15)
    feed_link(pol, "fast", 2e6, rtt_ms=3)
    assert pol.decide().endpoints == ("fast", "slow")
    pol.set_available("fast", False)
    assert pol.decide().endpoints == ("slow",)


def test_exploration_refreshes_other_cuts_within_bounds() -> None:
    clock = Clock()
    pol = make_policy(explore_fraction=0.3, explore_max_ratio=3.0, clock=clock)
    feed_link(pol, "a", 5 * 125_000, rtt_ms=4)
    best = make_policy()
    feed_link(best, "a", 5 * 125_000, rtt_ms=4)
    top = best.decide()
    explored = []
    for _ in range(300):
        clock.t += 1
        ch = pol.decide()
        if ch.explored:
            explored.append(ch.cut_id)
            assert ch.cut_id != top.cut_id
            assert ch.predicted_ms <= top.predicted_ms * 3.0 + 1e-9
            pol.observe_reply("a", ch.cut_id, up_bytes=1000, down_bytes=40, elapsed_ms=20,
                              queue_ms=0.0, compute_ms=1.0, solo=False)
        else:
            assert ch.cut_id == top.cut_id
    assert 40 <= len(explored) <= 140  # ~30% of 300
    assert len(set(explored)) >= 2  # stalest-first rotates through the candidates
    assert make_policy(explore_fraction=0.0).decide().explored is False


def test_cloud_queue_feedback_moves_work_to_the_edge() -> None:
    pol = make_policy()
    feed_link(pol, "a", 100 * 125_000, rtt_ms=4)
    assert pol.decide().cut_id == "k2"
    for _ in range(10):  # the cloud reports long queues
        pol.observe_reply("a", "k2", up_bytes=16_000, down_bytes=40, elapsed_ms=200,
                          queue_ms=180.0, compute_ms=1.0, solo=False)
    assert pol.decide().cut_id == "edge"


def test_fixed_cut_bypasses_the_optimizer() -> None:
    pol = make_policy(fixed_cut="k6")
    feed_link(pol, "a", 1e10, rtt_ms=1)
    ch = pol.decide()
    assert (ch.cut_id, ch.reason, ch.endpoints) == ("k6", "fixed", ("a",))
    pol.set_available("a", False)
    assert pol.decide().cut_id == "edge"
    assert make_policy(fixed_cut="edge").decide().cut_id == "edge"
    with pytest.raises(ValueError, match="not a cut"):
        make_policy(fixed_cut="k99")


def test_hysteresis_keeps_a_near_equal_cut() -> None:
    pol = make_policy(hysteresis=0.5)
    plain = make_policy()
    for p in (pol, plain):
        feed_link(p, "a", 100 * 125_000, rtt_ms=4, n=30)
        assert p.decide().cut_id == "k2"
        feed_link(p, "a", 4 * 125_000, rtt_ms=4, n=30)
    snap = pol.snapshot()["endpoints"]["a"]["predicted_ms"]
    best = plain.decide()
    assert best.cut_id != "k2" and snap["k2"] <= best.predicted_ms * 1.5
    assert pol.decide().cut_id == "k2"  # not worth a switch
    feed_link(pol, "a", 0.2 * 125_000, rtt_ms=4, n=30)
    assert pol.decide().cut_id == "edge"  # far better: switch


def test_robust_estimator_ignores_one_outlier() -> None:
    est = RobustEwma(alpha=0.5, window=5)
    for _ in range(10):
        est.update(10.0)
    est.update(10_000.0)
    assert est.value == pytest.approx(10.0)
    for _ in range(5):  # a real change moves it within ~window/2 samples
        est.update(50.0)
    assert est.value > 40.0


def test_link_estimator_from_transfers() -> None:
    link = LinkEstimator(PolicyConfig(initial_up_Bps=1e6, initial_rtt_ms=10, window=3))
    for _ in range(6):
        link.observe_rtt(20.0)
        link.observe_transfer(50_000, 0, 20.0 + 50_000 / 250_000 * 1e3)
    assert link.rtt_ms == pytest.approx(20.0)
    assert link.up_Bps == pytest.approx(250_000, rel=0.05)
    # a transfer too short to time only raises a stale estimate, never lowers it
    for _ in range(6):
        link.observe_transfer(100_000, 0, 20.0)
    assert link.up_Bps > 1e6
    before = link.up_Bps
    link.observe_transfer(10, 0, 20.0)
    assert link.up_Bps == before


def test_prior_is_followed_until_measurements_arrive() -> None:
    pol = Policy(CUTS, [EndpointInfo("a")], PolicyConfig(explore_fraction=0.0),
                 codec="int8", prior=lambda up, rtt: "k6")
    for cut, ms in HEAD_MS.items():
        pol.observe_head(cut, ms)
    assert pol.decide().reason == "prior"
    assert pol.decide().cut_id == "k6"
    feed_link(pol, "a", 100 * 125_000, rtt_ms=4)
    assert pol.decide().reason in ("optimal", "hysteresis")


def test_circuit_breaker_opens_and_probes_back() -> None:
    clock = Clock()
    br = CircuitBreaker(failures=3, open_s=5.0, clock=clock)
    for _ in range(2):
        br.record_failure()
    assert br.allow() and br.state is BreakerState.CLOSED
    br.record_failure()
    assert br.state is BreakerState.OPEN and not br.allow() and not br.usable()
    clock.t = 5.0
    assert br.usable()
    assert br.allow()  # the half-open probe
    assert br.state is BreakerState.HALF_OPEN and not br.allow()  # only one
    br.record_failure()  # probe failed: open again
    assert br.state is BreakerState.OPEN and not br.allow()
    clock.t = 10.0
    assert br.allow()
    br.release()  # the probe got an answer that says nothing about health (overloaded)
    assert br.allow()
    br.record_success()
    assert br.state is BreakerState.CLOSED and br.opened == 2
    # a ping that gets through closes an open breaker once its wait is over
    for _ in range(3):
        br.record_failure()
    br.probe_ok()
    assert br.state is BreakerState.OPEN
    clock.t = 20.0
    br.probe_ok()
    assert br.state is BreakerState.CLOSED


def test_shared_transfers_bound_the_bandwidth_under_concurrency() -> None:
    """No request ever travels alone, yet a 100x collapse is noticed: a shared transfer
    caps the bandwidth at (own + bytes ahead) / transfer time."""
    pol = make_policy()
    feed_link(pol, "a", 100 * 125_000, rtt_ms=4)
    assert pol.decide().cut_id == "k2"
    fast = pol._clouds["a"].link.up_Bps
    for _ in range(20):  # 16 kB each, 16 kB ahead, on a 1 Mbit/s link: ~260 ms
        pol.observe_reply("a", "k2", up_bytes=16_000, down_bytes=40, elapsed_ms=4 + 260,
                          queue_ms=0.0, compute_ms=1.0, solo=False, ahead_bytes=16_000)
    slow = pol._clouds["a"].link.up_Bps
    assert slow <= 32_000 / 0.259 * 1.25 < fast / 10  # near the bound (EWMA converging)
    assert depth(pol.decide().cut_id) > depth("k2")
    # unknown bytes ahead: no bound, no change
    before = pol._clouds["a"].link.up_Bps
    pol.observe_reply("a", "k2", up_bytes=16_000, down_bytes=40, elapsed_ms=900,
                      queue_ms=0.0, compute_ms=1.0, solo=False)
    assert pol._clouds["a"].link.up_Bps == before


def test_overloaded_replies_charge_the_queue_not_the_tail() -> None:
    pol = make_policy()
    feed_link(pol, "a", 100 * 125_000, rtt_ms=4)
    assert pol.decide().cut_id == "k2"
    for _ in range(5):
        pol.observe_overload("a", elapsed_ms=5.0)
    assert pol.decide().cut_id == "edge"


def test_pongs_do_not_undo_an_overload_before_the_hold() -> None:
    """An idle cloud's pong (queue 0) right after OVERLOADED replies would send the agent
    straight back into the refusals; it counts only once the hold has passed."""
    from edge_agent.policy import OVERLOAD_HOLD_S

    clock = Clock()
    pol = make_policy(clock=clock)
    feed_link(pol, "a", 100 * 125_000, rtt_ms=4)
    for _ in range(5):
        pol.observe_overload("a", elapsed_ms=5.0)
    for _ in range(10):
        pol.observe_ping("a", 0, 4.0, queue_ms=0.0)
    assert pol.decide().cut_id == "edge"
    clock.t += OVERLOAD_HOLD_S
    for _ in range(10):
        pol.observe_ping("a", 0, 4.0, queue_ms=0.0)
    assert pol.decide().cut_id == "k2"
