"""Runtime placement: which cut (and which cloud endpoint) serves the next request.

Pure logic, no sockets and no threads of its own: the client feeds it what it
observes — reply timings, ping round trips, bytes on the wire, head latencies — and asks
:meth:`Policy.decide` before each request. The prediction itself is
``placement``'s cost model, the same one the offline tuner uses, so the
runtime and the tuner never disagree on what "faster" means.

Estimators are median-of-window filters followed by an EWMA: one outlier (a GC pause, a
retransmission) cannot move an estimate, while a real change of conditions moves it
within about ``window / 2`` samples.
"""

from __future__ import annotations

import math
import random
import statistics
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from contract.bundle import CLOUD_CUT, EDGE_CUT, Manifest
from edge_agent.config import PolicyConfig
from placement import (
    CloudEstimate,
    Constraints,
    CutProfile,
    LinkEstimate,
    Prediction,
    choose,
    predict,
)

__all__ = [
    "Choice",
    "CutInfo",
    "EndpointInfo",
    "LinkEstimator",
    "Policy",
    "RobustEwma",
    "cut_infos_from_manifest",
    "wire_bytes_guess",
]

# A transfer shorter than this is below the timing noise: it only bounds bandwidth from
# below (the link is at least this fast), it does not measure it.
_NOISE_FLOOR_MS = 1.0
#: After an OVERLOADED reply, pongs do not lower that endpoint's queue estimate for this
#: long; real replies (exploration) still do, so a recovered cloud is found again.
OVERLOAD_HOLD_S = 10.0


class RobustEwma:
    """EWMA over the running median of the last ``window`` samples.

    The median rejects isolated outliers; the EWMA smooths what remains. ``value`` is
    ``initial`` until the first sample.
    """

    def __init__(self, alpha: float, window: int, initial: float | None = None) -> None:
        self.alpha = alpha
        self._window: deque[float] = deque(maxlen=window)
        self.value = initial
        self.count = 0

    def update(self, sample: float) -> float:
        if not math.isfinite(sample):
            return self.value if self.value is not None else sample
        self._window.append(sample)
        med = statistics.median(self._window)
        if self.count == 0 or self.value is None:
            self.value = med
        else:
            self.value = self.alpha * med + (1 - self.alpha) * self.value
        self.count += 1
        return self.value

    def get(self, default: float) -> float:
        return default if self.value is None else self.value


class LinkEstimator:
    """Uplink bandwidth and RTT of one endpoint, from pings and real transfers.

    RTT comes from empty pings. Bandwidth samples are ``bytes / (network time - RTT)``,
    where network time is a request's round trip minus the cloud-reported queue and
    compute time (or a ping's round trip). The downlink is assumed as fast as the uplink
    unless measured: replies are small next to cut activations.
    """

    def __init__(self, cfg: PolicyConfig) -> None:
        self.rtt = RobustEwma(cfg.ewma_alpha, cfg.window, cfg.initial_rtt_ms)
        self.up = RobustEwma(cfg.ewma_alpha, cfg.window, cfg.initial_up_Bps)
        self.samples = 0

    @property
    def up_Bps(self) -> float:
        return max(self.up.get(1.0), 1.0)

    @property
    def rtt_ms(self) -> float:
        return max(self.rtt.get(0.0), 0.0)

    @property
    def warm(self) -> bool:
        return self.up.count > 0

    def estimate(self) -> LinkEstimate:
        return LinkEstimate(up_Bps=self.up_Bps, down_Bps=self.up_Bps, rtt_ms=self.rtt_ms)

    def observe_rtt(self, rtt_ms: float) -> None:
        self.rtt.update(rtt_ms)
        self.samples += 1

    def observe_transfer(self, up_bytes: int, down_bytes: int, network_ms: float) -> None:
        """One transfer of ``up_bytes`` (and ``down_bytes`` back) took ``network_ms``."""
        if up_bytes <= 0:
            self.observe_rtt(network_ms)
            return
        self.samples += 1
        down_ms = down_bytes / self.up_Bps * 1e3
        transfer_ms = network_ms - self.rtt_ms - down_ms
        if transfer_ms >= _NOISE_FLOOR_MS:
            self.up.update(up_bytes / transfer_ms * 1e3)
            return
        # Too short to time: the link is at least this fast. Raise a stale low estimate
        # (bandwidth came back) but never lower one from a sample this noisy.
        lower_bound = up_bytes / _NOISE_FLOOR_MS * 1e3
        if lower_bound > self.up_Bps:
            self.up.update(lower_bound)

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
        upper = (up_bytes + ahead_bytes) / transfer_ms * 1e3
        lower = up_bytes / transfer_ms * 1e3
        if self.up_Bps > upper:
            self.up.update(upper)
        elif self.up_Bps < lower:
            self.up.update(lower)

    def probe_bytes(self, max_bytes: int) -> int:
        """A probe payload that takes ~40 ms at the current estimate (4 KiB..max)."""
        return int(min(max(self.up_Bps * 0.04, 4096), max_bytes)) if max_bytes else 0


