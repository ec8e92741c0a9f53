"""Placement benchmark: does the cost model pick the cut that is really fastest?

For each zoo model x link profile x edge speed, every candidate cut is run end to end:
int8 head in ONNX Runtime on this thread (the "edge") -> codec -> ZeroMQ -> the link
emulator (``transport.linkemu``, shaped by ``configs/links.yaml``) -> an in-process
``CloudCore`` (batcher + ORT backend) -> reply. The same run measures the inputs of the
cost model first (``profile_edge`` on the edge, ``profile_cloud`` for the tails,
``profile_link`` through each emulated link) and prints, per cell:

* predicted vs measured latency (10%-trimmed means) of every cut;
* chosen/best-measured (goal <= 1.05), and the median prediction error (goal <= 15%);
* the speedup of the chosen cut over all-edge and all-cloud.

With ``--lowbit`` (a list of codecs, default ``int4c+zstd,int2c+zstd,int3m+zstd,
int2m+zstd``) the codec is
chosen with the cut: every interior cut is also measured under the candidate codec the
cost model predicts best for it (arms named ``cut@codec``), and each cell shows the
choice with the configured ``--codec`` alone beside the choice over (cut, codec) pairs.
A cut's candidates are the codecs its bundle records as meeting the accuracy floor
(``CutSpec.codecs``); a bundle that records none takes the listed codecs as they are
(the run says so, since their accuracy was not checked). The bundles are partitioned
with that codec measurement (and without device tails, which no cell uses).

The slow edge is a CPU quota: when root with cgroup v1 ``cpu`` writable, this thread
(only the edge work: head + encode) is moved into a child cgroup with
``cpu.cfs_quota_us`` = 1 ms per 10 ms ``cpu.cfs_period_us`` (10%, ``--slow-share``; see
:class:`CpuQuota` for what a quota does to short inferences), removed afterwards; otherwise the
fast edge gets 2 ORT threads and the slow one 1.

Usage::

    python -m bench.placement [--quick] [--models a,b,c] [--links 3g,4g,wifi,lan]
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parents[1]

from contract.deadline import Deadline  # noqa: E402
from partitioner.profile import trimmed_mean  # noqa: E402
from placement import (  # noqa: E402
    CloudEstimate,
    Constraints,
    CutProfile,
    LinkEstimate,
    choose,
    cut_profiles,
    predict,
)

console = Console(width=int(os.environ.get("COLUMNS", "140")))
CGROUP_CPU = Path("/sys/fs/cgroup/cpu")
# The smallest quota the kernel takes (1 ms) with the period that gives the share, so
# short inferences are throttled too: with the default 100 ms period a burst of a few ms
# runs at full speed inside its quota.
QUOTA_US = 1_000
# Edge profiles are timed with this idle gap before each run, as requests arrive: under a
# CPU quota a device kept busy and one serving spaced requests are not equally slow.
GAP_MS = 10.0


# ----------------------------------------------------------------------- edge speeds
@dataclass
class EdgeSpeed:
    name: str
    threads: int
    quota: bool  # run inside the CPU-quota cgroup
    gmacs: float | None = None  # emulated device: each head lasts >= MACs / (gmacs * 1e9)


class CpuQuota:
    """A child cgroup (v1 ``cpu``) with a CFS quota; threads join and leave it by TID.

    A quota is a duty cycle, not a slower clock: work shorter than the quota slice runs at
    full speed when the slice is fresh. With the smallest slice the kernel accepts (1 ms)
    every inference of a few milliseconds is throttled about ``1/share`` times, whether
    it runs back to back (the profile) or after a network wait (a request), so profile
    and measurement see the same device. Sub-millisecond models barely slow down: that
    is what such a quota means for them, and the table shows it.
    """

    def __init__(self, share: float) -> None:
        self.path = CGROUP_CPU / f"tiersplit-bench-{os.getpid()}"
        self.path.mkdir()
        try:
            (self.path / "cpu.cfs_period_us").write_text(str(int(QUOTA_US / share)))
            (self.path / "cpu.cfs_quota_us").write_text(str(QUOTA_US))
        except OSError:
            self.remove()
            raise

    @staticmethod
    def available() -> bool:
        return (os.geteuid() == 0 and (CGROUP_CPU / "cpu.cfs_quota_us").exists()
                and os.access(CGROUP_CPU, os.W_OK))

    @contextlib.contextmanager
    def this_thread(self) -> Iterator[None]:
        tid = threading.get_native_id()
        (self.path / "tasks").write_text(str(tid))
        try:
            yield
        finally:
            (CGROUP_CPU / "tasks").write_text(str(tid))

    def remove(self) -> None:
        for _ in range(50):
            try:
                self.path.rmdir()
                return
            except OSError:
                time.sleep(0.1)


def edge_context(speed: EdgeSpeed, quota: CpuQuota | None):
    if speed.quota and quota is not None:
        return quota.this_thread()
    return contextlib.nullcontext()


# ----------------------------------------------------------------------- edge runner
class Edge:
    """Heads of one bundle on this thread, sending through one client link."""

    def __init__(self, bundle, threads: int, gmacs: float | None = None) -> None:
        from partitioner.profile import session, session_feeds

        self.bundle, self.m = bundle, bundle.manifest
        self.gmacs = gmacs
        self.sessions = {}
        for c in self.m.cuts:
            if c.is_cloud:
                continue
            self.sessions[c.id] = session(bundle.file(c.head or self.m.full_int8), threads)
        self.inputs = session_feeds(self.sessions["edge"], 1)

    def run(self, cut_id: str, link, codec: str) -> float:
        from transport.messages import Request

        t0 = time.perf_counter()
        spec = self.m.cut(cut_id)
        if spec.is_edge:
            self.sessions["edge"].run(None, self.inputs)
            self._pad(spec, t0)
            return (time.perf_counter() - t0) * 1e3
        if spec.is_cloud:
            tensors = dict(self.inputs)
        else:
            s = self.sessions[cut_id]
            names = [o.name for o in s.get_outputs()]
            acts = dict(zip(names, s.run(None, self.inputs), strict=True))
            tensors = {t.name: acts[t.name] for t in spec.tensors}
            self._pad(spec, t0)
        req = Request(uuid.uuid4().hex, "bench", self.m.name, self.m.version,
                      self.bundle.digest, cut_id, Deadline.after_ms(60_000), tensors, codec)
        reply = link.submit(req).result(timeout=60)
        if not reply.ok:
            raise RuntimeError(f"{self.m.name}/{cut_id}: {reply.status.name} {reply.error}")
        return (time.perf_counter() - t0) * 1e3


    def _pad(self, spec, t0: float) -> None:
        """Emulated device: sleep (no CPU) until the head has lasted MACs / speed, the
        same rule as the edge agent's ``runtime.emulate_gmacs``."""
        if self.gmacs:
            left = spec.head_flops / (self.gmacs * 1e9) - (time.perf_counter() - t0)
            if left > 0:
                time.sleep(left)


