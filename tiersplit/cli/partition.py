"""`tiersplit` sub-commands for: partition, verify, inspect.

Heavy imports (torch, onnx, onnxruntime) happen inside each command, never at
``tiersplit --help``.
"""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from tiersplit.cli.common import clean_errors, console

_EXPECTED: tuple[type[BaseException], ...] = (ValueError, OSError)


def _expected() -> tuple[type[BaseException], ...]:
    from partitioner.errors import PartitionError
    from transport.errors import KeyFileError

    return (PartitionError, KeyFileError, *_EXPECTED)


def _parse_shape(text: str) -> tuple[int, ...]:
    try:
        dims = tuple(int(d) for d in text.replace("x", ",").split(",") if d.strip())
    except ValueError:
        dims = ()
    if not dims or min(dims) <= 0:
        raise typer.BadParameter(f"{text!r} is not a shape like 1,3,64,64 (batch first)")
    return dims


def _fmt_bytes(n: int) -> str:
    for unit in ("B", "KiB", "MiB"):
        if n < 1024 or unit == "MiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def _fmt(x: float | None, spec: str) -> str:
    return "—" if x is None else format(x, spec)


def cuts_table(manifest, title: str | None = None) -> Table:
    """The cuts of a manifest: depth, crossing tensors, bytes, compute, accuracy."""
    t = Table(title=title, title_justify="left")
    for col, just in [("cut", "left"), ("depth", "right"), ("crossing tensors", "left"),
                      ("bytes fp32", "right"), ("bytes int8", "right"),
                      ("head MMAC", "right"), ("tail MMAC", "right"), ("recipe", "left"),
                      ("cosine", "right"), ("top-1", "right"), ("max |err|", "right"),
                      ("head ms int8/fp32", "right")]:
        t.add_column(col, justify=just)  # type: ignore[arg-type]
    for c in manifest.cuts:
        if c.is_edge:
            tensors = "(none: all on the edge)"
        else:
            shown = [f"{s.name} {_shape(s)}" for s in c.tensors[:3]]
            more = len(c.tensors) - len(shown)
            tensors = "\n".join(shown) + (f"\n+{more} more" if more > 0 else "")
        a = c.accuracy
        recipe = c.recipe + (f" ({len(c.excluded_nodes)} in float)" if c.excluded_nodes else "")
        t.add_row(c.id, f"{c.depth} ({c.depth_fraction:.0%})", tensors, _fmt_bytes(c.bytes),
                  _fmt_bytes(c.bytes_int8), f"{c.head_flops / 1e6:.2f}",
                  f"{c.tail_flops / 1e6:.2f}", recipe if c.head else "—", f"{a.cosine:.6f}",
                  _fmt(a.top1_agreement, ".1%"), f"{a.max_abs:.3g}", _latency(c))
    return t


def _latency(c) -> str:
    if c.latency_ms is None or not c.latency_fp32_ms:
        return "—"
    return f"{c.latency_ms:.2f}/{c.latency_fp32_ms:.2f} ({c.latency_ms / c.latency_fp32_ms:.2f}x)"


def _shape(spec) -> str:
    """``[batch, 128*, 384]``: ``*`` marks a dimension whose size varies per request."""
    dims = ["batch" if i == 0 and d == -1 else f"{d}*" if i in spec.dynamic else str(d)
            for i, d in enumerate(spec.shape)]
    return f"[{', '.join(dims)}]"


def _print_table(table: Table) -> None:
    # Piped output (CI logs, files) gets a wide table rather than 80-column wrapping.
    if console.is_terminal:
        console.print(table)
    else:
        Console(width=160).print(table)


