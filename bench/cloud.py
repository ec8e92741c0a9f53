"""Cloud core benchmark: dynamic batching vs batch size 1, and our core vs a real Triton.

One run, one tail (a dense MLP tail heavy enough that batching matters), closed-loop
senders (each sends one sample, waits for the answer, repeats) at 1, 8 and 32 concurrent
senders, for:

- ``core batched``: ``tiersplit cloud serve`` in its own process (as Triton runs in its
  own), dynamic batching (max_batch, max delay), requests over the real ZeroMQ link
  (CurveZMQ encryption on, as deployed);
- ``core bs=1``: the same core with ``max_batch: 1`` (no batching);
- ``triton``: a real Triton Inference Server (PyTriton, Python backend running the same
  ONNX tail with ONNX Runtime) with the same max batch, queue delay and instance count,
  driven by ``tritonclient`` gRPC (plaintext).

Prints throughput and p50/p99 latency per cell and the ratios side by side (rich table).
Goals (issue 4): batched/bs=1 >= 1.5x at 32 senders on CPU (>= 3x on GPU) and core >=
Triton. ``--device cuda`` runs the core on CUDA (ORT CUDA EP, else the torch backend) and
asks Triton's ORT for CUDA too.

Usage::

    python -m bench.cloud [--quick] [--device cpu|cuda] [--seconds S] [--no-triton]
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

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


def _config(tmp: Path, public: Path, max_batch: int, delay_ms: float, workers: int,
            backend: str, device: str) -> tuple[dict, Path]:
    from transport import keys

    kdir = tmp / f"zmq-{max_batch}"
    keys.generate("curve", kdir, "cloud")
    (kdir / "allowed").mkdir()
    keys.generate("curve", kdir, "bench")
    (kdir / "allowed" / "bench.pub").write_bytes((kdir / "bench.pub").read_bytes())
    return {
        "repository": str(tmp / "bundles"), "signing_public_key": str(public),
        "models": [{"name": "wide"}],
        "transports": [{"kind": "zmq", "endpoints": ["tcp://127.0.0.1:0"],
                        "secret_key": str(kdir / "cloud.key"),
                        "allowed_keys_dir": str(kdir / "allowed")}],
        "batching": {"max_batch": max_batch, "max_queue_delay_ms": delay_ms,
                     "max_queue": 4096},
        "backend": {"kind": backend, "device": device},
        "executor_workers": workers, "http": {"port": 0}, "admin": {"port": 0},
    }, kdir


@contextlib.contextmanager
def _served(cfg: dict, tmp: Path, name: str):
    """``tiersplit cloud serve`` in its own process (as Triton runs in its own), yielding
    (zmq endpoint, http url); SIGTERM on exit."""
    import yaml

    from tiersplit.devtools.services import Service, tiersplit_cmd

    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    svc = Service(name, tiersplit_cmd("cloud", "serve", "--config", str(path))).start()
    try:
        yield svc.ready["zmq"], svc.ready["http"]
    finally:
        svc.stop(grace=60)


def _metric(http: str, name: str) -> float:
    import httpx

    for line in httpx.get(f"{http}/metrics").text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    return 0.0


def _bench_core(endpoint: str, http: str, bundle, kdir: Path, senders: int, seconds: float,
                warmup: float) -> Cell:
    import transport
    from transport.config import ZmqClientConfig
    from transport.messages import Request

    spec = bundle.manifest.cut("h1").tensors[0]
    x = np.random.default_rng(0).standard_normal((1, *spec.sample_shape)).astype(np.float32)
    nlinks = min(4, senders)
    links = [transport.make_client_link(ZmqClientConfig(
        endpoint=endpoint, secret_key=kdir / "bench.key",
        server_public_key=kdir / "cloud.pub"), "bench") for _ in range(nlinks)]
    for link in links:
        end = time.monotonic() + 15
        while not link.connected and time.monotonic() < end:
            time.sleep(0.02)
    counter = iter(range(10**9))
    lock = threading.Lock()

    def call(i: int) -> bool:
        with lock:
            rid = f"b{next(counter)}"
        req = Request(request_id=rid, agent_id="bench", model=bundle.name,
                      version=bundle.version, digest=bundle.digest, cut="h1",
                      deadline=Deadline.after_ms(30_000), tensors={spec.name: x})
        try:
            return links[i % nlinks].submit(req).result(30).ok
        except Exception:
            return False

    c0 = _metric(http, "tiersplit_cloud_batch_size_count")
    s0 = _metric(http, "tiersplit_cloud_batch_size_sum")
    cell = _closed_loop(call, senders, seconds, warmup)
    c1 = _metric(http, "tiersplit_cloud_batch_size_count")
    s1 = _metric(http, "tiersplit_cloud_batch_size_sum")
    cell.mean_batch = (s1 - s0) / max(1.0, c1 - c0)
    for link in links:
        link.close()
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


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="short cells (about 1 min in all)")
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    ap.add_argument("--seconds", type=float, default=0, help="measured seconds per cell")
    ap.add_argument("--max-batch", type=int, default=32)
    ap.add_argument("--delay-ms", type=float, default=2.0)
    ap.add_argument("--workers", type=int, default=1,
                    help="core executor workers = Triton instances")
    ap.add_argument("--width", type=int, default=1024)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--no-triton", action="store_true")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    seconds = args.seconds or (2.0 if args.quick else 8.0)
    warmup = 0.3 if args.quick else 1.0
    console = Console(width=140)
    backend = "onnxruntime"
    if args.device == "cuda":
        import onnxruntime as ort

        if "CUDAExecutionProvider" not in ort.get_available_providers():
            backend = "torch"
            console.print("onnxruntime has no CUDA EP here: core uses the torch backend")

    import httpx

    from cloud_core import CloudCore, parse_config
    from cloud_core.triton_export import export_triton
    from contract.bundle import Bundle
    from transport import keys

    results: dict[tuple[str, int], Cell] = {}
    with tempfile.TemporaryDirectory(prefix="bench-cloud-") as tmpd:
        tmp = Path(tmpd)
        public = _build(tmp, args.width, args.layers)
        bundle = Bundle.load(tmp / "bundles" / "wide" / "1",
                             keys.load_ed25519_public(public), role="cloud")
        for label, mb in (("core batched", args.max_batch), ("core bs=1", 1)):
            cfg, kdir = _config(tmp, public, mb, args.delay_ms, args.workers, backend,
                                args.device)
            with _served(cfg, tmp, f"core-{mb}") as (endpoint, http):
                dev = httpx.get(f"{http}/v1/models").json()["models"][0]["device"]
                for n in SENDERS:
                    results[(label, n)] = _bench_core(endpoint, http, bundle, kdir, n,
                                                      seconds, warmup)
            core = CloudCore(parse_config({**cfg, "transports": [],
                                           "http": {"enabled": False},
                                           "admin": {"enabled": False}}), links=[])
            core.start()
            try:
                for n in SENDERS:
                    results[(label + " inproc", n)] = _bench_inproc(core, n, seconds, warmup)
            finally:
                core.stop(grace=5)
        triton_note = ""
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
                triton_note = f"Triton not measured: {e}"

    t = Table(title=f"cloud core, tail wide/h1 ({args.layers - 1}x{args.width}² dense + "
                    f"{args.width}x10), device {dev}, max_batch {args.max_batch}, delay "
                    f"{args.delay_ms} ms, workers/instances {args.workers}, {seconds:.0f} s "
                    "per cell")
    for col in ("senders", "core batched rps", "p50/p99 ms", "mean batch", "core bs=1 rps",
                "p50/p99 ms", "batched/bs=1", "triton rps", "p50/p99 ms", "core/triton"):
        t.add_column(col, justify="right")
    for n in SENDERS:
        b, u = results[("core batched", n)], results[("core bs=1", n)]
        tr = results.get(("triton", n))
        t.add_row(str(n), f"{b.rps:.0f}", f"{b.p50_ms:.2f}/{b.p99_ms:.2f}",
                  f"{b.mean_batch:.1f}", f"{u.rps:.0f}", f"{u.p50_ms:.2f}/{u.p99_ms:.2f}",
                  f"{b.rps / u.rps:.2f}x" if u.rps else "-",
                  f"{tr.rps:.0f}" if tr else "-",
                  f"{tr.p50_ms:.2f}/{tr.p99_ms:.2f}" if tr else "-",
                  f"{b.rps / tr.rps:.2f}x" if tr and tr.rps else "-")
    console.print(t)
    t2 = Table(title="the same cores without the transport (requests handed to on_request "
                     "in process): what batching gives the backend itself")
    for col in ("senders", "batched rps", "p50/p99 ms", "bs=1 rps", "p50/p99 ms",
                "batched/bs=1"):
        t2.add_column(col, justify="right")
    for n in SENDERS:
        b, u = results[("core batched inproc", n)], results[("core bs=1 inproc", n)]
        t2.add_row(str(n), f"{b.rps:.0f}", f"{b.p50_ms:.2f}/{b.p99_ms:.2f}", f"{u.rps:.0f}",
                   f"{u.p50_ms:.2f}/{u.p99_ms:.2f}", f"{b.rps / u.rps:.2f}x" if u.rps else "-")
    console.print(t2)
    errors = {k: c.errors for k, c in results.items() if c.errors}
    if errors:
        console.print(f"errors: {errors}")
    if triton_note:
        console.print(triton_note)
    b32, u32 = results[("core batched", 32)], results[("core bs=1", 32)]
    goal = 3.0 if args.device == "cuda" else 1.5
    console.print(f"goal batched/bs=1 >= {goal}x at 32 senders: "
                  f"{'met' if b32.rps >= goal * u32.rps else 'NOT met'} "
                  f"({b32.rps / max(u32.rps, 1e-9):.2f}x)")
    tr32 = results.get(("triton", 32))
    if tr32:
        console.print(f"goal core >= triton at 32 senders: "
                      f"{'met' if b32.rps >= tr32.rps else 'NOT met'} "
                      f"({b32.rps / max(tr32.rps, 1e-9):.2f}x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
