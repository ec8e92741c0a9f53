"""Adaptation benchmark: the runtime policy on replayed link traces, vs the hindsight oracle.

    python -m bench.adapt [--quick] [--traces lte_drive,wifi_congestion,handover_3g_wifi]
                          [--model mobilenet_like] [--edge-gmacs 0.1] [--cuts k2,k13,edge]
                          [--window S] [--plot DIR] [--json FILE]

A real ``tiersplit cloud serve`` and real ``tiersplit edge run`` agents (CurveZMQ), each
agent's link to the cloud through one link emulator replaying the trace
(``configs/traces/*.csv``). Every proxied connection has its own bottleneck, so all agents
see the same trace, in lockstep, without sharing bandwidth. The agents, in one run:

* ``policy``: the runtime policy as configured by default;
* ``latest``: the per-request "latest sample" rule (Neurosurgeon/Edgent: re-decide every
  request from the newest measurement), when the agent's config has
  ``policy.estimator: latest``;
* one agent per fixed cut, forced through the v2 API's per-request ``tiersplit_cut``
  override (``api.allow_cut_override``).

Each agent gets sequential requests from its own application thread (a short pause after
each answer), timed at the application. The **oracle** is, for each second of the trace,
the fixed cut with the lowest mean latency in that second (known only in hindsight); its
samples are that cut's samples in that second. Goals: policy mean <= 1.10x the oracle on
every trace, and policy p99 below the latest-sample rule's.

The device is emulated at ``--edge-gmacs`` GMAC/s (ORT runs padded by sleeping), as in
``tiersplit demo``: the host is far faster than an edge device. ``--quick`` replays a
window of each trace (centred on its largest uplink step) with three cuts.

The cascade section (``--no-cascade`` skips it) tunes the device cascade of the trained
digits CNN on one half of its held-out digits for ``--cascade-target`` agreement with the
fp32 model and reports, on the other half, the share the device answers alone and their
agreement. Goal: >= 50% local at >= 99% agreement.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import shutil
import statistics
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from contract import dtypes
from contract.bundle import Bundle
from tiersplit.devtools.services import Service, ServiceError, tiersplit_cmd
from transport import keys
from transport.linkemu import LinkEmulator, LinkProfile
from transport.linktrace import Trace

REPO = Path(__file__).resolve().parents[1]
TRACES = ("lte_drive", "wifi_congestion", "handover_3g_wifi")
HEADER_LENGTH = "Inference-Header-Content-Length"
CUT_PARAM = "tiersplit_cut"
GAP_S = 0.05  # an application's pause after each answer, the same for every agent
GOAL_MEAN = 1.10
GOAL_LOCAL, GOAL_AGREEMENT = 0.5, 0.99
log = logging.getLogger(__name__)
console = Console(width=None if sys.stdout.isatty() else 140)


@dataclass
class Agent:
    """One agent process and its application's samples: (trace time s, ms, path, cut)."""

    name: str
    cut: str | None  # forced cut, None for the policy runs
    service: Service
    url: str
    samples: list[tuple[float, float, str, str]] = field(default_factory=list)
    errors: int = 0
    first_error: str | None = None


# ----------------------------------------------------------------------------- analysis
def pick_window(trace: Trace, length_s: float) -> float:
    """Start of the ``length_s`` window centred on the trace's largest uplink step (the
    hardest moment to adapt to), moved inside the trace when that is near an end."""
    if length_s >= trace.duration_s:
        return 0.0
    rows = trace.rows
    i = max(range(1, len(rows)), key=lambda k: abs(math.log(rows[k].up_bps /
                                                            rows[k - 1].up_bps)))
    return min(max(0.0, rows[i].t_s - length_s / 2), trace.duration_s - length_s)


def summary(ms: list[float]) -> dict[str, float]:
    """n, mean, p50, p99 of latencies (ms); NaN figures for no samples."""
    if not ms:
        return {"n": 0, "mean": math.nan, "p50": math.nan, "p99": math.nan}
    a = np.asarray(ms)
    return {"n": len(ms), "mean": float(a.mean()), "p50": float(np.percentile(a, 50)),
            "p99": float(np.percentile(a, 99))}


