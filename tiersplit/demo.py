"""``tiersplit demo``: the whole system on one machine, in one command.

Partitions a zoo model into a signed bundle (cached), generates fresh keys, starts a cloud
core and several edge agents as real processes on loopback over encrypted ZeroMQ (or
MQTT), puts each agent behind the link emulator with its own profile, drives requests
through each agent's KServe v2 API, and shows a live table. Midway one agent's bandwidth
collapses (the cut moves within a few requests), then the cloud core is killed (requests
finish locally, none lost). One agent runs the device cascade (its int8 model answers
the inputs it is sure of alone, at a threshold tuned for 99% agreement with the fp32
model). Ends with a summary whose accounting a test checks, and removes every process
it started.
"""

from __future__ import annotations

import json
import logging
import statistics
import threading
import time
import urllib.error
import urllib.request
from collections import Counter, deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from rich import box
from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.table import Table

from tiersplit.devtools.services import Service, tiersplit_cmd

log = logging.getLogger(__name__)

__all__ = ["DemoOptions", "agent_row", "cascade_line", "requests_to_move", "route", "run_demo",
           "summary_lines", "tune_cascade"]

HEADER_LENGTH = "Inference-Header-Content-Length"
COMPARE = ("edge", "cloud")  # forced cuts measured beside the policy's choice


@dataclass(frozen=True)
class DemoOptions:
    model: str = "mobilenet_like"
    profiles: tuple[str, ...] = ("3g", "4g", "wifi")
    transport: str = "zmq"
    broker: str | None = None  # host:port for --transport mqtt
    broker_tls: bool = False
    broker_ca: Path | None = None
    duration: float = 30.0
    plot: Path | None = None
    workdir: Path = Path.home() / ".cache" / "tiersplit" / "demo"
    links: Path | None = None
    edge_gmacs: float = 0.1  # emulated edge speed: the host is faster than a device
    codec: str = "int8+lz4"
    compare_every: int = 4  # every Nth request runs all-edge / all-cloud for comparison
    collapse_to_mbit: float = 0.5
    cascade_profile: str | None = "3g"  # the agent that runs the device cascade
    cascade_target: float = 0.99  # agreement with the fp32 model its threshold is tuned for
    inputs: int = 8  # distinct inputs the senders cycle through


#: ``parameters.path`` of a v2 response: a cloud core answered, the policy kept the
#: request on the device, or the device finished it after a failed cloud attempt.
PATHS = ("remote", "device", "fallback")
LOCAL_PATHS = ("device", "fallback")
#: Console width the one-table layout needs; narrower consoles (and files, pipes) get
#: two narrower tables instead of cells cut to "…".
WIDE = 150


def route(params: dict[str, Any]) -> tuple[str, str]:
    """``(path, cut)`` of a v2 response's parameters.

    ``path`` is one of :data:`PATHS` and ``cut`` the cut id (``cloud``, ``k<depth>``,
    ``edge``). Agents from before the two fields were split sent the cut id itself as
    ``path`` (``edge`` on the device, ``local`` after a failed cloud attempt); both forms
    map to the same pair.
    """
    path, cut = str(params.get("path", "?")), params.get("cut")
    if path in PATHS:
        return path, str(cut if cut is not None else "?")
    if path == "local":
        return "fallback", str(cut if cut is not None else "edge")
    if path == "edge":
        return "device", "edge"
    return "remote", path


@dataclass
class Sample:
    t: float
    forced: str | None
    path: str
    cut: str
    total_ms: float
    edge_ms: float
    network_ms: float
    cloud_ms: float
    bytes: int


@dataclass
class AgentRun:
    name: str
    profile: str
    service: Service
    emulator: Any
    url: str
    sent: int = 0
    ok: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    lost: int = 0
    paths: Counter[str] = field(default_factory=Counter)
    cascade: Counter[str] = field(default_factory=Counter)  # local | split
    samples: deque[Sample] = field(default_factory=lambda: deque(maxlen=5000))
    lock: threading.Lock = field(default_factory=threading.Lock)

    def recent(self, forced: str | None, n: int = 20) -> list[Sample]:
        with self.lock:
            return [s for s in self.samples if s.forced == forced][-n:]

    def current_cut(self) -> str:
        rec = self.recent(None, 8)
        return Counter(s.cut for s in rec).most_common(1)[0][0] if rec else "-"


