"""Model updates that go wrong: the agent keeps serving, says why, and recovers.

- the core is killed in the middle of a download: the agent keeps serving v1, and after
  the core restarts (its plan persisted) the download resumes where it stopped;
- a file arrives corrupted: refused by its signed hash, never installed, retried;
- the device's disk is full (a 64 KiB tmpfs as the update state directory): v1 keeps
  serving and ``status`` and the metrics say ``disk``;
- a v2 whose cloud tails fail: the canary's error rate crosses the plan's threshold and
  the core rolls the fleet back by itself.
"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest

from contract.bundle import MANIFEST, SIGNATURE
from tests.reliability.fleet import Ledger, LoadGen, Metrics, wait_until
from tests.rollout.conftest import MODEL
from tests.rollout.fleetops import start_core, start_fleet, wait_versions

pytestmark = [pytest.mark.integration]

_EDGE = ("full.int8.onnx", "head-k2.int8.onnx", "head-k4.int8.onnx", "head-k6.int8.onnx",
         "head-k8.int8.onnx", MANIFEST, SIGNATURE)


def _edge_bytes(path: Path) -> int:
    return sum((path / f).stat().st_size for f in _EDGE)


def _failures(agent, reason: str) -> float:
    m = Metrics(agent.metrics_text().decode())
    return m.total("tiersplit_edge_update_failures_total", reason=reason)


def _rollout(core, version: str = "2", **q: str) -> dict:
    # Every fleet here starts on v1: say so, rather than race the agents' first report
    # (the core would otherwise infer the stable version from what agents reported).
    query = "&".join(f"{k}={v}" for k, v in {"canary": "100%", "stable": "1", **q}.items())
    return core.admin(f"/v1/rollouts/{MODEL}/versions/{version}?{query}")


def _flip(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x10
    path.write_bytes(bytes(data))


def _fleet_on_v1(tmp_path: Path, repo, fleet, clouds, make_agent, n: int = 1,
                 broken: bool = False, **update):  # type: ignore[no-untyped-def]
    """A copy of the repository served by a fresh core (registered for teardown) and
    ``n`` agents on v1 behind the link emulator: (root, core, agents, emulator)."""
    root = repo.copy(tmp_path / "repo", broken=broken)
    core = start_core(tmp_path, root, repo.public_key, fleet)
    clouds.append(core)
    agents, emu = start_fleet(make_agent, fleet, core, repo.path("1"), repo.public_key,
                              tmp_path, n=n, **update)
    return root, core, agents, emu


def test_core_killed_mid_download_resumes_after_restart(tmp_path, repo, samples, fleet,
                                                        clouds, make_agent) -> None:
    root, core, (agent,), emu = _fleet_on_v1(tmp_path, repo, fleet, clouds, make_agent,
                                             max_rate_bytes_per_s=40_000, chunk_bytes=8192)
    ledger = Ledger()
    load = LoadGen(ledger, [agent], samples.inputs, samples.check, threads=1).start()
    try:
        _rollout(core)
        dl = agent.updater.downloader
        assert wait_until(lambda: dl.progress.done_bytes > 60_000, 60)
        core.kill()
        got = dl.progress.done_bytes
        assert agent.current_bundle().version == "1"
        assert not dl.installed(MODEL, "2").exists()
        n = len(ledger)
        assert load.wait_for(n + 10)  # still serving (on the device) with the core gone
        core2 = core.restart()
        clouds.append(core2)
        wait_versions([agent], ["2"], timeout=120)
        assert load.wait_for(len(ledger) + 10)
    finally:
        load.stop()
        emu.stop()
    ledger.settle()
    # resumed, not restarted: every byte of the version crossed the link exactly once
    m = Metrics(agent.metrics_text().decode())
    assert m.total("tiersplit_edge_update_bytes_total") == _edge_bytes(root / MODEL / "2")
    assert got < _edge_bytes(root / MODEL / "2")
    assert _failures(agent, "transport") >= 1
    # the plan survived the restart, and the restarted core serves its target version
    plan = core2.admin_call("GET", f"/v1/rollouts/{MODEL}").json()[MODEL]["plan"]
    assert plan["state"] == "promoted" and plan["target"] == "2"
    assert any(r.version == "2" and r.path == "remote" for r in ledger.results.values())
    assert core2.metrics().total("tiersplit_cloud_rejected_total",
                                 reason="version_mismatch") == 0


def test_corrupted_file_refused_never_installed_then_retried(tmp_path, repo, samples, fleet,
                                                             clouds, make_agent) -> None:
    root, core, (agent,), emu = _fleet_on_v1(tmp_path, repo, fleet, clouds, make_agent)
    ledger = Ledger()
    load = LoadGen(ledger, [agent], samples.inputs, samples.check, threads=1).start()
    head = root / MODEL / "2" / "head-k6.int8.onnx"
    try:
        core.admin(f"/v1/models/{MODEL}/versions/2/load")  # verified by the core first
        _flip(head)  # then one edge file goes bad on its way to the agent
        _rollout(core)
        assert wait_until(lambda: _failures(agent, "verify") >= 2, 60)
        st = agent.status()["update"]
        assert st["current"] == "1" and st["error"].startswith("verify")
        dl = agent.updater.downloader
        assert not dl.installed(MODEL, "2").exists()
        staged = dl.root / "staging" / MODEL / "2"
        assert not (staged / head.name).exists()
        assert not (staged / (head.name + ".part")).exists() or \
            (staged / (head.name + ".part")).stat().st_size < head.stat().st_size
        # the core hears about it in the agent's reports
        agents = core.admin_call("GET", f"/v1/rollouts/{MODEL}").json()[MODEL]["agents"]
        assert agents["a0"]["update_error"].startswith("verify")
        _flip(head)  # the file is good again: the next retry installs it
        wait_versions([agent], ["2"], timeout=90)
        assert load.wait_for(len(ledger) + 10)
    finally:
        load.stop()
        emu.stop()
    ledger.settle()
    assert agent.status()["update"]["error"] == ""


@pytest.fixture
def tiny_disk(tmp_path: Path):
    """A 64 KiB tmpfs: smaller than one version's edge files."""
    mnt = tmp_path / "state-a0"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mnt)],
                       capture_output=True, text=True, check=False)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs to fill (needs root): {r.stderr.strip()}")
    yield mnt
    for _ in range(20):
        if subprocess.run(["umount", str(mnt)], capture_output=True,
                          check=False).returncode == 0:
            return
        time.sleep(0.25)


