"""Rollout: ship v2 to a fleet under load, roll it back, and measure what it cost.

Starts a real cloud core (``tiersplit cloud serve``, CurveZMQ, v1 loaded, v2 on disk) and
``--agents`` edge agents in this process, each connected through the link emulator
(``--rate-mbit``, ``--rtt-ms``) with model updates on (downloads capped at
``--max-rate`` bytes/s per agent). Closed-loop application threads keep every agent
busy the whole time. After a warm-up the script measures a baseline, then rolls v2 out
to every agent (``/v1/rollouts``, canary 100%, ``--max-parallel`` agents switching at a
time) and waits until the whole fleet runs v2, keeps the load on v2 for a while, then
rolls back and waits until every agent runs v1 again (kept on disk: no download).

Reported in one table: time from ``rollout`` to the whole fleet on v2, time for the
``rollback``, bytes moved per agent, and the p99 of inference before the rollout vs
during it (goal: during <= 1.2x before), plus the request accounting (nothing lost,
nothing failed). Exit status 1 if a request was lost or failed.

Usage::

    python -m bench.rollout --quick
    python -m bench.rollout --agents 4 --before-s 20
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import secrets
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import yaml
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from tiersplit.devtools.bundles import EDGE_CNN_INPUT, EDGE_CNN_SHAPE, build_edge_cnn
from tiersplit.devtools.services import Service, tiersplit_cmd
from transport import keys
from transport.linkemu import LinkEmulator, LinkProfile

MODEL = "edge_cnn"
GOAL = 1.2
console = Console()


class Load:
    """Closed-loop senders; every request recorded as (start, seconds, version) or error."""

    def __init__(self, agents: list[Any], threads: int) -> None:
        rng = np.random.default_rng(1)
        self.x = [{EDGE_CNN_INPUT: rng.standard_normal((1, *EDGE_CNN_SHAPE)).astype(
            np.float32)} for _ in range(4)]
        self.samples: list[tuple[float, float, str]] = []
        self.errors: list[str] = []
        self.sent = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(a,), daemon=True)
                         for a in agents for _ in range(threads)]

    def _run(self, agent: Any) -> None:
        n = 0
        while not self._stop.is_set():
            t0 = time.monotonic()
            with self._lock:
                self.sent += 1
            try:
                res = agent.infer(self.x[n % len(self.x)]).result(120)
            except Exception as e:  # counted: the goal is none
                with self._lock:
                    self.errors.append(f"{type(e).__name__}: {e}")
                continue
            finally:
                n += 1
            with self._lock:
                self.samples.append((t0, time.monotonic() - t0, res.version))

    def start(self) -> Load:
        for t in self._threads:
            t.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(180)

    def p99_ms(self, start: float, end: float) -> tuple[float, int]:
        with self._lock:
            xs = [s for t, s, _ in self.samples if start <= t < end]
        return (float(np.percentile(xs, 99)) * 1e3 if xs else float("nan")), len(xs)


def _setup(work: Path, n_agents: int) -> dict[str, Any]:
    kd = work / "keys"
    kd.mkdir(parents=True)
    v1 = build_edge_cnn(work / "bundles", kd, MODEL, "1", seed=0)
    build_edge_cnn(work / "bundles", kd, MODEL, "2", seed=3)
    cs, cp = keys.generate("curve", kd, "cloud")
    allowed = kd / "agents"
    allowed.mkdir()
    for i in range(n_agents):
        keys.generate("curve", kd, f"a{i}")
        shutil.copy(kd / f"a{i}.pub", allowed / f"a{i}.pub")
    token = kd / "admin.token"
    keys.write_secret(token, secrets.token_urlsafe(24).encode())
    return {"v1": v1, "cloud_secret": cs, "cloud_public": cp, "allowed": allowed,
            "token": token, "keys": kd}


def _start_core(work: Path, s: dict[str, Any]) -> Service:
    doc = {
        "repository": str(work / "bundles"), "signing_public_key": str(s["v1"].public_key),
        "models": [{"name": MODEL, "versions": ["1"]}],
        "transports": [{"kind": "zmq", "endpoints": ["tcp://127.0.0.1:0"],
                        "secret_key": str(s["cloud_secret"]),
                        "allowed_keys_dir": str(s["allowed"])}],
        "batching": {"max_batch": 8, "max_queue_delay_ms": 1.0, "max_queue": 256},
        "backend": {"kind": "onnxruntime", "device": "cpu", "threads": 1},
        "executor_workers": 1, "http": {"port": 0},
        "admin": {"port": 0, "token_file": str(s["token"])},
        "rollout": {"state_file": str(work / "rollouts.json"), "window_s": 10.0},
        "grace_s": 2,
    }
    path = work / "cloud.yaml"
    path.write_text(yaml.safe_dump(doc))
    return Service("cloud", tiersplit_cmd("cloud", "serve", "--config", str(path)),
                   log_path=work / "cloud.log").start(timeout=120)


def _agent(work: Path, s: dict[str, Any], i: int, port: int, max_rate: float) -> Any:
    from edge_agent import EdgeAgent, parse_config

    aid = f"a{i}"
    cfg = {
        "agent_id": aid,
        "bundle": {"path": str(s["v1"].path), "public_key": str(s["v1"].public_key)},
        "endpoints": [{"name": "cloud", "region": "eu", "link": {
            "kind": "zmq", "endpoint": f"tcp://127.0.0.1:{port}",
            "secret_key": str(s["keys"] / f"{aid}.key"),
            "server_public_key": str(s["cloud_public"])}}],
        "runtime": {"emulate_gmacs": 0.1, "workers": 2, "warmup_runs": 1, "measure_runs": 2},
        "policy": {"probe_interval_s": 0.5, "seed": 7, "explore_fraction": 0.0},
        "deadlines": {"default_ms": 3000},
        "codec": "raw",
        "update": {"state_dir": str(work / f"state-{aid}"), "report_interval_s": 0.5,
                   "max_rate_bytes_per_s": max_rate},
    }
    return EdgeAgent(parse_config(cfg), serve_http=False).start()


def _wait(agents: list[Any], version: str, timeout: float) -> float:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if all(a.current_bundle().version == version for a in agents):
            return time.monotonic() - t0
        time.sleep(0.05)
    raise TimeoutError(f"the fleet did not reach v{version} within {timeout:.0f} s")


def _update_bytes(agent: Any) -> float:
    from prometheus_client.parser import text_string_to_metric_families

    for fam in text_string_to_metric_families(agent.metrics_text().decode()):
        for smp in fam.samples:
            if smp.name == "tiersplit_edge_update_bytes_total":
                return smp.value
    return 0.0


def run(args: argparse.Namespace, work: Path) -> int:
    logging.getLogger("onnxruntime").setLevel(logging.ERROR)
    s = _setup(work, args.agents)
    core = _start_core(work, s)
    agents: list[Any] = []
    emu = None
    load = None
    try:
        zmq_port = int(core.ready["zmq"].split(",")[0].rsplit(":", 1)[1])
        emu = LinkEmulator(("127.0.0.1", zmq_port),
                           LinkProfile.symmetric(args.rate_mbit * 1e6, args.rtt_ms),
                           seed=1).start()
        agents = [_agent(work, s, i, emu.port, args.max_rate) for i in range(args.agents)]
        for a in agents:
            a.wait_connected(30)
        token = s["token"].read_text().strip()
        admin = core.ready["admin"]

        def call(path: str) -> dict[str, Any]:
            r = httpx.post(admin + path, headers={"Authorization": f"Bearer {token}"},
                           timeout=120)
            r.raise_for_status()
            return r.json()

        load = Load(agents, args.threads).start()
        with Progress(console=console, transient=True) as bar:
            task = bar.add_task("warm-up", total=args.warmup_s + args.before_s)
            t_end = time.monotonic() + args.warmup_s + args.before_s
            while time.monotonic() < t_end:
                time.sleep(0.2)
                bar.update(task, completed=args.warmup_s + args.before_s
                           - (t_end - time.monotonic()),
                           description="warm-up" if t_end - time.monotonic() > args.before_s
                           else "baseline")
            before = (t_end - args.before_s, t_end)
            bar.update(task, description="rollout")
            t_roll = time.monotonic()
            call(f"/v1/rollouts/{MODEL}/versions/2?canary=100%25"
                 f"&max_parallel={args.max_parallel}")
            rollout_s = _wait(agents, "2", 300)
            during = (t_roll, time.monotonic())
            time.sleep(args.after_s)
            bar.update(task, description="rollback")
            moved_before_back = [_update_bytes(a) for a in agents]
            t_back = time.monotonic()
            call(f"/v1/rollouts/{MODEL}/rollback")
            rollback_s = _wait(agents, "1", 300)
            back_moved = [_update_bytes(a) - b for a, b in zip(agents, moved_before_back,
                                                                strict=True)]
            time.sleep(1.0)
        load.stop()
    finally:
        if load is not None:
            load.stop()
        for a in agents:
            with contextlib.suppress(Exception):
                a.stop(grace=5)
        if emu is not None:
            emu.stop()
        core.stop(grace=10)

    p99_before, n_before = load.p99_ms(*before)
    p99_during, n_during = load.p99_ms(*during)
    ratio = p99_during / p99_before if p99_before else float("nan")
    moved = moved_before_back
    edge_bytes = sum(p.stat().st_size for p in (work / f"state-a0/versions/{MODEL}/2").iterdir())
    versions = {v for t0, _, v in load.samples if t_back <= t0 < t_back + rollback_s}
    t = Table(title=f"rollout of {MODEL} v1 -> v2 -> v1: {args.agents} agents, "
                    f"{args.rate_mbit:g} Mbit/s {args.rtt_ms:g} ms links, downloads capped "
                    f"at {args.max_rate / 1e6:g} MB/s, max {args.max_parallel or 'all'} "
                    "switching at once")
    t.add_column("measure")
    t.add_column("value", justify="right")
    t.add_row("rollout -> whole fleet on v2", f"{rollout_s:.2f} s")
    t.add_row("rollback -> whole fleet on v1", f"{rollback_s:.2f} s")
    t.add_row("bytes moved per agent (v2 edge files)",
              f"{np.mean(moved) / 1e3:.1f} kB (bundle edge files {edge_bytes / 1e3:.1f} kB)")
    t.add_row("bytes moved per agent for the rollback",
              f"{np.mean(back_moved) / 1e3:.1f} kB (v1 kept on disk)")
    t.add_row(f"p99 before the rollout ({n_before} requests)", f"{p99_before:.1f} ms")
    t.add_row(f"p99 during the rollout ({n_during} requests)", f"{p99_during:.1f} ms")
    t.add_row(f"p99 during / before (goal <= {GOAL})",
              f"{ratio:.2f} {'ok' if ratio <= GOAL else 'MISSED'}")
    t.add_row("requests sent / answered / failed / lost",
              f"{load.sent} / {len(load.samples)} / {len(load.errors)} / "
              f"{load.sent - len(load.samples) - len(load.errors)}")
    t.add_row("versions answering during the rollback", ", ".join(sorted(versions)) or "-")
    console.print(t)
    bad = load.errors or load.sent != len(load.samples) + len(load.errors)
    if load.errors:
        console.print(f"[red]errors: {load.errors[:3]}[/red]")
    return 1 if bad else 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="short phases (about a minute)")
    ap.add_argument("--agents", type=int, default=4)
    ap.add_argument("--threads", type=int, default=2, help="closed-loop senders per agent")
    ap.add_argument("--rate-mbit", type=float, default=50.0)
    ap.add_argument("--rtt-ms", type=float, default=10.0)
    ap.add_argument("--max-rate", type=float, default=1e6,
                    help="download cap per agent, bytes/s (update.max_rate_bytes_per_s)")
    ap.add_argument("--max-parallel", type=int, default=1,
                    help="agents switching at once (the plan's max_parallel; 0: all)")
    ap.add_argument("--warmup-s", type=float, default=10.0)
    ap.add_argument("--before-s", type=float, default=20.0)
    ap.add_argument("--after-s", type=float, default=5.0)
    ap.add_argument("--out", type=Path, default=None, help="work directory (default: temp)")
    args = ap.parse_args(argv)
    if args.quick:
        args.warmup_s, args.before_s, args.after_s = 5.0, 10.0, 3.0
    if args.out is not None:
        shutil.rmtree(args.out, ignore_errors=True)
        args.out.mkdir(parents=True)
        return run(args, args.out)
    with tempfile.TemporaryDirectory(prefix="tiersplit-rollout-") as d:
        return run(args, Path(d))


if __name__ == "__main__":
    sys.exit(main())
