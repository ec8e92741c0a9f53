"""Cloud core benchmark: what the service costs per request beside what the tail costs.

One tail (a dense MLP heavy enough that batching matters) served by ``tiersplit cloud
serve`` in its own process, driven by closed-loop senders (each sends one sample, waits
for the answer, repeats) at 1, 8 and 32 concurrent senders over each transport:

- ``zmq``: the real ZeroMQ link, CurveZMQ on, as deployed;
- ``mqtt``: the real MQTT link through a local Mosquitto (TLS + per-agent AEAD), when
  Mosquitto is installed.

The senders run in separate generator processes (:mod:`bench.loadgen`), so their
Python work is not the core's; their own CPU use is printed, to show their headroom.
Over ZeroMQ they are lean (one raw Curve DEALER per process keeps its senders' requests in
flight, real wire bytes both ways) so that on a small machine they leave the cores to the
core; ``--link-generators`` sends through tiersplit client links instead, as agents do.
For every cell the bench reads the core process's CPU time (psutil) over the measured
window and divides it by the replies: **core CPU per request**. Beside it, the same tail
run directly on the same backend in this process, at the cell's mean batch size: the
**backend CPU per request**. Their ratio is the service overhead (transport, crypto,
decode, validation, batching, encode), a figure that holds across machines far better
than requests per second on a shared box.

Also, as before: ``core batched`` vs ``core bs=1`` (``max_batch: 1``), the same cores fed
in process (``on_request`` without a transport: what the batcher and backend alone
reach), and a real Triton (PyTriton, ORT in its Python backend, same max batch, queue
delay and instances, ``tritonclient`` gRPC) when available.

Goals: service overhead <= 1.5x the backend's CPU per request at 32 senders; throughput
>= 60 % of the in-process figure; batched/bs=1 >= 1.5x on CPU (3x on GPU); core >=
Triton. ``--device cuda`` runs the core on CUDA (ORT CUDA EP, else the torch backend).

Usage::

    python -m bench.cloud [--quick] [--device cpu|cuda] [--seconds S] [--no-triton]
                          [--transports zmq,mqtt] [--gen-procs N] [--link-generators]
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bench.loadgen import GenSpec, run_generators
from contract.deadline import Deadline

ROOT = Path(__file__).resolve().parent.parent

from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

SENDERS = [1, 8, 32]


@dataclass
class Cell:
    rps: float
    p50_ms: float
    p99_ms: float
    errors: int
    mean_batch: float = float("nan")
    core_cpu_ms: float = float("nan")  # core process CPU per reply
    core_util: float = float("nan")  # core CPU seconds per wall second (cores busy)
    gen_util: float = float("nan")  # generators' CPU seconds per wall second
    broker_util: float = float("nan")  # Mosquitto's, for MQTT cells
    backend_cpu_ms: float = float("nan")  # the backend alone, per sample, at mean_batch

    @property
    def overhead(self) -> float:
        return self.core_cpu_ms / self.backend_cpu_ms if self.backend_cpu_ms else float("nan")


def _closed_loop(call, senders: int, seconds: float, warmup: float) -> Cell:
    """``senders`` threads each calling ``call(i)`` back to back for ``seconds``."""
    lat: list[list[float]] = [[] for _ in range(senders)]
    errors = [0] * senders
    start_evt = threading.Event()
    t_measure = [0.0, 0.0]

    def run(i: int) -> None:
        start_evt.wait()
        end_warm = time.monotonic() + warmup
        while time.monotonic() < end_warm:
            call(i)
        t0 = time.monotonic()
        if i == 0:
            t_measure[0] = t0
        end = t0 + seconds
        while True:
            s = time.monotonic()
            if s >= end:
                break
            ok = call(i)
            if ok:
                lat[i].append(time.monotonic() - s)
            else:
                errors[i] += 1

    threads = [threading.Thread(target=run, args=(i,), daemon=True) for i in range(senders)]
    for t in threads:
        t.start()
    start_evt.set()
    for t in threads:
        t.join()
    all_lat = np.array([x for xs in lat for x in xs]) * 1e3
    n = len(all_lat)
    return Cell(rps=n / seconds, p50_ms=float(np.percentile(all_lat, 50)) if n else 0.0,
                p99_ms=float(np.percentile(all_lat, 99)) if n else 0.0, errors=sum(errors))


def _build(tmp: Path, width: int, layers: int):
    from tiersplit.devtools import bundles as test_bundles
    from transport import keys

    secret, public = keys.generate("ed25519", tmp / "keys", "signing")
    sk = keys.load_ed25519_private(secret)
    test_bundles.build_bundle(tmp / "bundles", "wide", "1", test_bundles.wide(1, width, layers), sk)
    return public


def _keys(tmp: Path, kind: str, gens: int) -> Path:
    """Cloud keys and ``gen<i>`` agent keys (all allowed) for one transport."""
    from transport import keys

    kdir = tmp / f"keys-{kind}"
    if kdir.exists():
        return kdir
    ktype = "curve" if kind == "zmq" else "x25519"
    keys.generate(ktype, kdir, "cloud")  # type: ignore[arg-type]
    (kdir / "allowed").mkdir()
    for i in range(gens):
        keys.generate(ktype, kdir, f"gen{i}")  # type: ignore[arg-type]
        (kdir / "allowed" / f"gen{i}.pub").write_bytes((kdir / f"gen{i}.pub").read_bytes())
    return kdir


def _broker_cfg(broker: Any) -> dict[str, Any]:
    return {"host": broker.host, "port": broker.port, "ca_file": str(broker.ca_file),
            "username": broker.username, "password_file": str(broker.password_file)}


def _config(tmp: Path, public: Path, max_batch: int, delay_ms: float, workers: int,
            backend: str, device: str, kind: str, kdir: Path, broker: Any) -> dict:
    if kind == "zmq":
        link: dict[str, Any] = {"kind": "zmq", "endpoints": ["tcp://127.0.0.1:0"],
                                "secret_key": str(kdir / "cloud.key"),
                                "allowed_keys_dir": str(kdir / "allowed")}
    else:
        link = {"kind": "mqtt", "broker": _broker_cfg(broker),
                "secret_key": str(kdir / "cloud.key"),
                "allowed_keys_dir": str(kdir / "allowed")}
    return {
        "repository": str(tmp / "bundles"), "signing_public_key": str(public),
        "models": [{"name": "wide"}],
        "transports": [link],
        "batching": {"max_batch": max_batch, "max_queue_delay_ms": delay_ms,
                     "max_queue": 4096},
        "backend": {"kind": backend, "device": device},
        "executor_workers": workers, "http": {"port": 0}, "admin": {"port": 0},
    }


def _client_json(kind: str, kdir: Path, i: int, endpoint: str, broker: Any) -> str:
    from transport.config import MqttClientConfig, ZmqClientConfig

    if kind == "zmq":
        cfg: Any = ZmqClientConfig(endpoint=endpoint, secret_key=kdir / f"gen{i}.key",
                                   server_public_key=kdir / "cloud.pub")
    else:
        from transport.config import MqttBrokerConfig

        cfg = MqttClientConfig(broker=MqttBrokerConfig(**_broker_cfg(broker)),
                               secret_key=kdir / f"gen{i}.key",
                               server_public_key=kdir / "cloud.pub")
    return cfg.model_dump_json()


@contextlib.contextmanager
def _served(cfg: dict, tmp: Path, name: str):
    """``tiersplit cloud serve`` in its own process (as Triton runs in its own), yielding
    the Service (``ready`` holds its endpoints, ``pid`` its process); SIGTERM on exit."""
    import yaml

    from tiersplit.devtools.services import Service, tiersplit_cmd

    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    svc = Service(name, tiersplit_cmd("cloud", "serve", "--config", str(path))).start()
    try:
        yield svc
    finally:
        svc.stop(grace=60)


def _metrics(http: str, *names: str) -> list[float]:
    """Values of ``names`` from one scrape of ``/metrics`` (0 when absent)."""
    import httpx

    found: dict[str, float] = {}
    for line in httpx.get(f"{http}/metrics").text.splitlines():
        name, _, value = line.partition(" ")
        if name in names:
            found[name] = float(value.split()[0])
    return [found.get(n, 0.0) for n in names]


def _cpu_s(proc: Any) -> float:
    t = proc.cpu_times()
    return t.user + t.system


class BackendMeter:
    """CPU time per sample of the tail run directly on the backend, by batch size.

    The same engine and settings as the core's (one ORT session, default threads), in
    this process, timed with the process CPU clock (all threads: ORT's pool included).
    """

    def __init__(self, bundle: Any, backend: str, device: str, seconds: float) -> None:
        from cloud_core.backends import make_backend_factory
        from cloud_core.config import BackendConfig

        self._cut = bundle.manifest.cut("h1")
        self._backend = make_backend_factory(BackendConfig(kind=backend, device=device))()
        self._backend.load(bundle, self._cut)
        self._spec = self._cut.tensors[0]
        self._seconds = seconds
        self._cache: dict[int, float] = {}

    def ms_per_sample(self, batch: float) -> float:
        bs = max(1, round(batch)) if np.isfinite(batch) else 1
        if bs not in self._cache:
            x = np.random.default_rng(0).standard_normal(
                (bs, *self._spec.sample_shape)).astype(np.float32)
            feed = {self._spec.name: x}
            for _ in range(3):
                self._backend.run(feed)
            n, c0, end = 0, time.process_time(), time.monotonic() + self._seconds
            while time.monotonic() < end or n < 5:
                self._backend.run(feed)
                n += 1
            self._cache[bs] = (time.process_time() - c0) * 1e3 / (n * bs)
        return self._cache[bs]

    @property
    def device(self) -> str:
        return self._backend.device

    def close(self) -> None:
        self._backend.close()


_BATCH = ("tiersplit_cloud_batch_size_count", "tiersplit_cloud_batch_size_sum")


def _broker_process(broker: Any) -> Any:
    """The Mosquitto child of this process (for its CPU time), or None."""
    import psutil

    if broker is None:
        return None
    for child in psutil.Process().children():
        with contextlib.suppress(psutil.Error):
            if "mosquitto" in child.name():
                return child
    return None


def _bench_core(svc: Any, kind: str, kdir: Path, bundle: Any, senders: int, seconds: float,
                warmup: float, gen_procs: int, broker: Any, lean: bool = True) -> Cell:
    import psutil

    http = svc.ready["http"]
    endpoint = svc.ready.get("zmq", "")
    spec = bundle.manifest.cut("h1").tensors[0]
    core = psutil.Process(svc.pid)
    bproc = _broker_process(broker)
    marks: dict[str, float] = {}

    def spec_for(i: int) -> GenSpec:
        return GenSpec(link=_client_json(kind, kdir, i, endpoint, broker),
                       agent_id=f"gen{i}", model=bundle.name, version=bundle.version,
                       digest=bundle.digest, cut="h1", tensor=spec.name,
                       sample_shape=tuple(spec.sample_shape), lean=lean)

    def window(t0: float, t1: float) -> None:
        time.sleep(max(0.0, t0 - time.monotonic()))
        marks["c0"], marks["b0"] = _cpu_s(core), _cpu_s(bproc) if bproc else 0.0
        marks["n0"], marks["s0"] = _metrics(http, *_BATCH)
        time.sleep(max(0.0, t1 - time.monotonic()))
        marks["c1"], marks["b1"] = _cpu_s(core), _cpu_s(bproc) if bproc else 0.0
        marks["n1"], marks["s1"] = _metrics(http, *_BATCH)

    res = run_generators(spec_for, senders, gen_procs, warmup, seconds, window)
    lat = np.array(res.latencies_ms)
    n = len(lat)
    cell = Cell(rps=n / seconds, p50_ms=float(np.percentile(lat, 50)) if n else 0.0,
                p99_ms=float(np.percentile(lat, 99)) if n else 0.0, errors=res.errors)
    cell.mean_batch = (marks["s1"] - marks["s0"]) / max(1.0, marks["n1"] - marks["n0"])
    cell.core_cpu_ms = (marks["c1"] - marks["c0"]) * 1e3 / max(n, 1)
    cell.core_util = (marks["c1"] - marks["c0"]) / seconds
    cell.gen_util = res.cpu_s / seconds
    if bproc:
        cell.broker_util = (marks["b1"] - marks["b0"]) / seconds
    return cell


def _bench_inproc(core, senders: int, seconds: float, warmup: float) -> Cell:
    """The core alone: requests handed to ``on_request`` as a link would, no transport."""
    from transport.messages import Request

    lv = core.repository.active("wide")
    spec = lv.cut("h1").tensors[0]
    x = np.random.default_rng(0).standard_normal((1, *spec.sample_shape)).astype(np.float32)
    counter = iter(range(10**9))
    lock = threading.Lock()

    class _Waiter:
        __slots__ = ("event", "reply")

        def __init__(self) -> None:
            self.event = threading.Event()
            self.reply = None

        def send(self, reply) -> None:
            self.reply = reply
            self.event.set()

    def call(i: int) -> bool:
        with lock:
            rid = f"i{next(counter)}"
        w = _Waiter()
        core.on_request(Request(request_id=rid, agent_id="bench", model=lv.name,
                                version=lv.version, digest=lv.digest, cut="h1",
                                deadline=Deadline.after_ms(30_000), tensors={spec.name: x}), w)
        return w.event.wait(30) and w.reply.ok

    return _closed_loop(call, senders, seconds, warmup)


def _bench_triton(url: str, senders: int, seconds: float, warmup: float, width: int) -> Cell:
    import tritonclient.grpc as grpcclient

    x = np.random.default_rng(0).standard_normal((1, width)).astype(np.float32)
    clients = [grpcclient.InferenceServerClient(url=url) for _ in range(senders)]

    def call(i: int) -> bool:
        inp = grpcclient.InferInput("h1", [1, width], "FP32")
        inp.set_data_from_numpy(x)
        try:
            r = clients[i].infer("wide__h1", [inp], model_version="1",
                                 outputs=[grpcclient.InferRequestedOutput("y")])
            return r.as_numpy("y") is not None
        except Exception:
            return False

    try:
        return _closed_loop(call, senders, seconds, warmup)
    finally:
        for c in clients:
            c.close()


def _f(x: float, fmt: str = ".2f") -> str:
    return format(x, fmt) if np.isfinite(x) else "-"


def _service_table(kind: str, results: dict, dev: str, args: Any, seconds: float) -> Table:
    ncpu = os.cpu_count() or 1
    t = Table(title=f"{kind}: tail wide/h1 ({args.layers - 1}x{args.width}\u00b2 dense + "
                    f"{args.width}x10) on {dev}, max_batch {args.max_batch}, delay "
                    f"{args.delay_ms} ms, {seconds:.0f} s per cell; CPU ms per request "
                    f"(core process over the window / replies) vs the backend alone at "
                    f"the same batch size; util = CPU s per s ({ncpu} cores here)")
    gen = "link" if kind == "mqtt" or args.link_generators else "lean"
    t.caption = f"generators: {gen} (bench.loadgen); gen util = their CPU s per s"
    for col in ("senders", "config", "rps", "p50/p99 ms", "mean batch", "core CPU ms/req",
                "backend CPU ms/req", "overhead", "core util", "gen util (procs)",
                "broker util"):
        t.add_column(col, justify="right")
    for n in SENDERS:
        for label in ("core batched", "core bs=1"):
            c = results.get((kind, label, n))
            if c is None:
                continue
            t.add_row(str(n), label.removeprefix("core "), f"{c.rps:.0f}",
                      f"{c.p50_ms:.2f}/{c.p99_ms:.2f}", _f(c.mean_batch, ".1f"),
                      _f(c.core_cpu_ms, ".3f"), _f(c.backend_cpu_ms, ".3f"),
                      _f(c.overhead) + "x", _f(c.core_util), f"{_f(c.gen_util)} "
                      f"({min(args.gen_procs, n)})", _f(c.broker_util))
    return t


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="short cells (a few minutes in all)")
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    ap.add_argument("--seconds", type=float, default=0, help="measured seconds per cell")
    ap.add_argument("--max-batch", type=int, default=32)
    ap.add_argument("--delay-ms", type=float, default=2.0)
    ap.add_argument("--workers", type=int, default=1,
                    help="core executor workers = Triton instances")
    ap.add_argument("--width", type=int, default=1024)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--transports", default="zmq,mqtt",
                    help="comma-separated: zmq, mqtt (mqtt needs mosquitto)")
    ap.add_argument("--gen-procs", type=int, default=4,
                    help="load generator processes (each holds one link)")
    ap.add_argument("--link-generators", action="store_true",
                    help="ZeroMQ generators send through tiersplit client links (sender "
                         "threads) instead of the lean raw-DEALER generator")
    ap.add_argument("--senders", default="1,8,32",
                    help="comma-separated concurrent sender counts")
    ap.add_argument("--no-triton", action="store_true")
    ap.add_argument("--no-inproc", action="store_true",
                    help="skip the in-process (no transport) throughput cells")
    args = ap.parse_args(argv)
    SENDERS[:] = [int(x) for x in args.senders.split(",") if x.strip()]
    logging.basicConfig(level=logging.WARNING)
    seconds = args.seconds or (2.0 if args.quick else 8.0)
    warmup = 0.3 if args.quick else 1.0
    console = Console(width=160)
    backend = "onnxruntime"
    if args.device == "cuda":
        import onnxruntime as ort

        if "CUDAExecutionProvider" not in ort.get_available_providers():
            backend = "torch"
            console.print("onnxruntime has no CUDA EP here: core uses the torch backend")
            import torch

            if not torch.cuda.is_available():
                console.print("--device cuda: neither onnxruntime nor torch has CUDA here")
                return 2

    from cloud_core import CloudCore, parse_config
    from cloud_core.triton_export import export_triton
    from contract.bundle import Bundle
    from tiersplit.devtools.mosquitto import MosquittoBroker, find_mosquitto
    from transport import keys

    kinds = [k.strip() for k in args.transports.split(",") if k.strip()]
    notes: list[str] = []
    if "mqtt" in kinds and find_mosquitto() is None:
        kinds.remove("mqtt")
        notes.append("mosquitto not installed: MQTT cells skipped")
    results: dict[tuple, Cell] = {}
    dev = args.device
    with tempfile.TemporaryDirectory(prefix="bench-cloud-") as tmpd:
        tmp = Path(tmpd)
        public = _build(tmp, args.width, args.layers)
        bundle = Bundle.load(tmp / "bundles" / "wide" / "1",
                             keys.load_ed25519_public(public), role="cloud")
        meter = BackendMeter(bundle, backend, args.device, 0.3 if args.quick else 1.0)
        dev = meter.device  # the core builds its backend from the same settings
        broker = None
        try:
            for kind in kinds:
                kdir = _keys(tmp, kind, args.gen_procs)
                if kind == "mqtt" and broker is None:
                    broker = MosquittoBroker.start_new(tmp / "mosquitto")
                for label, mb in (("core batched", args.max_batch), ("core bs=1", 1)):
                    cfg = _config(tmp, public, mb, args.delay_ms, args.workers, backend,
                                  args.device, kind, kdir, broker)
                    with _served(cfg, tmp, f"core-{kind}-{mb}") as svc:
                        for n in SENDERS:
                            c = _bench_core(svc, kind, kdir, bundle, n, seconds, warmup,
                                            args.gen_procs, broker if kind == "mqtt" else None,
                                            lean=not args.link_generators)
                            c.backend_cpu_ms = meter.ms_per_sample(c.mean_batch)
                            results[(kind, label, n)] = c
                            if c.rps == 0:
                                notes.append(f"{kind} {label} {n} senders: no reply in the "
                                             f"window; core output:\n{svc.output_tail()}")
        finally:
            meter.close()
            if broker is not None:
                broker.close()
        if not args.no_inproc:
            for label, mb in (("core batched", args.max_batch), ("core bs=1", 1)):
                cfg = _config(tmp, public, mb, args.delay_ms, args.workers, backend,
                              args.device, "zmq", _keys(tmp, "zmq", args.gen_procs), None)
                core = CloudCore(parse_config({**cfg, "transports": [],
                                               "http": {"enabled": False},
                                               "admin": {"enabled": False}}), links=[])
                core.start()
                try:
                    for n in SENDERS:
                        results[(label + " inproc", n)] = _bench_inproc(core, n, seconds,
                                                                        warmup)
                finally:
                    core.stop(grace=5)
        if not args.no_triton:
            from tiersplit.devtools.triton_local import TritonUnavailable, run_triton

            export_triton(bundle, tmp / "triton", max_batch=args.max_batch,
                          max_queue_delay_us=int(args.delay_ms * 1000),
                          instances=args.workers,
                          kind="KIND_GPU" if args.device == "cuda" else "KIND_CPU")
            try:
                with run_triton(tmp / "triton", device=args.device) as tp:
                    for n in SENDERS:
                        results[("triton", n)] = _bench_triton(tp.grpc_url, n, seconds,
                                                               warmup, args.width)
            except TritonUnavailable as e:
                notes.append(f"Triton not measured: {e}")

    for kind in kinds:
        console.print(_service_table(kind, results, dev, args, seconds))
    t = Table(title="batched vs bs=1, the service vs the same core fed in process (no "
                    "transport), and vs Triton (gRPC, plaintext)")
    for col in ("senders", "transport", "batched rps", "bs=1 rps", "batched/bs=1",
                "in-process rps", "service/in-process", "triton rps", "p50/p99 ms",
                "core/triton"):
        t.add_column(col, justify="right")
    for kind in kinds:
        for n in SENDERS:
            b, u = results[(kind, "core batched", n)], results[(kind, "core bs=1", n)]
            ip = results.get(("core batched inproc", n))
            tr = results.get(("triton", n))
            t.add_row(str(n), kind, f"{b.rps:.0f}", f"{u.rps:.0f}",
                      f"{b.rps / u.rps:.2f}x" if u.rps else "-",
                      f"{ip.rps:.0f}" if ip else "-",
                      f"{b.rps / ip.rps:.0%}" if ip and ip.rps else "-",
                      f"{tr.rps:.0f}" if tr else "-",
                      f"{tr.p50_ms:.2f}/{tr.p99_ms:.2f}" if tr else "-",
                      f"{b.rps / tr.rps:.2f}x" if tr and tr.rps else "-")
    console.print(t)
    errors = {k: c.errors for k, c in results.items() if c.errors}
    if errors:
        console.print(f"errors: {errors}")
    for note in notes:
        console.print(note)
    goal = 3.0 if args.device == "cuda" else 1.5
    top = SENDERS[-1]
    for kind in kinds:
        b32, u32 = results[(kind, "core batched", top)], results[(kind, "core bs=1", top)]
        console.print(f"{kind}: service overhead at {top} senders {_f(b32.overhead)}x the "
                      f"backend's CPU per request (goal <= 1.5x): "
                      f"{'met' if b32.overhead <= 1.5 else 'NOT met'}")
        console.print(f"{kind}: batched/bs=1 at {top} senders "
                      f"{b32.rps / max(u32.rps, 1e-9):.2f}x "
                      f"(goal >= {goal}x): {'met' if b32.rps >= goal * u32.rps else 'NOT met'}")
        ip32 = results.get(("core batched inproc", top))
        if ip32 and ip32.rps:
            console.print(f"{kind}: service/in-process at {top} senders "
                          f"{b32.rps / ip32.rps:.0%} "
                          f"(goal >= 60%): {'met' if b32.rps >= 0.6 * ip32.rps else 'NOT met'}")
        tr32 = results.get(("triton", top))
        if tr32 and tr32.rps:
            console.print(f"{kind}: core/triton at {top} senders {b32.rps / tr32.rps:.2f}x "
                          f"(goal >= 1x): {'met' if b32.rps >= tr32.rps else 'NOT met'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