def oracle(fixed: dict[str, list[tuple[float, float]]], length_s: float
           ) -> tuple[list[float], list[str | None]]:
    """The hindsight-best fixed cut per second: its samples, and its cut per second.

    ``fixed`` maps a cut to ``(trace time s, latency ms)`` samples, binned by the second
    the request started in. A second no cut has a sample in has no oracle cut (None).
    """
    bins: dict[str, dict[int, list[float]]] = {c: defaultdict(list) for c in fixed}
    for cut, samples in fixed.items():
        for t, ms in samples:
            if 0 <= t < length_s:
                bins[cut][int(t)].append(ms)
    out: list[float] = []
    best_per_s: list[str | None] = []
    for s in range(math.ceil(length_s)):
        means = {c: statistics.fmean(b[s]) for c, b in bins.items() if b.get(s)}
        best = min(means, key=means.__getitem__) if means else None
        best_per_s.append(best)
        if best is not None:
            out.extend(bins[best][s])
    return out, best_per_s


# ----------------------------------------------------------------------------- set-up
def _bundle(model: str, workdir: Path) -> tuple[Path, Path, Path]:
    """The cached signed bundle of zoo ``model``: (bundle dir, signing .pub, repository)."""
    root = workdir / model
    kdir = root / "signing"
    sec, pub = kdir / "signing.key", kdir / "signing.pub"
    if not sec.exists():
        keys.generate("ed25519", kdir, "signing")
    repo = root / "bundles"
    bdir = repo / model / "1"
    if not (bdir / "manifest.yaml").exists():
        from partitioner import partition

        with console.status(f"partitioning zoo:{model} (cached for the next runs) ..."):
            partition(f"zoo:{model}", None, repo, name=model, version="1",
                      signing_key=keys.load_ed25519_private(sec), max_cuts=6, progress=False)
    return bdir, pub, repo


def latest_supported() -> bool:
    """Whether this agent's config accepts ``policy.estimator: latest``."""
    from edge_agent.config import PolicyConfig

    try:
        PolicyConfig(estimator="latest")  # type: ignore[call-arg]
    except (ValueError, TypeError):
        return False
    return True


