"""Partitioner benchmark: per model and cut, the recipe the accuracy-bounded search chose,
held-back accuracy, bytes, and shipped-head vs fp32-head latency.

For each model (zoo CNNs, the BERT-like encoders, the real all-MiniLM-L6-v2 when the
``real-models`` extra is installed) the script partitions a fresh bundle (in a temp dir),
then for every cut times the fp32 head and the shipped head in ONNX Runtime at ONE
intra-op thread, batch 1, in the same run: rounds alternate so machine noise hits both
alike, and the ratio of medians is reported. "edge" compares the shipped full model with
the fp32 one. Accuracy is the manifest's report: head + fp32 tail vs fp32 full on held-back
samples (real held-out digits for digits_cnn, held-back sentences for MiniLM).

``--variants`` also times the full model under other quantization settings (S8S8 vs
U8S8 activations, reduce_range, per-tensor weights, QOperator format), which is how the
default (QDQ, U8S8, per-channel) was chosen.

Usage::

    python -m bench.partition [--quick] [--models digits_cnn,minilm] [--variants]
                              [--plot out.png]
    python -m bench.partition --scale [--models resnet50,...] [--cuts 4,12] [--baseline DIR]
                                      [--jobs N] [--max-memory 1.5G] [--no-rerun]

``--scale`` (see ``bench.partition_scale``) reports time and peak RSS per stage at real
size instead, and a re-run with only the floor changed.
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from contract.bundle import Bundle
from partitioner import ortutil, zoo

CNNS = ("digits_cnn", "resnet_like", "mobilenet_like", "resnet50", "mobilenet_v2")
GOAL = 0.6
TEXT_GOAL = 0.5  # MiniLM: deepest interior head at most half its fp32 latency
MINILM = "minilm"
MINILM_SEQ = 32
QUICK_MODELS = ("digits_cnn", "resnet_like", "mobilenet_like", "bert_tiny", MINILM)
console = Console(width=int(os.environ.get("COLUMNS", "140")))


@dataclass
class Row:
    model: str
    cut: str
    depth: int
    tensors: int
    bytes_fp32: int
    bytes_int8: int
    fp32_ms: float | None
    int8_ms: float | None
    ratio: float | None  # median over rounds of int8/fp32 (same-round pairs)
    best_ratio: float | None  # fastest int8 / fastest fp32 round
    cosine: float
    top1: float | None
    recipe: str = ""
    samples: int = 0


def time_pair(a_path: Path, b_path: Path, feeds: dict[str, np.ndarray], rounds: int,
              iters: int) -> tuple[float, float, float, float]:
    """Two models timed interleaved (1 thread each).

    Each round times ``iters`` calls of a then of b; the ratio is taken per round, so a
    burst of load from other processes affects both sides of that round's ratio alike.

    Returns:
        (median a ms, median b ms, median of per-round b/a, min b / min a): the last is
        the least noise-sensitive estimate of the intrinsic cost on a busy machine.
    """
    sa, sb = ortutil.session(a_path, threads=1), ortutil.session(b_path, threads=1)
    fa = {i.name: feeds[i.name] for i in sa.get_inputs()}
    fb = {i.name: feeds[i.name] for i in sb.get_inputs()}
    for _ in range(max(5, iters // 2)):
        sa.run(None, fa)
        sb.run(None, fb)
    ta: list[float] = []
    tb: list[float] = []
    for r in range(rounds):
        order = [(sa, fa, ta), (sb, fb, tb)]
        if r % 2:
            order.reverse()  # neither side always runs first (warm caches, turbo)
        for sess, f, acc in order:
            t0 = time.perf_counter()
            for _ in range(iters):
                sess.run(None, f)
            acc.append((time.perf_counter() - t0) / iters * 1e3)
    ratio = statistics.median(b / a for a, b in zip(ta, tb, strict=True))
    return statistics.median(ta), statistics.median(tb), ratio, min(tb) / min(ta)


def bench_model(name: str, root: Path, max_cuts: int, rounds: int, iters: int) -> list[Row]:
    from partitioner import partition

    t0 = time.perf_counter()
    if name == MINILM:
        from partitioner import minilm
        from partitioner.text_corpus import CALIBRATION, EVALUATION

        inputs = [f"input_ids:1,seq={MINILM_SEQ}:int64",
                  f"attention_mask:1,seq={MINILM_SEQ}:int64"]
        path = partition("partitioner.minilm:make", inputs, root, name=MINILM,
                         max_cuts=max_cuts, progress=False,
                         calib_data=minilm.tokenize(CALIBRATION, MINILM_SEQ),
                         eval_data=minilm.tokenize(EVALUATION, MINILM_SEQ))
        feeds = {k: v[:1] for k, v in minilm.tokenize(EVALUATION, MINILM_SEQ).items()}
    else:
        path = partition(f"zoo:{name}", None, root, max_cuts=max_cuts, progress=False)
        zm = zoo.get(name)
        feeds = dict(zip(zm.input_names, zm.example_inputs(1, seed=11), strict=True))
    build_s = time.perf_counter() - t0
    b = Bundle.load(path, require_signature=False)
    m = b.manifest
    rows = []
    for c in m.cuts:
        timing: tuple[float | None, ...] = (None, None, None, None)
        if c.is_edge:
            timing = time_pair(b.file(m.full_fp32), b.file(m.full_int8), feeds, rounds, iters)
        elif c.head and c.head_fp32:
            timing = time_pair(b.file(c.head_fp32), b.file(c.head), feeds, rounds, iters)
        recipe = c.recipe + (f" ({len(c.excluded_nodes)} float)" if c.excluded_nodes else "")
        rows.append(Row(name, c.id, c.depth, len(c.tensors), c.bytes, c.bytes_int8, *timing,
                        c.accuracy.cosine, c.accuracy.top1_agreement,
                        recipe if c.head else "—", c.accuracy.samples))
    q = m.quantization
    console.print(f"[bold]{name}[/bold]: {len(m.cuts)} cuts, partitioned in {build_s:.1f} s; "
                  f"floor cosine {q.accuracy_floor}; calibration {q.calibration} "
                  f"({q.calibration_samples}), evaluation {q.evaluation} "
                  f"({q.evaluation_samples})")
    return rows


def print_rows(rows: list[Row]) -> None:
    t = Table(title="cuts: recipe, held-back accuracy (shipped head + fp32 tail vs fp32 full), "
              "bytes per sample, head latency at 1 thread (batch 1)", title_justify="left")
    for col in ("model", "cut", "recipe", "depth", "tensors", "bytes fp32", "bytes int8",
                "fp32 head ms", "int8 head ms", "int8/fp32", "best-round", "cosine",
                "top-1 agr.", "eval n"):
        t.add_column(col, justify="left" if col in ("model", "cut", "recipe") else "right")
    for r in rows:
        ratio = r.ratio
        style = "" if ratio is None else ("green" if ratio <= GOAL else "yellow")
        t.add_row(r.model, r.cut, r.recipe, str(r.depth), str(r.tensors), str(r.bytes_fp32),
                  str(r.bytes_int8), "—" if r.fp32_ms is None else f"{r.fp32_ms:.3f}",
                  "—" if r.int8_ms is None else f"{r.int8_ms:.3f}",
                  "—" if ratio is None else f"[{style}]{ratio:.2f}[/{style}]",
                  "—" if r.best_ratio is None else f"{r.best_ratio:.2f}",
                  f"{r.cosine:.5f}", "—" if r.top1 is None else f"{r.top1:.1%}",
                  str(r.samples))
    console.print(t)


def print_summary(rows: list[Row]) -> None:
    t = Table(title=f"int8/fp32 head latency (goals: CNNs <= {GOAL}, MiniLM deepest interior "
              f"head <= {TEXT_GOAL} with every cut cosine >= 0.99)", title_justify="left")
    for col in ("model", "heads", "median ratio", "deepest split", "full model (edge)",
                "full, best-round", "goal"):
        t.add_column(col, justify="left" if col == "model" else "right")
    for model in dict.fromkeys(r.model for r in rows):
        mine = [r for r in rows if r.model == model and r.ratio is not None]
        splits = [r for r in mine if r.cut not in ("edge", "cloud")]
        edge = next((r for r in mine if r.cut == "edge"), None)
        med = statistics.median(r.ratio for r in mine) if mine else float("nan")
        deepest = splits[-1].ratio if splits else None
        goal = "—"
        if model in CNNS and edge is not None:
            goal = "[green]met[/green]" if edge.ratio <= GOAL else "[yellow]not met[/yellow]"
        if model == MINILM and deepest is not None:
            ok = deepest <= TEXT_GOAL and all(r.cosine >= 0.99 for r in mine)
            goal = "[green]met[/green]" if ok else "[yellow]not met[/yellow]"
        t.add_row(model, str(len(mine)), f"{med:.2f}",
                  "—" if deepest is None else f"{deepest:.2f}",
                  "—" if edge is None else f"{edge.ratio:.2f}",
                  "—" if edge is None else f"{edge.best_ratio:.2f}", goal)
    console.print(t)


def run_variants(name: str, rounds: int, iters: int) -> None:
    """Time the full model under other quantization settings against fp32 (same run)."""
    import onnx
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    from partitioner import load
    from partitioner.graph import analyze
    from partitioner.quantize import CalibrationSet, QuantConfig, quantize

    info = analyze(load.load(f"zoo:{name}", None).model)
    zm = zoo.get(name)
    calib = CalibrationSet(dict(zip(zm.input_names, zm.example_inputs(32, 0), strict=True)))
    feeds = dict(zip(zm.input_names, zm.example_inputs(1, seed=11), strict=True))
    variants = {
        "QDQ U8S8 per-channel (default)": QuantConfig(),
        "QDQ S8S8 per-channel": QuantConfig(activation_type="QInt8"),
        "QDQ U8S8 per-channel reduce_range": QuantConfig(reduce_range=True),
        "QDQ U8S8 per-tensor": QuantConfig(per_channel=False),
    }
    t = Table(title=f"{name}: full-model quantization variants (1 thread, batch 1)",
              title_justify="left")
    for col in ("variant", "fp32 ms", "int8 ms", "int8/fp32", "best-round"):
        t.add_column(col, justify="left" if col == "variant" else "right")
    with tempfile.TemporaryDirectory() as tmp:
        fp32 = Path(tmp) / "fp32.onnx"
        onnx.save(info.model, str(fp32))
        paths = {}
        for label, cfg in variants.items():
            p = Path(tmp) / f"{len(paths)}.onnx"
            onnx.save(quantize(info.model, calib, cfg, what=label), str(p))
            paths[label] = p
        qop = Path(tmp) / "qop.onnx"
        demote = _quiet_root()
        try:
            quantize_static(str(fp32), str(qop), calib.reader(list(info.inputs), 16),
                            quant_format=QuantFormat.QOperator, per_channel=True,
                            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
            paths["QOperator U8S8 per-channel"] = qop
        except Exception as e:  # report, don't hide: this variant is informational
            console.print(f"QOperator variant failed: {type(e).__name__}: {e}")
        finally:
            logging.getLogger().removeFilter(demote)
        for label, p in paths.items():
            a, b, ratio, best = time_pair(fp32, p, feeds, rounds, iters)
            t.add_row(label, f"{a:.3f}", f"{b:.3f}", f"{ratio:.2f}", f"{best:.2f}")
    console.print(t)


def _quiet_root() -> logging.Filter:
    """Hide onnxruntime.quantization's root-logger advice, as partitioner.quantize does."""
    f = logging.Filter("tiersplit-bench")  # passes nothing logged under the root name
    logging.getLogger().addFilter(f)
    return f