def emulated_profile(profile, bundle, gmacs: float | None):
    """The edge profile of a device emulated at ``gmacs``: each head takes at least its
    MACs at that speed (what :meth:`Edge._pad` enforces when the cell is measured)."""
    if not gmacs:
        return profile
    cuts = {}
    for cut_id, v in profile.cuts.items():
        floor_ms = bundle.manifest.cut(cut_id).head_flops / (gmacs * 1e9) * 1e3
        cuts[cut_id] = {**v, "head_ms": max(float(v.get("head_ms", 0.0)), floor_ms)}
    return replace(profile, cuts=cuts, machine={**profile.machine, "emulated_gmacs": gmacs})


# ----------------------------------------------------------------------- the bench
@dataclass
class Cell:
    model: str
    speed: str
    link: str
    predicted: dict[str, float]
    measured: dict[str, float]
    chosen: str
    chosen_codec: str = ""  # the choice over (cut, codec) pairs, as an arm label

    @property
    def best(self) -> str:
        """The measured best under the configured codec alone."""
        return min((k for k in self.measured if "@" not in k), key=self.measured.__getitem__)

    @property
    def best_any(self) -> str:
        """The measured best over every (cut, codec) arm."""
        return min(self.measured, key=self.measured.__getitem__)

    @property
    def ratio(self) -> float:
        return self.measured[self.chosen] / self.measured[self.best]

    @property
    def errors(self) -> list[float]:
        return [abs(self.predicted[c] - m) / m for c, m in self.measured.items()]


