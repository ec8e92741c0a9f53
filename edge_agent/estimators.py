"""What the agent has measured: device, link and cloud estimates, robust and fast.

Every estimate goes through one filter (``edge_agent.filters``): one outlier (a GC
pause, a retransmission) cannot move it, while a confirmed change of conditions resets
it to the new level after ``policy.change_confirm`` samples. :class:`Estimates` holds
all of them for one agent and is what request, probe and status threads feed and read;
it predicts nothing (the policy does), but it fills gaps from what it has (an unmeasured
head scaled from the full model by MACs, an unmeasured tail from another cut's), and it
knows the transfers in flight: one that has taken ``policy.overdue_factor`` times its
prediction already bounds the bandwidth before its reply arrives.

Timings on a busy device carry scheduling noise (a thread waiting for a core adds
milliseconds to a transfer that took one). :class:`TimingNoise` measures it as how late
the agent's own timed waits wake up (no link in it: a jittery link is the link's
business, and a changing RTT is news), and every timing-based filter widens its band
above the estimate by that much: delays of that size are never taken for a change of
the link (nor of the device), while a change larger than them still is, after the same
two samples.
"""

from __future__ import annotations

import itertools
import math
import statistics
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from contract.bundle import CLOUD_CUT, EDGE_CUT
from edge_agent.config import PolicyConfig
from edge_agent.cuts import CutInfo, wire_bytes_guess
from edge_agent.filters import Filter, LatestSample, RobustEwma
from placement import LinkEstimate

__all__ = ["OVERLOAD_HOLD_S", "CloudEstimator", "Estimates", "LinkEstimator", "RobustEwma",
           "TimingNoise", "make_filter"]

# A transfer shorter than this is below the timing noise: it only bounds bandwidth from
# below (the link is at least this fast), it does not measure it.
_NOISE_FLOOR_MS = 1.0
#: After an OVERLOADED reply, pongs do not lower that endpoint's queue estimate for this
#: long; real replies (exploration) still do, so a recovered cloud is found again.
OVERLOAD_HOLD_S = 10.0
#: The timing noise is this many times the median lateness of recent timed waits: a
#: timing passes through several threads (sender, I/O loop, waiter), each may be late,
#: and most wake-ups are on time while a few are late by a lot.
_NOISE_SPREAD = 3.0
_NOISE_WINDOW = 15
#: A bandwidth probe lasts at least this many times the timing noise.
_PROBE_NOISE_TIMES = 6.0


class TimingNoise:
    """The scheduling noise in this agent's timings now, in milliseconds.

    Fed with how late a timed wait of one of the agent's threads woke up (the probe
    threads time their pauses), it is ``_NOISE_SPREAD`` times the median lateness over
    the last ``_NOISE_WINDOW`` waits, never below the 1 ms timing floor. A loaded CPU
    raises it within a few waits; it falls back as the load goes.
    """

    def __init__(self) -> None:
        self._late: deque[float] = deque(maxlen=_NOISE_WINDOW)
        self._lock = threading.Lock()

    def observe(self, late_ms: float) -> None:
        """One timed wait woke ``late_ms`` after it was due."""
        if math.isfinite(late_ms):
            with self._lock:
                self._late.append(max(late_ms, 0.0))

    @property
    def ms(self) -> float:
        with self._lock:
            if len(self._late) < 3:
                return _NOISE_FLOOR_MS
            return max(_NOISE_FLOOR_MS, _NOISE_SPREAD * statistics.median(self._late))


def make_filter(cfg: PolicyConfig, initial: float | None = None,
                floor: float = 0.0) -> Filter:
    """The filter ``policy.estimator`` names, with the policy's band and window."""
    if cfg.estimator == "latest":
        return LatestSample(initial)
    return RobustEwma(cfg.ewma_alpha, cfg.window, initial, band=cfg.change_band,
                      confirm=cfg.change_confirm, floor=floor)


