"""`tiersplit fleet ...`: move the fleet to a new model version, both tiers at once.

- ``fleet rollout MODEL VERSION --canary 10%``: start a plan; the core loads VERSION and
  tells the canary agents (a share chosen by a stable hash of their ids, a count like
  ``--canary 1``, or ``--labels``) to fetch, verify and switch to it.
- ``fleet promote|pause|resume|rollback MODEL``: move the plan on.
- ``fleet status [MODEL]``: the plan and, per version, agents, request rate, error rate,
  p50/p99 from the agents' reports.

Clients of the core's admin API (``--admin``), authenticated like ``tiersplit cloud
models``: ``--token-file`` or ``$TIERSPLIT_ADMIN_TOKEN``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import typer

from tiersplit.cli.cloud import _ADMIN, _TOKEN, AdminError, _admin
from tiersplit.cli.common import clean_errors, console

__all__ = ["register"]


def _print_status(body: dict[str, Any]) -> None:
    from rich.table import Table

    if not body:
        console.print("no rollout plans")
    for model, st in body.items():
        plan = st.get("plan")
        if plan is None:
            console.print(f"[bold]{model}[/]: no plan")
        else:
            th = plan["thresholds"]
            console.print(
                f"[bold]{model}[/]: {plan['stable']} -> {plan['target']}  state "
                f"[bold]{plan['state']}[/]  canary {plan['canary'] or '-'}  labels "
                f"{','.join(plan['labels']) or '-'}  auto-rollback above "
                f"{th['max_error_rate']:.1%} errors or {th['max_p99_ratio']}x p99"
                + (f"  ({plan['reason']})" if plan.get("reason") else ""))
        t = Table("version", "agents", "req/s", "errors", "p50 ms", "p99 ms",
                  title=f"{model}: last window")
        for version, v in sorted(st.get("versions", {}).items()):
            t.add_row(version, str(len(v["agents"])), f"{v['rate_per_s']:.1f}",
                      f"{v['error_rate']:.1%}", f"{v['p50_ms']:.1f}", f"{v['p99_ms']:.1f}")
        console.print(t)
        a = Table("agent", "version", "staged", "previous", "update error")
        for agent, info in st.get("agents", {}).items():
            a.add_row(agent, info["version"], info["staged"] or "-", info["previous"] or "-",
                      info["update_error"] or "")
        console.print(a)


def register(app: typer.Typer) -> None:
    """Add ``fleet`` and its sub-commands to the root app."""
    fleet = typer.Typer(help="Roll a model version out to the fleet (canary, promote, "
                             "pause, rollback, status).", no_args_is_help=True)
    app.add_typer(fleet, name="fleet")

    @fleet.command("rollout")
    def rollout(
        model: str = typer.Argument(...), version: str = typer.Argument(...),
        canary: str = typer.Option("", "--canary",
                                   help="Share of agents (10%) or a count (1) to go first."),
        labels: str = typer.Option("", "--labels",
                                   help="Comma-separated agent labels to go first."),
        stable: str = typer.Option("", "--stable",
                                   help="The version the rest keep (default: what most "
                                        "agents run)."),
        max_error_rate: float = typer.Option(0.05, help="Auto-rollback above this error "
                                                        "rate of the canary."),
        max_p99_ratio: float = typer.Option(2.0, help="Auto-rollback when the canary's p99 "
                                                      "exceeds this x the stable version's."),
        min_requests: int = typer.Option(20, help="Requests the canary serves before the "
                                                  "thresholds apply."),
        max_parallel: int = typer.Option(0, help="Agents switching at once (0: no limit); "
                                                 "rollbacks are never limited."),
        admin: str = _ADMIN, token_file: Path = _TOKEN,
    ) -> None:
        """Start rolling MODEL out to VERSION (the canary first)."""
        q = {"canary": canary, "labels": labels, "max_error_rate": max_error_rate,
             "max_p99_ratio": max_p99_ratio, "min_requests": min_requests,
             "max_parallel": max_parallel}
        if stable:
            q["stable"] = stable
        with clean_errors(AdminError, OSError):
            body = _admin(admin, "POST", f"/v1/rollouts/{model}/versions/{version}?"
                          + urlencode(q), token_file)
        console.print(f"{model}: {body['stable']} -> {body['target']} ({body['state']})")

    def _move(action: str, doc: str) -> None:
        @fleet.command(action)
        def cmd(model: str = typer.Argument(...), admin: str = _ADMIN,
                token_file: Path = _TOKEN) -> None:
            with clean_errors(AdminError, OSError):
                body = _admin(admin, "POST", f"/v1/rollouts/{model}/{action}", token_file)
            console.print(f"{model}: {body['stable']} -> {body['target']} ({body['state']})")

        cmd.__doc__ = doc

    _move("promote", "Every agent runs the target version.")
    _move("pause", "Agents keep what they run; nothing new is fetched.")
    _move("resume", "Back to canary after a pause.")
    _move("rollback", "Every agent runs the stable version again (kept on disk: no download).")

    @fleet.command("status")
    def status(model: str = typer.Argument(None), admin: str = _ADMIN,
               token_file: Path = _TOKEN,
               as_json: bool = typer.Option(False, "--json")) -> None:
        """Plans and per-version agents, request rates, error rates, p50/p99."""
        with clean_errors(AdminError, OSError):
            body = _admin(admin, "GET", f"/v1/rollouts/{model}" if model else "/v1/rollouts",
                          token_file)
        if as_json:
            typer.echo(json.dumps(body, indent=2))
        else:
            _print_status(body)