class Rig:
    """The cloud core, keys and configs; starts agents behind an emulator on demand.

    Every agent's key is made before the cloud starts (it reads its allow-list then), and
    every process started is stopped by :meth:`stop`, whatever interrupted the run.
    """

    def __init__(self, args: argparse.Namespace, work: Path, bundle: tuple[Path, Path, Path],
                 agent_names: list[str]) -> None:
        self.args, self.work = args, work
        self.bdir, self.signing_pub, repo = bundle
        self.bundle = Bundle.load(self.bdir, keys.load_ed25519_public(self.signing_pub))
        self.services: list[Service] = []
        self.kdir = work / "keys"
        (self.kdir / "agents").mkdir(parents=True)
        keys.generate("curve", self.kdir, "cloud")
        for name in agent_names:
            _, pub = keys.generate("curve", self.kdir, f"adapt-{name}")
            shutil.copy(pub, self.kdir / "agents" / f"adapt-{name}.pub")
        cfg = work / "cloud.yaml"
        cfg.write_text(yaml.safe_dump({
            "repository": str(repo), "signing_public_key": str(self.signing_pub),
            "models": [{"name": args.model, "versions": ["1"]}],
            "transports": [{"kind": "zmq", "endpoints": ["tcp://127.0.0.1:0"],
                            "secret_key": str(self.kdir / "cloud.key"),
                            "allowed_keys_dir": str(self.kdir / "agents")}],
            "batching": {"max_batch": 8, "max_queue_delay_ms": 0.5},
            "backend": {"kind": "onnxruntime", "device": "cpu", "threads": 1},
            "executor_workers": 1, "http": {"port": 0}, "admin": {"port": 0},
            "grace_s": 2}))
        self.cloud = Service("cloud", tiersplit_cmd("cloud", "serve", "--config", str(cfg)),
                             log_path=work / "cloud.log")
        self.services.append(self.cloud)
        try:
            self.cloud.start(timeout=180)
        except ServiceError as e:
            raise SystemExit(f"cloud core did not start: {e}") from None
        self.cloud_port = int(self.cloud.ready["zmq"].split(",")[0].rsplit(":", 1)[1])

    def agent_config(self, name: str, port: int, cut: str | None, latest: bool) -> Path:
        """An agent config: defaults, except the emulated device and (fixed runs) no
        probes, (latest run) ``policy.estimator: latest``."""
        policy: dict[str, Any] = {"privacy_floor": self.args.privacy_floor, "seed": 0}
        if cut is not None:
            policy["probe_interval_s"] = 0.0
        if latest:
            policy["estimator"] = "latest"
        path = self.work / f"{name}.yaml"
        path.write_text(yaml.safe_dump({
            "agent_id": name,
            "bundle": {"path": str(self.bdir), "public_key": str(self.signing_pub)},
            "endpoints": [{"name": "cloud", "link": {
                "kind": "zmq", "endpoint": f"tcp://127.0.0.1:{port}",
                "secret_key": str(self.kdir / f"{name}.key"),
                "server_public_key": str(self.kdir / "cloud.pub"),
                "heartbeat_ivl_ms": 500, "heartbeat_timeout_ms": 1500}}],
            "api": {"host": "127.0.0.1", "port": 0, "allow_cut_override": cut is not None},
            "runtime": {"intra_op_threads": 1, "workers": 1,
                        "emulate_gmacs": self.args.edge_gmacs},
            "codec": self.args.codec, "policy": policy,
            "deadlines": {"default_ms": 3000}}))
        return path

    def start_agents(self, port: int, runs: list[tuple[str, str | None, bool]]
                     ) -> list[Agent]:
        """Start ``(name, forced cut, latest)`` agents in parallel, behind ``port``."""
        def start(run: tuple[str, str | None, bool]) -> Agent:
            name, cut, latest = run
            cfg = self.agent_config(f"adapt-{name}", port, cut, latest)
            svc = Service(name, tiersplit_cmd("edge", "run", "--config", str(cfg)),
                          log_path=self.work / f"adapt-{name}.log")
            self.services.append(svc)
            svc.start(timeout=180)
            return Agent(name, cut, svc, svc.ready["http"])

        with ThreadPoolExecutor(len(runs)) as ex:
            futures = [ex.submit(start, r) for r in runs]
            agents, failed = [], []
            for f in futures:
                try:
                    agents.append(f.result())
                except ServiceError as e:
                    failed.append(str(e))
        if failed:
            for a in agents:
                a.service.stop(grace=5)
            raise SystemExit("an agent did not start: " + failed[0])
        return agents

    def request_body(self) -> tuple[bytes, bytes]:
        """The v2 binary request (JSON header, tensor bytes) of one seeded input."""
        rng = np.random.default_rng(0)
        metas, blobs = [], []
        for spec in self.bundle.manifest.inputs:
            arr = rng.standard_normal((1, *spec.shape[1:])).astype(spec.dtype)
            metas.append({"name": spec.name, "shape": list(arr.shape),
                          "datatype": dtypes.by_name(spec.dtype).v2,
                          "parameters": {"binary_data_size": arr.nbytes}})
            blobs.append(arr.tobytes())
        return json.dumps({"inputs": metas}).encode(), b"".join(blobs)

    def stop(self) -> None:
        """Stop every process this rig started (agents first, then the cloud core)."""
        for svc in reversed(self.services):
            svc.stop(grace=10)


# ----------------------------------------------------------------------------- driving
def _infer(url: str, model: str, inputs: bytes, head: dict[str, Any], cut: str | None
           ) -> tuple[str, str]:
    """One v2 request; returns (path, cut) from the reply's parameters."""
    doc = dict(head, parameters={CUT_PARAM: cut} if cut else {})
    h = json.dumps(doc).encode()
    req = urllib.request.Request(
        f"{url}/v2/models/{model}/infer", data=h + inputs,
        headers={HEADER_LENGTH: str(len(h)), "Content-Type": "application/octet-stream"})
    with urllib.request.urlopen(req, timeout=30) as r:
        n = int(r.headers.get(HEADER_LENGTH) or 0)
        reply = json.loads(r.read(n) if n else r.read())
    p = reply.get("parameters", {})
    return str(p.get("path", "?")), str(p.get("cut", "?"))


