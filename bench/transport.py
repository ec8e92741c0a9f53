"""Transport benchmark: codecs, links and bytes on the wire, side by side in one run.

    python -m bench.transport [--quick] [--bundle BUNDLE_DIR]

Prints five tables:

1. encode + decode cost per MiB for every codec (a ReLU-conv-like activation);
2. round-trip time and throughput for 64 KiB / 1 MiB / 8 MiB requests over ZeroMQ
   plaintext, ZeroMQ Curve and MQTT (TLS to a real mosquitto + end-to-end AEAD);
3. framework overhead at 1 MiB: our ZeroMQ link (encode, frames, I/O threads, decode,
   handler, reply) against the same bytes sent on a bare pyzmq socket and a bare TCP
   socket (goal: <= 5 % beyond the bare socket);
4. bytes on the wire per codec for a real cut activation, with the accuracy each keeps
   (goal: int8+lz4 <= 0.3x raw). With ``--bundle`` (or a ``bundles/*/*/manifest.yaml``
   under the working directory) the activation comes from the bundle's ONNX head and
   accuracy is also measured through its tail; otherwise a synthetic activation is used;
5. bytes per cut per codec with the accuracy each keeps, as ``tiersplit partition``
   records them in the manifest, for the zoo CNNs' interior cuts (goal: <= 0.1x fp32
   bytes at cosine >= 0.99).

Servers run in a separate process (spawned), as a cloud core would, so the client and the
server do not share an interpreter lock. Loopback only.
"""

from __future__ import annotations

import argparse
import itertools
import multiprocessing as mp
import shutil
import socket
import statistics
import struct
import sys
import tempfile
import threading
import time
from concurrent.futures import wait
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]

from contract.deadline import Deadline  # noqa: E402
from transport import wire  # noqa: E402
from transport.messages import Reply, Request  # noqa: E402

CODECS = ["raw", "fp16", "int8", "int8c", "raw+lz4", "raw+zstd", "fp16+zstd", "int8+lz4",
          "int8+zstd", "int8c+lz4", "int8c+zstd", "int4c+zstd", "int2c+zstd", "int3m+zstd",
          "int2m+zstd"]
SIZES = [("64 KiB", 64 << 10), ("1 MiB", 1 << 20), ("8 MiB", 8 << 20)]
MIB = float(1 << 20)


def relu_activation(nbytes: int, seed: int = 0) -> np.ndarray:
    """A ReLU-conv-like activation (NCHW, ~half zeros, spatially correlated)."""
    rng = np.random.default_rng(seed)
    c = 64
    hw = max(1, int((nbytes / 4 / c) ** 0.5))
    x = rng.standard_normal((1, c, hw, hw)).astype(np.float32)
    x = (x + np.roll(x, 1, axis=2) + np.roll(x, 1, axis=3)) / 3
    return np.maximum(x * rng.uniform(0.5, 2, size=(1, c, 1, 1)).astype(np.float32), 0)


def request(rid: str, tensors: dict[str, np.ndarray], codec: str = "raw") -> Request:
    return Request(request_id=rid, agent_id="bench", model="bench", version="1",
                   digest="0" * 64, cut="c", deadline=Deadline.after_ms(60_000), tensors=tensors,
                   codec=codec)


# ----------------------------------------------------------------------------- servers

class _TinyReplyHandler:
    """Answers every request with an empty reply: the bench measures the uplink."""

    def on_request(self, req: Request, responder) -> None:  # type: ignore[no-untyped-def]
        responder.send(Reply(request_id=req.request_id))

    def on_reject(self, reason: str, agent_id: str | None) -> None:
        print(f"server rejected: {reason} {agent_id}", file=sys.stderr)

    def load(self):  # type: ignore[no-untyped-def]
        from transport.messages import LoadReport

        return LoadReport()


def _raw_tcp_server(ready) -> None:  # type: ignore[no-untyped-def]
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen()
    ready.send(srv.getsockname()[1])
    conn, _ = srv.accept()
    conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    buf = bytearray(16 << 20)
    view = memoryview(buf)
    while True:
        head = conn.recv(8, socket.MSG_WAITALL)
        if len(head) < 8:
            return
        (n,) = struct.unpack("<Q", head)
        got = 0
        while got < n:
            got += conn.recv_into(view[: n - got])
        conn.sendall(b"k")


