"""An emulated network link: an asyncio TCP proxy in its own thread.

This kernel has no ``tc netem`` delay, so tests and benchmarks put this proxy between an
agent and a cloud endpoint (or a broker). Per direction it models a bottleneck link:

* bandwidth: a byte can enter the link only when the previous ones have been
  serialized at the current rate (a token bucket with a burst of one piece of at most
  2 ms of data); rate changes and blackouts apply to bytes still queued;
* one-way delay: each piece is delivered ``rtt_ms / 2`` after it left the link, plus
  jitter (normal, standard deviation ``jitter_ms``, clipped so that the delay stays
  non-negative and bytes stay in order, as TCP would present them);
* a bounded queue: the proxy stops reading when more than ``max_backlog_s`` of data waits
  for the link, so the sender feels back-pressure instead of filling memory.

Faults: :meth:`LinkEmulator.blackout` holds every byte in both directions for N seconds
(like an outage TCP rides out with retransmissions; heartbeats may time out meanwhile),
:meth:`LinkEmulator.reset_connections` aborts every proxied connection with an RST, and
:meth:`LinkEmulator.set_rate` / :meth:`LinkEmulator.set_profile` change the link at run
time. A scripted list of :class:`Fault` runs them at set times after :meth:`start`.

Trace replay: :meth:`LinkEmulator.replay` (or the ``trace`` constructor argument) applies a
recorded or synthesised :class:`Trace` (a CSV of ``t_s, up_bps, down_bps, rtt_ms, loss``)
over time on the emulator's own loop, piecewise constant per row, looping or holding the
last row at the end. Parsing, validation and the row lookup (:class:`Trace`, in
:mod:`transport.linktrace`, re-exported here) are pure; only :meth:`LinkEmulator.replay`
touches the loop.

Loss: the proxy carries TCP byte streams, which cannot lose bytes, so a lost packet is
modelled by what it costs TCP: the piece that carried it is delivered one extra RTT late
(the fast retransmission), and the bytes behind it wait too (in-order delivery). A piece of
*n* bytes holds ``ceil(n / 1460)`` segments, each lost with probability ``loss``. Congestion
window reduction after a loss is not modelled.

The bytes are carried unchanged, so ZeroMQ (with Curve) and MQTT (with TLS) run through
it as they would through a real link. Deterministic for a given ``seed``: connection *i*,
direction *d* draws its jitter from its own seeded generator.

Profiles (``configs/links.yaml``) give ``rate_mbit`` (or ``up_mbit``/``down_mbit``) and
``rtt_ms``, a **round-trip** time; the emulator applies half of it in each direction.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import random
import socket
import struct
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

from transport.linktrace import TRACE_COLUMNS, Trace, TraceRow

__all__ = ["TRACE_COLUMNS", "Fault", "LinkEmulator", "LinkProfile", "Trace", "TraceRow",
           "load_profiles"]

log = logging.getLogger(__name__)

_MIN_PIECE, _MAX_PIECE = 1460, 64 * 1024
_MSS = 1460  # bytes per TCP segment, for the loss model


@dataclass(frozen=True, slots=True)
class LinkProfile:
    """A link's shape.

    Attributes:
        up_bps: client -> target bandwidth, bits per second.
        down_bps: target -> client bandwidth, bits per second.
        rtt_ms: round-trip time; each direction is delayed by half of it.
        jitter_ms: standard deviation of the one-way delay.
        name: label for logs and tables.
        loss: probability that one TCP segment is lost; costs the piece carrying it an
            extra RTT (see the module docstring).
    """

    up_bps: float
    down_bps: float
    rtt_ms: float
    jitter_ms: float = 0.0
    name: str = "custom"
    loss: float = 0.0

    def __post_init__(self) -> None:
        if self.up_bps <= 0 or self.down_bps <= 0:
            raise ValueError("link rates must be positive")
        if self.rtt_ms < 0 or self.jitter_ms < 0:
            raise ValueError("rtt_ms and jitter_ms must be non-negative")
        if not 0.0 <= self.loss < 1.0:
            raise ValueError("loss must be in [0, 1)")

    @property
    def one_way_delay_s(self) -> float:
        return self.rtt_ms / 2000.0

    def with_row(self, row: TraceRow) -> LinkProfile:
        """This profile (its jitter and name) with a trace row's rates, RTT and loss."""
        return replace(self, up_bps=row.up_bps, down_bps=row.down_bps, rtt_ms=row.rtt_ms,
                       loss=row.loss)

    @classmethod
    def symmetric(cls, rate_bps: float, rtt_ms: float, jitter_ms: float = 0.0,
                  name: str = "custom") -> LinkProfile:
        return cls(rate_bps, rate_bps, rtt_ms, jitter_ms, name)