class LinkEstimator:
    """Uplink speed and RTT of one endpoint, from pings and real transfers.

    The filtered quantity is seconds per byte, not bytes per second: transfer times add
    up in it (a request's time is RTT plus bytes times seconds per byte), so averaging it
    averages times, whereas averaging a bandwidth lets one fast sample hide a slow link.
    RTT comes from empty pings. A transfer's sample is ``(network time - RTT) / bytes``,
    where network time is a request's round trip minus the cloud-reported queue and
    compute time (or a ping's round trip). The downlink is assumed as fast as the uplink
    unless measured: replies are small next to cut activations.
    """

    def __init__(self, cfg: PolicyConfig, noise: TimingNoise | None = None) -> None:
        self.rtt = make_filter(cfg, cfg.initial_rtt_ms, floor=_NOISE_FLOOR_MS)
        self.s_per_B = make_filter(cfg, 1.0 / cfg.initial_up_Bps)
        self.noise = noise or TimingNoise()
        self.samples = 0

    @property
    def up_Bps(self) -> float:
        spb = self.s_per_B.get(1.0)
        return max(1.0 / spb, 1.0) if spb > 0 else 1e12

    @property
    def rtt_ms(self) -> float:
        return max(self.rtt.get(0.0), 0.0)

    @property
    def warm(self) -> bool:
        return self.s_per_B.count > 0

    @property
    def changes(self) -> int:
        """Level changes detected in bandwidth and RTT (0 for the latest-sample rule)."""
        return self.s_per_B.changes + self.rtt.changes

    def estimate(self, cap_Bps: float | None = None) -> LinkEstimate:
        """The link as the cost model sees it; ``cap_Bps`` bounds the bandwidth (evidence
        from an overdue transfer in flight)."""
        up = self.up_Bps if cap_Bps is None else min(self.up_Bps, cap_Bps)
        return LinkEstimate(up_Bps=up, down_Bps=up, rtt_ms=self.rtt_ms)

    def observe_rtt(self, rtt_ms: float) -> None:
        self.rtt.update(rtt_ms, self.noise.ms)
        self.samples += 1

    def _observe_spb(self, spb: float, up_bytes: int) -> None:
        """A seconds-per-byte sample whose timing carries the current noise."""
        self.s_per_B.update(spb, self.noise.ms / 1e3 / up_bytes)

    def observe_transfer(self, up_bytes: int, down_bytes: int, network_ms: float) -> None:
        """One transfer of ``up_bytes`` (and ``down_bytes`` back) took ``network_ms``."""
        if up_bytes <= 0:
            self.observe_rtt(network_ms)
            return
        self.samples += 1
        down_ms = down_bytes / self.up_Bps * 1e3
        transfer_ms = network_ms - self.rtt_ms - down_ms
        if transfer_ms >= _NOISE_FLOOR_MS:
            self._observe_spb(transfer_ms / 1e3 / up_bytes, up_bytes)
            return
        # Too short to time: the link is at least this fast. Raise a stale low estimate
        # (bandwidth came back) but never lower one from a sample this noisy.
        upper_spb = _NOISE_FLOOR_MS / 1e3 / up_bytes
        if upper_spb < self.s_per_B.get(math.inf):
            self._observe_spb(upper_spb, up_bytes)

    def observe_shared_transfer(self, up_bytes: int, ahead_bytes: int, down_bytes: int,
                                network_ms: float) -> None:
        """A transfer that shared the link with ``ahead_bytes`` sent before it.

        Not a bandwidth sample, but it bounds the bandwidth on a FIFO link: our bytes got
        through in ``transfer`` (so ``bw >= up / transfer``) behind at most the bytes
        queued ahead of them (so ``bw <= (up + ahead) / transfer``). An estimate outside
        the bounds moves to the nearest one. Under concurrent load this is how a
        bandwidth collapse is noticed when no request ever travels alone.
        """
        if up_bytes <= 0:
            return
        transfer_ms = network_ms - self.rtt_ms - down_bytes / self.up_Bps * 1e3
        if transfer_ms < _NOISE_FLOOR_MS:
            return
        fastest = transfer_ms / 1e3 / (up_bytes + ahead_bytes)  # seconds per byte, bounds
        slowest = transfer_ms / 1e3 / up_bytes
        spb = 1.0 / self.up_Bps
        if spb < fastest:
            self._observe_spb(fastest, up_bytes)
        elif spb > slowest:
            self._observe_spb(slowest, up_bytes)

    def probe_bytes(self, max_bytes: int) -> int:
        """A probe payload that takes ~40 ms at the current estimate (4 KiB..max), longer
        on a noisy device: a change is only seen in a transfer that lasts several times
        the timing noise (a 10x faster link saves 90% of it, the noise may hide the rest)."""
        seconds = max(0.04, _PROBE_NOISE_TIMES * self.noise.ms / 1e3)
        return int(min(max(self.up_Bps * seconds, 4096), max_bytes)) if max_bytes else 0


