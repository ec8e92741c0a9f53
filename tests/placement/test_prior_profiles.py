"""Profile files round-trip; the prior's bandwidth table agrees with the cost model."""

from __future__ import annotations

import itertools
import math
import random

import pytest

from placement import (
    CloudEstimate,
    CloudProfile,
    Constraints,
    EdgeProfile,
    LinkEstimate,
    LinkProfile,
    PlacementPrior,
    bandwidth_ranges,
    build_model_prior,
    choose,
    cut_profiles,
    dump_prior,
    link_conditions,
    load_prior,
    load_profile,
    save_profile,
)
from tests.placement.synthetic import synthetic_cuts

LINKS = {"3g": LinkEstimate(1e5, 2e5, 200.0), "4g": LinkEstimate(1e6, 4e6, 60.0),
         "wifi": LinkEstimate(5e6, 5e6, 10.0), "lan": LinkEstimate(1e8, 1e8, 0.5)}


def _edge_profile() -> EdgeProfile:
    return EdgeProfile("m", "1", "abc", {
        "k1": {"depth": 1, "head_ms": 2.0, "bytes": {"raw": 1000, "fp16": 500},
               "encode_ms": {"fp16": 0.1}, "accuracy": 0.99, "edge_memory_mb": 1.5},
        "edge": {"depth": 4, "head_ms": 9.0},
    }, reply_bytes=40, machine={"hostname": "h"})


def _cloud_profile() -> CloudProfile:
    return CloudProfile("m", "1", "abc", {"k1": {"tail_ms": {1: 1.0, 4: 2.0},
                                                 "decode_ms": {"fp16": 0.05}},
                                          "cloud": {"tail_ms": {1: 1.5}, "bytes": {"raw": 9}}})


@pytest.mark.parametrize("suffix", [".yaml", ".json"])
def test_profiles_round_trip(tmp_path, suffix: str) -> None:
    for prof in (_edge_profile(), _cloud_profile(),
                 LinkProfile("tcp://127.0.0.1:1", 3.0, 1e6, 2e6,
                             ({"payload_bytes": 0, "reply_bytes": 0, "rtt_ms": 3.0},))):
        path = save_profile(prof, tmp_path / f"{prof.kind}{suffix}")
        assert load_profile(path) == prof


def test_edge_profile_statistic_and_scaling_rewrite_head_times_only() -> None:
    prof = _edge_profile()
    k1 = dict(prof.cuts["k1"], head_p90_ms=3.5)
    prof = EdgeProfile(prof.model, prof.version, prof.digest, {**prof.cuts, "k1": k1},
                       prof.reply_bytes, prof.machine)
    p90 = prof.using("p90")
    assert p90.cuts["k1"]["head_ms"] == 3.5
    assert p90.cuts["edge"]["head_ms"] == 9.0  # no p90 recorded: keeps its median
    assert p90.cuts["k1"]["bytes"] == k1["bytes"] and p90.reply_bytes == 40
    assert p90.machine == {"hostname": "h", "statistic": "p90"}
    slow = prof.scaled(2.5)
    assert {k: v["head_ms"] for k, v in slow.cuts.items()} == {"k1": 5.0, "edge": 22.5}
    assert slow.machine["scaled"] == 2.5 and prof.cuts["k1"]["head_ms"] == 2.0


def test_bad_profiles_are_refused(tmp_path) -> None:
    (tmp_path / "x.yaml").write_text("kind: gpu\n")
    with pytest.raises(ValueError, match="unknown kind"):
        load_profile(tmp_path / "x.yaml")
    (tmp_path / "y.json").write_text('{"kind": "edge"}')
    with pytest.raises(ValueError, match="missing"):
        load_profile(tmp_path / "y.json")


def test_cut_profiles_join() -> None:
    cuts = {c.cut_id: c for c in cut_profiles(_edge_profile(), _cloud_profile(),
                                               edge_speed=2.0)}
    assert set(cuts) == {"cloud", "k1", "edge"}
    assert cuts["k1"].head_ms == 4.0 and cuts["k1"].tail_ms == {1: 1.0, 4: 2.0}
    assert cuts["k1"].decode_ms == {"fp16": 0.05} and cuts["k1"].reply_bytes == 40
    assert cuts["edge"].tail_ms == {} and cuts["edge"].reply_bytes == 0
    assert cuts["cloud"].bytes == {"raw": 9}
    other = CloudProfile("m", "2", "zzz", {})
    with pytest.raises(ValueError, match="same bundle"):
        cut_profiles(_edge_profile(), other)


def test_link_conditions_formats() -> None:
    got = link_conditions({"profiles": {
        "a": {"rate_mbit": 8, "delay_ms": 10},
        "b": {"up": "1mbit", "down": "4mbit", "rtt_ms": 50},
        "c": {"up_Bps": 1000, "down_Bps": 2000, "rtt_ms": 1},
    }})
    assert got["a"] == LinkEstimate(1e6, 1e6, 20.0)
    assert got["b"] == LinkEstimate(125000.0, 500000.0, 50.0)
    assert got["c"] == LinkEstimate(1000, 2000, 1)
    with pytest.raises(ValueError, match="need a bandwidth"):
        link_conditions({"profiles": {"x": {"loss": 0.1}}})


def test_bandwidth_ranges_agree_with_choose() -> None:
    cuts = synthetic_cuts()
    cons = Constraints(privacy_floor=0)
    ranges = bandwidth_ranges(cuts, rtt_ms=2.0, down_up_ratio=2.0, constraints=cons)
    assert ranges[0].min_up_Bps == 0 and math.isinf(ranges[-1].max_up_Bps)
    assert ranges[0].cut == "edge" and ranges[-1].cut == "cloud"
    for a, b in itertools.pairwise(ranges):
        assert a.max_up_Bps == b.min_up_Bps and a.cut != b.cut
    rng = random.Random(0)
    for _ in range(200):
        up = 10 ** rng.uniform(2, 10)
        want = choose(cuts, LinkEstimate(up, 2 * up, 2.0), CloudEstimate(), cons).cut_id
        got = next(r.cut for r in ranges if r.contains(up))
        if got != want:  # only within the refinement tolerance of a boundary
            assert min(abs(up / r.min_up_Bps - 1) for r in ranges[1:]) < 1e-5


def test_prior_round_trip_and_lookup(tmp_path) -> None:
    cuts = synthetic_cuts()
    mp = build_model_prior("m", "1", "abc", cuts, LINKS)
    prior = PlacementPrior({"m": mp}, {"cam-1": {"model": "m", "cut": "k2"}}, "raw",
                           {"privacy_floor": 1}, "2026-01-01T00:00:00Z")
    path = tmp_path / "placement.yaml"
    dump_prior(prior, path)
    back = load_prior(path)
    assert back.agent_cut("cam-1") == "k2" and back.agent_cut("nobody") is None
    for name, link in LINKS.items():
        want = choose(cuts, link, CloudEstimate()).cut_id
        assert back.cut_for("m", link.up_Bps, link.rtt_ms) == want, name
        assert back.models["m"].conditions[name]["cut"] == want
    with pytest.raises(KeyError):
        back.cut_for("other", 1e6)
    (tmp_path / "bad.yaml").write_text("format: 99\n")
    with pytest.raises(ValueError, match="format"):
        load_prior(tmp_path / "bad.yaml")