# ----------------------------------------------------------------------------- set-up
def _bundle(opts: DemoOptions, console: Console) -> tuple[Path, Path, Path]:
    """The cached signed bundle: (bundle dir, signing .pub, repository root)."""
    from transport import keys

    root = opts.workdir / opts.model
    kdir = root / "signing"
    sec, pub = kdir / "signing.key", kdir / "signing.pub"
    if not sec.exists():
        keys.generate("ed25519", kdir, "signing")
    repo = root / "bundles"
    bdir = repo / opts.model / "1"
    if not (bdir / "manifest.yaml").exists():
        from partitioner import partition
        from partitioner.cache import default_root

        console.print(f"partitioning zoo:{opts.model} (cached for the next runs)...")
        # The partitioner's cache (like `tiersplit partition`'s default): a fresh workdir
        # reuses the export, ranges and judged heads of an earlier identical build.
        partition(f"zoo:{opts.model}", None, repo, name=opts.model, version="1",
                  signing_key=keys.load_ed25519_private(sec), max_cuts=6, progress=True,
                  cache_dir=default_root())
    return bdir, pub, repo


def tune_cascade(bdir: Path, manifest: Any, target: float, n: int = 64) -> Any:
    """The cascade threshold for ``target`` agreement of the int8 model with the fp32 one
    on ``n`` held-back random inputs (``placement.cascade.tune_threshold``), or None when
    the model's first output is not class logits."""
    import onnxruntime as ort

    from placement.cascade import confidence, tune_threshold

    rng = np.random.default_rng(12345)  # not the senders' inputs
    feeds = {t.name: rng.standard_normal((n, *t.shape[1:])).astype(t.dtype)
             for t in manifest.inputs}
    out = manifest.outputs[0].name
    runs = [ort.InferenceSession(str(bdir / f), providers=["CPUExecutionProvider"])
            .run([out], feeds)[0] for f in (manifest.full_int8, manifest.full_fp32)]
    try:
        scores = confidence(runs[0])
    except ValueError:
        return None
    agree = runs[0].reshape(n, -1, runs[0].shape[-1]).argmax(-1) == \
        runs[1].reshape(n, -1, runs[1].shape[-1]).argmax(-1)
    return tune_threshold(scores, agree.all(axis=1), target)