def test_full_disk_keeps_serving_v1_and_says_so(tmp_path, tiny_disk, repo, samples, fleet,
                                                clouds, make_agent) -> None:
    _, core, (agent,), emu = _fleet_on_v1(tmp_path, repo, fleet, clouds, make_agent)
    assert agent.config.update.state_dir == tiny_disk
    ledger = Ledger()
    load = LoadGen(ledger, [agent], samples.inputs, samples.check, threads=1).start()
    try:
        _rollout(core)
        assert wait_until(lambda: _failures(agent, "disk") >= 1, 60)
        n = len(ledger)
        assert load.wait_for(n + 20)
        st = agent.status()["update"]
        assert st["current"] == "1" and st["error"].startswith("disk")
        agents = core.admin_call("GET", f"/v1/rollouts/{MODEL}").json()[MODEL]["agents"]
        assert wait_until(lambda: core.admin_call("GET", f"/v1/rollouts/{MODEL}").json()
                          [MODEL]["agents"]["a0"]["update_error"].startswith("disk"), 10), \
            agents
    finally:
        load.stop()
        emu.stop()
        agent.stop(grace=5)
    ledger.settle()
    assert {r.version for r in ledger.results.values()} == {"1"}


def test_canary_answering_errors_is_rolled_back_automatically(tmp_path, repo, samples, fleet,
                                                              clouds, make_agent) -> None:
    # The canary's breaker sends most of its v2 requests to the device after the first
    # failures, so its cloud answers are sparse: the stats window is long enough that a
    # loaded machine still sees min_answers of them in it.
    root = repo.copy(tmp_path / "repo", broken=True)
    core = start_core(tmp_path, root, repo.public_key, fleet,
                      rollout={"window_s": 30.0})
    clouds.append(core)
    agents, emu = start_fleet(make_agent, fleet, core, repo.path("1"), repo.public_key,
                              tmp_path, n=2)
    ledger = Ledger()
    load = LoadGen(ledger, agents, samples.inputs, samples.check, threads=2).start()
    try:
        assert load.wait_for(20)
        assert wait_until(lambda: len(core.admin_call("GET", f"/v1/rollouts/{MODEL}").json()
                                      [MODEL]["agents"]) == 2, 30)
        _rollout(core, canary="1", max_error_rate="0.05", min_requests="10")
        assert wait_until(lambda: core.admin_call("GET", f"/v1/rollouts/{MODEL}").json()
                          [MODEL]["plan"]["state"] == "rolled_back", 90), \
            json.dumps(core.admin_call("GET", f"/v1/rollouts/{MODEL}").json())
        wait_versions(agents, ["1", "1"])
        assert load.wait_for(len(ledger) + 20)
    finally:
        load.stop()
        emu.stop()
    ledger.settle()  # the canary's failed cloud attempts were finished on the device
    plan = core.admin_call("GET", f"/v1/rollouts/{MODEL}").json()[MODEL]["plan"]
    assert plan["reason"].startswith("automatic rollback: error rate")
    assert core.metrics().total("tiersplit_cloud_rollout_state", model=MODEL) == 4
    v2 = [r for r in ledger.results.values() if r.version == "2"]
    assert v2 and all(r.path != "remote" for r in v2)  # v2's tails never answered