def build_bundles(models: list[str], repo: Path, max_cuts: int, image_size: int):
    """Partition the zoo models; image models at ``image_size`` (their pooling is
    adaptive), so the edge has work worth splitting: at 64x64 every zoo model runs in
    well under a millisecond and "all on the edge" wins on every link."""
    from contract.bundle import Bundle
    from partitioner import partition, zoo

    out = {}
    for name in models:
        z = zoo.get(name)
        shape = z.input_shapes[0]
        if len(shape) == 4 and image_size and shape[2:] != (image_size, image_size):
            path = partition(z.build(), [(1, shape[1], image_size, image_size)], repo,
                             name=name, max_cuts=max_cuts, progress=False,
                             task=z.task, device_tails=False)
        else:
            path = partition(f"zoo:{name}", None, repo, max_cuts=max_cuts, progress=False,
                             device_tails=False)
        out[name] = Bundle.load(path, require_signature=False)
    return out


def _cloud_process(repo: str, models: list[str], conn) -> None:
    """Child process: a CloudCore on a free loopback port until told to stop.

    The cloud runs in its own process, as it would on its own machine: in one process
    the edge, the link emulator and the cloud would contend for one GIL and the cloud's
    thread hops would be charged to the link."""
    from cloud_core import CloudCore, parse_config

    logging.basicConfig(level=logging.ERROR)
    cfg = parse_config({
        "repository": str(repo), "allow_unsigned": True,
        "models": [{"name": m, "versions": ["1"]} for m in models],
        "transports": [{"kind": "zmq", "endpoints": ["tcp://127.0.0.1:0"], "insecure": True}],
        "batching": {"max_batch": 8, "max_queue_delay_ms": 0.0},
        "backend": {"kind": "onnxruntime", "device": "cpu", "threads": 1},
        "executor_workers": 1, "http": {"enabled": False}, "admin": {"enabled": False},
        "grace_s": 1.0,
    })
    core = CloudCore(cfg)
    core.start()
    conn.send(core.endpoints[0])
    conn.recv()  # any message (or EOF) stops the core
    core.stop(1.0)


class CloudProcess:
    def __init__(self, repo: Path, models: list[str]) -> None:
        import multiprocessing as mp

        ctx = mp.get_context("spawn")
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=_cloud_process, args=(str(repo), models, child),
                                name="tiersplit-bench-cloud", daemon=True)
        self.proc.start()
        if not self.conn.poll(120):
            self.stop()
            raise RuntimeError("cloud core process did not start")
        self.endpoint = self.conn.recv()

    def stop(self) -> None:
        with contextlib.suppress(OSError, BrokenPipeError):
            self.conn.send("stop")
        self.proc.join(10)
        if self.proc.is_alive():
            self.proc.terminate()
            self.proc.join(5)


def client_for(port: int):
    from transport import ZmqClientConfig, make_client_link

    link = make_client_link(ZmqClientConfig(endpoint=f"tcp://127.0.0.1:{port}",
                                            insecure=True), "bench")
    t0 = time.monotonic()
    while not link.connected:
        if time.monotonic() - t0 > 10:
            raise RuntimeError("client link did not connect")
        time.sleep(0.01)
    return link


def service_overhead(edge: Edge, cuts: list[CutProfile], link, est: LinkEstimate,
                     codec: str, n: int = 5) -> float:
    """The cloud's per-request overhead beyond tail compute (decode, validation, batcher
    and executor hand-offs), as the edge policy learns it from replies: send a few
    requests of the cut with the fewest bytes and subtract what the model already
    explains. Returned as the CloudEstimate's queue_ms."""
    remote = [c for c in cuts if not c.is_edge and c.tail_ms]
    probe = min(remote, key=lambda c: c.bytes.get(codec, c.bytes.get("raw", 0)))
    base = predict(probe, est, CloudEstimate(), codec).total_ms
    extra = [edge.run(probe.cut_id, link, codec) - base for _ in range(n)]
    return max(0.0, trimmed_mean(extra))


def arm(cut_id: str, codec: str, base: str) -> str:
    """Label of one measured (cut, codec) pair: the bare cut id under the base codec."""
    return cut_id if codec in (base, "") else f"{cut_id}@{codec}"


