"""`tiersplit bench`: run the benchmark suites and write one Markdown report."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import typer


def register(app: typer.Typer) -> None:
    """Add ``bench`` to the root app."""

    @app.command("bench")
    def bench(
        quick: bool = typer.Option(False, "--quick", help="Short runs: < 5 min on 2 cores."),
        out: Path = typer.Option(Path("bench/out"), help="Report directory."),
        only: str = typer.Option("", help="Comma-separated suites to run."),
    ) -> None:
        """Run ``python -m bench.run_all`` from a source checkout (benchmarks are not installed)."""
        root = Path(__file__).resolve().parents[2]
        if not (root / "bench" / "run_all.py").exists():
            typer.echo(f"error: {root / 'bench'} not found; run from a source checkout", err=True)
            raise typer.Exit(2)
        argv = [sys.executable, "-m", "bench.run_all", "--out", str(out.resolve())]
        argv += (["--quick"] if quick else []) + (["--only", only] if only else [])
        raise typer.Exit(subprocess.run(argv, cwd=root).returncode)
