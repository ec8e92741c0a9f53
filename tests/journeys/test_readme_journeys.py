"""Every command of the README's journeys runs, in order, in a copy of the repository.

The README is the test's script: a command added, changed or broken there is run, or
fails, here. Real processes on loopback (free ports), a real partition of the journeys'
small model, the real agent answering a real KServe v2 client.
"""

from __future__ import annotations

from pathlib import Path

import psutil
import pytest

from tests.journeys.readme import PortMap, journey_commands
from tests.journeys.runner import JourneyRunner, copy_repository
from tests.support.bundles import cache_env

pytestmark = [pytest.mark.integration, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def test_every_journey_command_runs(tmp_path: Path, partition_cache: Path) -> None:
    commands = journey_commands((REPO / "README.md").read_text())
    work = copy_repository(REPO, tmp_path / "repo")
    ports = PortMap.for_configs(work / "configs")
    ports.rewrite_configs(work / "configs")
    runner = JourneyRunner(work, tmp_path / "root", ports)
    # `tiersplit partition`'s default cache is the session one (not the user's home)
    runner.env.update(cache_env(partition_cache))
    try:
        for cmd in commands:
            runner.run(cmd)
    finally:
        runner.close()
        print(runner.timing_table())  # shown with -rP or on failure: where the time goes
    # The story reaches a running agent that an application calls.
    assert [c.words()[:3] for c in commands if c.is_service] == [
        ["tiersplit", "cloud", "serve"], ["tiersplit", "edge", "run"]]
    assert any("tritonclient" in c.text for c in commands)
    assert len(runner.outputs) == len(runner.timings) == len(commands)
    assert not [p for p in runner.pids if _alive(p)], "a service outlived the test"
