"""Measured profiles: edge head latency, cloud tail latency by batch, link RTT/bandwidth.

Placement is only as good as its inputs, so every figure here is measured on the machine
that will run the work: ``profile_edge`` on the device (int8 heads at the configured ORT
threads, plus the wire bytes and encode/decode time of each codec on real activations),
``profile_cloud`` on the cloud host (fp32 tails at batch 1..N with the execution provider
the cloud uses), ``profile_link`` from the device against a running cloud core (probes of
several sizes, RTT and bandwidths from a least-squares fit). The results are the files
of :mod:`placement.profiles`; ``dag_for_bundle`` turns a profile into
per-node costs for the DADS min-cut.

ONNX Runtime and the transport are imported inside the functions: importing this module
costs nothing on a machine that only loads profiles.
"""

from __future__ import annotations

import logging
import statistics
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import numpy as np

from contract.bundle import Bundle, CutSpec
from contract.deadline import Deadline
from placement import (
    CloudProfile,
    CutProfile,
    Dag,
    DagNode,
    EdgeProfile,
    LinkProfile,
    machine_description,
)
from placement.profiles import now_iso

log = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_BATCHES",
    "DEFAULT_CODECS",
    "dag_for_bundle",
    "fit_link",
    "node_costs",
    "profile_cloud",
    "profile_edge",
    "profile_link",
    "session",
    "trimmed_mean",
]

DEFAULT_CODECS = ("raw", "fp16", "int8", "int8+lz4", "int8c+zstd")
DEFAULT_BATCHES = (1, 2, 4, 8)


def session(path: Path, threads: int = 1, providers: Sequence[str] | None = None) -> Any:
    """An ORT session pinned to ``threads`` intra-op threads (sequential execution)."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.log_severity_level = 3
    avail = ort.get_available_providers()
    prov = [p for p in (providers or ["CPUExecutionProvider"]) if p in avail] or \
        ["CPUExecutionProvider"]
    return ort.InferenceSession(str(path), so, providers=prov)


def session_feeds(sess: Any, batch: int, seed: int = 0,
                  specs: Sequence[Any] = ()) -> dict[str, np.ndarray]:
    """Random inputs for ``sess``. Dimension 0 is the batch (cut tensors are batch-major by
    construction); other symbolic dimensions (a text model's sequence length) take their
    size in the manifest's matching ``TensorSpec`` from ``specs``, else 1."""
    rng = np.random.default_rng(seed)
    sizes = {s.name: list(s.shape) for s in specs}
    out = {}
    for i in sess.get_inputs():
        known = sizes.get(i.name, [])
        shape = [batch if j == 0 else (d if isinstance(d, int) and d > 0 else
                                       (known[j] if j < len(known) and known[j] > 0 else 1))
                 for j, d in enumerate(i.shape)]
        t = i.type
        if "float16" in t:
            out[i.name] = rng.standard_normal(shape).astype(np.float16)
        elif "float" in t or "double" in t:
            out[i.name] = rng.standard_normal(shape).astype(
                np.float64 if "double" in t else np.float32)
        elif "bool" in t:
            out[i.name] = rng.integers(0, 2, shape).astype(bool)
        else:
            out[i.name] = rng.integers(0, 4, shape).astype(np.int64 if "64" in t else np.int32)
    return out


def trimmed_mean(samples: Sequence[float], trim: float = 0.1) -> float:
    """Mean without the ``trim`` fraction at each end: stable where the median is not
    (bimodal latencies under a CPU quota) and deaf to a few scheduling outliers."""
    xs = sorted(samples)
    k = int(len(xs) * trim)
    kept = xs[k: len(xs) - k] or xs
    return statistics.fmean(kept)


def _stats(fn: Callable[[], Any], runs: int, warmup: int, gap_ms: float = 0.0
           ) -> dict[str, float]:
    """median / trimmed mean / p90 ms of ``fn`` after ``warmup`` calls, sleeping
    ``gap_ms`` before each timed call (as requests arrive with gaps between them)."""
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(runs):
        if gap_ms:
            time.sleep(gap_ms / 1e3)
        t0 = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - t0) * 1e3)
    samples.sort()
    return {"median": statistics.median(samples), "mean": trimmed_mean(samples),
            "p90": samples[min(len(samples) - 1, int(0.9 * len(samples)))]}