def with_codecs(cuts: list[CutProfile], bundle, lowbit: tuple[str, ...]) -> list[CutProfile]:
    """The profiles with their candidate codecs: the manifest's that meet the floor, else
    ``lowbit`` unchecked (interior cuts only: "cloud" sends the inputs as they are)."""
    out = []
    for c in cuts:
        if c.is_edge or c.cut_id == "cloud" or not lowbit:
            out.append(c)
            continue
        spec = bundle.manifest.cut(c.cut_id)
        recorded = getattr(spec, "codecs", None) or []
        codecs = (tuple(k.codec for k in recorded if k.meets_floor and k.codec in c.bytes)
                  if recorded else tuple(k for k in lowbit if k in c.bytes))
        out.append(replace(c, codecs=codecs) if codecs else c)
    return out


def measure_cell(edge: Edge, cuts: list[CutProfile], link, est: LinkEstimate, codec: str,
                 reps: int, budget_s: float, cloud: CloudEstimate
                 ) -> tuple[dict[str, float], dict[str, float]]:
    """End-to-end latency (10%-trimmed mean) of every cut under ``codec``, and of every
    cut that lists candidate codecs under the one predicted best for it. Arms are
    measured round-robin (one request each per round) so drift in the machine's load
    hits all alike."""
    arms: list[tuple[str, str, float]] = []
    for c in cuts:
        base = c.cut_id if c.is_edge else arm(c.cut_id, codec, codec)
        arms.append((c.cut_id, codec, predict(c, est, cloud, codec).total_ms))
        if c.codecs:
            best = choose([c], est, cloud, Constraints(privacy_floor=0), codec).predicted
            if arm(c.cut_id, best.codec, codec) != base:
                arms.append((c.cut_id, best.codec, best.total_ms))
    predicted = {arm(cid, k, codec): ms for cid, k, ms in arms}
    samples: dict[str, list[float]] = {label: [] for label in predicted}
    t_end = time.monotonic() + budget_s
    for r in range(reps):
        for cid, k, _ in arms:
            samples[arm(cid, k, codec)].append(edge.run(cid, link, k))
        if r >= 2 and time.monotonic() > t_end:
            break
    return predicted, {k: trimmed_mean(v) for k, v in samples.items()}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer repetitions and cuts (< 2 min)")
    ap.add_argument("--models", default="resnet_like,mobilenet_like,transformer_encoder")
    ap.add_argument("--links", default="3g,4g,wifi,lan")
    ap.add_argument("--links-file", type=Path, default=ROOT / "configs" / "links.yaml")
    ap.add_argument("--codec", default="int8+lz4", help="wire codec for every request")
    ap.add_argument("--lowbit", default="int4c+zstd,int2c+zstd,int3m+zstd,int2m+zstd",
                    help="candidate codecs chosen with the cut ('' = the codec alone)")
    ap.add_argument("--reps", type=int, default=0, help="requests per cut (default 5/15)")
    ap.add_argument("--image-size", type=int, default=224,
                    help="input resolution of the image models (0: the zoo's 64)")
    ap.add_argument("--slow-share", type=float, default=0.1,
                    help="CPU share of the slow edge (cgroup quota)")
    ap.add_argument("--max-cuts", type=int, default=0, help="cuts per bundle (default 5/6)")
    ap.add_argument("--device-gmacs", type=float, default=1.0,
                    help="also run an emulated device of this speed (0: off)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    for noisy in ("root", "cloud_core", "transport", "partitioner"):
        logging.getLogger(noisy).setLevel(logging.ERROR)

    from partitioner.profile import profile_cloud, profile_edge, profile_link
    from transport.linkemu import LinkEmulator, load_profiles

    reps = args.reps or (5 if args.quick else 15)
    max_cuts = args.max_cuts or (5 if args.quick else 6)
    models = [m for m in args.models.split(",") if m]
    all_links = load_profiles(args.links_file)
    link_names = [n for n in args.links.split(",") if n]
    t_start = time.monotonic()
    lowbit = tuple(k for k in args.lowbit.split(",") if k)
    candidates = tuple(dict.fromkeys((args.codec, *lowbit)))

    # GIL hand-offs between the emulator, the ZeroMQ threads and this one otherwise wait
    # up to the 5 ms default switch interval: that is Python, not the link.
    sys.setswitchinterval(0.0005)
    quota = CpuQuota(args.slow_share) if CpuQuota.available() else None
    speeds = ([EdgeSpeed("fast", 1, False),
               EdgeSpeed(f"slow ({args.slow_share:.0%} CPU quota)", 1, True)]
              if quota else [EdgeSpeed("fast (2 threads)", 2, False),
                             EdgeSpeed("slow (1 thread)", 1, False)])
    if args.device_gmacs:
        # A real device is slower than this host's CPU, and the cloud faster: emulate it
        # (sleep-padded, as the edge agent's runtime.emulate_gmacs does) so that splits
        # have something to win.
        speeds.append(EdgeSpeed(f"device ({args.device_gmacs:g} GMAC/s)", 1, False,
                                args.device_gmacs))
    work = Path(tempfile.mkdtemp(prefix="tiersplit-bench-placement-"))
    core = None
    cells: list[Cell] = []
    try:
        console.print(f"partitioning {', '.join(models)} (max {max_cuts} cuts)...")
        bundles = build_bundles(models, work / "repo", max_cuts, args.image_size)
        core = CloudProcess(work / "repo", models)
        port = int(core.endpoint.rsplit(":", 1)[1])
        clouds = {m: profile_cloud(b, batches=(1, 2), runs=5 if args.quick else 20,
                                   progress=False, providers=["CPUExecutionProvider"])
                  for m, b in bundles.items()}
        for speed in speeds:
            with edge_context(speed, quota):
                edges = {m: Edge(b, speed.threads, speed.gmacs) for m, b in bundles.items()}
            profiles = {}
            for lname in link_names:
                lp = all_links[lname]
                with LinkEmulator(("127.0.0.1", port), lp, seed=1) as emu:
                    link = client_for(emu.port)
                    try:
                        measured_link = profile_link(link, sizes=(0, 16384), repeats=3,
                                                     progress=False)
                        est = measured_link.estimate
                        with edge_context(speed, quota):
                            for m in models:
                                # Re-profile the edge right before the cell: the machine
                                # is shared, and a profile minutes old describes another
                                # load (the runtime policy re-measures continuously too).
                                profiles[m] = profile_edge(
                                    bundles[m], threads=speed.threads, codecs=candidates,
                                    runs=20 if args.quick else 40, progress=False,
                                    gap_ms=GAP_MS).using("mean")
                                profiles[m] = emulated_profile(profiles[m], bundles[m],
                                                               speed.gmacs)
                                cuts = with_codecs(cut_profiles(profiles[m], clouds[m]),
                                                   bundles[m], lowbit)
                                for c in cuts:  # warm-up: sessions, queues, connection
                                    edges[m].run(c.cut_id, link, args.codec)
                                cloud = CloudEstimate(queue_ms=service_overhead(
                                    edges[m], cuts, link, est, args.codec, n=9))
                                plain = [replace(c, codecs=()) for c in cuts]
                                d = choose(plain, est, cloud, Constraints(privacy_floor=0),
                                           args.codec)
                                d2 = choose(cuts, est, cloud, Constraints(privacy_floor=0),
                                            args.codec)
                                budget = 2.0 if args.quick else 8.0
                                pred, meas = measure_cell(edges[m], cuts, link, est,
                                                          args.codec, reps, budget, cloud)
                                cells.append(Cell(m, speed.name, lname, pred, meas, d.cut_id,
                                                  arm(d2.cut_id, d2.codec, args.codec)))
                    finally:
                        link.close()
                console.print(f"  {speed.name} / {lname}: link rtt {est.rtt_ms:.2f} ms, "
                              f"up {est.up_Bps / 1e6:.3g} MB/s "
                              f"(nominal {lp.up_bps / 8e6:.3g} MB/s, rtt {lp.rtt_ms} ms)  "
                              f"[{time.monotonic() - t_start:.0f}s]")
    finally:
        if core is not None:
            core.stop()
        if quota is not None:
            quota.remove()
        shutil.rmtree(work, ignore_errors=True)

    report(cells, args.codec)
    if lowbit:
        report_lowbit(cells, bundles_checked(bundles), args.codec)
    console.print(f"total {time.monotonic() - t_start:.0f} s")
    return 0


def report(cells: list[Cell], codec: str) -> None:
    for c in cells:
        t = Table(title=f"{c.model} | {c.speed} | {c.link} (codec {codec})", title_justify="left")
        t.add_column("cut")
        for cid in c.measured:
            t.add_column(cid + (" *" if cid == c.chosen else ""), justify="right")
        t.add_row("predicted ms", *(f"{c.predicted[k]:.2f}" for k in c.measured))
        t.add_row("measured ms", *(f"{c.measured[k]:.2f}" for k in c.measured))
        t.add_row("error", *(f"{abs(c.predicted[k] - v) / v:.0%}" for k, v in c.measured.items()))
        console.print(t)
    s = Table(title="Placement: chosen cut vs best measured, per cell")
    for col in ("model", "edge", "link", "chosen", "best measured", "chosen/best",
                "median err", "vs all-edge", "vs all-cloud"):
        s.add_column(col, justify="right" if col not in ("model", "edge", "link") else "left")
    for c in cells:
        s.add_row(c.model, c.speed, c.link, c.chosen, c.best, f"{c.ratio:.3f}",
                  f"{statistics.median(c.errors):.0%}",
                  f"{c.measured['edge'] / c.measured[c.chosen]:.2f}x",
                  f"{c.measured['cloud'] / c.measured[c.chosen]:.2f}x")
    console.print(s)
    ratios = [c.ratio for c in cells]
    errors = [e for c in cells for e in c.errors]
    ok = sum(r <= 1.05 for r in ratios)
    console.print(f"cells: {len(cells)}; chosen/best <= 1.05 in {ok}/{len(cells)} "
                  f"(worst {max(ratios):.3f}); median prediction error "
                  f"{statistics.median(errors):.1%} over {len(errors)} cut measurements "
                  f"(goals: 1.05 every cell, 15%)")
    out = os.environ.get("TIERSPLIT_BENCH_OUT")
    if out:
        plot(cells, Path(out) / "placement_pred_vs_meas.png")


def bundles_checked(bundles: dict) -> bool:
    """Whether every bundle records which codecs meet its accuracy floor."""
    return all(getattr(c, "codecs", None) for b in bundles.values()
               for c in b.manifest.cuts if not c.is_edge and not c.is_cloud)


def report_lowbit(cells: list[Cell], checked: bool, codec: str) -> None:
    """The choice with the codec alone vs over (cut, codec) pairs, per cell."""
    t = Table(title=f"Codec chosen with the cut: {codec} alone vs (cut, codec) pairs "
                    "(measured ms of each choice; * = an interior cut with a low-bit codec "
                    "is the measured best)")
    for col in ("model", "edge", "link", f"choice ({codec})", "ms", "choice (pairs)", "ms",
                "best measured", "gain"):
        t.add_column(col, justify="left" if col in ("model", "edge", "link") else "right")
    wins = []
    for c in cells:
        a, b = c.measured[c.chosen], c.measured.get(c.chosen_codec, float("nan"))
        interior = "@" in c.best_any and not c.best_any.startswith(("edge", "cloud"))
        if interior:
            wins.append(c)
        t.add_row(c.model, c.speed, c.link, c.chosen, f"{a:.2f}", c.chosen_codec, f"{b:.2f}",
                  c.best_any + (" *" if interior else ""), f"{a / b:.2f}x")
    console.print(t)
    console.print(f"an interior cut with a low-bit codec is the measured best in {len(wins)}/"
                  f"{len(cells)} cells: " + ", ".join(f"{c.model}/{c.speed}/{c.link} "
                                                      f"({c.best_any})" for c in wins))
    for label, best in ((f"{codec} alone", lambda c: c.best), ("with low-bit codecs",
                                                               lambda c: c.best_any)):
        won = [c for c in cells if best(c).split("@")[0] not in ("edge", "cloud")]
        console.print(f"an interior cut is the measured best ({label}) in {len(won)}/"
                      f"{len(cells)} cells" + (": " if won else "") + ", ".join(
                          f"{c.model}/{c.speed}/{c.link} ({best(c)})" for c in won))
    if not checked:
        console.print("[yellow]these bundles record no per-cut codec accuracy "
                      "(CutSpec.codecs): the low-bit codecs were offered to every interior "
                      "cut unchecked[/yellow]")


def plot(cells: list[Cell], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 5))
    xs = [m for c in cells for m in c.measured.values()]
    ys = [c.predicted[k] for c in cells for k in c.measured]
    ax.loglog(xs, ys, ".", alpha=0.6)
    lo, hi = min(xs + ys), max(xs + ys)
    ax.plot([lo, hi], [lo, hi], "k--", lw=1)
    ax.set_xlabel("measured ms")
    ax.set_ylabel("predicted ms")
    ax.set_title("placement: predicted vs measured latency per cut")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