def _drive(agent: Agent, emu: LinkEmulator, model: str, body: tuple[bytes, bytes],
           end_s: float, stop: threading.Event) -> None:
    """Sequential requests until ``end_s`` into the trace (warm-up ones are kept with a
    negative time and left out of the figures)."""
    head, inputs = json.loads(body[0]), body[1]
    while not stop.is_set():
        t0 = time.monotonic()
        t_trace = emu.trace_time(t0)
        if t_trace >= end_s:
            return
        try:
            path, cut = _infer(agent.url, model, inputs, head, agent.cut)
        except (urllib.error.URLError, OSError, ValueError) as e:
            agent.errors += 1
            if agent.first_error is None:  # one line per run, the count goes in the table
                body = ""
                if isinstance(e, urllib.error.HTTPError):
                    with contextlib.suppress(OSError):
                        body = e.read(300).decode(errors="replace")
                agent.first_error = f"{e} {body}".strip()
                log.warning("%s: request failed (counted as an error from now on): %s",
                            agent.name, agent.first_error)
            time.sleep(GAP_S)
            continue
        agent.samples.append((t_trace, (time.monotonic() - t0) * 1e3, path, cut))
        time.sleep(GAP_S)


def run_trace(rig: Rig, trace: Trace, runs: list[tuple[str, str | None, bool]],
              warmup_s: float, progress: Progress) -> list[Agent]:
    """Replay ``trace`` to every agent at once; returns the agents with their samples."""
    first = LinkProfile.symmetric(1e9, 0, name=trace.name).with_row(trace.rows[0])
    emu = LinkEmulator(("127.0.0.1", rig.cloud_port), first, seed=1).start()
    agents: list[Agent] = []
    try:
        agents = rig.start_agents(emu.port, runs)
        origin = time.monotonic() + warmup_s  # the first row holds during the warm-up
        emu.replay(trace, origin=origin)
        body = rig.request_body()
        stop = threading.Event()
        threads = [threading.Thread(target=_drive, name=f"app-{a.name}", daemon=True,
                                    args=(a, emu, rig.args.model, body, trace.duration_s,
                                          stop)) for a in agents]
        for t in threads:
            t.start()
        task = progress.add_task(trace.name, total=trace.duration_s + warmup_s)
        while any(t.is_alive() for t in threads):
            progress.update(task, completed=min(trace.duration_s, emu.trace_time()) + warmup_s)
            time.sleep(0.25)
        progress.update(task, completed=trace.duration_s + warmup_s)
    finally:
        for a in agents:
            a.service.stop(grace=5)
        emu.stop()
    return agents


# ----------------------------------------------------------------------------- report
def figures(agents: list[Agent], length_s: float) -> dict[str, Any]:
    """Per run: n, mean, p50, p99 and cuts used; the oracle; the two goal ratios."""
    def measured(a: Agent) -> list[tuple[float, float, str, str]]:
        return [s for s in a.samples if 0 <= s[0] < length_s]

    rows: dict[str, dict[str, Any]] = {}
    fixed: dict[str, list[tuple[float, float]]] = {}
    for a in agents:
        ms = measured(a)
        rows[a.name] = {**summary([s[1] for s in ms]), "errors": a.errors,
                        "first_error": a.first_error,
                        "cuts": dict(sorted(_count(s[3] for s in ms).items())),
                        "paths": dict(sorted(_count(s[2] for s in ms).items()))}
        if a.cut is not None:
            fixed[a.cut] = [(s[0], s[1]) for s in ms]
    o_ms, o_cuts = oracle(fixed, length_s)
    rows["oracle"] = {**summary(o_ms), "errors": 0,
                      "cuts": dict(sorted(_count(c for c in o_cuts if c).items())),
                      "paths": {}}
    pol, lat = rows.get("policy"), rows.get("latest")
    return {"rows": rows, "oracle_cut_per_s": o_cuts,
            "policy_over_oracle_mean": pol["mean"] / rows["oracle"]["mean"] if pol else None,
            "policy_over_latest_p99": pol["p99"] / lat["p99"] if pol and lat else None}