def _time(fn: Callable[[], Any], runs: int, warmup: int) -> tuple[float, float]:
    """(median ms, p90 ms) of ``fn`` after ``warmup`` calls."""
    st = _stats(fn, runs, warmup)
    return st["median"], st["p90"]


def _progress(enabled: bool, total: int, what: str) -> Any:
    if not enabled:
        return nullcontext(None)
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    p = Progress(TextColumn("[bold]{task.description}"), BarColumn(),
                 TextColumn("{task.completed}/{task.total}"), TimeElapsedColumn(),
                 transient=True)
    return _Bar(p, total, what)


class _Bar:
    def __init__(self, progress: Any, total: int, what: str) -> None:
        self.p, self.total, self.what = progress, total, what

    def __enter__(self) -> _Bar:
        self.p.__enter__()
        self.task = self.p.add_task(self.what, total=self.total)
        return self

    def __exit__(self, *exc: object) -> None:
        self.p.__exit__(*exc)

    def advance(self, label: str) -> None:
        self.p.update(self.task, advance=1, description=f"{self.what} {label}")


def _advance(bar: Any, label: str) -> None:
    if bar is not None:
        bar.advance(label)


def _accuracy(cut: CutSpec) -> float:
    a = cut.accuracy
    if a.samples == 0:
        return 1.0
    return a.top1_agreement if a.top1_agreement is not None else a.cosine


def _codec_costs(tensors: Mapping[str, np.ndarray], codecs: Iterable[str], runs: int
                 ) -> tuple[dict[str, int], dict[str, float], dict[str, float]]:
    """Wire bytes, encode ms and decode ms per codec for one sample's crossing tensors."""
    from transport import wire
    from transport.messages import Request

    nbytes, enc, dec = {}, {}, {}
    req = Request("p", "profile", "m", "1", "0" * 64, "k", Deadline.after_ms(60_000),
                  dict(tensors))
    for codec in codecs:
        try:
            frames = wire.encode(req, codec)
        except Exception as e:  # an unknown codec in the list: skip it, say why
            log.warning("codec %s skipped: %s", codec, e)
            continue
        nbytes[codec] = int(wire.wire_bytes(frames))
        enc[codec], _ = _time(lambda c=codec: wire.encode(req, c), runs, 2)
        materialised = [bytes(f) for f in frames]
        dec[codec], _ = _time(lambda m=materialised: wire.decode(m), runs, 2)
    return nbytes, enc, dec


