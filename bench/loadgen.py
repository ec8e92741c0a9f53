"""Closed-loop load generators in their own processes, with their own CPU accounting.

A benchmark that drives a server from threads of its own process measures the two
together: on a small machine the generator's Python work (encoding, the link's I/O
thread, futures) competes with the server for the same cores and the GIL. Here every
generator is a separate process (``spawn``) holding one client link and a few sender
threads; all of them measure the same window ``[t0, t1)`` of the system-wide monotonic
clock, so the parent can read the server's CPU time over exactly that window too, and
report how much CPU the generators themselves used (their headroom shows whether they
could have been the bottleneck).

A sender sends one request, waits for its reply, repeats. A reply counts when it arrives
inside the window.

Two kinds of generator (``GenSpec.lean``):

- **link** (MQTT always; ZeroMQ with ``lean=False``): sender threads sharing one
  tiersplit client link, as an edge agent sends;
- **lean** (ZeroMQ by default): one thread and one raw Curve DEALER per process keeping
  its senders' requests in flight (each reply frees its slot for the next request). The
  requests and replies are the real wire bytes (``transport.wire`` encodes every request
  with its own id and deadline and decodes every reply), but there are no sender threads,
  futures or I/O-thread hand-offs: on a small machine the link generator spends about as
  much CPU per request as the core it measures, and that CPU is taken from the core.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["GenResult", "GenSpec", "run_generators"]


@dataclass(frozen=True)
class GenSpec:
    """What one generator process sends, and over which link.

    ``link`` is the client link config as JSON (``model_dump_json`` of a
    ``ZmqClientConfig`` or ``MqttClientConfig``); ``agent_id`` names the agent (one per
    process, so MQTT replies go to the one process that asked).
    """

    link: str
    agent_id: str
    model: str
    version: str
    digest: str
    cut: str
    tensor: str
    sample_shape: tuple[int, ...]
    codec: str = "raw"
    lean: bool = True  # ZeroMQ only: a raw DEALER instead of a client link (see module)


@dataclass
class GenResult:
    """Replies (latencies in ms) and errors inside the window, and the CPU seconds the
    generator processes used over it."""

    latencies_ms: list[float] = field(default_factory=list)
    errors: int = 0
    cpu_s: float = 0.0
    processes: int = 0


def _cpu_s() -> float:
    t = os.times()
    return t.user + t.system


def _sample(spec: GenSpec) -> np.ndarray:
    """The one sample a generator process sends (its own, seeded by its pid)."""
    return np.random.default_rng(os.getpid()).standard_normal(
        (1, *spec.sample_shape)).astype(np.float32)


def _request(spec: GenSpec, rid: str, x: np.ndarray) -> Any:
    """Request ``rid`` carrying ``x``, with a fresh 30 s deadline."""
    from contract.deadline import Deadline
    from transport.messages import Request

    return Request(request_id=rid, agent_id=spec.agent_id, model=spec.model,
                   version=spec.version, digest=spec.digest, cut=spec.cut,
                   deadline=Deadline.after_ms(30_000), tensors={spec.tensor: x},
                   codec=spec.codec)


def _child(spec: GenSpec, threads: int, conn: Any) -> None:
    from pydantic import TypeAdapter

    import transport
    from transport.config import ClientLinkConfig, ZmqClientConfig

    cfg = TypeAdapter(ClientLinkConfig).validate_json(spec.link)
    if spec.lean and isinstance(cfg, ZmqClientConfig):
        _lean_zmq(spec, cfg, threads, conn)
        return
    link = transport.make_client_link(cfg, spec.agent_id)
    ok = link.wait_connected(30)  # type: ignore[attr-defined]
    conn.send(ok)
    if not ok:
        link.close()
        return
    t_warm, t0, t1 = conn.recv()
    x = _sample(spec)
    lat: list[list[float]] = [[] for _ in range(threads)]
    errors = [0] * threads
    counter = iter(range(10**9))
    lock = threading.Lock()

    def run(i: int) -> None:
        while time.monotonic() < t_warm:
            time.sleep(0.001)
        while True:
            s = time.monotonic()
            if s >= t1:
                return
            with lock:
                rid = f"{spec.agent_id}-{next(counter)}"
            try:
                good = link.submit(_request(spec, rid, x)).result(30).ok
            except Exception:
                good = False
            e = time.monotonic()
            if t0 <= e < t1:
                if good:
                    lat[i].append((e - s) * 1e3)
                else:
                    errors[i] += 1

    workers = [threading.Thread(target=run, args=(i,), daemon=True) for i in range(threads)]
    for w in workers:
        w.start()
    time.sleep(max(0.0, t0 - time.monotonic()))
    c0 = _cpu_s()
    time.sleep(max(0.0, t1 - time.monotonic()))
    c1 = _cpu_s()
    for w in workers:
        w.join()
    link.close()
    conn.send(([x for xs in lat for x in xs], sum(errors), c1 - c0))


def _lean_zmq(spec: GenSpec, cfg: Any, inflight: int, conn: Any) -> None:
    """The lean ZeroMQ generator: ``inflight`` closed-loop senders on one thread and one
    Curve DEALER (see the module docstring)."""
    import zmq

    from transport import keys, wire
    from transport.messages import Reply

    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    mon = sock.get_monitor_socket(zmq.EVENT_HANDSHAKE_SUCCEEDED)
    if not cfg.insecure:
        sock.curve_publickey, sock.curve_secretkey = keys.load_curve_secret(cfg.secret_key)
        sock.curve_serverkey = keys.load_curve_public(cfg.server_public_key)
    sock.connect(cfg.endpoint)
    ok = (cfg.insecure or mon.poll(30_000) != 0)
    conn.send(bool(ok))
    if not ok:
        ctx.destroy(0)
        return
    t_warm, t0, t1 = conn.recv()
    x = _sample(spec)
    counter = iter(range(10**9))
    sent_at: dict[str, float] = {}
    lat: list[float] = []
    errors = 0

    def send_one() -> None:
        rid = f"{spec.agent_id}-{next(counter)}"
        frames = wire.encode(_request(spec, rid, x))
        sent_at[rid] = time.monotonic()
        sock.send_multipart(frames, copy=False)

    time.sleep(max(0.0, t_warm - time.monotonic()))
    for _ in range(inflight):
        send_one()
    c0: float | None = None
    while True:
        now = time.monotonic()
        if c0 is None and now >= t0:
            c0 = _cpu_s()
        if now >= t1:
            break
        until = t1 if c0 is not None else t0
        if not sock.poll(max(1, int((until - now) * 1000))):
            continue
        msg = wire.decode(sock.recv_multipart(copy=False))
        e = time.monotonic()
        s = sent_at.pop(msg.request_id, None) if isinstance(msg, Reply) else None
        if s is None:
            continue  # not one of ours (a pong): no slot was freed
        if t0 <= e < t1:
            if msg.ok:
                lat.append((e - s) * 1e3)
            else:
                errors += 1
        send_one()
    cpu = _cpu_s() - (c0 if c0 is not None else _cpu_s())
    ctx.destroy(0)
    conn.send((lat, errors, cpu))


def run_generators(spec_for: Any, senders: int, processes: int, warmup: float,
                   seconds: float, on_window: Any) -> GenResult:
    """Run ``senders`` closed-loop senders spread over ``processes`` processes.

    Args:
        spec_for: ``spec_for(i) -> GenSpec`` for generator process ``i``.
        senders: concurrent senders in all.
        processes: generator processes (at most ``senders``).
        warmup: seconds of load before the window opens.
        seconds: the window's length.
        on_window: ``on_window(t0, t1)``, called in this process; it sleeps until
            ``t0``, samples what it measures, sleeps until ``t1`` and samples again.

    Raises:
        RuntimeError: a generator could not connect.
    """
    ctx = mp.get_context("spawn")
    nproc = max(1, min(processes, senders))
    shares = [senders // nproc + (1 if i < senders % nproc else 0) for i in range(nproc)]
    pipes, procs = [], []
    try:
        for i, n in enumerate(shares):
            parent, child = ctx.Pipe()
            p = ctx.Process(target=_child, args=(spec_for(i), n, child), daemon=True,
                            name=f"loadgen-{i}")
            p.start()
            pipes.append(parent)
            procs.append(p)
        for i, c in enumerate(pipes):
            if not c.poll(90) or not c.recv():
                raise RuntimeError(f"load generator {i} did not connect")
        t_warm = time.monotonic() + 0.2
        t0 = t_warm + warmup
        t1 = t0 + seconds
        for c in pipes:
            c.send((t_warm, t0, t1))
        on_window(t0, t1)
        res = GenResult(processes=nproc)
        for c in pipes:
            if not c.poll(120):
                raise RuntimeError("load generator did not report")
            lat, errs, cpu = c.recv()
            res.latencies_ms.extend(lat)
            res.errors += errs
            res.cpu_s += cpu
        return res
    finally:
        for p in procs:
            p.join(timeout=10)
            if p.is_alive():
                p.kill()
                p.join(timeout=5)
