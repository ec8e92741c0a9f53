"""Partitioner at real size: time and peak RSS per stage for the zoo's ResNet-50,
MobileNetV2 and BERT-base-like encoder, at few and many cuts, and a re-run with only the
accuracy floor changed (which must reuse the cache).

Each partition runs in its own child process. Its peak RSS is the larger of the kernel's
high-water mark for that process (``wait4`` rusage) and the child's own sampled sum of
its resident memory and that of every cut worker alive at the same moment (the stage
meter), so parallel workers are never reported as the largest single process; the stage
meter also attributes time and peak to each stage. ``--max-memory`` passes a budget to
every run (the printed table names it). ``--baseline DIR`` also runs ``tiersplit partition`` from
another checkout (e.g. the code before a change) for whole-run time and peak RSS.

Usage::

    python -m bench.partition --scale [--models resnet50,mobilenet_v2,bert_base]
                                      [--cuts 4,12] [--baseline /path/to/old/checkout]
                                      [--jobs N] [--max-memory 1.5G] [--no-rerun]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console
from rich.table import Table

from partitioner.stages import fmt_bytes

MODELS = ("resnet50", "mobilenet_v2", "bert_base")
CUTS = (4, 12)
RERUN_FLOOR = 0.98
# goals on a 2-core laptop: (seconds, bytes) for the precision search at the larger cut count
GOALS = {"resnet50": (180, 1.5 * 2**30), "bert_base": (600, 4 * 2**30)}
console = Console(width=int(os.environ.get("COLUMNS", "140")))


@dataclass
class Result:
    model: str
    cuts: int
    label: str
    seconds: float
    peak_rss: int
    rc: int
    cpu_s: float = 0.0
    stages: list[dict] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)
    facts: dict = field(default_factory=dict)
    error: str = ""
    load: float = 0.0  # the machine's 5-minute load average when the run ended
    budget: str = ""  # the --max-memory the run was given ("" for none)


def _wait(cmd: list[str], env: dict[str, str], timeout_s: float
          ) -> tuple[int, float, int, str, float]:
    """Run ``cmd``; (exit code, seconds, peak RSS of the child in bytes, stderr tail, CPU
    seconds). CPU seconds say more than wall time on a machine shared with other work."""
    t0 = time.perf_counter()
    with tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=err)
        deadline = t0 + timeout_s
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if time.perf_counter() > deadline:
                proc.kill()
                pid, status, usage = os.wait4(proc.pid, 0)
                break
            time.sleep(0.2)
        proc.returncode = os.waitstatus_to_exitcode(status)
        err.seek(0)
        tail = err.read().decode(errors="replace").strip().splitlines()[-1:] or [""]
    return (proc.returncode, time.perf_counter() - t0, usage.ru_maxrss * 1024, tail[0][:200],
            usage.ru_utime + usage.ru_stime)


def run_after(model: str, cuts: int, root: Path, cache: Path, label: str, floor: float,
              timeout_s: float, jobs: int | None = None, max_memory: str | None = None
              ) -> Result:
    """This checkout's partition in a child process, with its stage meter."""
    out = root / f"{label}-{model}-{cuts}.json"
    cmd = [sys.executable, "-m", "bench.partition_scale", "--one", model, "--cuts", str(cuts),
           "--out", str(root / "repo"), "--cache", str(cache), "--floor", str(floor),
           "--version", label, "--json", str(out)]
    if jobs is not None:
        cmd += ["--jobs", str(jobs)]
    if max_memory is not None:
        cmd += ["--max-memory", max_memory]
    rc, secs, peak, err, cpu = _wait(cmd, dict(os.environ), timeout_s)
    res = Result(model, cuts, label, secs, peak, rc, cpu, error=err if rc else "",
                 budget=max_memory or "")
    res.load = os.getloadavg()[1]
    if rc == 0 and out.is_file():
        data = json.loads(out.read_text())
        res.stages, res.counts, res.facts = data["stages"], data["counts"], data["facts"]
        # the kernel's high-water mark is per process; with cut workers the sampled sum
        # of the run and its workers is the peak that matters
        res.peak_rss = max(res.peak_rss, int(data.get("peak_rss", 0)))
    return res


def run_baseline(model: str, cuts: int, root: Path, checkout: Path,
                 timeout_s: float) -> Result:
    """``tiersplit partition`` from another checkout: whole-run time and peak RSS only."""
    env = dict(os.environ, PYTHONPATH=str(checkout))
    cmd = [sys.executable, "-m", "tiersplit", "partition", f"zoo:{model}", "--max-cuts",
           str(cuts), "--out", str(root / "baseline"), "--version", f"b{cuts}"]
    rc, secs, peak, err, cpu = _wait(cmd, env, timeout_s)
    return Result(model, cuts, "before", secs, peak, rc, cpu, error=err if rc else "",
                  load=os.getloadavg()[1])