@dataclass(frozen=True, slots=True)
class CutInfo:
    """Static facts about one cut, from the manifest."""

    cut_id: str
    depth: int
    raw_bytes: int  # per sample, fp32
    int8_bytes: int  # per sample, int8 before compression
    reply_bytes: int  # per sample, outputs
    accuracy: float
    head_flops: int
    tail_flops: int

    @property
    def remote(self) -> bool:
        return self.cut_id != EDGE_CUT


@dataclass(frozen=True, slots=True)
class EndpointInfo:
    name: str
    region: str = "default"


def wire_bytes_guess(cut: CutInfo, codec: str) -> float:
    """Bytes per sample on the wire before any measurement of this codec on this cut."""
    base = codec.split("+")[0]
    if base == "raw":
        return float(cut.raw_bytes)
    if base == "fp16":
        return cut.raw_bytes / 2
    return float(cut.int8_bytes)


def cut_infos_from_manifest(manifest: Manifest) -> list[CutInfo]:
    reply = sum(4 * max(t.sample_elements, 1) for t in manifest.outputs)
    out = []
    for c in manifest.cuts:
        accuracy = c.accuracy.cosine if c.accuracy.samples else 1.0
        out.append(CutInfo(c.id, c.depth, c.bytes, c.bytes_int8, 0 if c.is_edge else reply,
                           accuracy, c.head_flops, c.tail_flops))
    return out


@dataclass(frozen=True, slots=True)
class Choice:
    """What :meth:`Policy.decide` returns.

    Attributes:
        cut_id: the cut to run (``edge`` = everything locally).
        endpoints: endpoint names to try, best first (empty for ``edge``).
        predicted_ms: predicted end-to-end latency.
        explored: this request explores a non-best cut to refresh its estimates.
        reason: ``optimal``, ``fixed``, ``prior``, ``explore``, ``hysteresis`` or
            ``no-endpoint``.
    """

    cut_id: str
    endpoints: tuple[str, ...]
    predicted_ms: float
    explored: bool = False
    reason: str = "optimal"


@dataclass
class _CloudState:
    queue: RobustEwma
    tail: dict[str, RobustEwma] = field(default_factory=dict)
    available: bool = True
    link: LinkEstimator | None = None
    overload_until: float = -math.inf  # pongs may not lower the queue estimate before


