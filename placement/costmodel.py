"""The latency cost model shared by the offline tuner and the edge agent's runtime policy.

Predicted end-to-end latency of a cut (all in milliseconds)::

    edge head + encode + bytes / uplink + RTT + cloud queue + tail(batch) + decode
              + reply bytes / downlink

"edge" (everything local) is just the int8 full model's time; "cloud" sends the raw
inputs. The codec is chosen with the cut: a cut that lists the codecs its accuracy floor
allows (:attr:`CutProfile.codecs`) is predicted under each of them and ranked by its
best (fewer bytes against more encode time, at the link's bandwidth); a cut that lists
none uses the caller's configured codec. Pure Python/numpy: the edge agent imports this,
so no torch.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

__all__ = [
    "CloudEstimate",
    "Constraints",
    "CutProfile",
    "Decision",
    "Endpoint",
    "EndpointDecision",
    "LinkEstimate",
    "Prediction",
    "candidate_codecs",
    "choose",
    "choose_endpoint",
    "predict",
]


@dataclass(frozen=True, slots=True)
class CutProfile:
    """What is known about one cut, measured or estimated.

    Attributes:
        cut_id: manifest cut id ("cloud", "edge", "k12"...).
        depth: nodes on the edge side (0 for "cloud"); the privacy floor compares to it.
        head_ms: edge time of the int8 head at batch 1 (full int8 model for "edge").
        tail_ms: cloud tail time by batch size ({1: 2.0, 8: 5.1}); empty for "edge".
            Missing batch sizes are interpolated linearly (extrapolated from the last two).
        bytes: per-sample bytes on the wire by codec ("raw", "fp16", "int8+lz4"...).
            0 for "edge".
        reply_bytes: per-sample bytes of the outputs sent back.
        encode_ms / decode_ms: codec cost per sample by codec (edge encode, cloud decode).
        accuracy: cosine or top-1 agreement of this cut (1.0 = exact); constraint input.
        edge_memory_mb: resident memory the head needs on the edge (0 if unknown).
        codecs: wire codecs allowed at this cut (the accuracy floor held on held-back
            data), each with its ``bytes``/``encode_ms`` entry; empty = not measured, the
            caller's configured codec only.
    """

    cut_id: str
    depth: int
    head_ms: float
    tail_ms: Mapping[int, float] = field(default_factory=dict)
    bytes: Mapping[str, int] = field(default_factory=dict)
    reply_bytes: int = 0
    encode_ms: Mapping[str, float] = field(default_factory=dict)
    decode_ms: Mapping[str, float] = field(default_factory=dict)
    accuracy: float = 1.0
    edge_memory_mb: float = 0.0
    codecs: tuple[str, ...] = ()

    @property
    def is_edge(self) -> bool:
        return self.cut_id == "edge"

    def tail_at(self, batch: float) -> float:
        """Tail latency for a batch of ``batch`` requests (linear interpolation)."""
        if self.is_edge or not self.tail_ms:
            return 0.0
        pts = sorted(self.tail_ms.items())
        if len(pts) == 1 or batch <= pts[0][0]:
            return pts[0][1]
        for (b0, t0), (b1, t1) in itertools.pairwise(pts):
            if batch <= b1:
                return t0 + (t1 - t0) * (batch - b0) / (b1 - b0)
        (b0, t0), (b1, t1) = pts[-2], pts[-1]
        return t1 + (t1 - t0) * (batch - b1) / (b1 - b0)


@dataclass(frozen=True, slots=True)
class LinkEstimate:
    """Current uplink/downlink bandwidth (bytes per second) and round-trip time."""

    up_Bps: float
    down_Bps: float
    rtt_ms: float

    def transfer_ms(self, up_bytes: float, down_bytes: float) -> float:
        up = up_bytes / self.up_Bps * 1e3 if up_bytes else 0.0
        down = down_bytes / self.down_Bps * 1e3 if down_bytes else 0.0
        return up + down


@dataclass(frozen=True, slots=True)
class CloudEstimate:
    """Cloud side conditions: expected queueing delay and the batch a request joins."""

    queue_ms: float = 0.0
    batch: float = 1.0
    available: bool = True


@dataclass(frozen=True, slots=True)
class Constraints:
    """Hard limits a cut must meet.

    Attributes:
        privacy_floor: minimum cut depth; 1 (default) means raw inputs never leave the
            device ("cloud" excluded); 0 allows "cloud".
        accuracy_floor: cuts whose accuracy is below this are excluded.
        edge_memory_mb: cuts whose head needs more are excluded (0 = no limit).
        allowed: if not None, only these cut ids are considered.
        regions: if not None, only cloud endpoints in these regions may be used (data
            residency); see :func:`choose_endpoint`. Cut admission ignores it.
    """

    privacy_floor: int = 1
    accuracy_floor: float = 0.0
    edge_memory_mb: float = 0.0
    allowed: frozenset[str] | None = None
    regions: frozenset[str] | None = None

    def admits_region(self, region: str) -> bool:
        return self.regions is None or region in self.regions

    def admits(self, cut: CutProfile) -> bool:
        if self.allowed is not None and cut.cut_id not in self.allowed:
            return False
        if not cut.is_edge and cut.depth < self.privacy_floor:
            return False
        if cut.accuracy < self.accuracy_floor:
            return False
        return not (self.edge_memory_mb and cut.edge_memory_mb > self.edge_memory_mb)


@dataclass(frozen=True, slots=True)
class Prediction:
    cut_id: str
    total_ms: float
    edge_ms: float
    network_ms: float
    cloud_ms: float
    codec: str = ""  # the wire codec predicted ("" for "edge": nothing crosses)

    def as_dict(self) -> dict[str, float | str]:
        return {"cut": self.cut_id, "total_ms": self.total_ms, "edge_ms": self.edge_ms,
                "network_ms": self.network_ms, "cloud_ms": self.cloud_ms,
                "codec": self.codec}


def predict(cut: CutProfile, link: LinkEstimate, cloud: CloudEstimate,
            codec: str = "raw") -> Prediction:
    """Predicted end-to-end latency of ``cut`` under the given conditions."""
    if cut.is_edge:
        return Prediction(cut.cut_id, cut.head_ms, cut.head_ms, 0.0, 0.0)
    if not cloud.available:
        return Prediction(cut.cut_id, math.inf, cut.head_ms, math.inf, math.inf, codec)
    nbytes = cut.bytes.get(codec, cut.bytes.get("raw", 0))
    edge = cut.head_ms + cut.encode_ms.get(codec, 0.0)
    network = link.rtt_ms + link.transfer_ms(nbytes, cut.reply_bytes)
    cloud_ms = cloud.queue_ms + cut.decode_ms.get(codec, 0.0) + cut.tail_at(cloud.batch)
    return Prediction(cut.cut_id, edge + network + cloud_ms, edge, network, cloud_ms, codec)


def candidate_codecs(cut: CutProfile, codec: str = "raw") -> tuple[str, ...]:
    """The codecs ``cut`` may be sent with: those its profile lists (each met the accuracy
    floor when the bundle was made), else the configured ``codec``."""
    return tuple(cut.codecs) if cut.codecs and not cut.is_edge else (codec,)


def _best_codec(cut: CutProfile, link: LinkEstimate, cloud: CloudEstimate,
                codec: str) -> Prediction:
    preds = [predict(cut, link, cloud, k) for k in candidate_codecs(cut, codec)]
    return min(preds, key=lambda p: (p.total_ms, p.codec))


@dataclass(frozen=True, slots=True)
class Decision:
    """The chosen cut and the full ranking (best first) of admitted cuts."""

    cut_id: str
    predicted: Prediction
    ranking: tuple[Prediction, ...]

    @property
    def codec(self) -> str:
        """The codec of the chosen cut ("" for "edge")."""
        return self.predicted.codec

    @property
    def margin_ms(self) -> float:
        """How much slower the runner-up is predicted to be (inf if no runner-up)."""
        return self.ranking[1].total_ms - self.ranking[0].total_ms if len(self.ranking) > 1 \
            else math.inf


def choose(cuts: Sequence[CutProfile], link: LinkEstimate, cloud: CloudEstimate,
           constraints: Constraints = Constraints(), codec: str = "raw") -> Decision:
    """The admitted (cut, codec) pair with the lowest predicted latency.

    Each admitted cut is predicted under each of its :func:`candidate_codecs` (``codec``
    for a cut that lists none) and stands in the ranking with its best one, so the
    ranking (and :attr:`Decision.margin_ms`) still compares cuts; each prediction names
    its codec.

    Raises:
        ValueError: no cut satisfies the constraints (the message names the constraints).
    """
    preds = [_best_codec(c, link, cloud, codec) for c in cuts if constraints.admits(c)]
    if not preds:
        raise ValueError(f"no cut satisfies {constraints!r} among {[c.cut_id for c in cuts]}")
    preds.sort(key=lambda p: (p.total_ms, p.cut_id))
    return Decision(preds[0].cut_id, preds[0], tuple(preds))


@dataclass(frozen=True, slots=True)
class Endpoint:
    """A cloud endpoint the agent may use, with its region and current conditions."""

    name: str
    region: str
    link: LinkEstimate
    cloud: CloudEstimate = CloudEstimate()


@dataclass(frozen=True, slots=True)
class EndpointDecision:
    """The best (endpoint, cut) pair; ``endpoint`` is None when running locally wins."""

    endpoint: str | None
    decision: Decision


def choose_endpoint(cuts: Sequence[CutProfile], endpoints: Sequence[Endpoint],
                    constraints: Constraints = Constraints(),
                    codec: str = "raw") -> EndpointDecision:
    """The best cut over every endpoint in an allowed region (and local execution).

    Endpoints outside ``constraints.regions`` are never used, even if faster: the
    region limit is a data-residency rule, not a preference.

    Raises:
        ValueError: no cut is admitted anywhere (the message names the constraints).
    """
    allowed = [e for e in endpoints if constraints.admits_region(e.region)]
    best: EndpointDecision | None = None
    for e in allowed:
        d = choose(cuts, e.link, e.cloud, constraints, codec)
        if best is None or d.predicted.total_ms < best.decision.predicted.total_ms:
            best = EndpointDecision(None if d.predicted.cut_id == "edge" else e.name, d)
    if best is None:
        local = [c for c in cuts if c.is_edge and constraints.admits(c)]
        if not local:
            raise ValueError(f"no endpoint in regions {sorted(constraints.regions or [])} "
                             f"and no local cut admitted by {constraints!r}")
        nowhere = LinkEstimate(1.0, 1.0, 0.0)
        return EndpointDecision(None, choose(local, nowhere, CloudEstimate(available=False),
                                             constraints, codec))
    return best
