"""`tiersplit edge ...`: run the agent, install it as a service, ask it for its status."""

from __future__ import annotations

import json
import signal
import sys
import threading
from pathlib import Path

import typer

from tiersplit.cli.common import clean_errors, console

edge_app = typer.Typer(help="The edge agent: local inference API, split placement.",
                       no_args_is_help=True)


def _errors():
    from contract.errors import BundleError
    from edge_agent.errors import EdgeError
    from transport.errors import TransportError

    return clean_errors(EdgeError, BundleError, TransportError, ValueError)


@edge_app.command("run")
def run(
    config: Path = typer.Option(..., "--config", "-c", help="edge.yaml"),
    port: int | None = typer.Option(None, help="Override api.port (0 = any free port)."),
) -> None:
    """Serve the local KServe v2 API until SIGTERM/SIGINT; prints `READY http=...`
    (and `grpc=host:port` when api.grpc_port is set)."""
    with _errors():
        from edge_agent import EdgeAgent, load_config

        cfg = load_config(config)
        if port is not None:
            cfg = cfg.model_copy(update={"api": cfg.api.model_copy(update={"port": port})})
        agent = EdgeAgent(cfg)
        stop = threading.Event()

        def _on_signal(signum: int, _frame: object) -> None:
            stop.set()

        signal.signal(signal.SIGTERM, _on_signal)
        signal.signal(signal.SIGINT, _on_signal)
        agent.start()
    b = agent.runtime.bundle if agent.runtime else None
    endpoints = ",".join(agent.client.endpoint_status()) if agent.client else ""
    print(f"READY http={agent.http_url} agent={cfg.agent_id} "
          f"model={b.name if b else '?'} version={b.version if b else '?'} "
          f"endpoints={endpoints or '-'}"
          + (f" grpc={agent.grpc_url}" if agent.grpc_url else ""), flush=True)
    try:
        while not stop.wait(0.5):
            pass
    finally:
        agent.stop()
    print("STOPPED", flush=True)


@edge_app.command("install")
def install(
    config: Path = typer.Option(..., "--config", "-c", help="edge.yaml to install"),
    prefix: Path = typer.Option(Path("/"), help="Root to install under (a temp dir to try)."),
    user: str = typer.Option("tiersplit", help="Unprivileged user the service runs as."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print what would be written."),
) -> None:
    """Write the systemd unit, config, keys (0600) and bundle under --prefix."""
    with _errors():
        from edge_agent.install import SERVICE_NAME, apply_plan, plan_install

        plan = plan_install(config, user=user)
        if dry_run:
            console.print(f"[bold]would write under {prefix}:[/bold]")
            for line in plan.describe():
                console.print("  " + line, highlight=False)
            console.print(f"\n[bold]{SERVICE_NAME}:[/bold]")
            console.print(plan.unit, highlight=False, markup=False)
            return
        written = apply_plan(plan, prefix)
    console.print(f"wrote {len(written)} files under {prefix}")
    # a real install (--prefix / as root) has created the service user if it was missing
    console.print(f"next: systemctl daemon-reload; systemctl enable --now {SERVICE_NAME} "
                  f"(runs as {user})", highlight=False)


@edge_app.command("status")
def status(
    url: str = typer.Option("http://127.0.0.1:8000", help="The agent's API URL."),
    token_file: Path | None = typer.Option(None, help="Bearer token file, if the API has one."),
    as_json: bool = typer.Option(False, "--json", help="Print the raw JSON."),
) -> None:
    """Bundle/version, endpoints, estimates, current cut and counts by path."""
    import urllib.error
    import urllib.request

    req = urllib.request.Request(url.rstrip("/") + "/status")
    if token_file is not None:
        req.add_header("Authorization", f"Bearer {token_file.read_text().strip()}")
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            st = json.loads(r.read())
    except (urllib.error.URLError, OSError, ValueError) as e:
        from tiersplit.cli.common import err_console

        err_console.print(f"[red]error:[/red] cannot read {url}/status: {e}")
        raise typer.Exit(2) from e
    if as_json:
        sys.stdout.write(json.dumps(st, indent=2) + "\n")
        return
    _print_status(st)


def _print_status(st: dict) -> None:
    from rich.table import Table

    b = st.get("bundle", {})
    console.print(f"[bold]{st.get('agent_id')}[/bold] {st.get('state')}  bundle "
                  f"{b.get('model')} v{b.get('version')} ({str(b.get('digest', ''))[:12]}…, "
                  f"{'signed' if b.get('signed') else 'UNSIGNED'})  current cut "
                  f"[bold]{st.get('current_cut')}[/bold]", highlight=False)
    upd = st.get("update")
    if upd:
        console.print(f"versions: current {upd.get('current') or '-'}, staged "
                      f"{upd.get('staged') or '-'}, previous {upd.get('previous') or '-'}, "
                      f"kept {','.join(upd.get('kept') or []) or '-'}"
                      + (f"  [red]update failed: {upd['error']}[/red]"
                         if upd.get("error") else ""), highlight=False)
    pol = st.get("policy", {})
    t = Table(title="endpoints")
    for col in ("name", "region", "connected", "breaker", "up Mbit/s", "RTT ms", "queue ms",
                "ok", "failed"):
        t.add_column(col)
    for name, ep in st.get("endpoints", {}).items():
        est = pol.get("endpoints", {}).get(name, {})
        t.add_row(name, str(ep.get("region")), str(ep.get("connected")),
                  str(ep.get("breaker", ep.get("excluded") or "-")),
                  str(est.get("up_mbit_s", "-")), str(est.get("rtt_ms", "-")),
                  str(est.get("queue_ms", "-")), str(ep.get("ok", "-")),
                  str(ep.get("failed", "-")))
    console.print(t)
    c = Table(title="cuts")
    for col in ("cut", "depth", "admitted", "head ms", "wire bytes"):
        c.add_column(col)
    for cut, info in pol.get("cuts", {}).items():
        c.add_row(cut, str(info["depth"]), str(info["admitted"]), f"{info['head_ms']:.2f}",
                  f"{info['wire_bytes']:.0f}")
    console.print(c)
    last = pol.get("last_choice")
    if last:
        console.print(f"last decision: {last['cut']} ({last['reason']}, predicted "
                      f"{last['predicted_ms']:.1f} ms, via {last['endpoints'] or 'device'})",
                      highlight=False)
    console.print("requests by path: " + (", ".join(
        f"{k}={v}" for k, v in sorted(st.get("counts", {}).items())) or "none"),
        highlight=False)


def register(app: typer.Typer) -> None:
    """Add this area's commands to the root app."""
    app.add_typer(edge_app, name="edge")