@dataclass(frozen=True, slots=True)
class Fault:
    """One scripted fault, ``at_s`` seconds after :meth:`LinkEmulator.start`.

    ``kind``: ``"blackout"`` (for ``duration_s``), ``"reset"`` (abort connections) or
    ``"rate"`` (new ``up_bps``/``down_bps``; a missing one is left unchanged).
    """

    at_s: float
    kind: Literal["blackout", "reset", "rate"]
    duration_s: float = 0.0
    up_bps: float | None = None
    down_bps: float | None = None

    def __post_init__(self) -> None:
        if self.kind not in ("blackout", "reset", "rate"):
            raise ValueError(f"unknown fault kind {self.kind!r}; blackout, reset or rate")
        if self.at_s < 0 or self.duration_s < 0:
            raise ValueError("fault times must be non-negative")
        if self.kind == "rate" and not (self.up_bps or self.down_bps):
            raise ValueError("a rate fault needs up_bps and/or down_bps")
        for r in (self.up_bps, self.down_bps):
            if r is not None and r <= 0:
                raise ValueError("fault rates must be positive")


def load_profiles(path: str | Path) -> dict[str, LinkProfile]:
    """Profiles from a YAML file shaped like ``configs/links.yaml``.

    Raises:
        ValueError: a profile without ``rtt_ms`` or any rate, or with unknown keys.
    """
    import yaml

    data = yaml.safe_load(Path(path).read_text()) or {}
    out: dict[str, LinkProfile] = {}
    for name, p in (data.get("profiles") or {}).items():
        if not isinstance(p, dict):
            raise ValueError(f"profile {name!r} must be a mapping")
        unknown = set(p) - {"rate_mbit", "up_mbit", "down_mbit", "rtt_ms", "jitter_ms"}
        if unknown:
            raise ValueError(f"profile {name!r}: unknown keys {sorted(unknown)}")
        rate = p.get("rate_mbit")
        up, down = p.get("up_mbit", rate), p.get("down_mbit", rate)
        if up is None or down is None or "rtt_ms" not in p:
            raise ValueError(f"profile {name!r} needs rate_mbit (or up_mbit and down_mbit) "
                             f"and rtt_ms")
        out[str(name)] = LinkProfile(float(up) * 1e6, float(down) * 1e6, float(p["rtt_ms"]),
                                     float(p.get("jitter_ms", 0.0)), str(name))
    return out


