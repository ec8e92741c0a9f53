"""The estimators on a busy device: timing noise the pings show is neither taken for a
link change nor hides one, a request that shared the link with a probe is no sample, and
a held-back sample wakes the probes."""

from __future__ import annotations

import pytest

from edge_agent.config import PolicyConfig
from edge_agent.cuts import CutInfo
from edge_agent.estimators import Estimates, LinkEstimator, TimingNoise
from edge_agent.filters import RobustEwma

CUTS = [CutInfo("k2", 2, raw_bytes=64_000, int8_bytes=16_000, reply_bytes=40, accuracy=1.0,
                head_flops=2, tail_flops=8),
        CutInfo("edge", 9, raw_bytes=0, int8_bytes=0, reply_bytes=0, accuracy=1.0,
                head_flops=10, tail_flops=0)]


def test_a_per_sample_floor_widens_the_band() -> None:
    f = RobustEwma(0.3, 3, band=2.0, confirm=2)
    for _ in range(3):
        f.update(10.0)
    # 25 is out of the 2x band alone, inside it with 10 of noise: two of them change nothing
    f.update(25.0, floor=10.0)
    f.update(25.0, floor=10.0)
    assert f.changes == 0 and f.pending == 0
    # a change larger than the noise is still confirmed after two samples
    f.update(100.0, floor=10.0)
    assert f.changes == 0 and f.pending == 1
    f.update(150.0, floor=10.0)  # 1.5x apart: one level
    assert f.changes == 1 and f.value == 125.0


def test_timing_noise_is_how_late_waits_wake_and_late_pings_are_no_change() -> None:
    noise = TimingNoise()
    assert noise.ms == 1.0
    link = LinkEstimator(PolicyConfig(initial_rtt_ms=5.0), noise)
    for _ in range(8):
        link.observe_rtt(5.0)
    quiet_probe = link.probe_bytes(1 << 20)
    for late in (0.1, 6.0, 9.0, 0.2, 7.0, 12.0, 8.0):  # a loaded CPU wakes threads late
        noise.observe(late)
    assert noise.ms == pytest.approx(3 * 7.0)
    for rtt in (5.0, 15.0, 25.0, 5.0, 20.0, 24.0, 5.0):  # pings late by that much
        link.observe_rtt(rtt)
    assert link.rtt.changes == 0  # smoothed in, not a new level
    assert link.probe_bytes(1 << 20) > 2 * quiet_probe  # probes outlast the noise
    for rtt in (120.0, 130.0):  # a change larger than the noise still is one
        link.observe_rtt(rtt)
    assert link.rtt.changes == 1 and link.rtt_ms == 125.0


def test_a_request_that_shared_the_link_with_a_probe_is_no_sample() -> None:
    est = Estimates(CUTS, ["a"], PolicyConfig(initial_rtt_ms=1.0), codec="int8")
    link = est.clouds["a"].link

    def reply(ms: float) -> None:
        est.observe_reply("a", "k2", up_bytes=16_000, down_bytes=40, elapsed_ms=ms,
                          queue_ms=0.0, compute_ms=0.0)

    for _ in range(6):
        token = est.begin_transfer("a", 16_000)
        est.end_transfer(token)
        reply(10.0)
    before = (link.s_per_B.value, link.s_per_B.pending, link.samples)
    assert not est.suspect.is_set()
    probe = est.begin_transfer("a", 32_000)
    token = est.begin_transfer("a", 16_000)  # sent while the probe is on the link
    est.end_transfer(token)
    reply(200.0)
    assert (link.s_per_B.value, link.s_per_B.pending) == before[:2]
    est.end_transfer(probe)
    est.observe_ping("a", 32_000, 200.0)  # the probe shared it too
    assert link.s_per_B.pending == 0
    token = est.begin_transfer("a", 16_000)  # alone and slow: held back, probes woken
    est.end_transfer(token)
    reply(200.0)
    assert link.s_per_B.pending == 1 and est.suspect.is_set()
