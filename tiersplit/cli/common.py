"""Helpers shared by the sub-command modules: one-line errors and exit codes."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import typer
from rich.console import Console

console = Console()
err_console = Console(stderr=True)


@contextmanager
def clean_errors(*kinds: type[BaseException]) -> Iterator[None]:
    """Turn expected failures into one red line on stderr and exit code 2.

    Only the kinds named (the packages' typed errors, ValueError for bad arguments) and
    the shared contract's errors (a refused bundle, a bad config) are shortened; anything
    else is a bug and keeps its traceback.
    """
    from contract.errors import BundleError, ConfigError

    try:
        yield
    except (*kinds, BundleError, ConfigError) as e:
        err_console.print(f"[red]error:[/red] {e}", markup=True, highlight=False, soft_wrap=True)
        raise typer.Exit(2) from e