def one(model: str, cuts: int, out: Path, cache: Path, floor: float, version: str,
        json_out: Path, jobs: int | None = None, max_memory: str | None = None) -> int:
    """Child: partition one zoo model and write the stage meter as JSON."""
    import logging

    from partitioner import partition
    from partitioner.memory import parse_size
    from partitioner.stages import Meter

    logging.basicConfig(level=logging.WARNING)
    meter = Meter()
    partition(f"zoo:{model}", None, out, version=version, max_cuts=cuts, progress=False,
              cache_dir=cache, accuracy_floor=floor, meter=meter, jobs=jobs,
              max_memory=parse_size(max_memory) if max_memory else None)
    json_out.write_text(json.dumps({
        "stages": [{"name": s.name, "depth": s.depth, "calls": s.calls, "seconds": s.seconds,
                    "peak_rss": s.peak_rss} for s in meter.stats.values()],
        "counts": dict(meter.counts), "facts": meter.facts, "peak_rss": meter.peak_rss}))
    return 0


def _goal(r: Result) -> str:
    goal = GOALS.get(r.model)
    if goal is None or r.rc != 0 or r.label == "before":
        return ""
    ok = r.cpu_s <= goal[0] and r.peak_rss <= goal[1]  # CPU: the machine may be shared
    return ("[green]met[/green]" if ok else "[red]missed[/red]") + \
        f" (≤{goal[0] / 60:.0f} CPU min, ≤{fmt_bytes(goal[1])})"


def print_results(results: list[Result], stages: bool = True) -> None:
    t = Table(title="partition at real size: whole run (child process)", title_justify="left")
    for col in ("model", "cuts", "run", "jobs", "wall s", "load", "CPU s",
                "peak RSS (all processes)", "budget", "estimate", "calibrations",
                "cache hits", "screened out", "goal"):
        t.add_column(col, justify="left" if col in ("model", "run", "goal") else "right")
    for r in results:
        hits = sum(v for k, v in r.counts.items() if k.startswith("cache hits"))
        est = r.facts.get("estimate")
        t.add_row(r.model, str(r.cuts), r.label + (f" [red]rc {r.rc}[/red]" if r.rc else ""),
                  str(r.facts.get("jobs", "—")), f"{r.seconds:.1f}", f"{r.load:.1f}",
                  f"{r.cpu_s:.1f}",
                  fmt_bytes(r.peak_rss), r.budget or "none", fmt_bytes(est) if est else "—",
                  str(r.counts.get("calibrations", "—")), str(hits) if r.counts else "—",
                  str(r.counts.get("screened out", "—")), _goal(r))
    console.print(t)
    for r in results:
        if r.error:
            console.print(f"[red]{r.model} {r.cuts} {r.label}: {r.error}[/red]")
    for r in results:
        if not r.stages or not stages:
            continue
        s = Table(title=f"{r.model}, {r.cuts} cuts, {r.label}: per stage (nested stages "
                  "indented, their time is inside the outer one)", title_justify="left")
        for col in ("stage", "calls", "seconds", "peak RSS"):
            s.add_column(col, justify="left" if col == "stage" else "right")
        for st in r.stages:
            s.add_row("  " * st["depth"] + st["name"], str(st["calls"]),
                      f"{st['seconds']:.1f}", fmt_bytes(st["peak_rss"]))
        console.print(s)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--cuts", default=",".join(map(str, CUTS)),
                    help="cut counts (max-cuts) to compare")
    ap.add_argument("--baseline", type=Path, default=None,
                    help="another checkout to time too (its PYTHONPATH root)")
    ap.add_argument("--no-rerun", action="store_true",
                    help="skip the re-run with another floor")
    ap.add_argument("--jobs", type=int, default=None,
                    help="cut worker processes (default: auto within the free memory)")
    ap.add_argument("--max-memory", default=None,
                    help="memory budget for every run, e.g. 1.5G (default: none)")
    ap.add_argument("--timeout", type=float, default=1800.0, help="seconds per partition")
    ap.add_argument("--one", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--cache", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--floor", type=float, default=0.99, help=argparse.SUPPRESS)
    ap.add_argument("--version", default="1", help=argparse.SUPPRESS)
    ap.add_argument("--json", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.one:
        return one(args.one, int(args.cuts), args.out, args.cache, args.floor, args.version,
                   args.json, args.jobs, args.max_memory)
    models = [m for m in args.models.split(",") if m]
    cut_counts = [int(c) for c in args.cuts.split(",") if c]
    results: list[Result] = []
    with tempfile.TemporaryDirectory(prefix="tiersplit-scale-") as tmp:
        root = Path(tmp)
        for m in models:
            mine: list[Result] = []
            for n in cut_counts:
                if args.baseline is not None:
                    mine.append(run_baseline(m, n, root, args.baseline, args.timeout))
                cache = root / f"cache-{m}-{n}"
                first = run_after(m, n, root, cache, f"after{n}", 0.99, args.timeout,
                                  args.jobs, args.max_memory)
                first.label = "after"
                mine.append(first)
                if not args.no_rerun and n == cut_counts[0]:
                    again = run_after(m, n, root, cache, f"floor{n}", RERUN_FLOOR,
                                      args.timeout, args.jobs, args.max_memory)
                    again.label = f"re-run, floor {RERUN_FLOOR}"
                    mine.append(again)
                    if first.rc == 0 and again.rc == 0:
                        console.print(f"{m}, {n} cuts: re-run with floor {RERUN_FLOOR} took "
                                      f"{again.seconds:.1f} s = "
                                      f"{again.seconds / first.seconds:.2f} of the first run "
                                      f"(CPU {again.cpu_s / max(first.cpu_s, 1e-9):.2f})")
            print_results(mine)  # as each model finishes: a long run shows results early
            results += mine
    console.print("[bold]all runs[/bold]")
    print_results(results, stages=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
