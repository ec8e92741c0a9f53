"""Shipping a new model version to a fleet of real agents under steady load.

A real core (``tiersplit cloud serve``) and four agents behind the link emulator serve a
closed loop of requests while the operator, through the ``tiersplit fleet`` CLI, rolls
v2 out to one canary agent, promotes it to all, and rolls back to v1. Every request sent
is answered (none lost, none failed), no reply ever says VERSION_MISMATCH, and every
answer equals the fp32 reference of the version that produced it.
"""

from __future__ import annotations

import json

import pytest

from cloud_core.rollout import agent_fraction
from tests.reliability.fleet import Ledger, LoadGen, Metrics, wait_until
from tests.rollout.conftest import MODEL
from tests.rollout.fleetops import fleet_cli, start_core, start_fleet, wait_versions

pytestmark = [pytest.mark.integration]


def test_canary_promote_rollback_under_load(tmp_path, repo, samples, fleet, clouds,
                                            make_agent) -> None:
    root = repo.copy(tmp_path / "repo")
    core = start_core(tmp_path, root, repo.public_key, fleet)
    clouds.append(core)
    agents, emu = start_fleet(make_agent, fleet, core, repo.path("1"), repo.public_key,
                              tmp_path)
    ledger = Ledger()
    load = LoadGen(ledger, agents, samples.inputs, samples.check, threads=2).start()
    try:
        assert load.wait_for(40)
        # every agent has reported: the canary is the one with the lowest id hash
        assert wait_until(lambda: len(_status(core)["agents"]) == 4, 30), _status(core)
        canary = min((a.config.agent_id for a in agents), key=agent_fraction)

        # thresholds far from this shared machine's noise: the automatic rollback has its
        # own test; here the canary must stay until promoted
        r = fleet_cli(core, "rollout", MODEL, "2", "--canary", "1", "--max-p99-ratio", "5")
        assert r.returncode == 0, r.stderr
        want = ["2" if a.config.agent_id == canary else "1" for a in agents]
        wait_versions(agents, want)
        mark = len(ledger)
        assert load.wait_for(mark + 40)

        st = fleet_cli(core, "status", MODEL, "--json")
        assert st.returncode == 0, st.stderr
        body = json.loads(st.stdout)[MODEL]
        assert body["plan"]["state"] == "canary", body["plan"]
        assert wait_until(lambda: _status(core)["versions"].get("2", {}).get("agents")
                          == [canary], 30), _status(core)

        r = fleet_cli(core, "promote", MODEL)
        assert r.returncode == 0, r.stderr
        wait_versions(agents, ["2"] * 4)
        mark = len(ledger)
        assert load.wait_for(mark + 40)

        r = fleet_cli(core, "rollback", MODEL)
        assert r.returncode == 0, r.stderr
        wait_versions(agents, ["1"] * 4)
        assert load.wait_for(len(ledger) + 40)
    finally:
        load.stop()
        emu.stop()

    ledger.settle()  # nothing lost, nothing failed, nothing answered twice
    results = list(ledger.results.values())
    assert {r.version for r in results} == {"1", "2"}
    assert sum(r.version == "2" and r.path == "remote" for r in results) > 0
    mismatches = [a for r in results for a in r.attempts if "version_mismatch" in a.outcome]
    assert not mismatches, mismatches[:3]
    m = core.metrics()
    assert m.total("tiersplit_cloud_rejected_total", reason="version_mismatch") == 0
    assert m.total("tiersplit_cloud_rollout_state", model=MODEL) == 4  # rolled back
    assert m.total("tiersplit_cloud_distribution_bytes_total") > 0
    # rolling back needed no download: v1 was the bundle each agent started with
    for a in agents:
        st = a.status()["update"]
        assert st["current"] == "1" and st["previous"] == "2" and not st["error"]
        assert "2" in st["kept"]
        em = Metrics(a.metrics_text().decode())
        assert em.total("tiersplit_edge_update_failures_total") == 0
        assert em.total("tiersplit_edge_model_version_info", current="1", previous="2") == 1


def _status(core) -> dict:
    """The core's rollout status of the model (plan, versions, agents)."""
    r = core.admin_call("GET", f"/v1/rollouts/{MODEL}")
    r.raise_for_status()
    return r.json()[MODEL]