class _Direction:
    """Link state of one direction of one connection (used only on the loop thread)."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.link_free_at = 0.0
        self.last_deliver_at = 0.0

    def schedule(self, now: float, nbytes: int, rate_bps: float, delay_s: float,
                 jitter_s: float, blackout_until: float = 0.0, loss: float = 0.0,
                 retransmit_s: float = 0.0) -> float:
        """When a piece of ``nbytes`` read at ``now`` reaches the other end.

        With ``loss`` > 0 the piece is late by ``retransmit_s`` when one of its
        ``ceil(nbytes / 1460)`` segments is lost (each with probability ``loss``).
        """
        start = max(now, self.link_free_at, blackout_until)
        self.link_free_at = start + nbytes * 8 / rate_bps
        if jitter_s > 0:
            delay_s = max(0.0, delay_s + self.rng.gauss(0.0, jitter_s))
        if loss > 0:
            hit = 1.0 - (1.0 - loss) ** math.ceil(nbytes / _MSS)
            if self.rng.random() < hit:
                delay_s += retransmit_s
        self.last_deliver_at = max(self.link_free_at + delay_s, self.last_deliver_at)
        return self.last_deliver_at


class _Conn:
    def __init__(self, index: int, cw: asyncio.StreamWriter, tw: asyncio.StreamWriter) -> None:
        self.index, self.client_w, self.target_w = index, cw, tw
        self.tasks: list[asyncio.Task] = []

    def abort(self) -> None:
        for w in (self.client_w, self.target_w):
            sock = w.get_extra_info("socket")
            if sock is not None:  # RST instead of FIN, like a middlebox dropping state
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                    struct.pack("ii", 1, 0))
            w.transport.abort()
        for t in self.tasks:
            t.cancel()


def _retrieve(task: asyncio.Future) -> None:
    if not task.cancelled():
        task.exception()


class LinkEmulator:
    """TCP proxy ``127.0.0.1:<port>`` -> ``target`` shaped by a :class:`LinkProfile`.

    Args:
        target: (host, port) to forward to.
        profile: the link shape.
        listen_port: 0 picks a free port (see :attr:`port` after :meth:`start`).
        seed: seeds the jitter generators.
        faults: scripted faults, times relative to :meth:`start`.
        max_backlog_s: how much link time may queue before the proxy stops reading.
        listen_host: address to listen on.
        trace: replay this trace from :meth:`start` (see :meth:`replay`); ``profile``
            then only gives the jitter and the name.
        trace_loop: start the trace again at its end (else the last row holds).

    Every proxied connection has its own bottleneck in each direction: several clients
    through one emulator each see the profile (or the trace) alone, in lockstep, which
    is what a benchmark comparing them on the same conditions needs.
    """

    def __init__(self, target: tuple[str, int], profile: LinkProfile, listen_port: int = 0,
                 seed: int = 0, faults: Iterable[Fault] = (), max_backlog_s: float = 0.2,
                 listen_host: str = "127.0.0.1", trace: Trace | None = None,
                 trace_loop: bool = False) -> None:
        if trace is not None:
            profile = profile.with_row(trace.rows[0])
        self.target, self.profile, self.seed = target, profile, seed
        self._listen = (listen_host, listen_port)
        self._faults = list(faults)
        self._initial_trace = (trace, trace_loop) if trace is not None else None
        self._trace: Trace | None = None
        self._trace_token = 0
        self.trace_origin: float | None = None
        self.max_backlog_s = max_backlog_s
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: asyncio.base_events.Server | None = None
        self._conns: set[_Conn] = set()
        self._n_conns = 0
        self._blackout_until = 0.0
        self.port = 0
        self.bytes_up = 0
        self.bytes_down = 0

    # -- control (any thread) ---------------------------------------------------------

    def start(self) -> LinkEmulator:
        """Start the proxy thread and listen; returns self (``.port`` is then set)."""
        if self._thread is not None:
            raise RuntimeError("LinkEmulator already started")
        self._loop = asyncio.new_event_loop()
        ready = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(ready,),
                                        name="tiersplit-linkemu", daemon=True)
        self._thread.start()
        if not ready.wait(10):
            raise RuntimeError("link emulator thread did not start")
        fut = asyncio.run_coroutine_threadsafe(self._serve(), self._loop)
        self.port = fut.result(10)
        for f in self._faults:
            self._loop.call_soon_threadsafe(self._loop.call_later, f.at_s, self._apply, f)
        if self._initial_trace is not None:
            self.replay(*self._initial_trace)
        log.info("link emulator %s:%d -> %s:%d (%s)", self._listen[0], self.port,
                 self.target[0], self.target[1], self.profile.name)
        return self

    def stop(self) -> None:
        """Abort every connection, stop listening and join the thread."""
        if self._thread is None or self._loop is None:
            return
        loop = self._loop

        async def _shutdown() -> None:
            if self._server is not None:
                self._server.close()
            for c in list(self._conns):
                c.abort()
            # Aborted connections end their tasks by themselves; wait for that so none is
            # destroyed pending when the loop stops, and cancel only what is left (asyncio
            # logs an error for a cancelled client-connected task, so not those first).
            rest = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            if rest:
                _, pending = await asyncio.wait(rest, timeout=2)
                for t in pending:
                    t.cancel()

        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(_shutdown(), loop).result(5)
        loop.call_soon_threadsafe(loop.stop)
        self._thread.join(10)
        self._thread = None
        loop.close()

    def __enter__(self) -> LinkEmulator:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _call(self, fn, *args) -> None:  # type: ignore[no-untyped-def]
        if self._loop is None:
            raise RuntimeError("LinkEmulator not started")
        self._loop.call_soon_threadsafe(fn, *args)

    def _call_and_wait(self, fn, *args) -> None:  # type: ignore[no-untyped-def]
        """Run ``fn`` on the loop thread and return once it has run."""
        if self._loop is None:
            raise RuntimeError("LinkEmulator not started")

        async def _run() -> None:
            fn(*args)

        asyncio.run_coroutine_threadsafe(_run(), self._loop).result(10)

    def set_profile(self, profile: LinkProfile) -> None:
        """Change rates, delay and jitter for bytes entering the link from now on."""
        self._call(setattr, self, "profile", profile)

    def set_rate(self, up_bps: float | None = None, down_bps: float | None = None) -> None:
        """Change the bandwidth of one or both directions."""
        self._call(self._apply, Fault(0.0, "rate", up_bps=up_bps, down_bps=down_bps))

    def blackout(self, seconds: float) -> None:
        """Deliver nothing, either way, for ``seconds`` from now (bytes are held)."""
        self._call(self._apply, Fault(0.0, "blackout", duration_s=seconds))

    def reset_connections(self) -> None:
        """Abort every proxied connection (both ends see a reset)."""
        self._call(self._apply, Fault(0.0, "reset"))

    def replay(self, trace: Trace, loop: bool = False, origin: float | None = None) -> float:
        """Apply ``trace`` over time: row *i* from ``origin + t_s`` on (rates, RTT, loss;
        the jitter stays). Replaces a replay in progress; returns the origin once the
        replay is under way (its rows already due are applied by then).

        Args:
            trace: the rows to apply.
            loop: start again at the end of the trace; else the last row holds.
            origin: ``time.monotonic()`` at which the trace's ``t_s = 0`` is; default now.
                Rows already past are applied at once, in order. Several emulators given
                one origin replay in step.
        """
        if self._loop is None:
            raise RuntimeError("LinkEmulator not started")
        origin = time.monotonic() if origin is None else origin
        self.trace_origin = origin
        self._call_and_wait(self._start_trace, trace, loop, origin)
        return origin

    def stop_replay(self) -> None:
        """Stop applying rows; the link keeps the row in force now."""
        self._call_and_wait(self._start_trace, None, False, 0.0)

    @property
    def trace(self) -> Trace | None:
        """The trace being replayed (None when none is)."""
        return self._trace

    def trace_time(self, now: float | None = None) -> float:
        """Seconds into the replay at ``time.monotonic()`` ``now`` (default: now)."""
        if self.trace_origin is None:
            raise RuntimeError("no trace has been replayed")
        return (time.monotonic() if now is None else now) - self.trace_origin

    def run_faults(self, faults: Iterable[Fault]) -> None:
        """Schedule more faults, times relative to now."""
        for f in faults:
            self._call(self._schedule, f)

    @property
    def connections(self) -> int:
        return len(self._conns)

    # -- loop thread ------------------------------------------------------------------

    def _run(self, ready: threading.Event) -> None:
        assert self._loop is not None
        asyncio.set_event_loop(self._loop)
        self._loop.call_soon(ready.set)
        self._loop.run_forever()

    def _schedule(self, f: Fault) -> None:
        assert self._loop is not None
        self._loop.call_later(f.at_s, self._apply, f)

    def _start_trace(self, trace: Trace | None, loop: bool, origin: float) -> None:
        assert self._loop is not None
        self._trace_token += 1  # rows still scheduled by an earlier replay are dropped
        self._trace = trace
        if trace is None:
            return
        # The origin is on the time.monotonic() clock; the loop's own clock may differ.
        origin_loop = self._loop.time() - (time.monotonic() - origin)
        log.info("link replays trace %s (%d rows, %.1f s%s)", trace.name, len(trace.rows),
                 trace.duration_s, ", looping" if loop else "")
        self._next_row(self._trace_token, trace, trace.steps(loop), origin_loop)

    def _next_row(self, token: int, trace: Trace, steps: Iterator[tuple[float, TraceRow]],
                  origin: float) -> None:
        """Apply the rows already due, then schedule the next one."""
        assert self._loop is not None
        while (step := next(steps, None)) is not None:
            offset, row = step
            if origin + offset > self._loop.time():
                self._loop.call_at(origin + offset, self._apply_row, token, trace, steps,
                                   origin, row)
                return
            self._set_row(trace, row)
        log.info("trace %s ended; the link keeps its last row", trace.name)

    def _apply_row(self, token: int, trace: Trace, steps: Iterator[tuple[float, TraceRow]],
                   origin: float, row: TraceRow) -> None:
        if token != self._trace_token:
            return
        self._set_row(trace, row)
        self._next_row(token, trace, steps, origin)

    def _set_row(self, trace: Trace, row: TraceRow) -> None:
        self.profile = self.profile.with_row(row)
        log.debug("trace %s at %.2f s: up %.3g down %.3g bit/s, RTT %.1f ms, loss %.3f",
                  trace.name, row.t_s, row.up_bps, row.down_bps, row.rtt_ms, row.loss)

    def _apply(self, f: Fault) -> None:
        assert self._loop is not None
        if f.kind == "blackout":
            self._blackout_until = max(self._blackout_until, self._loop.time() + f.duration_s)
            log.info("link blackout for %.2f s", f.duration_s)
        elif f.kind == "reset":
            log.info("link reset: aborting %d connections", len(self._conns))
            for c in list(self._conns):
                c.abort()
        elif f.kind == "rate":
            self.profile = replace(self.profile,
                                   up_bps=f.up_bps if f.up_bps else self.profile.up_bps,
                                   down_bps=f.down_bps if f.down_bps else self.profile.down_bps)
            log.info("link rate now %.3g/%.3g bit/s", self.profile.up_bps,
                     self.profile.down_bps)
        else:
            raise ValueError(f"unknown fault kind {f.kind!r}")

    async def _serve(self) -> int:
        self._server = await asyncio.start_server(self._on_client, *self._listen)
        return self._server.sockets[0].getsockname()[1]

    async def _on_client(self, cr: asyncio.StreamReader, cw: asyncio.StreamWriter) -> None:
        try:
            tr, tw = await asyncio.open_connection(*self.target)
        except OSError as e:
            log.info("link emulator could not reach %s:%d: %s", *self.target, e)
            cw.transport.abort()
            return
        for w in (cw, tw):
            sock = w.get_extra_info("socket")
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        idx = self._n_conns
        self._n_conns += 1
        conn = _Conn(idx, cw, tw)
        self._conns.add(conn)
        up = _Direction(random.Random(f"{self.seed}:{idx}:up"))
        down = _Direction(random.Random(f"{self.seed}:{idx}:down"))
        conn.tasks = [asyncio.ensure_future(self._pump(cr, tw, up, True, conn)),
                      asyncio.ensure_future(self._pump(tr, cw, down, False, conn))]
        try:
            await asyncio.gather(*conn.tasks, return_exceptions=True)
        finally:
            self._conns.discard(conn)
            for w in (cw, tw):
                w.close()

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                    d: _Direction, upstream: bool, conn: _Conn) -> None:
        """reader -> queue for the link -> transmitter (rate, blackout) -> delay -> writer.

        The transmitter takes a piece only when the link is free, so a rate change or a
        blackout applies to every byte still queued, as on a real bottleneck.
        """
        loop = asyncio.get_running_loop()
        tx: asyncio.Queue[tuple[float, bytes | None]] = asyncio.Queue()
        rx: asyncio.Queue[tuple[float, bytes | None]] = asyncio.Queue()
        queued = [0]
        room = asyncio.Event()
        room.set()

        def rate() -> float:
            return self.profile.up_bps if upstream else self.profile.down_bps

        async def transmit() -> None:
            while True:
                read_at, piece = await tx.get()
                if piece is None:
                    rx.put_nowait((d.last_deliver_at, None))
                    return
                queued[0] -= len(piece)
                room.set()
                prof = self.profile
                # Scheduled from when the piece was read, not from when this task got to
                # it: timer slack or a busy CPU delays the emulator, not the emulated link.
                at = d.schedule(read_at, len(piece), rate(), prof.one_way_delay_s,
                                prof.jitter_ms / 1000.0, self._blackout_until,
                                prof.loss, prof.rtt_ms / 1000.0)
                rx.put_nowait((at, piece))
                # The link is busy until link_free_at; sleeping only when that is more
                # than a millisecond away keeps the average exact despite timer slack.
                busy = d.link_free_at - loop.time()
                if busy > 0.001:
                    await asyncio.sleep(busy)

        async def deliver() -> None:
            while True:
                at, piece = await rx.get()
                while True:  # a blackout may start or grow while we wait
                    wait = max(at, self._blackout_until) - loop.time()
                    if wait <= 0:
                        break
                    await asyncio.sleep(wait)
                if piece is None:
                    if writer.can_write_eof():
                        writer.write_eof()
                    return
                writer.write(piece)
                await writer.drain()
                if upstream:
                    self.bytes_up += len(piece)
                else:
                    self.bytes_down += len(piece)

        stages = [asyncio.ensure_future(transmit()), asyncio.ensure_future(deliver())]
        for t in stages:  # a reset seen by a stage is handled below: mark it retrieved
            t.add_done_callback(_retrieve)
        try:
            while True:
                piece_len = int(min(_MAX_PIECE, max(_MIN_PIECE, rate() / 8 * 0.002)))
                data = await reader.read(_MAX_PIECE)
                if not data:
                    break
                for off in range(0, len(data), piece_len):
                    piece = data[off:off + piece_len]
                    queued[0] += len(piece)
                    tx.put_nowait((loop.time(), piece))
                # Back-pressure: stop reading while more than max_backlog_s waits.
                while queued[0] > max(_MAX_PIECE, rate() / 8 * self.max_backlog_s):
                    room.clear()
                    await room.wait()
            tx.put_nowait((loop.time(), None))
            await asyncio.gather(*stages)
        except (ConnectionError, OSError):
            # One side reset: the other must see it too, as on a real path.
            conn.abort()
        finally:
            for t in stages:
                if not t.done():
                    t.cancel()