class Policy:
    """Chooses the cut and endpoint order for each request; learns from observations.

    Thread-safe (one lock around small arithmetic): worker threads, probe threads and
    the status endpoint call it concurrently.

    Args:
        cuts: the bundle's cuts (``cut_infos_from_manifest``).
        endpoints: the cloud endpoints. Data residency is applied by the caller's
            ``allowed_regions`` here too: endpoints outside it are never returned.
        cfg: the policy section of the config.
        codec: the wire codec (bytes per cut depend on it).
        allowed_regions: ``None`` = any region.
        prior: optional callable ``(up_Bps, rtt_ms) -> cut id`` (the offline tuner's
            ``placement.yaml``); followed until some endpoint's link estimate has a real
            bandwidth sample.
        clock: monotonic seconds (injectable for tests).
    """

    def __init__(self, cuts: Sequence[CutInfo], endpoints: Sequence[EndpointInfo],
                 cfg: PolicyConfig, codec: str = "raw", *,
                 allowed_regions: Iterable[str] | None = None,
                 prior: Callable[[float, float], str | None] | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if not cuts:
            raise ValueError("a policy needs at least one cut")
        self.cfg = cfg
        self.codec = codec
        self._clock = clock
        self._rng = random.Random(cfg.seed)
        self._lock = threading.Lock()
        self._prior = prior
        self.cuts = {c.cut_id: c for c in cuts}
        if EDGE_CUT not in self.cuts:
            raise ValueError(f"the bundle has no {EDGE_CUT!r} cut (local execution)")
        self.constraints = Constraints(
            privacy_floor=cfg.privacy_floor, accuracy_floor=cfg.accuracy_floor,
            regions=None if allowed_regions is None else frozenset(allowed_regions))
        self.endpoints = {e.name: e for e in endpoints}
        # data residency: endpoints outside the allowed regions are never candidates
        self.resident = [e.name for e in endpoints if self.constraints.admits_region(e.region)]
        self._clouds = {
            name: _CloudState(queue=RobustEwma(cfg.ewma_alpha, cfg.window, 0.0),
                              link=LinkEstimator(cfg))
            for name in self.resident
        }
        self._head = {c.cut_id: RobustEwma(cfg.ewma_alpha, cfg.window) for c in cuts}
        self._wire = {c.cut_id: RobustEwma(cfg.ewma_alpha, cfg.window) for c in cuts}
        self._encode = {c.cut_id: RobustEwma(cfg.ewma_alpha, cfg.window) for c in cuts}
        self._last_seen = dict.fromkeys(self.cuts, -math.inf)
        if cfg.fixed_cut is not None:
            self._check_fixed(cfg.fixed_cut)
        self.current: str | None = None
        self.last: Choice | None = None
        self.decisions = 0

    def _check_fixed(self, cut_id: str) -> None:
        if cut_id not in self.cuts:
            raise ValueError(f"policy.fixed_cut {cut_id!r} is not a cut of this bundle; "
                             f"expected one of {sorted(self.cuts)}")
        if not self.constraints.admits(self._profile(self.cuts[cut_id], 1)):
            raise ValueError(f"policy.fixed_cut {cut_id!r} (depth {self.cuts[cut_id].depth}) "
                             f"is below privacy_floor {self.cfg.privacy_floor}")

    # ---- observations ------------------------------------------------------------

    def observe_head(self, cut_id: str, ms: float, batch: int = 1) -> None:
        """Edge time of a head (the int8 full model for ``edge``), per sample."""
        with self._lock:
            self._head[cut_id].update(ms / max(batch, 1))

    def observe_wire(self, cut_id: str, nbytes: int, encode_ms: float, batch: int = 1) -> None:
        """Bytes on the wire and encode time of one request at ``cut_id``."""
        with self._lock:
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
        with self._lock:
            st = self._clouds.get(endpoint)
            if st is None:
                return
            st.queue.update(queue_ms)
            st.tail.setdefault(cut_id, RobustEwma(self.cfg.ewma_alpha, self.cfg.window)) \
                .update(compute_ms / max(batch, 1))
            self._last_seen[cut_id] = self._clock()
            network_ms = max(elapsed_ms - queue_ms - compute_ms, 0.0)
            if st.link is None:
                return
            if solo:
                st.link.observe_transfer(up_bytes, down_bytes, network_ms)
            elif ahead_bytes is not None:
                st.link.observe_shared_transfer(up_bytes, ahead_bytes, down_bytes, network_ms)

    def observe_overload(self, endpoint: str, elapsed_ms: float, batch: int = 1) -> None:
        """The cloud refused a request (queue full): charge its queue at least what the
        device would have taken, so back-pressure moves work edge-ward. The tail time is
        not touched (nothing ran). Later replies bring the queue back down, and pongs do after
        ``OVERLOAD_HOLD_S``."""
        with self._lock:
            st = self._clouds.get(endpoint)
            if st is None:
                return
            st.queue.update(max(elapsed_ms, self._edge_prediction(batch).total_ms))
            st.overload_until = self._clock() + OVERLOAD_HOLD_S

    def observe_ping(self, endpoint: str, payload_bytes: int, rtt_ms: float,
                     queue_ms: float | None = None) -> None:
        """A ping round trip; an empty one measures RTT, a padded one bandwidth."""
        with self._lock:
            st = self._clouds.get(endpoint)
            if st is None or st.link is None:
                return
            if payload_bytes <= 0:
                st.link.observe_rtt(rtt_ms)
            else:
                st.link.observe_transfer(payload_bytes, 0, rtt_ms)
            # A pong reports the queue of the requests the cloud accepted; right after it
            # refused ours that says nothing about admission, so it waits for the hold.
            if queue_ms is not None and self._clock() >= st.overload_until:
                st.queue.update(queue_ms)

    def set_available(self, endpoint: str, available: bool) -> None:
        """Breaker open / link down (False) or healthy again (True)."""
        with self._lock:
            st = self._clouds.get(endpoint)
            if st is not None:
                st.available = available

    def probe_bytes(self, endpoint: str) -> int:
        with self._lock:
            st = self._clouds.get(endpoint)
            return 0 if st is None or st.link is None else \
                st.link.probe_bytes(self.cfg.probe_bytes)

    def edge_ms(self, batch: int = 1) -> float:
        """Predicted time of running the whole request on the device."""
        with self._lock:
            return self._edge_prediction(batch).total_ms

    def wire_bytes(self, cut_id: str) -> float:
        """Per-sample bytes on the wire for ``cut_id`` (measured, else estimated)."""
        with self._lock:
            wire = self._wire[cut_id].value
            return wire if wire is not None else wire_bytes_guess(self.cuts[cut_id], self.codec)

    def encode_ms(self, cut_id: str) -> float:
        with self._lock:
            return self._encode[cut_id].get(0.0)

    # ---- prediction --------------------------------------------------------------

    def _head_ms(self, cut: CutInfo) -> float:
        est = self._head[cut.cut_id].value
        if est is not None:
            return est
        if cut.cut_id == CLOUD_CUT:
            return 0.0
        # Not measured yet: scale the measured full model by the head's share of MACs.
        full = self._head[EDGE_CUT].value
        total = cut.head_flops + cut.tail_flops
        if full is not None and total:
            return full * cut.head_flops / total
        return full if full is not None else 0.0

    def _tail_ms(self, st: _CloudState, cut: CutInfo) -> float:
        est = st.tail.get(cut.cut_id)
        if est is not None and est.value is not None:
            return est.value
        others = [(self.cuts[c], e.value) for c, e in st.tail.items() if e.value is not None]
        total = cut.head_flops + cut.tail_flops
        for other, ms in others:  # scale another cut's measured tail by MACs
            if other.tail_flops and total:
                return ms * cut.tail_flops / other.tail_flops
        full = self._head[EDGE_CUT].value or 0.0
        share = cut.tail_flops / total if total else 1.0
        return full * share / self.cfg.cloud_speedup

    def _profile(self, cut: CutInfo, batch: int, st: _CloudState | None = None) -> CutProfile:
        wire = self._wire[cut.cut_id].value
        nbytes = wire if wire is not None else wire_bytes_guess(cut, self.codec)
        enc = self._encode[cut.cut_id].get(0.0)
        tail = {} if not cut.remote or st is None else {1: self._tail_ms(st, cut) * batch}
        return CutProfile(
            cut_id=cut.cut_id, depth=cut.depth, head_ms=self._head_ms(cut) * batch,
            tail_ms=tail, bytes={self.codec: int(nbytes * batch)},
            reply_bytes=cut.reply_bytes * batch, encode_ms={self.codec: enc * batch},
            accuracy=cut.accuracy)

    def _predictions(self, batch: int) -> dict[str, dict[str, Prediction]]:
        """endpoint -> cut -> prediction for the admitted cuts on every usable endpoint
        (the shared cost model's ``choose`` ranks them; ``edge`` included)."""
        out: dict[str, dict[str, Prediction]] = {}
        for name in self.resident:
            st = self._clouds[name]
            if not st.available or st.link is None:
                continue
            profiles = [self._profile(cut, batch, st) for cut in self.cuts.values()]
            cloud = CloudEstimate(queue_ms=st.queue.get(0.0), batch=1.0)
            try:
                decision = choose(profiles, st.link.estimate(), cloud, self.constraints,
                                  self.codec)
            except ValueError:
                continue
            out[name] = {p.cut_id: p for p in decision.ranking if p.cut_id != EDGE_CUT}
        return out

    def _edge_prediction(self, batch: int) -> Prediction:
        return predict(self._profile(self.cuts[EDGE_CUT], batch), LinkEstimate(1, 1, 0),
                       CloudEstimate())

    # ---- decision ----------------------------------------------------------------

    def decide(self, batch: int = 1, force: str | None = None) -> Choice:
        """The cut and endpoint order for the next request of ``batch`` samples.

        ``force`` (a per-request override the API admits only with
        ``api.allow_cut_override``) runs that cut without moving the policy's current
        choice; the reply still teaches the estimators, like exploration does.
        """
        if force is not None and force not in self.cuts:
            raise ValueError(f"cut {force!r} is not a cut of this bundle; expected one of "
                             f"{sorted(self.cuts)}")
        with self._lock:
            choice = self._decide(batch, force)
            self.decisions += 1
            self.last = choice
            if not choice.explored and force is None:
                self.current = choice.cut_id
            return choice

    def _order(self, preds: Mapping[str, Mapping[str, Prediction]], cut_id: str) \
            -> tuple[str, ...]:
        ranked = sorted((p[cut_id].total_ms, name) for name, p in preds.items() if cut_id in p)
        return tuple(name for _, name in ranked)

    def _decide(self, batch: int, force: str | None = None) -> Choice:
        edge = self._edge_prediction(batch)
        if force is not None:
            return self._forced(force, batch, edge)
        preds = self._predictions(batch)
        fixed = self.cfg.fixed_cut
        if fixed is not None:
            if fixed == EDGE_CUT:
                return Choice(EDGE_CUT, (), edge.total_ms, reason="fixed")
            order = self._order(preds, fixed)
            if not order:
                return Choice(EDGE_CUT, (), edge.total_ms, reason="no-endpoint")
            return Choice(fixed, order, preds[order[0]][fixed].total_ms, reason="fixed")
        # best prediction per cut over endpoints
        best: dict[str, float] = {EDGE_CUT: edge.total_ms}
        for p in preds.values():
            for cut_id, pr in p.items():
                best[cut_id] = min(best.get(cut_id, math.inf), pr.total_ms)
        ranking = sorted(best.items(), key=lambda kv: (kv[1], kv[0]))
        top_cut, top_ms = ranking[0]
        reason = "optimal"
        if not preds:
            reason = "no-endpoint"
        elif self._prior is not None and not any(
                self._clouds[n].link.warm for n in preds if self._clouds[n].link):
            link = next(self._clouds[n].link for n in preds if self._clouds[n].link)
            guess = self._prior(link.up_Bps, link.rtt_ms) if link is not None else None
            if guess in best and math.isfinite(best[guess]):
                top_cut, top_ms, reason = guess, best[guess], "prior"
        cur = self.current
        if (reason == "optimal" and cur is not None and cur != top_cut and cur in best
                and best[cur] <= top_ms * (1 + self.cfg.hysteresis)):
            top_cut, top_ms, reason = cur, best[cur], "hysteresis"
        explore = self._explore(ranking, top_cut, top_ms) if preds else None
        if explore is not None:
            return Choice(explore, self._order(preds, explore), best[explore], True, "explore")
        return Choice(top_cut, self._order(preds, top_cut) if top_cut != EDGE_CUT else (),
                      top_ms, reason=reason)

    def _forced(self, cut_id: str, batch: int, edge: Prediction) -> Choice:
        """A per-request override: ``cut_id`` on the best available endpoint, ignoring
        the privacy floor (the operator allowed it with ``api.allow_cut_override``)."""
        if cut_id == EDGE_CUT:
            return Choice(EDGE_CUT, (), edge.total_ms, reason="override")
        ranked = []
        for name in self.resident:  # data residency still holds
            st = self._clouds[name]
            if not st.available or st.link is None:
                continue
            pred = predict(self._profile(self.cuts[cut_id], batch, st), st.link.estimate(),
                           CloudEstimate(queue_ms=st.queue.get(0.0), batch=1.0), self.codec)
            ranked.append((pred.total_ms, name))
        if not ranked:
            return Choice(EDGE_CUT, (), edge.total_ms, reason="no-endpoint")
        ranked.sort()
        return Choice(cut_id, tuple(n for _, n in ranked), ranked[0][0], reason="override")

    def _explore(self, ranking: list[tuple[str, float]], top: str, top_ms: float) -> str | None:
        if self.cfg.explore_fraction <= 0 or self._rng.random() >= self.cfg.explore_fraction:
            return None
        limit = top_ms * self.cfg.explore_max_ratio
        candidates = [c for c, ms in ranking
                      if c != top and c != EDGE_CUT and math.isfinite(ms) and ms <= limit]
        if not candidates:
            return None
        # the stalest estimate first; ties broken at random
        self._rng.shuffle(candidates)
        return min(candidates, key=lambda c: self._last_seen[c])

    # ---- introspection -----------------------------------------------------------

    def snapshot(self, batch: int = 1) -> dict[str, Any]:
        """Current estimates and predictions (for ``/status``)."""
        with self._lock:
            preds = self._predictions(batch)
            endpoints = {}
            for name in self.resident:
                st = self._clouds[name]
                link = st.link
                endpoints[name] = {
                    "available": st.available,
                    "up_Bps": None if link is None else round(link.up_Bps, 1),
                    "up_mbit_s": None if link is None else round(link.up_Bps * 8e-6, 3),
                    "rtt_ms": None if link is None else round(link.rtt_ms, 3),
                    "link_samples": 0 if link is None else link.samples,
                    "queue_ms": round(st.queue.get(0.0), 3),
                    "tail_ms": {c: round(e.value, 3) for c, e in st.tail.items()
                                if e.value is not None},
                    "predicted_ms": {c: round(p.total_ms, 3) for c, p in preds[name].items()}
                    if name in preds else {},
                }
            cuts = {}
            for cut in self.cuts.values():
                wire = self._wire[cut.cut_id].value
                cuts[cut.cut_id] = {
                    "depth": cut.depth,
                    "head_ms": round(self._head_ms(cut), 3),
                    "wire_bytes": round(wire if wire is not None
                                        else wire_bytes_guess(cut, self.codec), 1),
                    "admitted": self.constraints.admits(self._profile(cut, 1)),
                }
            return {
                "current_cut": self.current,
                "fixed_cut": self.cfg.fixed_cut,
                "privacy_floor": self.cfg.privacy_floor,
                "codec": self.codec,
                "decisions": self.decisions,
                "last_choice": None if self.last is None else {
                    "cut": self.last.cut_id, "reason": self.last.reason,
                    "explored": self.last.explored, "endpoints": list(self.last.endpoints),
                    "predicted_ms": round(self.last.predicted_ms, 3)},
                "edge_ms": round(self._edge_prediction(batch).total_ms, 3),
                "endpoints": endpoints,
                "cuts": cuts,
            }
