"""Runtime placement: which cut (and which cloud endpoints) serve the next request.

Pure decision, no sockets and no threads of its own: it reads the agent's
:class:`~edge_agent.estimators.Estimates` and asks ``placement``'s cost model — the same
one the offline tuner uses, so the runtime and the tuner never disagree on what
"faster" means — which admitted cut is fastest on which usable endpoint. Around that
prediction sit the choices the cost model does not make: a fixed cut, an offline prior
until the link is measured, hysteresis against flapping, and a little exploration so
unused cuts' estimates stay fresh.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from types import SimpleNamespace
from typing import Any

from contract.bundle import EDGE_CUT
from contract.privacy import CutVerdict, judge_cuts
from edge_agent.config import AUTO_BASE_CODEC, AUTO_CODEC, PolicyConfig
from edge_agent.cuts import CutInfo
from edge_agent.endpoints import EndpointInfo, resident
from edge_agent.estimators import CloudEstimator, Estimates
from placement import (
    CloudEstimate,
    Constraints,
    CutProfile,
    LinkEstimate,
    Prediction,
    choose,
    predict,
)

__all__ = ["Choice", "Policy"]


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
        codec: the wire codec to send the cut with, chosen with it ("" for ``edge``).
    """

    cut_id: str
    endpoints: tuple[str, ...]
    predicted_ms: float
    explored: bool = False
    reason: str = "optimal"
    codec: str = ""


