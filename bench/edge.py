"""Edge agent benchmark: every cut end to end through the link emulator, vs the policy.

    python -m bench.edge [--quick] [--model zoo:resnet_like] [--profiles 3g,4g,wifi,lan]
                         [--edge-gmacs 0.5] [--codec int8+lz4] [--requests N]

For each link profile of ``configs/links.yaml`` a real ``tiersplit cloud serve`` process
sits behind the link emulator (CurveZMQ through it). For every admitted cut an agent
with ``policy.fixed_cut`` measures: device head latency, bytes per request on the
emulated link, and end-to-end latency as the application sees it (p50/p90 of sequential
requests). An agent with the runtime policy (learning from scratch: pings, replies)
runs the same requests, interleaved with the fixed-cut agents in rounds so host load
hits all alike. Goal: p50 of the cut the policy chose / p50 of the best cut (both from
the same sweep) <= 1.10 on every profile; the policy run's own p50 is printed too.

The edge device is emulated at ``--edge-gmacs`` GMAC/s (ORT runs padded by sleeping to
the manifest's MAC count at that rate; the host's real ORT time is printed alongside):
on this host the int8 model runs in well under a millisecond, which would make "all on
the device" trivially best and the benchmark meaningless for a real edge device.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import statistics
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from rich.console import Console
from rich.table import Table

REPO = Path(__file__).resolve().parents[1]

from edge_agent import EdgeAgent, parse_config  # noqa: E402
from tiersplit.devtools.services import Service, ServiceError, tiersplit_cmd  # noqa: E402
from transport import keys  # noqa: E402
from transport.linkemu import LinkEmulator, load_profiles  # noqa: E402

console = Console(width=None if sys.stdout.isatty() else 132)
GAP_S = 0.02  # pause between an app's requests, the same for every run (fair comparison)


def _bundle(args: argparse.Namespace, work: Path) -> tuple[Path, Path]:
    if args.bundle:
        return Path(args.bundle), Path(args.public_key)
    import partitioner

    secret, public = keys.generate("ed25519", work / "keys", "signing")
    with console.status(f"partitioning {args.model} ..."):
        path = partitioner.partition(args.model, None, work / "repo", max_cuts=args.max_cuts,
                                     signing_key=secret, progress=False)
    return path, public


def _keys(work: Path) -> dict[str, Path]:
    d = work / "curve"
    cs, cp = keys.generate("curve", d, "cloud")
    ask, apk = keys.generate("curve", d, "bench-edge")
    (d / "agents").mkdir()
    shutil.copy(apk, d / "agents" / "bench-edge.pub")
    return {"cloud_secret": cs, "cloud_public": cp, "agent_secret": ask, "allowed": d / "agents"}


def _start_cloud(work: Path, repo: Path, model: str, pub: Path, k: dict[str, Path],
                 threads: int) -> tuple[Service, int]:
    cfg = {
        "repository": str(repo), "signing_public_key": str(pub), "models": [{"name": model}],
        "transports": [{"kind": "zmq", "endpoints": ["tcp://127.0.0.1:0"],
                        "secret_key": str(k["cloud_secret"]),
                        "allowed_keys_dir": str(k["allowed"])}],
        "batching": {"max_batch": 8, "max_queue_delay_ms": 0.5},
        "backend": {"kind": "onnxruntime", "device": "cpu", "threads": threads},
        "executor_workers": 1, "http": {"port": 0}, "admin": {"port": 0}, "grace_s": 1,
    }
    path = work / "cloud.yaml"
    path.write_text(yaml.safe_dump(cfg))
    try:
        svc = Service("cloud", tiersplit_cmd("cloud", "serve", "--config", str(path)),
                      log_path=work / "cloud.log").start(timeout=120)
    except ServiceError as e:
        raise SystemExit(f"cloud core did not start: {e}") from None
    zmq_ep = svc.ready["zmq"].split(",")[0]
    return svc, int(zmq_ep.rsplit(":", 1)[1])


def _agent(bundle: Path, pub: Path, k: dict[str, Path], port: int, args: argparse.Namespace,
           fixed: str | None) -> EdgeAgent:
    cfg = {
        "agent_id": "bench-edge",
        "bundle": {"path": str(bundle), "public_key": str(pub)},
        "endpoints": [{"name": "cloud", "link": {
            "kind": "zmq", "endpoint": f"tcp://127.0.0.1:{port}",
            "secret_key": str(k["agent_secret"]),
            "server_public_key": str(k["cloud_public"])}}],
        "runtime": {"intra_op_threads": 1, "workers": 1, "warmup_runs": 2, "measure_runs": 5,
                    "emulate_gmacs": args.edge_gmacs},
        "codec": args.codec,
        "policy": {"fixed_cut": fixed, "privacy_floor": args.privacy_floor,
                   "probe_interval_s": 0.0 if fixed else 0.3, "seed": 0},
        "deadlines": {"default_ms": 10_000},
    }
    agent = EdgeAgent(parse_config(cfg), serve_http=False).start()
    if not agent.wait_connected(20):
        agent.stop()
        raise SystemExit("agent could not connect to the cloud core through the emulator")
    return agent


def _run(agent: EdgeAgent, x: dict[str, np.ndarray], n: int, gap_s: float,
         into: dict[str, list] | None = None) -> dict[str, list]:
    """``n`` sequential requests; latency (ms), head time and path of each."""
    out = into if into is not None else {"lat": [], "head": [], "paths": []}
    for _ in range(n):
        t0 = time.perf_counter()
        res = agent.infer(x).result(60)
        out["lat"].append((time.perf_counter() - t0) * 1e3)
        out["head"].append(res.timings.get("head", res.timings.get("local", 0.0)))
        out["paths"].append("local" if res.path == "fallback" else res.cut)
        if gap_s:
            time.sleep(gap_s)
    return out


def _summary(samples: dict[str, list]) -> dict[str, Any]:
    lat = sorted(samples["lat"])
    return {"p50": statistics.median(lat), "p90": lat[int(0.9 * (len(lat) - 1))],
            "head": statistics.median(samples["head"]), "paths": Counter(samples["paths"])}


def _sweep(bundle: Path, pub: Path, k: dict[str, Path], emu: LinkEmulator,
           args: argparse.Namespace, cuts: list[dict[str, Any]], n: int, warm: int,
           quick: bool) -> tuple[dict[str, Any], dict[str, Any]]:
    """Every fixed cut and the policy on one link, measured in interleaved rounds so that
    load drifting on the host (other processes) hits them all alike."""
    agents: dict[str, EdgeAgent] = {}
    try:
        info: dict[str, dict[str, float]] = {}
        for c in cuts:
            agent = agents[c["id"]] = _agent(bundle, pub, k, emu.port, args, c["id"])
            x = agent.runtime.example_inputs(1, seed=1)
            up0 = emu.bytes_up
            _run(agent, x, warm, GAP_S)  # also the bytes measurement: nothing else runs
            info[c["id"]] = {"bytes": (emu.bytes_up - up0) / warm,
                             "host_head": agent.runtime.host_ms.get(c["id"], 0.0)}
        policy = agents["policy"] = _agent(bundle, pub, k, emu.port, args, None)
        x = policy.runtime.example_inputs(1, seed=1)
        t_end = time.monotonic() + (2.0 if quick else 4.0)
        while time.monotonic() < t_end:  # learn from scratch: pings + real replies
            _run(policy, x, 1, 0.05)
        samples = {name: {"lat": [], "head": [], "paths": []} for name in agents}
        per_round = 3
        names = list(agents)
        for r in range((n + per_round - 1) // per_round):
            for name in names[r % len(names):] + names[:r % len(names)]:
                _run(agents[name], x, per_round, GAP_S, samples[name])
        rows = {c["id"]: {**_summary(samples[c["id"]]), **info[c["id"]]} for c in cuts}
        pol = _summary(samples["policy"])
        pol["status"] = policy.status()["policy"]
        return rows, pol
    finally:
        for agent in agents.values():
            agent.stop(grace=2)


def _cuts(bundle: Path, privacy_floor: int) -> list[dict[str, Any]]:
    m = yaml.safe_load((bundle / "manifest.yaml").read_text())
    return [c for c in m["cuts"] if c["id"] == "edge" or c["depth"] >= privacy_floor]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer requests (a few minutes)")
    ap.add_argument("--model", default="zoo:resnet_like")
    ap.add_argument("--bundle", help="use this bundle directory instead of partitioning")
    ap.add_argument("--public-key", help="its signing public key (with --bundle)")
    ap.add_argument("--max-cuts", type=int, default=6)
    ap.add_argument("--profiles", default="3g,4g,wifi,lan")
    ap.add_argument("--links", default=str(REPO / "configs" / "links.yaml"))
    ap.add_argument("--edge-gmacs", type=float, default=0.5,
                    help="emulated device speed, GMAC/s (0 = this host's real speed)")
    ap.add_argument("--codec", default="int8+lz4")
    ap.add_argument("--privacy-floor", type=int, default=1)
    ap.add_argument("--requests", type=int, default=0, help="measured requests per run")
    ap.add_argument("--cloud-threads", type=int, default=1)
    ap.add_argument("--json", help="write the figures to this file")
    args = ap.parse_args()
    if args.edge_gmacs <= 0:
        args.edge_gmacs = None
    n = args.requests or (18 if args.quick else 36)
    warm = 3 if args.quick else 5
    logging.basicConfig(level=logging.WARNING)
    profiles = load_profiles(args.links)
    work = Path(tempfile.mkdtemp(prefix="tiersplit-bench-edge-"))
    cloud = None
    results: dict[str, Any] = {}
    try:
        bundle, pub = _bundle(args, work)
        k = _keys(work)
        model = yaml.safe_load((bundle / "manifest.yaml").read_text())["name"]
        cloud, port = _start_cloud(work, bundle.parent.parent, model, pub, k, args.cloud_threads)
        cuts = _cuts(bundle, args.privacy_floor)
        console.print(f"[bold]{model}[/bold] ({bundle}), device emulated at "
                      f"{args.edge_gmacs or 'host'} GMAC/s, codec {args.codec}, {n} requests "
                      f"per run, cuts {[c['id'] for c in cuts]}")
        for pname in args.profiles.split(","):
            prof = profiles[pname]
            emu = LinkEmulator(("127.0.0.1", port), prof, seed=1).start()
            try:
                rows, pol = _sweep(bundle, pub, k, emu, args, cuts, n, warm, args.quick)
            finally:
                emu.stop()
            results[pname] = {"profile": prof, "cuts": rows, "policy": pol}
            _print_profile(pname, prof, rows, pol)
        _print_summary(results)
        if args.json:
            Path(args.json).write_text(json.dumps({
                p: {"cuts": {c: {k2: v for k2, v in r.items() if k2 != "paths"}
                             for c, r in res["cuts"].items()},
                    "policy": {"p50": res["policy"]["p50"],
                               "paths": dict(res["policy"]["paths"]),
                               "chosen": res["policy"]["paths"].most_common(1)[0][0]}}
                for p, res in results.items()}, indent=2))
    finally:
        if cloud is not None:
            cloud.stop(grace=15)
        shutil.rmtree(work, ignore_errors=True)


def _print_profile(name: str, prof: Any, rows: dict[str, Any], pol: dict[str, Any]) -> None:
    best = min(rows, key=lambda c: rows[c]["p50"])
    t = Table(title=f"{name}: {prof.up_bps / 1e6:g} Mbit/s, RTT {prof.rtt_ms:g} ms")
    for col in ("cut", "head ms (device)", "head ms (host)", "bytes/req on link", "e2e p50 ms",
                "e2e p90 ms", ""):
        t.add_column(col, justify="right")
    for cut, r in rows.items():
        t.add_row(cut, f"{r['head']:.2f}", f"{r['host_head']:.3f}", f"{r['bytes']:.0f}",
                  f"{r['p50']:.1f}", f"{r['p90']:.1f}", "best" if cut == best else "")
    chosen = pol["paths"].most_common(1)[0][0]
    t.add_row("policy", "", "", "", f"{pol['p50']:.1f}", f"{pol['p90']:.1f}",
              f"chose {chosen} {dict(pol['paths'])}")
    console.print(t)


def _print_summary(results: dict[str, Any]) -> None:
    t = Table(title="cut the runtime policy chose vs the best cut measured in the same sweep")
    for col in ("profile", "policy chose", "its p50 ms (sweep)", "best cut", "best p50 ms",
                "chosen/best", "goal <= 1.10", "policy run p50 ms", "run/best",
                "speedup vs all-edge"):
        t.add_column(col, justify="right")
    for name, res in results.items():
        rows, pol = res["cuts"], res["policy"]
        best = min(rows, key=lambda c: rows[c]["p50"])
        chosen = pol["paths"].most_common(1)[0][0]
        chosen_ms = rows[chosen]["p50"] if chosen in rows else pol["p50"]
        ratio = chosen_ms / rows[best]["p50"]
        edge = rows.get("edge", {}).get("p50", float("nan"))
        t.add_row(name, chosen, f"{chosen_ms:.1f}", best, f"{rows[best]['p50']:.1f}",
                  f"{ratio:.3f}", "[green]yes[/green]" if ratio <= 1.10 else "[red]no[/red]",
                  f"{pol['p50']:.1f}", f"{pol['p50'] / rows[best]['p50']:.3f}",
                  f"{edge / pol['p50']:.2f}x")
    console.print(t)
    console.print("chosen/best compares the policy's pick with the best cut on the same "
                  "sweep measurements; run/best also includes the policy run's own overheads "
                  "(probes, 5% exploration) and the host's load noise between runs.")


if __name__ == "__main__":
    main()
