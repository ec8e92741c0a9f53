"""Shared steps of the rollout tests: a core with its plan file, agents with update
state behind one link emulator, the ``tiersplit fleet`` CLI, and waiting for versions."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

from tests.reliability.fleet import (
    CloudProc,
    FleetKeys,
    agent_config,
    cloud_doc,
    start_cloud,
    wait_until,
)
from tests.rollout.conftest import MODEL
from tiersplit.devtools.services import tiersplit_cmd
from transport.linkemu import LinkEmulator, LinkProfile

__all__ = ["fleet_cli", "start_core", "start_fleet", "versions", "wait_versions"]


def start_core(work: Path, repo_root: Path, public_key: Path, fleet: FleetKeys,
               **over: Any) -> CloudProc:
    """``tiersplit cloud serve`` with v1 loaded, its plans in ``work/rollouts.json``."""
    rollout = {"state_file": str(work / "rollouts.json"), "window_s": 5.0,
               **over.pop("rollout", {})}
    doc = cloud_doc(repo_root, public_key, fleet, [{"name": MODEL, "versions": ["1"]}],
                    rollout=rollout, **over)
    return start_cloud(work, doc)


def start_fleet(make_agent: Any, fleet: FleetKeys, core: CloudProc, bundle: Path,
                public_key: Path, work: Path, n: int = 4, profile: LinkProfile | None = None,
                **update: Any) -> tuple[list[Any], LinkEmulator]:
    """``n`` agents (a0..) running ``bundle``, connected through one link emulator."""
    emu = LinkEmulator(("127.0.0.1", core.port),
                       profile or LinkProfile.symmetric(200e6, 2.0), seed=3).start()
    agents = []
    for i in range(n):
        aid = f"a{i}"
        link = fleet.zmq_link(aid, f"tcp://127.0.0.1:{emu.port}")
        cfg = agent_config(aid, bundle, public_key, {"cloud": link},
                           update={"state_dir": str(work / f"state-{aid}"),
                                   "report_interval_s": 0.3, "retry_s": 0.5, **update})
        agents.append(make_agent(cfg))
    for a in agents:
        assert a.wait_connected(30), f"{a.config.agent_id} did not connect"
    return agents, emu


def fleet_cli(core: CloudProc, *args: str) -> subprocess.CompletedProcess[str]:
    """``tiersplit fleet ARGS --admin <core>`` with the core's token in the environment."""
    token = Path(core.doc["admin"]["token_file"]).read_text().strip()
    env = {**os.environ, "TIERSPLIT_ADMIN_TOKEN": token}
    return subprocess.run(tiersplit_cmd("fleet", *args, "--admin", core.admin_url), env=env,
                          capture_output=True, text=True, timeout=120, check=False)


def versions(agents: list[Any]) -> list[str]:
    return [a.current_bundle().version for a in agents]


def wait_versions(agents: list[Any], want: list[str], timeout: float = 90.0) -> None:
    assert wait_until(lambda: versions(agents) == want, timeout, step=0.1), \
        f"agents run {versions(agents)}, expected {want}"