def _count(items: Any) -> dict[str, int]:
    out: dict[str, int] = defaultdict(int)
    for i in items:
        out[i] += 1
    return out


def print_trace(name: str, trace: Trace, fig: dict[str, Any]) -> None:
    ups = [r.up_bps / 1e6 for r in trace.rows]
    t = Table(title=f"{name}: {trace.duration_s:g} s, uplink {min(ups):.2g}-{max(ups):.3g} "
                    f"Mbit/s, RTT {min(r.rtt_ms for r in trace.rows):.0f}-"
                    f"{max(r.rtt_ms for r in trace.rows):.0f} ms", title_justify="left")
    for col in ("run", "requests", "mean ms", "p50 ms", "p99 ms", "errors", "cuts used"):
        t.add_column(col, justify="left" if col in ("run", "cuts used") else "right")
    rows = fig["rows"]
    first = ("policy", "oracle", "latest")
    order = [*first, *sorted(k for k in rows if k not in first)]
    for k in order:
        if k not in rows:
            continue
        r = rows[k]
        cuts = " ".join(f"{c}:{n}" for c, n in r["cuts"].items())
        t.add_row(k, str(r["n"]), f"{r['mean']:.1f}", f"{r['p50']:.1f}", f"{r['p99']:.1f}",
                  str(r["errors"]), cuts + (" (s per cut)" if k == "oracle" else ""))
    if any(r["errors"] for r in rows.values()):
        t.caption = "latency figures are over answered requests only; errors are counted"
    console.print(t)


def print_goals(results: dict[str, dict[str, Any]], has_latest: bool) -> None:
    t = Table(title="policy vs oracle (mean) and vs the latest-sample rule (p99)",
              title_justify="left")
    for col in ("trace", "policy mean", "oracle mean", "policy/oracle", "<= 1.10",
                "policy p99", "latest p99", "policy/latest", "< 1"):
        t.add_column(col, justify="right")
    for name, fig in results.items():
        rows, r1, r2 = fig["rows"], fig["policy_over_oracle_mean"], fig["policy_over_latest_p99"]
        lat = rows.get("latest")
        t.add_row(name, _f(rows["policy"]["mean"], 1), _f(rows["oracle"]["mean"], 1),
                  _f(r1, 3), _yes(r1 <= GOAL_MEAN), _f(rows["policy"]["p99"], 1),
                  _f(lat["p99"], 1) if lat else "n/a", _f(r2, 3) if lat else "n/a",
                  _yes(r2 < 1.0) if lat else "n/a")
    console.print(t)
    if not has_latest:
        console.print("latest-sample rule: not available (this agent's policy config has no "
                      "'estimator: latest'); its columns are n/a.")


def _yes(ok: bool) -> str:
    """A goal's verdict; a comparison with NaN (a run without answers) is a no."""
    return "[green]yes[/green]" if ok else "[red]no[/red]"


def _f(x: float | None, digits: int) -> str:
    return "-" if x is None or math.isnan(x) else f"{x:.{digits}f}"