@dataclass(frozen=True, slots=True)
class _Transfer:
    """A request in flight to an endpoint, as the overdue rule needs it."""

    endpoint: str
    nbytes: int
    started: float  # clock seconds
    expected_ms: float  # predicted send-to-reply time when it started
    cloud_ms: float  # of which cloud queue + compute


@dataclass
class CloudEstimator:
    """One endpoint as the policy sees it: its link, queueing and per-cut tail times."""

    queue: Filter
    link: LinkEstimator
    tail: dict[str, Filter] = field(default_factory=dict)
    available: bool = True
    overload_until: float = -math.inf  # pongs may not lower the queue estimate before


class Estimates:
    """Every estimate of one agent, behind one re-entrant lock.

    The policy takes :attr:`lock` around a whole decision so that it reads one consistent
    state; each ``observe_*`` takes it around its small arithmetic.

    Args:
        cuts: the bundle's cuts.
        endpoints: names of the endpoints data may go to (residency already applied);
            observations of any other name are ignored.
        cfg: the policy section (filter sizes, initial values, cloud speed-up).
        codec: the wire codec (the bytes guessed per cut depend on it).
        clock: monotonic seconds (injectable for tests).
    """

    def __init__(self, cuts: Sequence[CutInfo], endpoints: Iterable[str], cfg: PolicyConfig,
                 codec: str = "raw", clock: Callable[[], float] = time.monotonic) -> None:
        self.cfg = cfg
        self.codec = codec
        self.lock = threading.RLock()
        self._clock = clock
        self.cuts = {c.cut_id: c for c in cuts}
        #: scheduling noise of this agent's timings (one device, so one for all links)
        self.noise = TimingNoise()
        self.clouds = {name: CloudEstimator(queue=self._ms(0.0),
                                            link=LinkEstimator(cfg, self.noise))
                       for name in endpoints}
        self._head = {c.cut_id: self._ms() for c in cuts}
        self._wire = {c.cut_id: make_filter(cfg) for c in cuts}
        self._encode = {c.cut_id: self._ms() for c in cuts}
        self.last_seen = dict.fromkeys(self.cuts, -math.inf)
        self._flying: dict[int, _Transfer] = {}
        self._ids = itertools.count()
        # transfers that overlapped another to the same endpoint (a request sent while a
        # probe was on the link, or the probe itself): their timing is no sample
        self._shared: set[int] = set()
        self._ended = threading.local()  # per thread: whether its last transfer was shared
        #: set when a request's bandwidth sample was held back as out of band: the probes
        #: check it now (a second sample confirms or refutes it) instead of an interval on
        self.suspect = threading.Event()

    def _ms(self, initial: float | None = None) -> Filter:
        """A filter for a time in milliseconds (timing noise is the band's slack)."""
        return make_filter(self.cfg, initial, floor=_NOISE_FLOOR_MS)

    # ---- transfers in flight -------------------------------------------------------

    def begin_transfer(self, endpoint: str, nbytes: int) -> int:
        """A request of ``nbytes`` is being sent to ``endpoint``; returns its token for
        :meth:`end_transfer`. Its predicted time is fixed now, from the estimates."""
        with self.lock:
            token = next(self._ids)
            st = self.clouds.get(endpoint)
            if st is None or nbytes <= 0:
                return token
            link = st.link
            cloud_ms = st.queue.get(0.0)
            expected = link.rtt_ms + nbytes / link.up_Bps * 1e3 + cloud_ms
            others = [k for k, t in self._flying.items() if t.endpoint == endpoint]
            if others:
                self._shared.update((*others, token))
            self._flying[token] = _Transfer(endpoint, nbytes, self._clock(), expected,
                                            cloud_ms)
            return token

    def end_transfer(self, token: int) -> None:
        """The transfer is over; the same thread's next ``observe_reply`` or
        ``observe_ping`` learns from it whether it shared the link."""
        with self.lock:
            self._flying.pop(token, None)
            self._ended.shared = token in self._shared
            self._shared.discard(token)

    def _last_shared(self) -> bool:
        """Whether this thread's last ended transfer overlapped another (read once)."""
        shared = getattr(self._ended, "shared", False)
        self._ended.shared = False
        return shared

    def overdue_cap(self, endpoint: str) -> float | None:
        """The bandwidth bound (bytes/s) the overdue transfers to ``endpoint`` prove.

        A transfer without a reply after ``elapsed`` ms, more than ``overdue_factor``
        times its prediction, says the link is slower than ``bytes / (elapsed - RTT -
        cloud time)``: were it faster, the reply would be here. None: no such evidence.
        """
        with self.lock:
            now = self._clock()
            st = self.clouds.get(endpoint)
            if st is None:
                return None
            cap = None
            for t in self._flying.values():
                if t.endpoint != endpoint:
                    continue
                elapsed = (now - t.started) * 1e3
                if elapsed <= self.cfg.overdue_factor * t.expected_ms + self.noise.ms:
                    continue
                # late by the noise at most for reasons other than the link
                transfer_ms = elapsed - st.link.rtt_ms - t.cloud_ms - self.noise.ms
                if transfer_ms > _NOISE_FLOOR_MS:
                    bound = t.nbytes / transfer_ms * 1e3
                    cap = bound if cap is None else min(cap, bound)
            return cap

    def link_pending(self, endpoint: str) -> int:
        """Bandwidth samples of ``endpoint`` held back as out of band, awaiting
        confirmation (0 for the latest-sample rule)."""
        with self.lock:
            st = self.clouds.get(endpoint)
            return 0 if st is None else getattr(st.link.s_per_B, "pending", 0)

    def rtt_pending(self, endpoint: str) -> int:
        """RTT samples of ``endpoint`` held back as out of band (0: none, or latest)."""
        with self.lock:
            st = self.clouds.get(endpoint)
            return 0 if st is None else getattr(st.link.rtt, "pending", 0)

    def link_estimate(self, endpoint: str) -> LinkEstimate:
        """``endpoint``'s link for a decision now: the filtered estimate, capped by what
        overdue transfers in flight already prove."""
        with self.lock:
            return self.clouds[endpoint].link.estimate(self.overdue_cap(endpoint))

    # ---- observations ------------------------------------------------------------

    def observe_head(self, cut_id: str, ms: float, batch: int = 1) -> None:
        """Edge time of a head (the int8 full model for ``edge``), per sample."""
        with self.lock:
            self._head[cut_id].update(ms / max(batch, 1), self.noise.ms / max(batch, 1))

    def observe_wire(self, cut_id: str, nbytes: int, encode_ms: float, batch: int = 1) -> None:
        """Bytes on the wire and encode time of one request at ``cut_id``."""
        with self.lock:
            self._wire[cut_id].update(nbytes / max(batch, 1))
            self._encode[cut_id].update(encode_ms / max(batch, 1))

    def observe_reply(self, endpoint: str, cut_id: str, *, up_bytes: int, down_bytes: int,
                      elapsed_ms: float, queue_ms: float, compute_ms: float,
                      solo: bool = True, batch: int = 1,
                      ahead_bytes: int | None = None) -> None:
        """A successful reply: learn cloud time, and link speed when the transfer was solo.

        Args:
            elapsed_ms: from handing the request to the link to the reply.
            solo: no other request shared the link meanwhile; otherwise the transfer
                time includes others' bytes and is not a bandwidth sample.
            ahead_bytes: for a shared transfer, the bytes already in flight on the link
                when it was sent; they bound the bandwidth (see
                :meth:`LinkEstimator.observe_shared_transfer`). None: unknown, no bound.
        """
        with self.lock:
            st = self.clouds.get(endpoint)
            if st is None:
                return
            st.queue.update(queue_ms)
            st.tail.setdefault(cut_id, self._ms()).update(compute_ms / max(batch, 1))
            self.last_seen[cut_id] = self._clock()
            network_ms = max(elapsed_ms - queue_ms - compute_ms, 0.0)
            if self._last_shared():
                pass  # sent while a probe was on the link: the timing holds its bytes too
            elif solo:
                st.link.observe_transfer(up_bytes, down_bytes, network_ms)
            elif ahead_bytes is not None:
                st.link.observe_shared_transfer(up_bytes, ahead_bytes, down_bytes, network_ms)
            if getattr(st.link.s_per_B, "pending", 0):
                self.suspect.set()

    def observe_overload(self, endpoint: str, elapsed_ms: float, floor_ms: float = 0.0) -> None:
        """The cloud refused a request (queue full): charge its queue at least ``floor_ms``
        (what the device would have taken), so back-pressure moves work edge-ward. The
        tail time is not touched (nothing ran). Later replies bring the queue back down,
        and pongs do after ``OVERLOAD_HOLD_S``."""
        with self.lock:
            st = self.clouds.get(endpoint)
            if st is None:
                return
            st.queue.update(max(elapsed_ms, floor_ms))
            st.overload_until = self._clock() + OVERLOAD_HOLD_S

    def observe_ping(self, endpoint: str, payload_bytes: int, rtt_ms: float,
                     queue_ms: float | None = None) -> None:
        """A ping round trip; an empty one measures RTT, a padded one bandwidth."""
        with self.lock:
            st = self.clouds.get(endpoint)
            if st is None:
                return
            if payload_bytes <= 0:
                st.link.observe_rtt(rtt_ms)
            elif not self._last_shared():  # a request joined the probe: no sample
                st.link.observe_transfer(payload_bytes, 0, rtt_ms)
            # A pong reports the queue of the requests the cloud accepted; right after it
            # refused ours that says nothing about admission, so it waits for the hold.
            if queue_ms is not None and self._clock() >= st.overload_until:
                st.queue.update(queue_ms)

    def set_available(self, endpoint: str, available: bool) -> None:
        """Breaker open / link down (False) or healthy again (True)."""
        with self.lock:
            st = self.clouds.get(endpoint)
            if st is not None:
                st.available = available

    # ---- reading -------------------------------------------------------------------

    def probe_bytes(self, endpoint: str) -> int:
        with self.lock:
            st = self.clouds.get(endpoint)
            return 0 if st is None else st.link.probe_bytes(self.cfg.probe_bytes)

    def wire_bytes(self, cut_id: str) -> float:
        """Per-sample bytes on the wire for ``cut_id`` (measured, else estimated)."""
        with self.lock:
            wire = self._wire[cut_id].value
            return wire if wire is not None else wire_bytes_guess(self.cuts[cut_id], self.codec)

    def measured_wire_bytes(self, cut_id: str) -> float | None:
        """Per-sample bytes on the wire measured for ``cut_id`` (None before any)."""
        with self.lock:
            return self._wire[cut_id].value

    def encode_ms(self, cut_id: str) -> float:
        """Per-sample encode time measured for ``cut_id`` (0 before any)."""
        with self.lock:
            return self._encode[cut_id].get(0.0)

    def head_ms(self, cut: CutInfo) -> float:
        """Per-sample device time of ``cut``'s head; unmeasured heads are scaled from the
        full model by their share of MACs."""
        est = self._head[cut.cut_id].value
        if est is not None:
            return est
        if cut.cut_id == CLOUD_CUT:
            return 0.0
        full = self._head[EDGE_CUT].value
        total = cut.head_flops + cut.tail_flops
        if full is not None and total:
            return full * cut.head_flops / total
        return full if full is not None else 0.0

    def tail_ms(self, st: CloudEstimator, cut: CutInfo) -> float:
        """Per-sample cloud time of ``cut``'s tail: measured, else another cut's scaled by
        MACs, else the device's time divided by ``cloud_speedup``."""
        est = st.tail.get(cut.cut_id)
        if est is not None and est.value is not None:
            return est.value
        others = [(self.cuts[c], e.value) for c, e in st.tail.items() if e.value is not None]
        total = cut.head_flops + cut.tail_flops
        for other, ms in others:
            if other.tail_flops and total:
                return ms * cut.tail_flops / other.tail_flops
        full = self._head[EDGE_CUT].value or 0.0
        share = cut.tail_flops / total if total else 1.0
        return full * share / self.cfg.cloud_speedup

    def endpoint_snapshot(self, name: str) -> dict[str, Any]:
        """The estimates of one endpoint, rounded for ``/status``."""
        with self.lock:
            st = self.clouds[name]
            link = st.link
            cap = self.overdue_cap(name)
            return {
                "available": st.available,
                "up_Bps": round(link.up_Bps, 1),
                "up_mbit_s": round(link.up_Bps * 8e-6, 3),
                "rtt_ms": round(link.rtt_ms, 3),
                "timing_noise_ms": round(self.noise.ms, 3),
                "link_samples": link.samples,
                "link_changes": link.changes,
                "overdue_cap_Bps": None if cap is None else round(cap, 1),
                "transfers_in_flight": sum(t.endpoint == name for t in self._flying.values()),
                "queue_ms": round(st.queue.get(0.0), 3),
                "tail_ms": {c: round(e.value, 3) for c, e in st.tail.items()
                            if e.value is not None},
            }
