"""`tiersplit` sub-commands for: link (emulator)."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    """Add this area's commands to the root app."""