def profile_edge(bundle: Bundle, *, threads: int = 1, runs: int = 30, warmup: int = 5,
                 codecs: Sequence[str] = DEFAULT_CODECS, cuts: Iterable[str] | None = None,
                 progress: bool = True, gap_ms: float = 0.0) -> EdgeProfile:
    """Measure every cut's int8 head (and the full int8 model) on this machine.

    Args:
        bundle: a loaded bundle with the edge files (heads, full int8).
        threads: ORT intra-op threads, as the edge agent will run them.
        runs / warmup: timed and untimed runs per head (median and p90 are kept).
        codecs: wire codecs to measure bytes and encode/decode time for.
        cuts: only these cut ids (default all).
        progress: show a rich progress bar.
        gap_ms: idle time before each timed run. Back to back (0) measures a device
            kept busy; a gap measures one serving spaced requests, which differs on a
            device under a CPU quota or with frequency scaling.

    Each cut records ``head_ms`` (median), ``head_mean_ms`` (10%-trimmed mean) and
    ``head_p90_ms``; :meth:`EdgeProfile.using` picks which one the cost model sees.
    """
    m = bundle.manifest
    wanted = set(cuts) if cuts is not None else None
    todo = [c for c in m.cuts if wanted is None or c.id in wanted]
    out: dict[str, dict[str, Any]] = {}
    full = session(bundle.file(m.full_int8), threads)
    inputs = session_feeds(full, 1, specs=m.inputs)
    reply_bytes = sum(int(np.asarray(o).nbytes) for o in full.run(None, inputs))
    with _progress(progress, len(todo), f"edge {m.name}") as bar:
        for c in todo:
            entry: dict[str, Any] = {"depth": c.depth, "accuracy": _accuracy(c)}
            if c.is_edge:
                st = _stats(lambda: full.run(None, inputs), runs, warmup, gap_ms)
                path = bundle.file(m.full_int8)
                entry.update(head_ms=st["median"], head_mean_ms=st["mean"],
                             head_p90_ms=st["p90"], edge_memory_mb=path.stat().st_size / 1e6)
            elif c.is_cloud:
                nb, enc, dec = _codec_costs(inputs, codecs, max(5, runs // 3))
                entry.update(head_ms=0.0, head_mean_ms=0.0, head_p90_ms=0.0, bytes=nb,
                             encode_ms=enc,
                             decode_ms=dec, edge_memory_mb=0.0)
            else:
                if not c.head:
                    raise ValueError(f"cut {c.id} of {m.name} has no head file")
                path = bundle.file(c.head)
                sess = session(path, threads)
                feeds = {i.name: inputs[i.name] for i in sess.get_inputs() if i.name in inputs}
                st = _stats(lambda s=sess, f=feeds: s.run(None, f), runs, warmup, gap_ms)
                names = [o.name for o in sess.get_outputs()]
                acts = dict(zip(names, sess.run(None, feeds), strict=True))
                crossing = {t.name: acts[t.name] for t in c.tensors if t.name in acts}
                nb, enc, dec = _codec_costs(crossing, codecs, max(5, runs // 3))
                act_mb = sum(a.nbytes for a in acts.values()) / 1e6
                entry.update(head_ms=st["median"], head_mean_ms=st["mean"],
                             head_p90_ms=st["p90"], bytes=nb, encode_ms=enc, decode_ms=dec,
                             edge_memory_mb=path.stat().st_size / 1e6 + act_mb)
            out[c.id] = entry
            _advance(bar, c.id)
    import onnxruntime as ort

    return EdgeProfile(m.name, m.version, bundle.digest, out, reply_bytes,
                       machine_description(threads=threads, onnxruntime=ort.__version__,
                                           runs=runs, gap_ms=gap_ms))


def profile_cloud(bundle: Bundle, *, batches: Sequence[int] = DEFAULT_BATCHES,
                  runs: int = 20, warmup: int = 3, threads: int | None = None,
                  providers: Sequence[str] | None = None, cuts: Iterable[str] | None = None,
                  progress: bool = True) -> CloudProfile:
    """Measure every cut's fp32 tail at each batch size (ORT, CUDA EP when present).

    ``tail_ms[b]`` is the wall time of one batch of ``b`` samples: the cost model divides
    by nothing, it interpolates this curve at the batch a request is expected to join.
    """
    import onnxruntime as ort

    m = bundle.manifest
    if providers is None:
        providers = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider")
                     if p in ort.get_available_providers()]
    wanted = set(cuts) if cuts is not None else None
    todo = [c for c in m.cuts if not c.is_edge and (wanted is None or c.id in wanted)]
    out: dict[str, dict[str, Any]] = {}
    with _progress(progress, len(todo) * len(batches), f"cloud {m.name}") as bar:
        for c in todo:
            rel = m.full_fp32 if c.is_cloud else c.tail
            if not rel:
                raise ValueError(f"cut {c.id} of {m.name} has no tail file")
            sess = session(bundle.file(rel), threads or 1, providers)
            tail: dict[int, float] = {}
            p90s: dict[int, float] = {}
            for b in batches:
                batch_feeds = session_feeds(sess, b, seed=b,
                                            specs=m.inputs if c.is_cloud else c.tensors)
                tail[b], p90s[b] = _time(lambda s=sess, f=batch_feeds: s.run(None, f), runs,
                                         warmup)
                _advance(bar, f"{c.id} b{b}")
            out[c.id] = {"tail_ms": tail, "tail_p90_ms": p90s}
    return CloudProfile(m.name, m.version, bundle.digest, out,
                        f"onnxruntime:{','.join(sess.get_providers()) if todo else ''}",
                        machine_description(threads=threads or 1, onnxruntime=ort.__version__,
                                            providers=list(providers), runs=runs))


def fit_link(probes: Sequence[Mapping[str, float]]) -> tuple[float, float, float]:
    """(rtt_ms, up_Bps, down_Bps) from probes ``{payload_bytes, reply_bytes, rtt_ms}``.

    Least squares of ``rtt = base + up_bytes/up + down_bytes/down`` on the per-size
    minima (the minimum filters out scheduling noise, which only ever adds time). A
    non-positive slope (the size made no measurable difference) means "faster than we
    can measure" and is reported as 1e11 bytes/s.
    """
    groups: dict[tuple[float, float], list[float]] = {}
    for p in probes:
        groups.setdefault((float(p["payload_bytes"]), float(p["reply_bytes"])), []).append(
            float(p["rtt_ms"]))
    pts = [(u, d, min(v)) for (u, d), v in groups.items()]
    if not pts:
        raise ValueError("no probes to fit")
    a = np.array([[1.0, u, d] for u, d, _ in pts])
    y = np.array([r for _, _, r in pts])
    cols = [0] + [j for j in (1, 2) if np.ptp(a[:, j]) > 0]
    coef, *_ = np.linalg.lstsq(a[:, cols], y, rcond=None)
    full = dict(zip(cols, coef, strict=True))
    base = max(0.0, float(full.get(0, y.min())))
    up_slope, down_slope = float(full.get(1, 0.0)), float(full.get(2, 0.0))
    up = 1e3 / up_slope if up_slope > 0 else 1e11
    down = 1e3 / down_slope if down_slope > 0 else 1e11
    return base, min(up, 1e11), min(down, 1e11)


def profile_link(link: Any, *, sizes: Sequence[int] = (0, 16_384, 131_072, 524_288),
                 repeats: int = 5, endpoint: str = "", timeout: float = 10.0,
                 progress: bool = True) -> LinkProfile:
    """Probe a running cloud core through ``link`` (a ``transport.ClientLink``).

    Sends pings with payloads of each size (uplink) and asks for pongs padded to each
    size (downlink), ``repeats`` times each, interleaved so drift hits all sizes alike.
    """
    plan = [(s, 0) for s in sizes] + [(0, s) for s in sizes if s]
    probes: list[dict[str, float]] = []
    with _progress(progress, len(plan) * repeats, "link") as bar:
        for _ in range(repeats):
            for up, down in plan:
                r = link.ping(up, down, timeout=timeout)
                probes.append({"payload_bytes": up, "reply_bytes": down,
                               "rtt_ms": float(r.rtt_ms)})
                _advance(bar, f"{up}/{down}")
    rtt, up_bps, down_bps = fit_link(probes)
    return LinkProfile(endpoint, rtt, up_bps, down_bps, tuple(probes),
                       machine_description(repeats=repeats), now_iso())


# ----------------------------------------------------------------- DAG for the min-cut
def node_costs(head_sets: Sequence[tuple[frozenset[int], float]], weights: Sequence[float]
               ) -> list[float]:
    """Per-node times consistent with measured times of nested node sets.

    Neurosurgeon fits a per-layer-type regression; with measured heads we can do better:
    each candidate cut's head time is a measured prefix sum. Nodes between two nested
    heads share the time difference in proportion to their estimated MACs (plus a small
    floor so MAC-free ops are not free). Nodes outside every measured set, or sets that
    are not nested, fall back to the overall ms-per-MAC rate.

    Args:
        head_sets: (node indices, measured ms), in any order.
        weights: estimated work per node (MACs), by node index.
    """
    n = len(weights)
    w = np.asarray(weights, dtype=float)
    w = w + max(w.mean() * 0.01, 1e-9) if n else w
    cost = np.full(n, np.nan)
    prev: frozenset[int] = frozenset()
    prev_ms = 0.0
    for nodes, ms in sorted(head_sets, key=lambda x: (len(x[0]), x[1])):
        if not prev <= nodes:
            continue
        seg = sorted(nodes - prev)
        if not seg:
            continue
        delta = max(0.0, ms - prev_ms)
        share = w[seg] / w[seg].sum()
        cost[seg] = delta * share
        prev, prev_ms = nodes, max(ms, prev_ms)
    known = ~np.isnan(cost)
    rate = cost[known].sum() / w[known].sum() if known.any() and w[known].sum() else 0.0
    cost[~known] = w[~known] * rate
    return [float(x) for x in cost]


def dag_for_bundle(bundle: Bundle, cuts: Sequence[CutProfile], *, codec: str = "raw",
                   batch: float = 1.0) -> tuple[Dag, Any]:
    """The bundle's graph with per-node edge/cloud times calibrated on the profiles.

    Edge times come from the measured heads (nested prefix sums), cloud times from the
    measured tails at ``batch`` (the complement sets, also nested); per-tensor bytes are
    the fp32 bytes scaled by the codec's measured ratio. Returns ``(dag, graph_info)``.
    """
    import onnx

    from partitioner.graph import analyze, validate_cut

    info = analyze(onnx.load(str(bundle.file(bundle.manifest.full_fp32))))
    by_id = {c.cut_id: c for c in cuts}
    heads: list[tuple[frozenset[int], float]] = []
    tails: list[tuple[frozenset[int], float]] = []
    all_nodes = frozenset(range(len(info.nodes)))
    ratios = []
    for spec in bundle.manifest.cuts:
        prof = by_id.get(spec.id)
        if prof is None:
            continue
        if spec.is_edge:
            head = all_nodes
        elif spec.is_cloud:
            head = frozenset()
        else:
            head = frozenset(validate_cut(info, [t.name for t in spec.tensors]))
        heads.append((head, prof.head_ms))
        if not spec.is_edge and prof.tail_ms:
            tails.append((all_nodes - head, prof.tail_at(batch) / max(batch, 1.0)))
        raw = prof.bytes.get("raw", 0)
        if raw and codec in prof.bytes:
            ratios.append(prof.bytes[codec] / raw)
    macs = [float(nd.macs) for nd in info.nodes]
    edge_ms = node_costs(heads, macs)
    # Tail sets shrink as heads grow, so they nest too (the smallest tail first).
    cloud_ms = node_costs(tails, macs)
    ratio = statistics.median(ratios) if ratios else 1.0
    nodes = []
    free: set[str] = set()
    for nd in info.nodes:
        if nd.constant:  # recomputed on both sides: no time, never crosses
            free.update(nd.outputs)
            nodes.append(DagNode(str(nd.index), tuple(nd.inputs), tuple(nd.outputs), 0.0, 0.0))
            continue
        nodes.append(DagNode(str(nd.index), tuple(nd.inputs), tuple(nd.outputs),
                             edge_ms[nd.index], cloud_ms[nd.index]))
    tb = {name: (0.0 if name in free else t.bytes * ratio) for name, t in info.tensors.items()}
    return Dag(tuple(nodes), tb, tuple(info.inputs), tuple(info.outputs)), info

