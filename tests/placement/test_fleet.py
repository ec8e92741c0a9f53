"""Fleet optimizer: queueing grows with offered load; cuts move edge-ward as the cloud
shrinks; the joint plan beats every agent choosing alone when the cloud is busy."""

from __future__ import annotations

import itertools
import math

import pytest

from placement import (
    CloudCapacity,
    CloudEstimate,
    Constraints,
    FleetAgent,
    LinkEstimate,
    choose,
    cloud_load,
    load_fleet_spec,
    optimize_fleet,
)
from tests.placement.synthetic import synthetic_cuts

FAST = LinkEstimate(5e7, 5e7, 2.0)


def _fleet(n: int = 12, rate: float = 30.0) -> list[FleetAgent]:
    cuts = tuple(synthetic_cuts())
    return [FleetAgent(f"a{i}", cuts, FAST, rate) for i in range(n)]


def _edgeward(plan, agents) -> float:
    depth = {c.cut_id: c.depth for c in agents[0].cuts}
    return sum(depth[c] for c in plan.cuts.values()) / len(plan.cuts)


def test_cloud_load_grows_with_rate_and_saturates() -> None:
    k1 = synthetic_cuts()[1]
    cap = CloudCapacity(workers=1, max_batch=8)
    low = cloud_load([(10.0, k1)], cap)
    mid = cloud_load([(400.0, k1)], cap)
    assert 0 < low.utilisation < mid.utilisation < 1
    assert low.queue_ms < mid.queue_ms
    assert mid.batch > 1  # the batcher batches only under load
    assert low.batch == 1
    sat = cloud_load([(1e5, k1)], cap)
    assert sat.saturated and math.isinf(sat.queue_ms)
    assert cloud_load([(1e5, synthetic_cuts()[-1])], cap).utilisation == 0  # edge: no load


def test_single_agent_matches_plain_choice_when_idle() -> None:
    agent = FleetAgent("a", tuple(synthetic_cuts()), FAST, 0.01)
    plan = optimize_fleet([agent], CloudCapacity(workers=4))
    assert plan.cuts["a"] == choose(agent.cuts, FAST, CloudEstimate()).cut_id


def test_cuts_move_edgeward_as_cloud_capacity_shrinks() -> None:
    agents = _fleet()
    depths, utils = [], []
    for speed in (8.0, 2.0, 1.0, 0.5, 0.25, 0.1):
        plan = optimize_fleet(agents, CloudCapacity(workers=1, max_batch=8, speed=speed))
        depths.append(_edgeward(plan, agents))
        utils.append(plan.load.utilisation)
        assert plan.load.utilisation < 1 and math.isfinite(plan.fleet_mean_ms)
    assert all(b >= a - 1e-9 for a, b in itertools.pairwise(depths)), depths
    assert depths[-1] > depths[0], depths


def test_joint_plan_beats_selfish_choice_under_load() -> None:
    agents = _fleet(n=16, rate=60.0)
    cap = CloudCapacity(workers=1, max_batch=8, speed=0.5)
    plan = optimize_fleet(agents, cap)
    # Everyone picking its idle-cloud best overloads the cloud.
    selfish = choose(agents[0].cuts, FAST, CloudEstimate()).cut_id
    cut = {c.cut_id: c for c in agents[0].cuts}[selfish]
    assert cloud_load([(a.rate_rps, cut) for a in agents], cap).utilisation > 0.95
    assert plan.fleet_mean_ms < math.inf
    assert len(set(plan.cuts.values())) >= 1


@pytest.mark.parametrize("objective", ["mean", "p95"])
def test_objectives_and_constraints(objective: str) -> None:
    cuts = tuple(synthetic_cuts())
    agents = [FleetAgent("private", cuts, FAST, 20.0,
                         constraints=Constraints(privacy_floor=6)),
              FleetAgent("open", cuts, FAST, 20.0, constraints=Constraints(privacy_floor=0))]
    plan = optimize_fleet(agents, CloudCapacity(workers=2), objective=objective)
    assert plan.cuts["private"] in ("k3", "edge")
    assert plan.fleet_p95_ms >= plan.fleet_mean_ms * 0.5
    with pytest.raises(ValueError, match="no cut"):
        optimize_fleet([FleetAgent("x", cuts, FAST, 1.0,
                                   constraints=Constraints(accuracy_floor=2.0))],
                       CloudCapacity())


def test_fleet_spec_parses(tmp_path) -> None:
    from placement import EdgeProfile, save_profile

    save_profile(EdgeProfile("m", "1", "d", {"edge": {"depth": 3, "head_ms": 5.0},
                                              "k1": {"depth": 1, "head_ms": 1.0,
                                                     "bytes": {"raw": 100}}}),
                 tmp_path / "edge.yaml")
    (tmp_path / "fleet.yaml").write_text(
        "objective: p95\ncloud: {workers: 3, max_batch: 4}\n"
        "agents:\n  - {id: cam, count: 3, rate_rps: 5, link: lan, edge_profile: edge.yaml}\n"
        "  - {id: solo, link: {up_Bps: 1000, rtt_ms: 10}, edge_profile: edge.yaml,"
        " edge_speed: 2}\n")
    spec = load_fleet_spec(tmp_path / "fleet.yaml")
    assert spec.capacity.workers == 3 and spec.objective == "p95"
    agents = spec.build({"lan": FAST})
    assert [a.agent_id for a in agents] == ["cam-0", "cam-1", "cam-2", "solo"]
    assert agents[-1].link.up_Bps == 1000
    assert {c.cut_id: c.head_ms for c in agents[-1].cuts}["edge"] == 10.0
    with pytest.raises(ValueError, match="unknown link"):
        spec.build({})


def test_p95_is_never_below_the_mean() -> None:
    for rate in (0.1, 5.0, 30.0, 45.0):
        agents = _fleet(n=6, rate=rate)
        for obj in ("mean", "p95"):
            plan = optimize_fleet(agents, CloudCapacity(workers=1, speed=0.5), objective=obj)
            for aid in plan.cuts:
                assert plan.p95_ms[aid] >= plan.mean_ms[aid] - 1e-9, (rate, obj, aid)
