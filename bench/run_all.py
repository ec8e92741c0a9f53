"""Run every benchmark suite and write one Markdown report.

Each suite is its own script (``bench/<suite>.py``) that prints rich tables of
side-by-side figures measured in the same run; this runner calls them in turn, records
the machine they ran on, embeds their tables and any PNG plots they wrote into
``<out>/REPORT.md``. ``--quick`` runs each suite in a short form (:data:`QUICK_ARGS`;
the whole run stays under 5 minutes on 2 cores); without it every suite runs in full
(the soak alone is 10 minutes).

Usage::

    python -m bench.run_all [--quick] [--out bench/out] [--only partition,cloud]
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

SUITES = ["partition", "transport", "cloud", "edge", "placement", "adapt", "soak", "rollout"]
#: Each suite's short form: fewer repetitions, and a subset of its matrix where the full
#: one (models x links x edge speeds) would not fit the 5-minute budget.
QUICK_ARGS: dict[str, list[str]] = {
    "partition": ["--quick"],
    "transport": ["--quick"],
    "cloud": ["--quick"],
    "edge": ["--quick", "--model", "zoo:mobilenet_like", "--profiles", "3g,4g,wifi"],
    "placement": ["--quick", "--models", "mobilenet_like,transformer_encoder",
                  "--image-size", "128", "--links", "3g,wifi"],
    "adapt": ["--quick"],
    "soak": ["--minutes", "0.5", "--warmup-s", "10"],
    "rollout": ["--quick"],
}
HERE = Path(__file__).resolve().parent


def machine_description() -> str:
    try:
        import onnxruntime as ort

        ort_v = ort.__version__
    except ImportError:  # pragma: no cover - dev extra always has it
        ort_v = "n/a"
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = ""
    try:
        kb = int(Path("/proc/meminfo").read_text().split()[1])
        mem = f", {kb / 2**20:.0f} GiB RAM"
    except (OSError, ValueError, IndexError):
        pass
    return (f"{cpu}, {os.cpu_count()} cores{mem}; Linux {platform.release()}; "
            f"Python {platform.python_version()}; onnxruntime {ort_v}")


def run_suite(name: str, quick: bool, out: Path, timeout: float) -> tuple[int, str, float]:
    script = HERE / f"{name}.py"
    if not script.exists():
        return 127, f"(no {script.name})", 0.0
    plot_dir = out / name
    plot_dir.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", f"bench.{name}", *(QUICK_ARGS[name] if quick else [])]
    env = dict(os.environ, TIERSPLIT_BENCH_OUT=str(plot_dir), COLUMNS="140",
               PYTHONUNBUFFERED="1")
    t0 = time.monotonic()
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env,
                           cwd=HERE.parent)
        code, text = r.returncode, r.stdout + (f"\n[stderr]\n{r.stderr[-3000:]}"
                                               if r.returncode else "")
    except subprocess.TimeoutExpired as e:
        out_text = e.stdout.decode() if isinstance(e.stdout, bytes) else (e.stdout or "")
        code, text = 124, out_text + f"\n(timed out after {timeout:.0f} s)"
    return code, text, time.monotonic() - t0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="short runs (< 5 min in all)")
    ap.add_argument("--out", type=Path, default=HERE / "out")
    ap.add_argument("--only", default="", help="comma-separated suites: " + ",".join(SUITES))
    ap.add_argument("--timeout", type=float, default=0,
                    help="seconds per suite (default 120 quick, 1800 full)")
    args = ap.parse_args(argv)
    suites = [s for s in args.only.split(",") if s] or SUITES
    unknown = sorted(set(suites) - set(SUITES))
    if unknown:
        ap.error(f"unknown suites {unknown}; choose from {SUITES}")
    timeout = args.timeout or (240 if args.quick else 1800)
    out: Path = args.out
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    lines = [
        "# tiersplit benchmark report",
        "",
        f"- date: {dt.datetime.now(dt.UTC).isoformat(timespec='seconds')}",
        f"- machine: {machine_description()}",
        f"- command: `python -m bench.run_all{' --quick' if args.quick else ''}`",
        *(["- quick forms: " + "; ".join(f"`{s}.py {' '.join(a)}`"
                                         for s, a in QUICK_ARGS.items() if s in suites)]
          if args.quick else []),
        "",
        "Every figure below is a ratio or a side-by-side comparison measured in the same run.",
        "",
    ]
    failed = []
    for name in suites:
        print(f"== {name}", flush=True)
        code, text, secs = run_suite(name, args.quick, out, timeout)
        print(text, flush=True)
        status = "ok" if code == 0 else f"FAILED (exit {code})"
        if code:
            failed.append(name)
        lines += [f"## {name} — {status}, {secs:.0f} s", "", "```", text.rstrip(), "```", ""]
        for png in sorted((out / name).glob("*.png")):
            lines += [f"![{png.stem}]({png.relative_to(out)})", ""]
    report = out / "REPORT.md"
    report.write_text("\n".join(lines))
    print(f"report: {report}")
    if failed:
        print(f"failed suites: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
