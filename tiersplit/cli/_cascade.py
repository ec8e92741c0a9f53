"""`tiersplit place tune BUNDLE --data HELD-BACK.npz`: the device cascade's threshold.

Kept apart from the placement tuner it shares a command with: this path runs the bundle's
two full models with ONNX Runtime (no profiles, no links) and writes one config section.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import typer
import yaml

from tiersplit.cli.common import clean_errors, console

__all__ = ["tune_cascade"]


def tune_cascade(bundle_dir: Path | None, data: Path, *, target: float, kind: str,
                 output: str | None, cut: str | None, privacy_floor: int, codec: str,
                 link_ms: float, write_config: Path | None, public_key: Path | None,
                 allow_unsigned: bool) -> None:
    """Tune, print the table and the ``policy.cascade`` snippet, write it if asked.

    Exits 2 on bad input (one line), 1 when no threshold meets the target (the snippet
    then keeps the cascade off and nothing is written).
    """
    from contract.bundle import Bundle
    from edge_agent.config import CascadeConfig
    from tiersplit.cascade_tuning import cascade_snippet, tune_bundle

    with clean_errors(ValueError, KeyError, FileNotFoundError, OSError):
        if bundle_dir is None:
            raise ValueError("--data tunes a bundle's cascade: give the bundle directory")
        key = None
        if public_key is not None:
            from transport.keys import load_ed25519_public

            key = load_ed25519_public(public_key)
        bundle = Bundle.load(bundle_dir, key, require_signature=not allow_unsigned,
                             role="edge")
        with console.status(f"running {bundle.manifest.full_int8} and "
                            f"{bundle.manifest.full_fp32} on {data.name} ..."):
            run = tune_bundle(bundle, data, target=target, kind=kind, output=output, cut=cut,
                              privacy_floor=privacy_floor, codec=codec, link_ms=link_ms)
        snippet = cascade_snippet(run, kind, output)
        CascadeConfig.model_validate(snippet["policy"]["cascade"])
    _print_table(bundle.name, bundle.version, run, target, codec, link_ms)
    t = run.chosen
    text = yaml.safe_dump(snippet, sort_keys=False)
    console.print(text.rstrip(), markup=False, highlight=False)
    if not t.met:
        console.print(f"[red]no threshold keeps {target:.2%} agreement on these "
                      f"{run.samples} samples:[/red] the cascade stays off")
        raise typer.Exit(1)
    if write_config is not None:
        with clean_errors(ValueError, OSError):
            _write_section(write_config, snippet["policy"]["cascade"])
        console.print(f"wrote policy.cascade into {write_config} (its comments are not "
                      "kept)")


def _print_table(name: str, version: str, run: Any, target: float, codec: str,
                 link_ms: float) -> None:
    from rich.table import Table

    sav = run.savings
    tbl = Table(title=f"{name} {version}: device cascade on {run.samples} held-back samples "
                      f"(int8 agrees with fp32 on {run.int8_agreement:.2%} of all)",
                title_justify="left")
    for col in ("target", "threshold", "agreement (local)", "agreement (all)",
                "share local", "ms saved / req", "bytes saved / req"):
        tbl.add_column(col, justify="right")
    for r in run.rows:
        chosen = r.target == target
        cells = [f"{r.target:.3f}", "never" if math.isinf(r.threshold) else f"{r.threshold:.4f}",
                 f"{r.achieved:.4f}", f"{r.overall:.4f}", f"{r.local_share:.1%}",
                 f"{r.latency_saved_ms:+.3f}", f"{r.bytes_saved:,.0f}"]
        tbl.add_row(*(f"[bold green]{c}[/bold green]" if chosen else c for c in cells))
    tbl.caption = (f"split path: cut {sav.cut} (head {sav.split_ms - link_ms:.3f} ms + link "
                   f"{link_ms:g} ms, {sav.split_bytes:,.0f} B with codec {codec}); the "
                   f"cascade pays the full int8 model ({sav.local_ms:.3f} ms) on every "
                   "request" + ("" if sav.measured else "; the manifest has no measured "
                                "latencies, so ms are 0"))
    console.print(tbl)
    console.print(f"held-back data sha256 {run.digest[:16]}…; agreement (all) counts the "
                  "split answers as agreeing")


def _write_section(path: Path, section: dict[str, Any]) -> None:
    doc: dict[str, Any] = {}
    if path.exists():
        loaded = yaml.safe_load(path.read_text())
        if loaded is not None and not isinstance(loaded, dict):
            raise ValueError(f"{path} is not a YAML mapping (an edge config)")
        doc = loaded or {}
    policy = doc.setdefault("policy", {}) or {}
    if not isinstance(policy, dict):
        raise ValueError(f"{path}: 'policy' is not a mapping")
    doc["policy"] = policy
    policy["cascade"] = {**(policy.get("cascade") or {}), **section}
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
