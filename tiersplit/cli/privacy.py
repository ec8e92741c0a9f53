"""`tiersplit privacy`: how much of the input the cloud can recover, per cut.

    tiersplit privacy make-data BUNDLE --out data.npz      (digits or synthetic text)
    tiersplit privacy audit BUNDLE --data data.npz [--quick] [--codecs raw,int8] \\
        [--noise 0.5,1] [--out report.md --plot risk.png] \\
        [--record --signing-key KEY [--version V] [--repo R]]
    tiersplit privacy check BUNDLE --max-reconstruction 0.5 [--min-depth 1] [--codec raw]

``audit --record`` publishes the same files as a new bundle version whose signed
manifest carries the audit (bundles are immutable); :func:`audit_table` renders that
record for ``tiersplit inspect``.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from tiersplit.cli.common import clean_errors, console

if TYPE_CHECKING:
    from rich.table import Table

    from contract.bundle import Manifest
    from contract.privacy import CutRisk

log = logging.getLogger(__name__)

privacy = typer.Typer(help="Privacy audit: what the cloud can recover from each cut.",
                      no_args_is_help=True)

_PUB = typer.Option(None, "--public-key", help="Ed25519 .pub the bundle must be signed with.")
_UNSIGNED = typer.Option(False, "--allow-unsigned", help="Accept an unsigned bundle.")


def _errors() -> tuple[type[BaseException], ...]:
    from partitioner.errors import PartitionError
    from transport.errors import KeyFileError, TransportError

    return (PartitionError, TransportError, KeyFileError, ValueError, OSError)


def _csv(text: str) -> list[str]:
    return [x.strip() for x in text.split(",") if x.strip()]


def _bundle(path: Path, public_key: Path | None, allow_unsigned: bool):
    from contract.bundle import Bundle

    key = None
    if public_key is not None:
        from transport.keys import load_ed25519_public

        key = load_ed25519_public(public_key)
    return Bundle.load(path, key, require_signature=not allow_unsigned, role="all")


def head_program_factory():
    """Builds differentiable fp32 heads for the white-box attack (the cloud backend's
    ONNX-to-torch interpreter: the partitioner may not import the cloud core itself)."""
    import torch

    from cloud_core.backends.onnx_to_torch import OnnxTorchProgram

    def build(path: Path):
        return OnnxTorchProgram(path, torch.device("cpu"))

    return build


def audit_table(manifest: Manifest) -> Table | None:
    """The manifest's privacy audit as a rich table (None when the bundle has none).

    ``tiersplit inspect`` prints it after the cuts table.
    """
    audit = manifest.privacy_audit
    if audit is None:
        return None
    from rich.table import Table

    from partitioner.privacy.report import table_rows

    header, rows = table_rows(audit)
    t = Table(title=f"privacy audit {audit.date}: {audit.data}; attacker trained on "
                    f"{audit.attack_train}, scored on {audit.attack_eval} unseen samples")
    for col in header:
        t.add_column(col, justify="left" if col in ("cut", "codec") else "right")
    for r in rows:
        t.add_row(*r)
    return t


def _row_text(row: CutRisk, audit_metric: str) -> str:
    parts = []
    for s in row.scores:
        v = s.value(audit_metric)  # type: ignore[arg-type]
        parts.append(f"{s.attack} {v:.3f}" if v is not None else f"{s.attack} —")
    noise = f" noise {row.noise_std:g}" if row.noise_std else ""
    acc = f", top-1 {row.accuracy:.3f}" if row.accuracy is not None else ""
    return (f"{row.cut:>8} depth {row.depth:<4} {row.codec}{noise}: {', '.join(parts)}, "
            f"dCor {row.dcor:.3f}{acc}")


@privacy.command("audit")
def audit_cmd(
    bundle: Path = typer.Argument(..., help="Bundle directory <repo>/<name>/<version>."),
    data: Path = typer.Option(..., "--data", help="DATA.npz (see `privacy make-data`)."),
    attacks: str = typer.Option("decoder,whitebox,nearest_embedding", "--attacks",
                                help="Attacks to run (each where it applies)."),
    codecs: str = typer.Option("", "--codecs", help="Wire codecs to audit (default: "
                                                    "raw,int8; raw alone with --quick)."),
    noise: str = typer.Option("", "--noise", help="Mitigation: relative noise levels to "
                                                  "audit too, e.g. 0.5,1; 'auto' picks per "
                                                  "cut the largest that keeps accuracy."),
    accuracy_floor: float | None = typer.Option(None, "--accuracy-floor", min=0.0, max=1.0,
                                                help="Top-1 agreement --noise auto must "
                                                     "keep (default: the bundle's floor, "
                                                     "else 0.98)."),
    quick: bool = typer.Option(False, "--quick", help="Small budget (minutes on 2 cores)."),
    cuts: str = typer.Option("", "--cuts", help="Only these cut ids (default: all)."),
    out: Path | None = typer.Option(None, "--out", help="Markdown report."),
    plot: Path | None = typer.Option(None, "--plot", help="PNG: risk by cut and example "
                                                          "reconstructions."),
    json_out: Path | None = typer.Option(None, "--json", help="The audit record as JSON."),
    record: bool = typer.Option(False, "--record", help="Publish a new bundle version "
                                                        "whose signed manifest carries the "
                                                        "audit."),
    signing_key: Path | None = typer.Option(None, "--signing-key",
                                            help="Ed25519 key to sign the new version."),
    version: str | None = typer.Option(None, "--version", help="New version (default: "
                                                               "current + '.audit')."),
    repo: Path | None = typer.Option(None, "--repo", help="Repository for the new version "
                                                          "(default: the bundle's own)."),
    threads: int = typer.Option(1, "--threads", help="torch threads for the attacks."),
    public_key: Path | None = _PUB,
    allow_unsigned: bool = _UNSIGNED,
) -> None:
    """Attack every cut as an honest-but-curious cloud would; report what it recovers."""
    with clean_errors(*_errors()):
        if record and signing_key is None and not allow_unsigned:
            raise ValueError("--record re-signs the manifest: give --signing-key (or "
                             "--allow-unsigned to publish an unsigned version)")
        import torch

        from partitioner.privacy.audit import AuditConfig, audit_bundle
        from partitioner.privacy.data import load_audit_data

        torch.set_num_threads(max(1, threads))
        b = _bundle(bundle, public_key, allow_unsigned)
        if record:
            from partitioner.privacy.record import target_path

            target_path(b, repo, version)  # refuse an existing version before the work
        d = load_audit_data(data, b.manifest, b.path)
        auto = "auto" in _csv(noise)
        overrides: dict[str, object] = {
            "attacks": tuple(_csv(attacks)),
            "noise": tuple(float(x) for x in _csv(noise) if x != "auto"),
            "noise_auto": auto, "accuracy_floor": accuracy_floor,
            "cuts": tuple(_csv(cuts)) or None}
        if codecs:
            overrides["codecs"] = tuple(_csv(codecs))
        cfg = (AuditConfig.quick_settings(**overrides) if quick
               else AuditConfig(**overrides))  # type: ignore[arg-type]
        metric = "ssim" if d.modality == "image" else "token_recovery"
        console.print(f"auditing {b.name} {b.version} with {d.description}")
        outcome = audit_bundle(b, d, cfg, head_program=head_program_factory(),
                               on_row=lambda r: console.print(_row_text(r, metric),
                                                              highlight=False))
        if plot is not None:
            from partitioner.privacy.report import plot_audit

            plot_audit(outcome, plot, f"{b.name} {b.version}: what the cloud can recover")
        if out is not None:
            from partitioner.privacy.report import write_report

            write_report(outcome, out, f"{b.name} {b.version}", plot)
        if json_out is not None:
            json_out.parent.mkdir(parents=True, exist_ok=True)
            json_out.write_text(outcome.audit.model_dump_json(indent=1))
        published = None
        if record:
            from partitioner.privacy.record import record_audit

            published = record_audit(b, outcome.audit, repo=repo, version=version,
                                     signing_key=signing_key)
    table = audit_table(b.manifest.model_copy(update={"privacy_audit": outcome.audit}))
    if table is not None:
        console.print(table)
    for note in outcome.notes:
        console.print(f"[yellow]note:[/yellow] {note}")
    for path in (out, plot, json_out):
        if path is not None:
            console.print(f"wrote {path}")
    if published is not None:
        console.print(f"published {published} (manifest records the audit"
                      f"{', signed' if signing_key else ', unsigned'})")


@privacy.command("make-data")
def make_data_cmd(
    bundle: Path = typer.Argument(..., help="Bundle whose input the data must fit."),
    out: Path = typer.Option(..., "--out", "-o", help="The .npz to write."),
    samples: int = typer.Option(800, help="Text: sequences to draw (digits: all 1797)."),
    vocab: int = typer.Option(128, help="Text: vocabulary size."),
    seed: int = typer.Option(0),
    allow_unsigned: bool = typer.Option(True, "--allow-unsigned/--require-signature"),
) -> None:
    """Write audit data for a bundle: real digits (upscaled, channels repeated) for image
    models, Zipf-distributed synthetic tokens with an embedding table for text models."""
    with clean_errors(*_errors()):
        import numpy as np

        from partitioner.privacy.data import attacked_input, digits_images, token_data
        from partitioner.privacy.errors import AuditError

        b = _bundle(bundle, None, allow_unsigned)
        spec = attacked_input(b.manifest)
        shape = spec.sample_shape
        others = [o for o in b.manifest.inputs if o.name != spec.name]
        if others and (spec.dtype.startswith("float")
                       or any(o.dtype.startswith("float") for o in others)):
            raise AuditError("make-data fills extra inputs only for token-id models (with "
                             "an all-ones mask); supply your own .npz")
        out.parent.mkdir(parents=True, exist_ok=True)
        if spec.dtype.startswith("float") and len(shape) == 3 and shape[1] % 8 == 0 \
                and shape[2] % 8 == 0:
            x = digits_images(shape)  # type: ignore[arg-type]
            np.savez(out, **{spec.name: x})
            what = f"{len(x)} digit images {list(shape)}"
        elif spec.dtype.startswith("float") and len(shape) == 2:
            tokens, table = token_data(samples, shape[0], shape[1], vocab, seed)
            np.savez(out, tokens=tokens, embedding=table)
            what = f"{samples} sequences of {shape[0]} tokens, vocabulary {vocab}"
        elif not spec.dtype.startswith("float") and len(shape) == 1:
            from partitioner.privacy.data import graph_embedding

            table = graph_embedding(b.path, b.manifest, spec.name)
            tokens, _ = token_data(samples, shape[0], table.shape[1], len(table), seed)
            masks = {o.name: np.ones((samples, *o.sample_shape), o.dtype) for o in others}
            np.savez(out, tokens=tokens, **masks)
            what = (f"{samples} sequences of {shape[0]} token ids (the model's own table)"
                    + (f", all-ones {', '.join(masks)}" if masks else ""))
        else:
            raise AuditError(f"no built-in data for input {spec.name} {spec.dtype}"
                             f"{list(shape)}: supply your own .npz")
    console.print(f"wrote {out}: {what}")


@privacy.command("check")
def check_cmd(
    bundle: Path = typer.Argument(..., help="Bundle directory."),
    max_reconstruction: float | None = typer.Option(None, "--max-reconstruction",
                                                    help="Highest audited reconstruction "
                                                         "quality allowed (0..1)."),
    max_dcor: float | None = typer.Option(None, "--max-dcor", help="Highest audited "
                                                                   "distance correlation."),
    min_depth: int = typer.Option(0, "--min-depth", help="Minimum edge-side nodes."),
    codec: str | None = typer.Option(None, "--codec", help="The codec the device sends "
                                                           "with (default: the leakiest "
                                                           "audited)."),
    public_key: Path | None = _PUB,
    allow_unsigned: bool = _UNSIGNED,
) -> None:
    """Which cuts a privacy floor allows on this bundle, and why the others are refused."""
    with clean_errors(*_errors()):
        from contract.privacy import PrivacyFloor, judge_cuts

        b = _bundle(bundle, public_key, allow_unsigned)
        floor = PrivacyFloor(min_depth=min_depth, max_reconstruction=max_reconstruction,
                             max_dcor=max_dcor)
        verdicts = judge_cuts(b.manifest, floor, codec)
    from rich.table import Table

    t = Table(title=f"{b.name} {b.version} under floor: {floor.describe()}")
    for col in ("cut", "depth", "risk", "dCor", "allowed", "why"):
        t.add_column(col, justify="right" if col in ("depth", "risk", "dCor") else "left")
    for c in b.manifest.cuts:
        v = verdicts[c.id]
        t.add_row(c.id, str(c.depth), "—" if v.risk is None else f"{v.risk:.3f}",
                  "—" if v.dcor is None else f"{v.dcor:.3f}",
                  "[green]yes[/green]" if v.allowed else "[red]no[/red]", v.reason)
    console.print(t)


def register(app: typer.Typer) -> None:
    """Add this area's commands to the root app."""
    app.add_typer(privacy, name="privacy")