def plot(path: Path, name: str, trace: Trace, agents: list[Agent], fig: dict[str, Any]
         ) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    f, ax = plt.subplots(figsize=(11, 5))
    for a in agents:
        if a.cut is None:
            pts = [s for s in a.samples if 0 <= s[0] < trace.duration_s]
            ax.plot([s[0] for s in pts], [s[1] for s in pts], ".", ms=3, label=a.name)
    by_cut = {a.cut: a for a in agents if a.cut is not None}
    ox, oy = [], []
    for s, cut in enumerate(fig["oracle_cut_per_s"]):
        if cut is not None:
            ms = [x[1] for x in by_cut[cut].samples if s <= x[0] < s + 1]
            ox += [s, s + 1]
            oy += [statistics.fmean(ms)] * 2
    ax.plot(ox, oy, "-", color="black", lw=1, label="oracle (per-second best cut)")
    ax.set_xlabel("trace time (s)")
    ax.set_ylabel("end-to-end latency (ms)")
    ax.set_yscale("log")
    bw = ax.twinx()
    bw.step([r.t_s for r in trace.rows] + [trace.duration_s],
            [r.up_bps / 1e6 for r in trace.rows] + [trace.rows[-1].up_bps / 1e6],
            where="post", color="grey", alpha=0.4, label="uplink")
    bw.set_ylabel("uplink (Mbit/s)")
    bw.set_yscale("log")
    ax.set_title(f"{name}: policy vs oracle")
    ax.legend(loc="upper left")
    f.tight_layout()
    f.savefig(path, dpi=110)
    plt.close(f)


# ----------------------------------------------------------------------------- cascade
def cascade_figures(workdir: Path, work: Path, target: float) -> dict[str, Any]:
    """Tune the digits CNN's cascade on half its held-out digits, check it on the other.

    The held-out split never trained the model nor calibrated its int8 version; which
    digit lands in which half is a seeded shuffle."""
    from partitioner import zoo
    from tiersplit.cascade_tuning import run_models, tune_bundle

    bdir, pub, _ = _bundle("digits_cnn", workdir)
    b = Bundle.load(bdir, keys.load_ed25519_public(pub))
    x, _ = zoo.get("digits_cnn").heldout()
    order = np.random.default_rng(0).permutation(len(x))
    half = len(x) // 2
    name = b.manifest.inputs[0].name
    tune_path = work / "cascade-tune.npz"
    np.savez(tune_path, **{name: x[order[:half]]})
    run = tune_bundle(b, tune_path, target=target)
    check = {name: np.ascontiguousarray(x[order[half:]], dtype=np.float32)}
    int8, fp32 = run_models(b, check)
    from placement.cascade import confidence

    local = confidence(int8) >= run.chosen.threshold
    agree = int8.argmax(-1) == fp32.argmax(-1)
    return {"threshold": run.chosen.threshold, "target": target,
            "tuned_share": run.chosen.local_share, "tuned_agreement": run.chosen.achieved,
            "tuned_samples": run.samples, "check_samples": len(local),
            "check_share": float(local.mean()),
            "check_agreement": float(agree[local].mean()) if local.any() else 1.0,
            "int8_agreement": float(agree.mean())}


def print_cascade(c: dict[str, Any]) -> None:
    t = Table(title=f"device cascade, digits_cnn (tuned for {c['target']:.0%} agreement with "
                    f"fp32 on {c['tuned_samples']} held-out digits, checked on "
                    f"{c['check_samples']} others)", title_justify="left")
    for col in ("split", "threshold", "answered locally", "agreement (local)",
                f">= {GOAL_LOCAL:.0%} local", f">= {GOAL_AGREEMENT:.0%} agreement"):
        t.add_column(col, justify="right")
    t.add_row("tuning", f"{c['threshold']:.4f}", f"{c['tuned_share']:.1%}",
              f"{c['tuned_agreement']:.2%}", "", "")
    t.add_row("held-back", f"{c['threshold']:.4f}", f"{c['check_share']:.1%}",
              f"{c['check_agreement']:.2%}", _yes(c["check_share"] >= GOAL_LOCAL),
              _yes(c["check_agreement"] >= GOAL_AGREEMENT))
    t.caption = (f"on the held-back half the int8 model agrees with fp32 on "
                 f"{c['int8_agreement']:.2%} of all digits")
    console.print(t)


