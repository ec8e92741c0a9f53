"""Soak: N edge agents x two models against the cloud for a bounded time, nothing lost.

Starts real processes on loopback only: ``--clouds`` cloud cores (``tiersplit cloud
serve``, CurveZMQ) serving two bundles (``zoo:digits_cnn`` and ``zoo:mobilenet_like``,
partitioned once and cached under ``--out``), and ``--agents`` edge agents (``tiersplit
edge run``), agent *i* serving model *i mod 2* with the runtime placement policy free to
pick its cut on an emulated slow device (``--device-gmacs``). Closed-loop application
threads post KServe v2 infer requests (binary tensors) to every agent for ``--minutes``
(default 10; ``--quick``: 1) and the script stops by itself.

Reported (rich tables, and ``<out>/soak.json``): throughput, p50/p99 latency per model
and overall, paths served (cut id / ``edge`` / ``local``), errors by kind, lost requests,
the cores' counters, and the RSS of every process (psutil) right after warm-up and at the
end. Accounting: ``sent = ok + errors + lost`` where *errors* are explicit HTTP error
answers and *lost* are requests that got no answer at all. Goals: ``lost == 0`` and RSS
growth after warm-up ≤ 5% for every cloud core and agent (this script's own RSS is shown
too, but it keeps every latency sample, so it grows by design). Exit status 1 if a
request was lost (and, with ``--strict``, if an RSS goal was missed).

Usage::

    python -m bench.soak --quick
    python -m bench.soak --minutes 10 --agents 4
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import psutil
import yaml
from rich.console import Console
from rich.table import Table

HERE = Path(__file__).resolve().parent

from tiersplit.devtools.services import Service, tiersplit_cmd  # noqa: E402
from transport import keys  # noqa: E402

MODELS = ("digits_cnn", "mobilenet_like")
RSS_GOAL = 0.05
LOADGEN = "load generator (this script)"
console = Console()


# ----------------------------------------------------------------------------- setup


def build_bundles(out: Path) -> tuple[Path, Path]:
    """Partition the two zoo models once (cached): (repository root, signing .pub)."""
    kdir = out / "signing"
    sec, pub = kdir / "signing.key", kdir / "signing.pub"
    if not sec.exists():
        keys.generate("ed25519", kdir, "signing")
    repo = out / "bundles"
    for model in MODELS:
        if not (repo / model / "1" / "manifest.yaml").exists():
            from partitioner import partition

            console.print(f"partitioning zoo:{model} (cached for the next runs)…")
            partition(f"zoo:{model}", None, repo, name=model, version="1", max_cuts=5,
                      signing_key=keys.load_ed25519_private(sec), progress=False)
    return repo, pub


def _yaml(path: Path, doc: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


@dataclass
class Fleet:
    """Every child process of the run, by role."""

    clouds: list[Service] = field(default_factory=list)
    agents: list[Service] = field(default_factory=list)
    models: list[str] = field(default_factory=list)  # per agent

    def all(self) -> list[Service]:
        return self.clouds + self.agents

    def stop(self) -> None:
        for s in reversed(self.all()):
            try:
                s.stop(grace=15)
            except Exception as e:  # keep stopping the others
                console.print(f"[red]stopping {s.name} failed: {e}[/red]")


def start_fleet(run: Path, repo: Path, signing_pub: Path, n_clouds: int, n_agents: int,
                device_gmacs: float | None = None) -> Fleet:
    kd = run / "keys"
    csec, cpub = keys.generate("curve", kd, "cloud")
    allowed = kd / "agents"
    allowed.mkdir()
    agent_ids = [f"soak-{i}" for i in range(n_agents)]
    for a in agent_ids:
        _, apub = keys.generate("curve", kd, a)
        shutil.copy(apub, allowed / f"{a}.pub")
    fleet = Fleet()
    try:
        for c in range(n_clouds):
            doc = {"repository": str(repo), "signing_public_key": str(signing_pub),
                   "models": [{"name": m} for m in MODELS],
                   "transports": [{"kind": "zmq", "endpoints": ["tcp://127.0.0.1:0"],
                                   "secret_key": str(csec), "allowed_keys_dir": str(allowed),
                                   "heartbeat_ivl_ms": 500, "heartbeat_timeout_ms": 2000}],
                   "batching": {"max_batch": 16, "max_queue_delay_ms": 2.0, "max_queue": 256},
                   "backend": {"kind": "onnxruntime", "device": "cpu", "threads": 1},
                   "executor_workers": 2, "http": {"port": 0}, "admin": {"port": 0},
                   "grace_s": 5}
            path = _yaml(run / f"cloud-{c}.yaml", doc)
            fleet.clouds.append(Service(f"cloud-{c}", tiersplit_cmd(
                "cloud", "serve", "--config", str(path)), log_path=run / f"cloud-{c}.log"
            ).start(timeout=300))
        eps = [s.ready["zmq"].split(",")[0] for s in fleet.clouds]
        for i, a in enumerate(agent_ids):
            model = MODELS[i % len(MODELS)]
            doc = {"agent_id": a,
                   "bundle": {"path": str(repo / model / "1"), "public_key": str(signing_pub)},
                   "endpoints": [{"name": f"cloud-{c}", "region": "local",
                                  "link": {"kind": "zmq", "endpoint": ep,
                                           "secret_key": str(kd / f"{a}.key"),
                                           "server_public_key": str(cpub),
                                           "heartbeat_ivl_ms": 500,
                                           "heartbeat_timeout_ms": 2000}}
                                 for c, ep in enumerate(eps)],
                   "api": {"port": 0},
                   "runtime": {"workers": 2, "warmup_runs": 2, "measure_runs": 3,
                               "emulate_gmacs": device_gmacs},
                   "policy": {"probe_interval_s": 1.0, "seed": i},
                   "deadlines": {"default_ms": 5000}}
            path = _yaml(run / f"{a}.yaml", doc)
            fleet.agents.append(Service(a, tiersplit_cmd("edge", "run", "--config", str(path)),
                                        log_path=run / f"{a}.log").start(timeout=300))
            fleet.models.append(model)
    except BaseException:
        fleet.stop()
        raise
    return fleet


# ----------------------------------------------------------------------------- load


@dataclass
class Sample:
    t: float  # completion time (monotonic)
    model: str
    ms: float
    kind: str  # "ok" | "http <code>" | "lost: <exception>"
    path: str = ""


class Load:
    """Closed-loop application threads posting v2 binary infer requests to the agents."""

    def __init__(self, fleet: Fleet, threads: int, repo: Path) -> None:
        self.samples: list[Sample] = []
        self.sent = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = []
        for svc, model in zip(fleet.agents, fleet.models, strict=True):
            body, headers = self._request(repo, model)
            for t in range(threads):
                self._threads.append(threading.Thread(
                    target=self._run, args=(svc.ready["http"], model, body, headers),
                    name=f"app-{svc.name}-{t}", daemon=True))

    @staticmethod
    def _request(repo: Path, model: str) -> tuple[bytes, dict[str, str]]:
        from contract.bundle import Manifest

        m = Manifest.model_validate(yaml.safe_load((repo / model / "1" / "manifest.yaml")
                                                   .read_bytes()))
        rng = np.random.default_rng(0)
        inputs, blobs = [], []
        for spec in m.inputs:
            shape = [1 if d < 0 else d for d in spec.shape]
            arr = rng.standard_normal(shape).astype(np.float32)
            blob = arr.tobytes()
            inputs.append({"name": spec.name, "datatype": "FP32", "shape": shape,
                           "parameters": {"binary_data_size": len(blob)}})
            blobs.append(blob)
        head = json.dumps({"inputs": inputs}).encode()
        return (head + b"".join(blobs),
                {"Inference-Header-Content-Length": str(len(head)),
                 "Content-Type": "application/octet-stream"})

    def _run(self, url: str, model: str, body: bytes, headers: dict[str, str]) -> None:
        client = httpx.Client(base_url=url, timeout=30)
        path = f"/v2/models/{model}/infer"
        try:
            while not self._stop.is_set():
                with self._lock:
                    self.sent += 1
                t0 = time.monotonic()
                try:
                    r = client.post(path, content=body, headers=headers)
                except httpx.HTTPError as e:  # no answer at all: lost
                    s = Sample(time.monotonic(), model, (time.monotonic() - t0) * 1e3,
                               f"lost: {type(e).__name__}")
                else:
                    ms = (time.monotonic() - t0) * 1e3
                    if r.status_code == 200:
                        doc = json.loads(r.content[:int(r.headers.get(
                            "Inference-Header-Content-Length", len(r.content)))])
                        s = Sample(time.monotonic(), model, ms, "ok",
                                   str(doc.get("parameters", {}).get("path", "?")))
                    else:
                        s = Sample(time.monotonic(), model, ms, f"http {r.status_code}")
                with self._lock:
                    self.samples.append(s)
        finally:
            client.close()

    def start(self) -> None:
        for t in self._threads:
            t.start()

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(60)


def rss_all(fleet: Fleet) -> dict[str, int]:
    out = {}
    for s in fleet.all():
        try:
            out[s.name] = psutil.Process(s.pid).memory_info().rss
        except psutil.Error:
            out[s.name] = 0
    out[LOADGEN] = psutil.Process().memory_info().rss
    return out


def cloud_counters(fleet: Fleet) -> dict[str, dict[str, float]]:
    from prometheus_client.parser import text_string_to_metric_families

    out: dict[str, dict[str, float]] = {}
    for s in fleet.clouds:
        c: dict[str, float] = Counter()
        try:
            text = httpx.get(s.ready["http"] + "/metrics", timeout=10).text
        except httpx.HTTPError:
            continue
        for fam in text_string_to_metric_families(text):
            for smp in fam.samples:
                if smp.name == "tiersplit_cloud_requests_total":
                    c[f"status {smp.labels['status']}"] += smp.value
                elif smp.name == "tiersplit_cloud_rejected_total":
                    c[f"rejected {smp.labels['reason']}"] += smp.value
                elif smp.name in ("tiersplit_cloud_backend_calls_total",
                                  "tiersplit_cloud_backend_items_total"):
                    c[smp.name.removeprefix("tiersplit_cloud_").removesuffix("_total")] += \
                        smp.value
        out[s.name] = dict(c)
    return out


# ----------------------------------------------------------------------------- report


def _pct(xs: list[float], q: float) -> float:
    return float(np.percentile(xs, q)) if xs else float("nan")


def report(load: Load, t_warm: float, t_end: float, rss0: dict[str, int],
           rss1: dict[str, int], counters: dict[str, dict[str, float]], args: Any
           ) -> dict[str, Any]:
    samples = list(load.samples)
    answered = len(samples)
    ok = [s for s in samples if s.kind == "ok"]
    errors = Counter(s.kind for s in samples if s.kind.startswith("http"))
    lost_kinds = Counter(s.kind for s in samples if s.kind.startswith("lost"))
    unanswered = load.sent - answered  # a thread still blocked at the end (none expected)
    lost = sum(lost_kinds.values()) + unanswered
    window = [s for s in ok if t_warm <= s.t <= t_end]
    span = max(t_end - t_warm, 1e-9)

    t = Table(title=f"soak: {args.agents} agents x {len(MODELS)} models, {args.clouds} cloud "
                    f"core(s), {span:.0f} s measured after {args.warmup_s:.0f} s warm-up")
    for col in ("model", "requests", "req/s", "p50 ms", "p99 ms", "paths"):
        t.add_column(col, justify="right" if col != "paths" else "left")
    for model in (*MODELS, "all"):
        xs = [s for s in window if model in ("all", s.model)]
        paths = Counter(s.path for s in xs)
        t.add_row(model, str(len(xs)), f"{len(xs) / span:.1f}",
                  f"{_pct([s.ms for s in xs], 50):.1f}", f"{_pct([s.ms for s in xs], 99):.1f}",
                  ", ".join(f"{k}:{v}" for k, v in paths.most_common()))
    console.print(t)

    a = Table(title="accounting (whole run, warm-up included)")
    for col in ("sent", "ok", "errors (explicit)", "lost (no answer)"):
        a.add_column(col, justify="right")
    a.add_row(str(load.sent), str(len(ok)), str(sum(errors.values())), str(lost))
    console.print(a)
    if errors or lost_kinds:
        e = Table(title="errors by kind")
        e.add_column("kind")
        e.add_column("count", justify="right")
        for k, v in (errors + lost_kinds).most_common():
            e.add_row(k, str(v))
        console.print(e)

    r = Table(title="RSS per process (after warm-up -> end)")
    for col in ("process", "after warm-up MiB", "end MiB", "growth", f"<= {RSS_GOAL:.0%}"):
        r.add_column(col, justify="right" if col != "process" else "left")
    growth: dict[str, float] = {}
    for name in rss0:
        g = (rss1.get(name, 0) - rss0[name]) / max(rss0[name], 1)
        growth[name] = g
        # the load generator keeps every latency sample: it grows by design, not a goal
        verdict = ("n/a (keeps samples)" if name == LOADGEN
                   else "yes" if g <= RSS_GOAL else "[red]no[/red]")
        r.add_row(name, f"{rss0[name] / 2**20:.1f}", f"{rss1.get(name, 0) / 2**20:.1f}",
                  f"{g:+.1%}", verdict)
    console.print(r)

    c = Table(title="cloud core counters")
    c.add_column("core")
    c.add_column("counters")
    for name, cs in counters.items():
        c.add_row(name, ", ".join(f"{k}={v:.0f}" for k, v in sorted(cs.items())))
    console.print(c)

    result = {
        "agents": args.agents, "clouds": args.clouds, "models": list(MODELS),
        "measured_s": span, "warmup_s": args.warmup_s, "sent": load.sent, "ok": len(ok),
        "errors": dict(errors), "lost": lost, "lost_kinds": dict(lost_kinds),
        "throughput_rps": len(window) / span,
        "p50_ms": _pct([s.ms for s in window], 50), "p99_ms": _pct([s.ms for s in window], 99),
        "per_model": {m: {"requests": len(xs), "p50_ms": _pct(xs, 50), "p99_ms": _pct(xs, 99)}
                      for m in MODELS
                      for xs in [[s.ms for s in window if s.model == m]]},
        "paths": dict(Counter(s.path for s in window)),
        "rss_after_warmup": rss0, "rss_end": rss1, "rss_growth": growth,
        "rss_goal_met": all(g <= RSS_GOAL for k, g in growth.items() if k != LOADGEN),
        "cloud_counters": counters,
    }
    ok_line = "[green]zero lost[/green]" if lost == 0 else f"[red]{lost} LOST[/red]"
    rss_line = ("[green]RSS growth within 5%[/green]" if result["rss_goal_met"]
                else "[yellow]RSS growth above 5% for "
                     f"{[k for k, g in growth.items() if g > RSS_GOAL and k != LOADGEN]}"
                     "[/yellow]")
    console.print(f"{ok_line}; {rss_line}; sent={load.sent} = ok {len(ok)} + errors "
                  f"{sum(errors.values())} + lost {lost}")
    return result


# ----------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="1 minute (overrides --minutes)")
    p.add_argument("--minutes", type=float, default=10.0, help="measured duration")
    p.add_argument("--agents", type=int, default=4)
    p.add_argument("--clouds", type=int, default=1)
    p.add_argument("--threads", type=int, default=2, help="application threads per agent")
    p.add_argument("--warmup-s", type=float, default=None,
                   help="seconds before RSS/latency baselines (default 30; --quick 15)")
    p.add_argument("--out", type=Path, default=HERE / "out" / "soak")
    p.add_argument("--device-gmacs", type=float, default=0.05,
                   help="emulated edge device speed in GMAC/s (0 = this host's real speed); "
                        "a slow device makes offloading pay, so the cloud path is exercised")
    p.add_argument("--strict", action="store_true", help="exit 1 if an RSS goal is missed")
    args = p.parse_args(argv)
    minutes = 1.0 if args.quick else args.minutes
    if args.warmup_s is None:
        args.warmup_s = 15.0 if args.quick else 30.0
    args.out.mkdir(parents=True, exist_ok=True)
    repo, pub = build_bundles(args.out)
    run = args.out / time.strftime("run-%Y%m%d-%H%M%S")
    run.mkdir()
    console.print(f"starting {args.clouds} cloud core(s) and {args.agents} agents "
                  f"(logs in {run})…")
    fleet = start_fleet(run, repo, pub, args.clouds, args.agents, args.device_gmacs or None)
    load = Load(fleet, args.threads, repo)
    try:
        load.start()
        time.sleep(args.warmup_s)
        t_warm = time.monotonic()
        rss0 = rss_all(fleet)
        t_stop = t_warm + minutes * 60
        while (left := t_stop - time.monotonic()) > 0:
            time.sleep(min(10.0, left))
            n = len(load.samples)
            console.print(f"  {max(0.0, t_stop - time.monotonic()):5.0f} s left: "
                          f"{n} answered of {load.sent} sent")
        t_end = time.monotonic()
        rss1 = rss_all(fleet)
        load.stop()
        counters = cloud_counters(fleet)
    finally:
        load.stop()
        fleet.stop()
    result = report(load, t_warm, t_end, rss0, rss1, counters, args)
    (args.out / "soak.json").write_text(json.dumps(result, indent=2, default=str))
    if result["lost"]:
        return 1
    if args.strict and not result["rss_goal_met"]:
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
