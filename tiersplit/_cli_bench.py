"""`tiersplit bench`: run the benchmark suites and write one Markdown report."""

from __future__ import annotations

import runpy
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
        """Run bench/run_all.py from a source checkout (benchmarks are not installed)."""
        script = Path(__file__).resolve().parent.parent / "bench" / "run_all.py"
        if not script.exists():
            typer.echo(f"error: {script} not found; run from a source checkout", err=True)
            raise typer.Exit(2)
        argv = [str(script), "--out", str(out)] + (["--quick"] if quick else []) + \
            (["--only", only] if only else [])
        sys.argv = argv
        try:
            runpy.run_path(str(script), run_name="__main__")
        except SystemExit as e:
            raise typer.Exit(int(e.code or 0)) from None
