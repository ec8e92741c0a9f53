"""`tiersplit demo` end to end: real processes, real sockets, the summary's accounting."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def test_demo_runs_loses_nothing_and_cleans_up(tmp_path: Path) -> None:
    plot = tmp_path / "demo.png"
    r = subprocess.run(
        [sys.executable, "-m", "tiersplit.cli", "demo", "--duration", "24",
         "--workdir", str(tmp_path / "work"), "--plot", str(plot)],
        capture_output=True, text=True, timeout=900,
        env=dict(os.environ, COLUMNS="200"),
    )
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-6000:]
    m = re.search(r"SUMMARY sent=(\d+) answered=(\d+) ok=(\d+) errors=(\d+) lost=(\d+)", out)
    assert m, out[-4000:]
    sent, answered, ok, errors, lost = map(int, m.groups())
    assert sent > 0 and sent == answered == ok + errors
    assert lost == 0
    assert errors == 0, out[-4000:]
    # The cloud core was killed midway: later requests finished on the devices.
    local = re.search(r"LOCAL-AFTER-KILL (\d+)", out)
    assert local and int(local.group(1)) > 0, out[-4000:]
    pids = re.search(r"PIDS ([\d,]+) all_stopped=(\w+)", out)
    assert pids, out[-4000:]
    assert pids.group(2) == "True"
    assert not [p for p in map(int, pids.group(1).split(",")) if _alive(p)]
    assert plot.exists() and plot.stat().st_size > 10_000