def _write_yaml(path: Path, doc: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def _broker_doc(opts: DemoOptions, port: int) -> dict[str, Any]:
    host = (opts.broker or "127.0.0.1:1883").rsplit(":", 1)[0]
    doc: dict[str, Any] = {"host": host, "port": port, "tls": opts.broker_tls}
    if opts.broker_ca:
        doc["ca_file"] = str(opts.broker_ca)
    return doc


def _broker_port(opts: DemoOptions) -> int:
    if not opts.broker or ":" not in opts.broker:
        raise ValueError("--transport mqtt needs --broker HOST:PORT (a running MQTT broker)")
    return int(opts.broker.rsplit(":", 1)[1])


class Demo:
    def __init__(self, opts: DemoOptions, console: Console) -> None:
        self.opts = opts
        self.console = console
        self.run_dir = opts.workdir / "last-run"
        self.cloud: Service | None = None
        self.agents: list[AgentRun] = []
        self.events: list[tuple[float, str]] = []
        self.pids: list[int] = []
        self.t0 = 0.0
        self.stop_event = threading.Event()
        self.cascade_threshold: float | None = None

    # ------------------------------------------------------------------ processes
    def start(self) -> None:
        import shutil

        from transport import keys
        from transport.linkemu import load_profiles

        opts = self.opts
        bdir, signing_pub, repo = _bundle(opts, self.console)
        from contract.bundle import Bundle

        self.bundle = Bundle.load(bdir, keys.load_ed25519_public(signing_pub))
        if self.run_dir.exists():
            shutil.rmtree(self.run_dir)
        kdir = self.run_dir / "keys"
        agents_dir = kdir / "agents"
        agents_dir.mkdir(parents=True)
        kind = "curve" if opts.transport == "zmq" else "x25519"
        keys.generate(kind, kdir, "cloud")
        names = [f"edge-{p}" for p in opts.profiles]
        for n in names:
            _, pub = keys.generate(kind, kdir, n)
            shutil.copy(pub, agents_dir / f"{n}.pub")

        if opts.transport == "zmq":
            transport = {"kind": "zmq", "endpoints": ["tcp://127.0.0.1:0"],
                         "secret_key": str(kdir / "cloud.key"),
                         "allowed_keys_dir": str(agents_dir)}
        else:
            transport = {"kind": "mqtt", "broker": _broker_doc(opts, _broker_port(opts)),
                         "secret_key": str(kdir / "cloud.key"),
                         "allowed_keys_dir": str(agents_dir)}
        cloud_cfg = _write_yaml(self.run_dir / "cloud.yaml", {
            "repository": str(repo), "signing_public_key": str(signing_pub),
            "models": [{"name": opts.model, "versions": ["1"]}],
            "transports": [transport],
            "batching": {"max_batch": 16, "max_queue_delay_ms": 2.0, "max_queue": 256},
            "executor_workers": 1,
            "http": {"enabled": True, "host": "127.0.0.1", "port": 0},
            "admin": {"port": 0},
            "grace_s": 5,
        })
        self.console.print("starting the cloud core...")
        self.cloud = Service("cloud", tiersplit_cmd("cloud", "serve", "--config", str(cloud_cfg)),
                             log_path=self.run_dir / "cloud.log").start()
        self.pids.append(self.cloud.pid)

        links = opts.links or Path(__file__).resolve().parent.parent / "configs" / "links.yaml"
        profiles = load_profiles(links)
        if opts.transport == "zmq":
            target_ep = self.cloud.ready["zmq"].split(",")[0]
            target = ("127.0.0.1", int(target_ep.rsplit(":", 1)[1]))
        else:
            target = (_broker_doc(opts, 0)["host"], _broker_port(opts))
        from transport.linkemu import LinkEmulator

        self.cascade_threshold = None
        if opts.cascade_profile in opts.profiles:
            tuned = tune_cascade(bdir, self.bundle.manifest, opts.cascade_target)
            if tuned is not None and tuned.met:
                self.cascade_threshold = tuned.threshold
                self.console.print(
                    f"cascade on edge-{opts.cascade_profile}: threshold {tuned.threshold:.3f} "
                    f"(held-back: {tuned.local_share:.0%} local at {tuned.achieved:.1%} "
                    "agreement)")
        for name, prof in zip(names, opts.profiles, strict=True):
            if prof not in profiles:
                raise ValueError(f"unknown link profile {prof!r}; known: {sorted(profiles)}")
            emu = LinkEmulator(target, profiles[prof], seed=len(self.agents)).start()
            if opts.transport == "zmq":
                link = {"kind": "zmq", "endpoint": f"tcp://127.0.0.1:{emu.port}",
                        "secret_key": str(kdir / f"{name}.key"),
                        "server_public_key": str(kdir / "cloud.pub"),
                        "heartbeat_ivl_ms": 300, "heartbeat_timeout_ms": 1200}
            else:
                broker = _broker_doc(opts, emu.port)
                link = {"kind": "mqtt", "broker": broker,
                        "secret_key": str(kdir / f"{name}.key"),
                        "server_public_key": str(kdir / "cloud.pub")}
            cfg = _write_yaml(self.run_dir / f"{name}.yaml", {
                "agent_id": name,
                "bundle": {"path": str(bdir), "public_key": str(signing_pub)},
                "endpoints": [{"name": "cloud", "region": "local", "link": link}],
                "api": {"host": "127.0.0.1", "port": 0, "allow_cut_override": True},
                "runtime": {"intra_op_threads": 1, "workers": 2,
                            "emulate_gmacs": opts.edge_gmacs},
                "codec": opts.codec,
                "policy": {"privacy_floor": 1, "probe_interval_s": 1.0,
                           "cascade": {"enabled": prof == opts.cascade_profile
                                       and self.cascade_threshold is not None,
                                       "threshold": self.cascade_threshold or 1.0}},
                "deadlines": {"default_ms": 3000},
            })
            self.console.print(f"starting agent {name} behind a {prof} link...")
            svc = Service(name, tiersplit_cmd("edge", "run", "--config", str(cfg)),
                          log_path=self.run_dir / f"{name}.log").start()
            self.pids.append(svc.pid)
            self.agents.append(AgentRun(name, prof, svc, emu, svc.ready["http"]))

    def stop(self) -> None:
        self.stop_event.set()
        for a in self.agents:
            a.service.stop(grace=10)
            a.emulator.stop()
        if self.cloud is not None:
            self.cloud.stop(grace=10)

    # ------------------------------------------------------------------ requests
    def _inputs(self) -> list[tuple[bytes, list[dict[str, Any]]]]:
        """The senders' inputs: a few distinct ones (the cascade is sure of some)."""
        rng = np.random.default_rng(0)
        pool = []
        for _ in range(max(self.opts.inputs, 1)):
            metas, blobs = [], []
            for spec in self.bundle.manifest.inputs:
                arr = rng.standard_normal((1, *spec.shape[1:])).astype(spec.dtype)
                blob = arr.tobytes()
                metas.append({"name": spec.name, "shape": list(arr.shape),
                              "datatype": "FP32",
                              "parameters": {"binary_data_size": len(blob)}})
                blobs.append(blob)
            pool.append((b"".join(blobs), metas))
        return pool

    def _send(self, agent: AgentRun, blob: bytes, metas: list[dict[str, Any]],
              forced: str | None) -> None:
        params: dict[str, Any] = {"tiersplit_cut": forced} if forced else {}
        head = json.dumps({"inputs": metas, "parameters": params}).encode()
        req = urllib.request.Request(
            f"{agent.url}/v2/models/{self.bundle.name}/infer", data=head + blob,
            headers={HEADER_LENGTH: str(len(head)), "Content-Type": "application/octet-stream"})
        with agent.lock:
            agent.sent += 1
        try:
            with urllib.request.urlopen(req, timeout=30) as r:
                doc = json.loads(r.read(int(r.headers.get(HEADER_LENGTH) or 0) or -1))
        except urllib.error.HTTPError as e:
            with agent.lock:
                agent.errors[str(e.code)] += 1
            return
        except (OSError, ValueError):
            with agent.lock:
                agent.lost += 1
            return
        p = doc.get("parameters", {})
        total = float(p.get("total_ms", 0.0))
        cloud = float(p.get("queue_ms", 0.0)) + float(p.get("compute_ms", 0.0))
        edge = float(p.get("head_ms", 0.0)) + float(p.get("encode_ms", 0.0)) + \
            float(p.get("local_ms", 0.0))
        network = max(0.0, float(p.get("remote_ms", 0.0)) - cloud)
        path, cut = route(p)
        s = Sample(time.monotonic() - self.t0, forced, path, cut, total, edge, network, cloud,
                   int(p.get("bytes_sent", 0)))
        with agent.lock:
            agent.ok += 1
            agent.samples.append(s)
            if forced is None:
                agent.paths[s.path] += 1
                if p.get("cascade"):
                    agent.cascade[str(p["cascade"])] += 1

    def _sender(self, agent: AgentRun) -> None:
        pool = self._inputs()
        i = 0
        while not self.stop_event.is_set():
            i += 1
            k = self.opts.compare_every
            forced = COMPARE[(i // k) % 2] if k and i % k == 0 else None
            blob, metas = pool[i % len(pool)]
            self._send(agent, blob, metas, forced)

    # ------------------------------------------------------------------ display
    def table(self, title: str) -> RenderableType:
        """The per-agent figures: one table on a wide console, else two that fit 80
        columns (latency; traffic) with every cell whole."""
        rows = [agent_row(a) for a in self.agents]
        if self.console.width >= WIDE:
            return _table(title, rows, WIDE_COLUMNS)
        latency = _table(title, rows, LATENCY_COLUMNS)
        latency.caption = "ms, medians of the last 20; all-edge/all-cloud: the input forced there"
        latency.caption_justify = "left"
        return Group(latency, _table("requests", rows, TRAFFIC_COLUMNS))

    # ------------------------------------------------------------------ the run
    def run(self) -> int:
        opts = self.opts
        self.t0 = time.monotonic()
        senders = [threading.Thread(target=self._sender, args=(a,), name=f"send-{a.name}",
                                    daemon=True) for a in self.agents]
        for s in senders:
            s.start()
        collapse_at, kill_at = 0.35 * opts.duration, 0.7 * opts.duration
        victim = max(self.agents, key=lambda a: a.emulator.profile.up_bps)
        phase = "steady"
        cut_before = cut_after = "-"
        live = Live(self.table(phase), console=self.console, refresh_per_second=2,
                    transient=False) if self.console.is_terminal else None
        if live:
            live.start()
        try:
            while (now := time.monotonic() - self.t0) < opts.duration:
                if phase == "steady" and now >= collapse_at:
                    self._snapshot("phase 1 - steady: each agent on its own link", live)
                    cut_before = victim.current_cut()
                    victim.emulator.set_rate(opts.collapse_to_mbit * 1e6,
                                             opts.collapse_to_mbit * 1e6)
                    self._event(f"{victim.name}: bandwidth -> {opts.collapse_to_mbit} Mbit/s "
                                f"(cut was {cut_before})", live)
                    phase = "collapsed"
                elif phase == "collapsed" and now >= kill_at:
                    self._snapshot(f"phase 2 - {victim.name}'s bandwidth collapsed", live)
                    cut_after = victim.current_cut()
                    self._event(f"{victim.name}: cut now {cut_after}; killing the cloud core "
                                "(SIGKILL)", live)
                    assert self.cloud is not None
                    self.cloud.kill()
                    phase = "cloud down"
                if live:
                    live.update(self.table(phase))
                time.sleep(0.25)
        finally:
            self.stop_event.set()
            for s in senders:
                s.join(timeout=60)
            if live:
                live.stop()
        self._snapshot("phase 3 - cloud core killed: agents finish requests locally", live)
        sent = sum(a.sent for a in self.agents)
        ok = sum(a.ok for a in self.agents)
        errors = sum(sum(a.errors.values()) for a in self.agents)
        lost = sent - ok - errors  # no reply at all: must be zero
        local_after_kill = sum(1 for a in self.agents for s in a.samples
                               if s.t >= kill_at and s.forced is None and
                               s.path in LOCAL_PATHS)
        for line in summary_lines(self.agents):
            self._plain(line)
        moved = requests_to_move(victim, collapse_at, cut_before)
        self._plain(f"CUT-MOVE agent={victim.name} before={cut_before} after={cut_after} "
                    f"requests_to_move={moved if moved is not None else '-'}")
        self._plain(cascade_line(self.agents, self.cascade_threshold))
        self._plain(f"LOCAL-AFTER-KILL {local_after_kill}")
        self._plain(f"SUMMARY sent={sent} answered={ok + errors} ok={ok} errors={errors} "
                    f"lost={lost}")
        if opts.plot:
            self.plot(opts.plot, collapse_at, kill_at)
        return 0 if lost == 0 else 1

    def _plain(self, line: str) -> None:
        """One summary line as it is: no markup, no highlighting, never wrapped."""
        self.console.print(line, markup=False, highlight=False, soft_wrap=True)

    def _snapshot(self, title: str, live: Live | None) -> None:
        """Print the table as it stands (kept on screen above the live view)."""
        (live.console if live else self.console).print(self.table(title))

    def _event(self, text: str, live: Live | None) -> None:
        self.events.append((time.monotonic() - self.t0, text))
        (live.console if live else self.console).print(
            f"[bold]t={self.events[-1][0]:.1f}s[/bold] {text}")

    def plot(self, path: Path, collapse_at: float, kill_at: float) -> None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(10, 5))
        for a in self.agents:
            pts = [s for s in a.samples if s.forced is None]
            ax.plot([s.t for s in pts], [s.total_ms for s in pts], ".", ms=3,
                    label=f"{a.name} ({a.profile})")
        ax.axvline(collapse_at, color="grey", ls="--")
        ax.axvline(kill_at, color="red", ls="--")
        ax.set_xlabel("time (s)")
        ax.set_ylabel("end-to-end latency (ms)")
        ax.set_yscale("log")
        ax.set_title("tiersplit demo: bandwidth collapse (grey), cloud core killed (red)")
        ax.legend()
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        plt.close(fig)
        self.console.print(f"plot written to {path}")


# ----------------------------------------------------------------------------- tables
#: (header, key, right-aligned) of each layout's columns; keys index :func:`agent_row`.
WIDE_COLUMNS = (("agent", "agent", False), ("link", "link", False), ("cut", "cut", False),
                ("bytes", "bytes", True), ("edge ms", "edge", True), ("net ms", "net", True),
                ("cloud ms", "cloud", True), ("e2e ms", "e2e", True),
                ("all-edge ms", "all_edge", True), ("all-cloud ms", "all_cloud", True),
                ("paths", "paths", False), ("sent", "sent", True), ("ok", "ok", True),
                ("err", "err", True))
LATENCY_COLUMNS = (("agent", "agent", False), ("link", "link", False), ("cut", "cut", False),
                   ("edge", "edge", True), ("net", "net", True), ("cloud", "cloud", True),
                   ("e2e", "e2e", True), ("all-edge", "all_edge", True),
                   ("all-cloud", "all_cloud", True))
TRAFFIC_COLUMNS = (("agent", "agent", False), ("bytes/req", "bytes", True),
                   ("paths", "paths", False), ("sent", "sent", True), ("ok", "ok", True),
                   ("err", "err", True))


def _median(xs: list[float]) -> str:
    return f"{statistics.median(xs):.1f}" if xs else "-"


def agent_row(a: AgentRun) -> dict[str, str]:
    """One agent's figures as table cells: medians over its last 20 policy requests (and
    the last 20 forced all-edge / all-cloud ones), counts since the start."""
    rec = a.recent(None)
    with a.lock:
        paths = " ".join(f"{k}:{v}" for k, v in sorted(a.paths.items()))
        sent, ok, err = a.sent, a.ok, sum(a.errors.values())
    return {"agent": a.name, "link": a.profile, "cut": a.current_cut(),
            "bytes": _median([s.bytes for s in rec]).removesuffix(".0"),
            "edge": _median([s.edge_ms for s in rec]), "net": _median([s.network_ms for s in rec]),
            "cloud": _median([s.cloud_ms for s in rec]), "e2e": _median([s.total_ms for s in rec]),
            "all_edge": _median([s.total_ms for s in a.recent("edge")]),
            "all_cloud": _median([s.total_ms for s in a.recent("cloud")]),
            "paths": paths or "-", "sent": str(sent), "ok": str(ok), "err": str(err)}


def _table(title: str, rows: list[dict[str, str]],
           columns: tuple[tuple[str, str, bool], ...]) -> Table:
    t = Table(title=title, title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False)
    for header, key, right in columns:
        # Figures never shrink to "…": a narrow console wraps the paths column instead.
        t.add_column(header, justify="right" if right else "left",
                     no_wrap=key != "paths", overflow="fold",
                     min_width=max([len(header)] + [len(r[key]) for r in rows]
                                   if key != "paths" else [len(header)]))
    for r in rows:
        t.add_row(*(r[key] for _, key, _ in columns))
    return t


def summary_lines(agents: list[AgentRun]) -> list[str]:
    """The end-of-run figures per agent, one plain line each (logs and files keep them)."""
    lines = []
    for a in agents:
        r = agent_row(a)
        lines.append(f"AGENT {r['agent']} link={r['link']} cut={r['cut']} e2e_ms={r['e2e']} "
                     f"all_edge_ms={r['all_edge']} all_cloud_ms={r['all_cloud']} "
                     f"bytes={r['bytes']} paths={r['paths'].replace(' ', ',')} "
                     f"sent={r['sent']} ok={r['ok']} err={r['err']}")
    return lines


def requests_to_move(agent: AgentRun, since: float, cut: str) -> int | None:
    """Policy requests ``agent`` sent after ``since`` until one was served at a cut other
    than ``cut`` (that one included): how fast the cut followed a change. None: never."""
    with agent.lock:
        after = [s for s in agent.samples if s.forced is None and s.t >= since]
    for n, s in enumerate(after, 1):
        if s.cut != cut:
            return n
    return None


def cascade_line(agents: list[AgentRun], threshold: float | None) -> str:
    """How many policy requests the device cascade answered alone (``local``) or sent
    on (``split``), over every agent that runs it; one plain line."""
    local = sum(a.cascade["local"] for a in agents)
    split = sum(a.cascade["split"] for a in agents)
    share = f"{local / (local + split):.0%}" if local + split else "-"
    which = ",".join(a.name for a in agents if a.cascade) or "none"
    shown = "off" if threshold is None else f"{threshold:.3f}"
    return f"CASCADE local={local} split={split} share={share} threshold={shown} agents={which}"


def run_demo(opts: DemoOptions, console: Console | None = None) -> int:
    """Run the demo; returns the exit code (0: every request answered, none lost)."""
    console = console or Console()
    # The children log to their own files; here only the table and events matter.
    for name in ("transport", "partitioner", "cloud_core", "edge_agent"):
        logging.getLogger(name).setLevel(logging.WARNING)
    demo = Demo(opts, console)
    try:
        demo.start()
        code = demo.run()
    finally:
        demo.stop()
        gone = all(not _pid_alive(p) for p in demo.pids)
        console.print(f"PIDS {','.join(map(str, demo.pids))} all_stopped={gone}",
                      markup=False, highlight=False, soft_wrap=True)
    return code


def _pid_alive(pid: int) -> bool:
    import os

    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie still answers kill(0): we reaped our children in Service.stop, so a live
    # answer means a real process.
    return True