def plot(rows: list[Row], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = list(dict.fromkeys(r.model for r in rows))
    fig, axes = plt.subplots(1, len(models), figsize=(4 * len(models), 3.2), squeeze=False)
    for ax, model in zip(axes[0], models, strict=True):
        mine = [r for r in rows if r.model == model]
        x = np.arange(len(mine))
        ax.bar(x - 0.2, [r.bytes_fp32 / 1024 for r in mine], 0.4, label="KiB fp32")
        ax.bar(x + 0.2, [r.bytes_int8 / 1024 for r in mine], 0.4, label="KiB int8")
        ax.set_xticks(x, [r.cut for r in mine], rotation=45)
        ax.set_title(model)
        ax2 = ax.twinx()
        ax2.plot(x, [r.ratio if r.ratio is not None else np.nan for r in mine], "ko-",
                 label="int8/fp32 head time")
        ax2.axhline(GOAL, color="r", lw=0.8, ls="--")
        ax2.set_ylim(0, 1.6)
        ax.legend(fontsize=7, loc="upper right")
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    console.print(f"plot: {out}")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if "--scale" in argv:  # time and peak memory per stage at real size
        from bench.partition_scale import main as scale

        return scale([a for a in argv if a != "--scale"])
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer cuts and timing rounds")
    ap.add_argument("--models", default=None,
                    help=f"comma-separated zoo models and/or {MINILM} (default: all; with "
                    f"--quick: {','.join(QUICK_MODELS)})")
    ap.add_argument("--variants", action="store_true",
                    help="also time other quantization settings on the CNNs")
    ap.add_argument("--plot", type=Path, default=None, help="write a PNG figure here")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    from partitioner import minilm

    default = QUICK_MODELS if args.quick else (*zoo.names(), MINILM)
    models = [m for m in (args.models.split(",") if args.models else default) if m]
    for m in models:
        if m != MINILM:
            zoo.get(m)
    if MINILM in models and minilm.missing():
        console.print(f"[yellow]skipping {MINILM}: {minilm.missing()}[/yellow]")
        models.remove(MINILM)
    max_cuts, rounds, iters = (4, 5, 20) if args.quick else (6, 15, 50)
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="tiersplit-bench-") as tmp:
        for m in models:
            mine = bench_model(m, Path(tmp), max_cuts, rounds, iters)
            print_rows(mine)  # as each model finishes: a long run shows results early
            rows += mine
    print_summary(rows)
    if args.variants:
        for m in models:
            if m in CNNS:
                run_variants(m, rounds, iters)
    out = args.plot
    if out is None and os.environ.get("TIERSPLIT_BENCH_OUT"):
        out = Path(os.environ["TIERSPLIT_BENCH_OUT"]) / "partition.png"
    if out is not None:
        plot(rows, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