# ----------------------------------------------------------------------------- main
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true",
                    help="a window of each trace, three cuts (a few minutes)")
    ap.add_argument("--traces", default=",".join(TRACES),
                    help="names in configs/traces/ or paths to trace CSVs")
    ap.add_argument("--model", default="mobilenet_like", help="zoo model")
    ap.add_argument("--workdir", default=str(Path.home() / ".cache" / "tiersplit" / "adapt"),
                    help="where the partitioned bundle is cached")
    ap.add_argument("--edge-gmacs", type=float, default=0.1,
                    help="emulated device speed, GMAC/s")
    ap.add_argument("--codec", default="int8+lz4")
    ap.add_argument("--privacy-floor", type=int, default=1)
    ap.add_argument("--cuts", help="fixed cuts to sweep (default: every admitted cut; "
                                   "--quick: the shallowest, a middle one and edge)")
    ap.add_argument("--window", type=float, default=0.0,
                    help="replay only this many seconds of each trace (0: all; --quick: 20)")
    ap.add_argument("--warmup", type=float, default=4.0,
                    help="seconds the agents run on the first row before the trace starts")
    ap.add_argument("--plot", type=Path, help="write <trace>.png latency plots here")
    ap.add_argument("--json", type=Path, help="write the figures to this file")
    ap.add_argument("--no-cascade", action="store_true",
                    help="skip the digits cascade section")
    ap.add_argument("--cascade-target", type=float, default=GOAL_AGREEMENT,
                    help="agreement the cascade threshold is tuned for")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    window = args.window or (20.0 if args.quick else 0.0)
    has_latest = latest_supported()
    work = Path(tempfile.mkdtemp(prefix="tiersplit-bench-adapt-"))
    rig: Rig | None = None
    results: dict[str, dict[str, Any]] = {}
    try:
        bundle = _bundle(args.model, Path(args.workdir))
        manifest = yaml.safe_load((bundle[0] / "manifest.yaml").read_text())
        admitted = [c["id"] for c in manifest["cuts"]
                    if c["id"] == "edge" or c["depth"] >= args.privacy_floor]
        if args.cuts:
            cuts = args.cuts.split(",")
        elif args.quick:
            cuts = sorted({admitted[0], admitted[len(admitted) // 2 - 1], "edge"},
                          key=admitted.index)
        else:
            cuts = admitted
        unknown = sorted(set(cuts) - set(admitted))
        if unknown:
            raise SystemExit(f"cuts {unknown} are not admitted; the bundle has {admitted}")
        runs = [("policy", None, False)] + ([("latest", None, True)] if has_latest else []) \
            + [(f"cut-{c}", c, False) for c in cuts]
        rig = Rig(args, work, bundle, [name for name, _, _ in runs])
        console.print(f"[bold]{args.model}[/bold], device emulated at {args.edge_gmacs} "
                      f"GMAC/s, codec {args.codec}, fixed cuts {cuts}, latest-sample rule "
                      f"{'on' if has_latest else 'not available'}")
        traces = []
        for spec in args.traces.split(","):
            path = Path(spec) if spec.endswith(".csv") else REPO / "configs" / "traces" / \
                f"{spec}.csv"
            full = Trace.from_csv(path)
            if window and window < full.duration_s:
                full = full.window(pick_window(full, window), window)
            traces.append(full)
        with Progress(TextColumn("{task.description}"), BarColumn(), TimeRemainingColumn(),
                      console=console, transient=True) as progress:
            for tr in traces:
                agents = run_trace(rig, tr, runs, args.warmup, progress)
                fig = figures(agents, tr.duration_s)
                fig["fixed"] = {a.name: a.cut for a in agents if a.cut}
                results[tr.name] = fig
                progress.console.print()
                print_trace(tr.name, tr, fig)
                if args.plot:
                    args.plot.mkdir(parents=True, exist_ok=True)
                    out = args.plot / f"{tr.name.split('[')[0]}.png"
                    plot(out, tr.name, tr, agents, fig)
                    console.print(f"plot: {out}")
        print_goals(results, has_latest)
        if not args.no_cascade:
            with console.status("tuning the digits cascade on held-out digits ..."):
                casc = cascade_figures(Path(args.workdir), work, args.cascade_target)
            print_cascade(casc)
            results["cascade"] = casc
        if args.json:
            args.json.write_text(json.dumps(results, indent=2, default=str))
    finally:
        if rig is not None:
            rig.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
