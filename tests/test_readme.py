"""The README's generated configuration reference matches the config models."""

from __future__ import annotations

from pathlib import Path

from tiersplit.config_reference import update_readme

README = Path(__file__).resolve().parent.parent / "README.md"


def test_config_reference_is_current() -> None:
    assert update_readme(README, check=True), (
        "README config reference is stale: run python -m tiersplit.config_reference --write")


def test_readme_shows_the_two_commands() -> None:
    text = README.read_text()
    assert "tiersplit demo" in text
    assert "bash scripts/test.sh" in text
    ci = (README.parent / ".ci" / "run").read_text()
    assert "scripts/test.sh" in ci and "scripts/setup.sh" in ci