def _raw_zmq_server(ready) -> None:  # type: ignore[no-untyped-def]
    import zmq

    ctx = zmq.Context()
    s = ctx.socket(zmq.ROUTER)
    s.bind("tcp://127.0.0.1:*")
    ready.send(s.getsockopt_string(zmq.LAST_ENDPOINT))
    while True:
        ident, *_ = s.recv_multipart(copy=False)
        s.send_multipart([ident, b"k"])


def _link_server(ready, cfg_json: str) -> None:  # type: ignore[no-untyped-def]
    from pydantic import TypeAdapter

    import transport
    from transport.config import ServerLinkConfig

    cfg = TypeAdapter(ServerLinkConfig).validate_json(cfg_json)
    link = transport.make_server_link(cfg)
    link.start(_TinyReplyHandler())
    ready.send(link.endpoints[0])
    threading.Event().wait()


def spawn(target, *args):  # type: ignore[no-untyped-def]
    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe()
    proc = ctx.Process(target=target, args=(child, *args), daemon=True)
    proc.start()
    if not parent.poll(60):
        proc.kill()
        raise RuntimeError(f"{target.__name__} did not start")
    return proc, parent.recv()


# ----------------------------------------------------------------------------- measures

def codec_costs(nbytes: int, reps: int) -> list[tuple[str, float, float, float]]:
    """(codec, encode ms/MiB, decode ms/MiB, wire bytes / raw bytes) per codec."""
    x = relu_activation(nbytes)
    mib = x.nbytes / MIB
    raw = wire.wire_bytes(wire.encode(request("r", {"x": x})))
    out = []
    for codec in CODECS:
        enc, dec = [], []
        for _ in range(reps):
            t0 = time.perf_counter()
            frames = wire.encode(request("r", {"x": x}, codec))
            frames = [bytes(f) if not isinstance(f, bytes) else f for f in frames] \
                if codec != "raw" else frames
            t1 = time.perf_counter()
            wire.decode(frames)
            t2 = time.perf_counter()
            enc.append(t1 - t0)
            dec.append(t2 - t1)
        size = wire.wire_bytes(frames)
        out.append((codec, min(enc) * 1e3 / mib, min(dec) * 1e3 / mib, size / raw))
    return out