class Policy:
    """Chooses the cut and endpoint order for each request from the agent's estimates.

    Thread-safe: a decision holds the estimates' lock, so request workers, probe threads
    and the status endpoint may call it concurrently.

    Args:
        cuts: the bundle's cuts (``cut_infos_from_manifest``).
        endpoints: the cloud endpoints; only those :func:`~edge_agent.endpoints.resident`
            admits under ``allowed_regions`` are ever returned or estimated.
        cfg: the policy section of the config.
        codec: the wire codec (bytes per cut depend on it).
        allowed_regions: ``None`` = any region.
        prior: optional callable ``(up_Bps, rtt_ms) -> cut id`` (the offline tuner's
            ``placement.yaml``); followed until some endpoint's link estimate has a real
            bandwidth sample.
        privacy: the privacy floor's verdict per cut (``contract.privacy.judge_cuts`` on
            the bundle's manifest, which carries the audit). None: judged from the cut
            depths alone, as for a bundle with no audit.
        clock: monotonic seconds (injectable for tests).
    """

    def __init__(self, cuts: Sequence[CutInfo], endpoints: Sequence[EndpointInfo],
                 cfg: PolicyConfig, codec: str = "raw", *,
                 allowed_regions: Iterable[str] | None = None,
                 prior: Callable[[float, float], str | None] | None = None,
                 privacy: Mapping[str, CutVerdict] | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if not cuts:
            raise ValueError("a policy needs at least one cut")
        self.cfg = cfg
        #: ``auto``: the codec is chosen with the cut among the bundle's measured ones;
        #: otherwise ``codec`` is pinned.
        self.auto_codec = codec == AUTO_CODEC
        self.codec = codec = AUTO_BASE_CODEC if self.auto_codec else codec
        self._rng = random.Random(cfg.seed)
        self._prior = prior
        self.cuts = {c.cut_id: c for c in cuts}
        if EDGE_CUT not in self.cuts:
            raise ValueError(f"the bundle has no {EDGE_CUT!r} cut (local execution)")
        regions = None if allowed_regions is None else frozenset(allowed_regions)
        if privacy is None:
            shape = SimpleNamespace(privacy_audit=None, cuts=[
                SimpleNamespace(id=c.cut_id, depth=c.depth) for c in cuts])
            privacy = judge_cuts(shape, cfg.privacy_floor,  # type: ignore[arg-type]
                                 None if self.auto_codec else codec)
        #: the privacy floor's verdict per cut (every cut; ``edge`` is always allowed)
        self.privacy = {c.cut_id: privacy.get(c.cut_id) or CutVerdict(
            c.cut_id, False, "not judged under the privacy floor") for c in cuts}
        self.privacy[EDGE_CUT] = CutVerdict(EDGE_CUT, True, "nothing crosses")
        allowed = frozenset(cid for cid, v in self.privacy.items() if v.allowed)
        self.constraints = Constraints(privacy_floor=cfg.privacy_floor.min_depth,
                                       accuracy_floor=cfg.accuracy_floor or 0.0,
                                       allowed=allowed,
                                       regions=regions)
        #: endpoint names data may be sent to, in config order
        self.resident = [e.name for e in resident(endpoints, regions)]
        self.estimates = Estimates(cuts, self.resident, cfg, codec, clock)
        self._lock = self.estimates.lock
        if cfg.fixed_cut is not None:
            self._check_fixed(cfg.fixed_cut)
        self.current: str | None = None
        self.last: Choice | None = None
        self.decisions = 0

    def _check_fixed(self, cut_id: str) -> None:
        if cut_id not in self.cuts:
            raise ValueError(f"policy.fixed_cut {cut_id!r} is not a cut of this bundle; "
                             f"expected one of {sorted(self.cuts)}")
        verdict = self.privacy[cut_id]
        if not verdict.allowed:
            raise ValueError(f"policy.fixed_cut {cut_id!r} is barred by privacy_floor "
                             f"({self.cfg.privacy_floor.describe()}): {verdict.reason}")
        if not self.constraints.admits(self._profile(self.cuts[cut_id], 1)):
            raise ValueError(f"policy.fixed_cut {cut_id!r} is below accuracy_floor "
                             f"{self.cfg.accuracy_floor}")

    def edge_ms(self, batch: int = 1) -> float:
        """Predicted time of running the whole request on the device."""
        with self._lock:
            return self._edge_prediction(batch).total_ms

    # ---- prediction --------------------------------------------------------------

    def candidate_codecs(self, cut: CutInfo) -> tuple[str, ...]:
        """The codecs ``cut`` may be sent with. A pinned codec (config ``codec`` other
        than ``auto``) is the only one. Under ``auto``: those the bundle measured at the
        cut that meet its accuracy floor; with none measured, the base codec; with every
        measured one below the floor, the base codec unless it is one of them, else
        ``raw`` (lossless)."""
        if not cut.remote or not cut.codecs or not self.auto_codec:
            return (self.codec,)
        good = tuple(c.codec for c in cut.codecs if c.meets_floor)
        if good:
            return good
        failed = {c.codec for c in cut.codecs}
        return (self.codec,) if self.codec not in failed else ("raw",)

    def _profile(self, cut: CutInfo, batch: int, st: CloudEstimator | None = None) \
            -> CutProfile:
        est = self.estimates
        tail = {} if not cut.remote or st is None else {1: est.tail_ms(st, cut) * batch}
        codecs = self.candidate_codecs(cut)
        # The configured codec's bytes and encode time are measured live; the others are
        # the bundle's figures for this cut.
        nbytes = {self.codec: est.wire_bytes(cut.cut_id) * batch}
        enc = {self.codec: est.encode_ms(cut.cut_id) * batch}
        measured = {c.codec: c for c in cut.codecs}
        # The live figure includes the message's header, the bundle's ratios do not: once
        # the configured codec's bytes are measured, its header share (live bytes minus
        # its payload by the bundle's ratio) is added to the others, so neither side of
        # the comparison is priced without it.
        live, base = est.measured_wire_bytes(cut.cut_id), measured.get(self.codec)
        header = (max(0.0, live - cut.raw_bytes * base.ratio)
                  if live is not None and base is not None else 0.0)
        for name in codecs:
            if name == self.codec:
                continue
            m = measured.get(name)
            nbytes[name] = (cut.raw_bytes * (m.ratio if m is not None else 1.0) + header) \
                * batch
            enc[name] = (m.encode_ms if m is not None else 0.0) * batch
        return CutProfile(
            cut_id=cut.cut_id, depth=cut.depth, head_ms=est.head_ms(cut) * batch,
            tail_ms=tail, bytes={k: int(v) for k, v in nbytes.items()},
            reply_bytes=cut.reply_bytes * batch, encode_ms=enc, accuracy=cut.accuracy,
            codecs=codecs if cut.codecs else ())

    def _codec_for(self, cut_id: str, endpoint: str, batch: int) -> str:
        """The codec that makes ``cut_id`` fastest on ``endpoint`` (among its
        candidates)."""
        st = self.estimates.clouds[endpoint]
        profile = self._profile(self.cuts[cut_id], batch, st)
        return choose([profile], self.estimates.link_estimate(endpoint),
                      CloudEstimate(queue_ms=st.queue.get(0.0), batch=1.0),
                      Constraints(privacy_floor=0), self.codec).codec

    def _usable(self) -> list[tuple[str, CloudEstimator]]:
        clouds = self.estimates.clouds
        return [(name, clouds[name]) for name in self.resident if clouds[name].available]

    def _predictions(self, batch: int) -> dict[str, dict[str, Prediction]]:
        """endpoint -> cut -> prediction for the admitted cuts on every usable endpoint
        (the shared cost model's ``choose`` ranks them; ``edge`` included)."""
        out: dict[str, dict[str, Prediction]] = {}
        for name, st in self._usable():
            profiles = [self._profile(cut, batch, st) for cut in self.cuts.values()]
            cloud = CloudEstimate(queue_ms=st.queue.get(0.0), batch=1.0)
            try:
                decision = choose(profiles, self.estimates.link_estimate(name), cloud,
                                  self.constraints, self.codec)
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
            if choice.endpoints:
                choice = replace(choice, codec=self._codec_for(choice.cut_id,
                                                               choice.endpoints[0], batch))
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
        clouds = self.estimates.clouds
        if not preds:
            reason = "no-endpoint"
        elif self._prior is not None and not any(clouds[n].link.warm for n in preds):
            link = clouds[next(iter(preds))].link
            guess = self._prior(link.up_Bps, link.rtt_ms)
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
        for name, st in self._usable():  # data residency still holds
            pred = predict(self._profile(self.cuts[cut_id], batch, st),
                           self.estimates.link_estimate(name),
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
        last_seen = self.estimates.last_seen
        return min(candidates, key=lambda c: last_seen[c])

    # ---- introspection -----------------------------------------------------------

    def snapshot(self, batch: int = 1) -> dict[str, Any]:
        """Current estimates and predictions (for ``/status``)."""
        est = self.estimates
        with self._lock:
            preds = self._predictions(batch)
            endpoints = {}
            for name in self.resident:
                endpoints[name] = est.endpoint_snapshot(name)
                endpoints[name]["predicted_ms"] = (
                    {c: round(p.total_ms, 3) for c, p in preds[name].items()}
                    if name in preds else {})
            cuts = {
                cut.cut_id: {
                    "depth": cut.depth,
                    "head_ms": round(est.head_ms(cut), 3),
                    "wire_bytes": round(est.wire_bytes(cut.cut_id), 1),
                    "admitted": self.constraints.admits(self._profile(cut, 1)),
                    "privacy": self.privacy[cut.cut_id].reason,
                    "codecs": list(self.candidate_codecs(cut)) if cut.remote else [],
                } for cut in self.cuts.values()}
            return {
                "current_cut": self.current,
                "fixed_cut": self.cfg.fixed_cut,
                "estimator": self.cfg.estimator,
                "privacy_floor": self.cfg.privacy_floor.describe(),
                "privacy_barred": {cid: v.reason for cid, v in self.privacy.items()
                                   if not v.allowed},
                "codec": self.codec,
                "decisions": self.decisions,
                "last_choice": None if self.last is None else {
                    "cut": self.last.cut_id, "codec": self.last.codec,
                    "reason": self.last.reason,
                    "explored": self.last.explored, "endpoints": list(self.last.endpoints),
                    "predicted_ms": round(self.last.predicted_ms, 3)},
                "edge_ms": round(self._edge_prediction(batch).total_ms, 3),
                "endpoints": endpoints,
                "cuts": cuts,
            }
