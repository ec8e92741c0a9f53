"""`tiersplit demo` end to end: real processes, real sockets, the summary's accounting."""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys
from pathlib import Path

import psutil
import pytest
from rich.console import Console

from tests.support.bundles import cache_env
from tiersplit.demo import (
    AgentRun,
    Demo,
    DemoOptions,
    Sample,
    cascade_line,
    requests_to_move,
    route,
    summary_lines,
)


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


@pytest.mark.integration
@pytest.mark.slow
def test_demo_runs_loses_nothing_and_cleans_up(tmp_path: Path, partition_cache: Path) -> None:
    plot = tmp_path / "demo.png"
    r = subprocess.run(
        [sys.executable, "-m", "tiersplit.cli", "demo", "--duration", "24",
         "--workdir", str(tmp_path / "work"), "--plot", str(plot)],
        capture_output=True, text=True, timeout=900,
        # A pipe on an 80-column console: what a log file or a small terminal gets.
        # The session partition cache as the demo's default one: a fresh workdir still
        # partitions, reusing what an identical build in this session computed.
        env=dict(os.environ, COLUMNS="80", **cache_env(partition_cache)),
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
    # Every figure is readable: no cell cut to "…", tables within 80 columns, and the
    # end-of-run figures as plain lines, one per agent.
    assert "…" not in r.stdout, r.stdout[-4000:]
    plain = ("AGENT ", "CUT-MOVE ", "CASCADE ", "LOCAL-AFTER-KILL ", "SUMMARY ", "PIDS ")
    wide = [ln for ln in r.stdout.splitlines()
            if len(ln.rstrip()) > 80 and not ln.startswith(plain)]
    assert not wide, wide
    agents = re.findall(r"^AGENT (edge-\w+) link=(\w+) cut=(\S+) e2e_ms=([\d.]+) ", r.stdout,
                        re.MULTILINE)
    assert sorted(a[1] for a in agents) == ["3g", "4g", "wifi"], r.stdout[-4000:]
    # how many requests the collapsed agent needed to move its cut, and the cascade
    assert re.search(r"^CUT-MOVE agent=edge-\w+ before=\S+ after=\S+ requests_to_move=",
                     r.stdout, re.MULTILINE), r.stdout[-4000:]
    casc = re.search(r"^CASCADE local=(\d+) split=(\d+) share=\S+ threshold=\S+ agents=",
                     r.stdout, re.MULTILINE)
    assert casc, r.stdout[-4000:]


def _agent(name: str, profile: str) -> AgentRun:
    a = AgentRun(name, profile, service=None, emulator=None, url="")  # type: ignore[arg-type]
    for i in range(30):
        forced = (None, None, "edge", "cloud")[i % 4]
        path, cut = (("remote", "k8") if forced is None else
                     ("device", "edge") if forced == "edge" else ("remote", "cloud"))
        a.samples.append(Sample(float(i), forced, path, cut, 51.4 + i, 33.5, 12.2, 0.8, 16752))
        a.sent += 1
        a.ok += 1
        if forced is None:
            a.paths[path] += 1
    a.paths["fallback"] += 1
    return a


@pytest.mark.parametrize("width", [80, 200])
def test_tables_keep_every_figure_whole_at_any_width(width: int) -> None:
    demo = Demo(DemoOptions(), Console(width=width, file=io.StringIO()))
    demo.agents = [_agent("edge-3g", "3g"), _agent("edge-wifi", "wifi")]
    out = io.StringIO()
    Console(width=width, file=out, force_terminal=False).print(demo.table("phase 1"))
    text = out.getvalue()
    assert "…" not in text
    assert max(len(ln.rstrip()) for ln in text.splitlines()) <= width
    for figure in ("edge-wifi", "k8", "16752", "65.9", "65.4", "66.4", "fallback:1 remote:16"):
        assert figure in text, text
    # 80 columns: two tables (latency; requests); wide: one with every column.
    assert ("requests" in text) == (width < 150)
    assert ("all-cloud ms" in text) == (width >= 150)


def test_summary_lines_are_plain_and_complete() -> None:
    lines = summary_lines([_agent("edge-wifi", "wifi")])
    assert lines == ["AGENT edge-wifi link=wifi cut=k8 e2e_ms=65.9 all_edge_ms=65.4 "
                     "all_cloud_ms=66.4 bytes=16752 paths=fallback:1,remote:16 sent=30 "
                     "ok=30 err=0"]


def test_cascade_and_reaction_lines() -> None:
    a = _agent("edge-3g", "3g")
    a.cascade.update({"local": 6, "split": 2})
    line = cascade_line([a, _agent("edge-wifi", "wifi")], 0.8123)
    assert line == "CASCADE local=6 split=2 share=75% threshold=0.812 agents=edge-3g"
    assert cascade_line([], None) == "CASCADE local=0 split=0 share=- threshold=off agents=none"
    # policy samples at t = 0, 1, 4, 5, ... 28, 29 (all k8): 14 after t=3, then the move
    assert requests_to_move(a, 3.0, "k8") is None
    a.samples.append(Sample(40.0, None, "device", "edge", 30.0, 30.0, 0.0, 0.0, 0))
    assert requests_to_move(a, 3.0, "k8") == 15


@pytest.mark.parametrize(("params", "expected"), [
    ({"path": "remote", "cut": "k3"}, ("remote", "k3")),
    ({"path": "device", "cut": "edge"}, ("device", "edge")),
    ({"path": "fallback", "cut": "k3"}, ("fallback", "k3")),
    # agents from before path and cut were split: path carried the cut id
    ({"path": "k3"}, ("remote", "k3")),
    ({"path": "edge"}, ("device", "edge")),
    ({"path": "local"}, ("fallback", "edge")),
])
def test_route_reads_both_response_forms(params: dict, expected: tuple[str, str]) -> None:
    assert route(params) == expected