def time_link(client, nbytes: int, reps: int, depth: int) -> tuple[float, float]:  # type: ignore[no-untyped-def]
    """(median RTT ms, throughput MiB/s with ``depth`` requests in flight)."""
    x = np.ones(nbytes // 4, np.float32)
    for i in range(2):  # warm-up
        client.submit(request(f"w{i}", {"x": x})).result(60)
    rtts = []
    for i in range(reps):
        t0 = time.perf_counter()
        r = client.submit(request(f"r{i}", {"x": x})).result(60)
        rtts.append(time.perf_counter() - t0)
        assert r.ok, r.error
    n = max(depth, reps)
    t0 = time.perf_counter()
    futs = []
    for i in range(n):
        futs.append(client.submit(request(f"t{i}", {"x": x})))
        if len(futs) >= depth:
            futs[-depth].result(60)
    wait(futs, 60)
    elapsed = time.perf_counter() - t0
    return statistics.median(rtts) * 1e3, n * x.nbytes / MIB / elapsed


class _RawTcp:
    """A bare TCP client: 8-byte length, the payload, a 1-byte answer."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def rtt(self, payload: np.ndarray) -> float:
        t0 = time.perf_counter()
        self.sock.sendall(struct.pack("<Q", payload.nbytes))
        self.sock.sendall(memoryview(payload).cast("B"))
        assert self.sock.recv(1) == b"k"
        return time.perf_counter() - t0

    def close(self) -> None:
        self.sock.close()


class _RawZmq:
    """A bare pyzmq DEALER: the payload as one zero-copy frame, a 1-byte answer."""

    def __init__(self, endpoint: str) -> None:
        import zmq

        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.DEALER)
        self.sock.connect(endpoint)

    def rtt(self, payload: np.ndarray) -> float:
        t0 = time.perf_counter()
        self.sock.send(memoryview(payload).cast("B"), copy=False)
        self.sock.recv()
        return time.perf_counter() - t0

    def close(self) -> None:
        self.sock.close(0)
        self.ctx.term()


def time_raw_zmq(endpoint: str, nbytes: int, reps: int) -> float:
    raw = _RawZmq(endpoint)
    payload = np.ones(nbytes // 4, np.float32)
    try:
        return statistics.median([raw.rtt(payload) for _ in range(reps + 2)][2:]) * 1e3
    finally:
        raw.close()


def overhead_rtts(port: int, endpoint: str, client, nbytes: int, reps: int,  # type: ignore[no-untyped-def]
                  block: int = 10) -> tuple[float, float, float]:
    """Median RTT (ms) of a bare TCP socket, a bare pyzmq DEALER and ``client`` (our
    link), measured in turns: ``block`` back-to-back requests on each path, then the
    next path, until each has ``reps``. Load from other work on a shared machine then
    falls on all three alike (measured one whole series after the other, a burst of load
    during one series skews the comparison), while each path still runs back to back as
    in a series; the first request of each turn (its server just woke up) is not
    counted."""
    tcp, zmq_ = _RawTcp(port), _RawZmq(endpoint)
    payload = np.ones(nbytes // 4, np.float32)
    calls = (tcp.rtt, zmq_.rtt, lambda p: _link_rtt(client, p))
    samples: tuple[list[float], list[float], list[float]] = ([], [], [])
    try:
        while len(samples[2]) < reps:
            for call, bucket in zip(calls, samples, strict=True):
                rtts = [call(payload) for _ in range(block + 1)]
                bucket.extend(rtts[1:])
    finally:
        tcp.close()
        zmq_.close()
    return tuple(statistics.median(b) * 1e3 for b in samples)  # type: ignore[return-value]


_RIDS = itertools.count()


def _link_rtt(client, payload: np.ndarray) -> float:  # type: ignore[no-untyped-def]
    t0 = time.perf_counter()
    r = client.submit(request(f"o{next(_RIDS)}", {"x": payload})).result(60)
    elapsed = time.perf_counter() - t0
    assert r.ok, r.error
    return elapsed


class _emulated:
    """Context manager: a LinkEmulator in front of a tcp:// endpoint, yielding its own."""

    def __init__(self, endpoint: str, profile) -> None:  # type: ignore[no-untyped-def]
        from transport.linkemu import LinkEmulator

        host, port = endpoint.removeprefix("tcp://").rsplit(":", 1)
        self.emu = LinkEmulator((host, int(port)), profile)

    def __enter__(self) -> str:
        self.emu.start()
        return f"tcp://127.0.0.1:{self.emu.port}"

    def __exit__(self, *exc: object) -> None:
        self.emu.stop()


# ----------------------------------------------------------------------------- cut bytes

def find_bundle(explicit: Path | None) -> Path | None:
    if explicit is not None:
        return explicit
    found = sorted(Path.cwd().glob("bundles/*/*/manifest.yaml"))
    return found[0].parent if found else None


def cut_activation(bundle: Path | None, batch: int):  # type: ignore[no-untyped-def]
    """(label, activations, tail runner or None) from a bundle head, else synthetic."""
    if bundle is not None:
        try:
            import onnxruntime as ort
            import yaml

            m = yaml.safe_load((bundle / "manifest.yaml").read_text())
            cuts = [c for c in m["cuts"] if c.get("head") and c.get("tail")]
            cut = max(cuts, key=lambda c: c.get("bytes", 0))
            opts = ort.SessionOptions()
            opts.intra_op_num_threads = 1
            head = ort.InferenceSession(str(bundle / cut["head"]), opts,
                                        providers=["CPUExecutionProvider"])
            tail = ort.InferenceSession(str(bundle / cut["tail"]), opts,
                                        providers=["CPUExecutionProvider"])
            rng = np.random.default_rng(0)
            feeds = {}
            for i in head.get_inputs():
                shape = [batch if not isinstance(d, int) or d < 0 else d for d in i.shape]
                feeds[i.name] = rng.standard_normal(shape).astype(np.float32)
            outs = head.run(None, feeds)
            acts = {o.name: v for o, v in zip(head.get_outputs(), outs, strict=True)}

            def run_tail(t: dict[str, np.ndarray]) -> np.ndarray:
                return tail.run(None, {k: np.asarray(v, np.float32) for k, v in t.items()})[0]

            label = f"{m['name']} v{m['version']} cut {cut['id']} (int8 head, batch {batch})"
            return label, acts, run_tail
        except Exception as e:  # a bundle from a newer/older partitioner: fall back
            print(f"bundle {bundle} unusable ({type(e).__name__}: {e}); synthetic activation",
                  file=sys.stderr)
    x = relu_activation(batch * 64 * 28 * 28 * 4 // 8)
    return f"synthetic ReLU-conv activation {tuple(x.shape)}", {"x": x}, None


def cut_bytes(bundle: Path | None, batch: int):  # type: ignore[no-untyped-def]
    label, acts, run_tail = cut_activation(bundle, batch)
    raw = wire.wire_bytes(wire.encode(request("r", acts)))
    ref = run_tail(acts) if run_tail else None
    rows = []
    for codec in CODECS:
        frames = wire.encode(request("r", acts, codec))
        size = wire.wire_bytes(frames)
        got = wire.decode([bytes(f) for f in frames]).tensors
        a = np.concatenate([v.astype(np.float64).ravel() for v in acts.values()])
        b = np.concatenate([got[k].astype(np.float64).ravel() for k in acts])
        rel = float(np.linalg.norm(a - b) / (np.linalg.norm(a) or 1.0))
        cos = float(a @ b / ((np.linalg.norm(a) * np.linalg.norm(b)) or 1.0))
        top1 = None
        if ref is not None:
            out = run_tail(got)
            top1 = float((out.argmax(-1) == ref.argmax(-1)).mean())
        rows.append((codec, size, size / raw, rel, cos, top1))
    return label, raw, rows


# ------------------------------------------------- 5. bytes per cut per codec, accuracy

CUT_CODEC_MODELS = ("digits_cnn", "resnet_like", "mobilenet_like")


def cut_codecs_section(con, quick: bool) -> None:  # type: ignore[no-untyped-def]
    """Table 5: each zoo CNN partitioned (no device tails), every interior cut's codecs as
    the partitioner records them in the manifest: bytes vs fp32 and the accuracy kept at
    the model output (int8 head -> codec -> fp32 tail vs fp32). Only digits_cnn is
    trained; the others' accuracy figures come from random weights and random inputs."""
    from rich.table import Table

    from contract.bundle import Bundle
    from partitioner import partition

    tmp = Path(tempfile.mkdtemp(prefix="tiersplit-bench-codecs-"))
    t = Table(title="5. Bytes per cut per codec with accuracy (ratio = bytes the wire "
                    "spends on the tensors: payload, compressor frame and header entry beyond "
                    "fp32's, / fp32 bytes; worst-sample cosine; ok = keeps the bundle's "
                    "floor; only digits_cnn is trained)")
    for col in ("model", "cut", "fp32 bytes", "codec", "ratio", "worst cosine", "top-1",
                "encode ms", "floor"):
        t.add_column(col, justify="left" if col in ("model", "cut", "codec") else "right")
    goal: list[tuple[str, str, float | None]] = []
    try:
        for name in CUT_CODEC_MODELS[:2] if quick else CUT_CODEC_MODELS:
            path = partition(f"zoo:{name}", None, tmp, progress=True, device_tails=False)
            m = Bundle.load(path, require_signature=False).manifest
            for c in m.cuts:
                if not c.codecs:
                    continue
                for k in c.codecs:
                    label = f"{name} ({'trained' if name == 'digits_cnn' else 'random'})"
                    t.add_row(label, c.id, f"{c.bytes:,}", k.codec, f"{k.ratio:.3f}",
                              f"{k.cosine:.4f}", "—" if k.top1 is None else f"{k.top1:.1%}",
                              f"{k.encode_ms:.3f}", "ok" if k.meets_floor else "—")
                fit = [k.ratio for k in c.codecs if k.meets_floor]
                goal.append((name, c.id, min(fit) if fit else None))
                t.add_section()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    con.print(t)
    met = sum(1 for *_, r in goal if r is not None and r <= 0.1)
    con.print("goal <= 0.1x fp32 bytes keeping the floor (mean cosine >= 0.99, top-1 >= "
              "99%; smallest such codec per cut): "
              + ", ".join(f"{n} {cid} {'—' if r is None else f'{r:.3f}x'}"
                          for n, cid, r in goal)
              + f" ({met}/{len(goal)} cuts meet it)", soft_wrap=True)


# ----------------------------------------------------------------------------- main

def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer repetitions (~1 minute)")
    ap.add_argument("--bundle", type=Path, default=None, help="bundle directory for table 4")
    args = ap.parse_args()
    from rich.console import Console
    from rich.table import Table

    con = Console()
    reps = 5 if args.quick else 20
    big_reps = 3 if args.quick else 10

    # 1. codecs
    t = Table(title="1. Codec cost (encode + decode, ReLU-conv activation "
                    f"{'1' if args.quick else '4'} MiB, best of {reps})")
    for col in ("codec", "encode ms/MiB", "decode ms/MiB", "total ms/MiB", "wire / raw"):
        t.add_column(col, justify="right")
    for codec, e, d, ratio in codec_costs((1 if args.quick else 4) << 20, reps):
        t.add_row(codec, f"{e:.2f}", f"{d:.2f}", f"{e + d:.2f}", f"{ratio:.3f}")
    con.print(t)

    # 2 + 3. links
    import transport
    from tiersplit.devtools.mosquitto import MosquittoBroker, find_mosquitto
    from transport import keys
    from transport.config import (
        MqttBrokerConfig,
        MqttClientConfig,
        MqttServerConfig,
        ZmqClientConfig,
        ZmqServerConfig,
    )

    tmp = Path(tempfile.mkdtemp(prefix="tiersplit-bench-"))
    procs = []
    broker = None
    try:
        for kind in ("curve", "x25519"):
            keys.generate(kind, tmp / kind, "cloud")  # type: ignore[arg-type]
            keys.generate(kind, tmp / kind, "bench")  # type: ignore[arg-type]
            (tmp / kind / "allowed").mkdir()
            shutil.copy(tmp / kind / "bench.pub", tmp / kind / "allowed" / "bench.pub")
        setups = {
            "ZMQ plaintext": (ZmqServerConfig(endpoints=["tcp://127.0.0.1:0"], insecure=True),
                              lambda ep: ZmqClientConfig(endpoint=ep, insecure=True)),
            "ZMQ Curve": (ZmqServerConfig(endpoints=["tcp://127.0.0.1:0"],
                                          secret_key=tmp / "curve/cloud.key",
                                          allowed_keys_dir=tmp / "curve/allowed"),
                          lambda ep: ZmqClientConfig(endpoint=ep,
                                                     secret_key=tmp / "curve/bench.key",
                                                     server_public_key=tmp / "curve/cloud.pub")),
        }
        if find_mosquitto() is not None:
            broker = MosquittoBroker.start_new(tmp / "mosquitto")
            bc = MqttBrokerConfig(host=broker.host, port=broker.port, ca_file=broker.ca_file,
                                  username=broker.username, password_file=broker.password_file)
            setups["MQTT TLS+AEAD"] = (
                MqttServerConfig(broker=bc, secret_key=tmp / "x25519/cloud.key",
                                 allowed_keys_dir=tmp / "x25519/allowed"),
                lambda ep: MqttClientConfig(broker=bc, secret_key=tmp / "x25519/bench.key",
                                            server_public_key=tmp / "x25519/cloud.pub"))
        else:
            con.print("[yellow]mosquitto not installed: MQTT row skipped[/yellow]")

        results: dict[str, dict[str, tuple[float, float]]] = {}
        for name, (scfg, ccfg) in setups.items():
            proc, ep = spawn(_link_server, scfg.model_dump_json())
            procs.append(proc)
            client = transport.make_client_link(ccfg(ep), "bench")
            try:
                assert client.wait_connected(15), f"{name}: no connection"  # type: ignore[attr-defined]
                results[name] = {}
                for label, size in SIZES:
                    r = big_reps if size >= 8 << 20 else reps
                    results[name][label] = time_link(client, size, r, depth=4)
            finally:
                client.close()
            proc.kill()

        t = Table(title="2. Links over loopback: median RTT (ms) | throughput (MiB/s, 4 in "
                        "flight); request carries the payload, reply is empty")
        t.add_column("link")
        for label, _ in SIZES:
            t.add_column(label, justify="right")
        for name, row in results.items():
            t.add_row(name, *(f"{row[label][0]:.2f} | {row[label][1]:.0f}"
                              for label, _ in SIZES))
        con.print(t)

        # 3. overhead at 1 MiB against bare sockets (same process layout: server spawned).
        n = 1 << 20
        ov_reps = 30 if args.quick else 100
        p1, port = spawn(_raw_tcp_server)
        p2, zep = spawn(_raw_zmq_server)
        p3, lep = spawn(_link_server, setups["ZMQ plaintext"][0].model_dump_json())
        procs += [p1, p2, p3]
        client = transport.make_client_link(setups["ZMQ plaintext"][1](lep), "bench")
        try:
            client.wait_connected(15)  # type: ignore[attr-defined]
            raw_tcp, raw_zmq, ours = overhead_rtts(port, zep, client, n, ov_reps)
        finally:
            client.close()
        # The same two paths through an emulated wifi link (50 Mbit/s, 5 ms RTT).
        from transport.linkemu import load_profiles

        wifi = load_profiles(REPO / "configs" / "links.yaml")["wifi"]
        emu_reps = 3 if args.quick else 10
        with _emulated(zep, wifi) as zep_emu:
            emu_zmq = time_raw_zmq(zep_emu, n, emu_reps)
        with _emulated(lep, wifi) as lep_emu:
            client = transport.make_client_link(setups["ZMQ plaintext"][1](lep_emu), "bench")
            try:
                client.wait_connected(15)  # type: ignore[attr-defined]
                emu_ours = time_link(client, n, emu_reps, depth=1)[0]
            finally:
                client.close()
        t = Table(title="3. Framework overhead at 1 MiB (median RTT, empty reply; the three "
                        "loopback paths measured in turns of 10 requests each)")
        for col in ("path", "RTT ms", "vs bare ZMQ", "vs bare TCP"):
            t.add_column(col, justify="right")
        for name, v in (("bare TCP socket", raw_tcp), ("bare pyzmq DEALER/ROUTER", raw_zmq),
                        ("tiersplit ZMQ link (plaintext)", ours)):
            t.add_row(name, f"{v:.3f}", f"{(v / raw_zmq - 1) * 100:+.1f} %",
                      f"{(v / raw_tcp - 1) * 100:+.1f} %")
        t.add_row("bare pyzmq over emulated wifi", f"{emu_zmq:.3f}", "", "")
        t.add_row("tiersplit ZMQ link over emulated wifi", f"{emu_ours:.3f}",
                  f"{(emu_ours / emu_zmq - 1) * 100:+.1f} % (vs bare, same link)", "")
        con.print(t)
        con.print(f"framework overhead beyond the bare ZMQ socket at 1 MiB: loopback "
                  f"{(ours - raw_zmq) / raw_zmq * 100:+.1f} % "
                  f"({(ours - raw_zmq) * 1000:.0f} us per request: the reply's hand-off from "
                  f"the link's I/O thread to the caller, and Python); emulated wifi "
                  f"{(emu_ours - emu_zmq) / emu_zmq * 100:+.1f} % "
                  f"(goal <= 5 %)", soft_wrap=True)
    finally:
        for p in procs:
            if p.is_alive():
                p.kill()
        if broker is not None:
            broker.close()
        shutil.rmtree(tmp, ignore_errors=True)

    # 4. cut bytes
    label, raw, rows = cut_bytes(find_bundle(args.bundle), batch=32)
    t = Table(title=f"4. Bytes on the wire per codec: {label}")
    for col in ("codec", "bytes", "x raw", "rel. L2 error", "cosine",
                "tail top-1 agree (random inputs)"):
        t.add_column(col, justify="right")
    for codec, size, ratio, rel, cos, top1 in rows:
        t.add_row(codec, f"{size:,}", f"{ratio:.3f}", f"{rel:.2e}", f"{cos:.6f}",
                  "n/a" if top1 is None else f"{top1 * 100:.1f} %")
    con.print(t)
    i8 = next(r for r in rows if r[0] == "int8+lz4")
    con.print(f"int8+lz4 = {i8[2]:.3f} x raw ({raw:,} B raw) (goal <= 0.3 x)", soft_wrap=True)

    cut_codecs_section(con, args.quick)


if __name__ == "__main__":
    main()