def register(app: typer.Typer) -> None:
    """Add this area's commands to the root app."""

    @app.command()
    def partition(
        model: str = typer.Argument(..., help="zoo:<name>, a path to an .onnx file, or "
                                    "package.module:callable returning a torch.nn.Module."),
        input_shape: list[str] = typer.Option(None, "--input-shape", "-s",
                                              help="Input shape, batch first (1,3,64,64); "
                                              "repeat per input. Zoo/ONNX models know theirs."),
        inputs: list[str] = typer.Option(None, "--input", "-i", help="NAME:SHAPE:DTYPE, e.g. "
                                         "input_ids:1,seq=128:int64 (seq= marks a dynamic "
                                         "dimension); repeat per input, in order."),
        eval_data: Path = typer.Option(None, "--eval-data", help="Held-back .npz for the "
                                       "accuracy figures (default: a quarter of "
                                       "--calib-data, or generated)."),
        accuracy_floor: float = typer.Option(0.99, "--accuracy-floor", min=0.0, max=1.0,
                                             help="Cosine vs fp32 every head must keep "
                                             "(classifiers: also top-1 agreement)."),
        metric: str = typer.Option(None, "--metric", help="pkg.mod:fn(reference, actual) -> "
                                   "float, higher is better; needs --metric-floor."),
        metric_floor: float = typer.Option(None, "--metric-floor", help="Floor of --metric."),
        out: Path = typer.Option(..., "--out", "-o", help="Bundle repository root."),
        name: str = typer.Option(None, "--name", help="Bundle name (default: the model's)."),
        version: str = typer.Option("1", "--version", help="Bundle version (immutable)."),
        calib_data: Path = typer.Option(None, "--calib-data", help="Calibration .npz: arrays "
                                        "named like the inputs (or arr_0...), batch first."),
        max_cuts: int = typer.Option(6, "--max-cuts", min=2, help="Cuts to keep, counting "
                                     "'cloud' and 'edge'."),
        signing_key: Path = typer.Option(None, "--signing-key", help="Ed25519 secret key "
                                         "(tiersplit keys gen) to sign the manifest."),
        task: str = typer.Option(None, "--task", help="classification|regression|other "
                                 "(classification adds top-1 agreement)."),
        privacy_floor: int = typer.Option(0, "--privacy-floor", min=0, help="Minimum nodes on "
                                          "the edge side of any cut; > 0 drops the 'cloud' "
                                          "cut (raw inputs never leave the edge)."),
        # -- device tails and wire codecs per cut (partitioner.cut_extras) --
        device_tails: bool = typer.Option(True, "--device-tails/--no-device-tails",
                                          help="Ship an int8 device tail per interior cut "
                                          "(kept only where it meets the accuracy floor): "
                                          "a failed cloud attempt finishes from the cut."),
        max_memory: str = typer.Option(None, "--max-memory", help="Peak memory budget "
                                       "(1.5G, 800M): batches shrink to fit; a model that "
                                       "cannot fit is refused up front with the estimate."),
        cache_dir: Path = typer.Option(None, "--cache-dir", help="Reuse calibration, "
                                       "quantized heads and their held-back figures from "
                                       "here (default ~/.cache/tiersplit/partition)."),
        no_cache: bool = typer.Option(False, "--no-cache", help="Neither read nor write "
                                      "the cache."),
        jobs: int = typer.Option(None, "--jobs", min=1, help="Worker processes for the "
                                 "cuts (default: one per core for models of 4 MiB of "
                                 "weights or more, as many as fit --max-memory or the free "
                                 "memory; 1: one cut after another)."),
        verbose: bool = typer.Option(False, "--verbose", help="Print time and peak memory "
                                     "per stage, and cache hits."),
    ) -> None:
        """Partition a model into a verified, int8-headed, signed bundle."""
        with clean_errors(*_expected()):
            from contract.bundle import Bundle
            from partitioner import partition as run
            from partitioner.cache import default_root
            from partitioner.memory import parse_size
            from partitioner.stages import Meter

            if input_shape and inputs:
                raise ValueError("give --input-shape or --input, not both")
            shapes = ([_parse_shape(s) for s in input_shape] if input_shape
                      else list(inputs) if inputs else None)
            for f, what in ((calib_data, "calibration"), (eval_data, "evaluation")):
                if f is not None and not f.is_file():
                    raise ValueError(f"{what} file not found: {f}")

            budget = parse_size(max_memory) if max_memory is not None else None
            cache = None if no_cache else (cache_dir or default_root())
            meter = Meter()

            def dropped(cut_id: str, reason: str) -> None:
                console.print(f"[yellow]cut {cut_id} dropped: {reason}[/yellow]")

            path = run(model, shapes, out, name=name, version=version, calib_data=calib_data,
                       eval_data=eval_data, max_cuts=max_cuts, signing_key=signing_key,
                       task=task, privacy_floor=privacy_floor, progress=True,
                       accuracy_floor=accuracy_floor, metric=metric, metric_floor=metric_floor,
                       on_drop=dropped, device_tails=device_tails, cache_dir=cache,
                       max_memory=budget, meter=meter, jobs=jobs)
            b = Bundle.load(path, require_signature=False)
            m = b.manifest
            _print_table(cuts_table(m, title=f"{m.name} v{m.version} — {path}"))
            from partitioner.cut_extras import extras_table

            _print_table(extras_table(m, title="device tails and wire codecs per cut "
                                      "(ok = keeps the accuracy floor)"))
            # -- end device tails and wire codecs --
            fa = m.full_accuracy
            console.print(f"full int8 model vs fp32: cosine {fa.cosine:.6f}, top-1 "
                          f"{_fmt(fa.top1_agreement, '.1%')}, max |err| {fa.max_abs:.3g}; "
                          f"recipe {m.cuts[-1].recipe}; floor cosine "
                          f"{m.quantization.accuracy_floor} on {m.quantization.evaluation_samples} "
                          f"held-back samples ({m.quantization.evaluation}); "
                          f"digest {b.digest[:16]}…; "
                          f"{'signed' if b.signed else 'unsigned'}")
            if verbose:
                _print_table(meter.table(title="time and peak RSS per stage (nested stages "
                                                "indented; their time is in the outer one)"))

    @app.command()
    def verify(
        bundle: Path = typer.Argument(..., help="Bundle directory <root>/<name>/<version>."),
        public_key: Path = typer.Option(None, "--public-key", help="Ed25519 .pub the manifest "
                                        "must be signed with (required if the bundle is "
                                        "signed and you want the signature checked)."),
        samples: int = typer.Option(8, "--samples", min=1, help="Random inputs per check."),
    ) -> None:
        """Recompute hashes, check the signature, run every cut against the full model."""
        from rich.progress import Progress

        with clean_errors(*_expected()):
            from partitioner.check import verify_bundle

            with Progress(console=console, transient=True) as bar:
                task_id = bar.add_task("verify cuts", total=None)
                report = verify_bundle(bundle, public_key, samples=samples,
                                       on_cut=lambda c: bar.update(
                                           task_id, advance=1, description=f"verify {c.cut_id}"))
        t = Table(title=f"{report.name} v{report.version} — digest {report.digest[:16]}…",
                  title_justify="left")
        for col in ("cut", "depth", "status", "fp32 rel err", "int8 cosine", "int8 top-1",
                    "detail"):
            t.add_column(col)
        for c in report.cuts:
            t.add_row(c.cut_id, str(c.depth), "[green]ok[/green]" if c.ok else "[red]FAIL[/red]",
                      _fmt(c.fp32_relative, ".2e"), _fmt(c.int8_cosine, ".6f"),
                      _fmt(c.int8_top1, ".1%"), c.message)
        _print_table(t)
        if report.signature_checked:
            sig = "signature valid"
        elif report.signed:
            sig = "[yellow]signature present but NOT checked (pass --public-key)[/yellow]"
        else:
            sig = "[yellow]unsigned[/yellow]"
        console.print(f"hashes ok; {sig}")
        if not report.ok:
            failed = [c.cut_id for c in report.cuts if not c.ok]
            console.print(f"[red]verification failed for cut(s): {', '.join(failed)}[/red]")
            raise typer.Exit(1)

    @app.command()
    def inspect(
        bundle: Path = typer.Argument(..., help="Bundle directory <root>/<name>/<version>."),
    ) -> None:
        """Print a bundle's cuts: depth, crossing tensors, bytes fp32/int8, accuracy."""
        with clean_errors(*_expected()):
            import yaml
            from pydantic import ValidationError

            from contract.bundle import MANIFEST, SIGNATURE, Manifest
            from contract.errors import BundleError

            mpath = Path(bundle) / MANIFEST
            if not mpath.is_file():
                raise BundleError(f"no {MANIFEST} in {bundle}: not a bundle directory")
            try:
                m = Manifest.model_validate(yaml.safe_load(mpath.read_bytes()))
            except (yaml.YAMLError, ValidationError, TypeError) as e:
                raise BundleError(f"malformed manifest {mpath}: "
                                  f"{str(e).splitlines()[0]}") from e
            signed = (Path(bundle) / SIGNATURE).exists()
        ins = ", ".join(f"{s.name} {s.dtype}{_shape(s)}" for s in m.inputs)
        outs = ", ".join(f"{s.name} {s.dtype}{_shape(s)}" for s in m.outputs)
        console.print(f"[bold]{m.name}[/bold] v{m.version} from {m.source} (opset {m.opset}, "
                      f"{m.task}), created {m.created}, {'signed' if signed else 'unsigned'} "
                      "(not verified: use tiersplit verify)")
        console.print(f"inputs: {ins}\noutputs: {outs}")
        q = m.quantization
        console.print(f"quantization: {q.method} {q.format}, act {q.activation_type}, "
                      f"weights {q.weight_type}{' per-channel' if q.per_channel else ''}, "
                      f"calibration {q.calibration} ({q.calibration_samples} samples); "
                      f"accuracy floor cosine {q.accuracy_floor}"
                      f"{'' if q.top1_floor is None else f', top-1 {q.top1_floor:.0%}'}"
                      f"{'' if not q.metric else f', {q.metric} >= {q.metric_floor}'} on "
                      f"{q.evaluation_samples} held-back samples ({q.evaluation})")
        _print_table(cuts_table(m))
        from tiersplit.cli.privacy import audit_table

        if (audit := audit_table(m)) is not None:
            _print_table(audit)
        fa = m.full_accuracy
        console.print(f"full int8 ({m.full_int8}) vs fp32: cosine {fa.cosine:.6f}, top-1 "
                      f"{_fmt(fa.top1_agreement, '.1%')}, max |err| {fa.max_abs:.3g}")
