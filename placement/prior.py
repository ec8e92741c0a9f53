"""The placement prior: ``configs/placement.yaml``, written by ``tiersplit place tune``
and loaded by the edge agent as its starting policy.

Format (``format: 1``)::

    format: 1
    created: 2026-11-28T13:00:00Z
    codec: raw                      # wire codec the predictions assume
    constraints: {privacy_floor: 1, accuracy_floor: 0.0, edge_memory_mb: 0}
    models:
      digits_cnn:                   # bundle model name
        version: "1"
        digest: 3f2a...             # the bundle the profiles were measured on
        default_cut: k3             # the cut for the first (reference) condition
        tables:                     # one per link condition (RTT, down/up ratio)
          - condition: 4g
            rtt_ms: 60.0
            down_up_ratio: 3.0
            ranges:                 # uplink bytes/s in [min_up_Bps, max_up_Bps) -> cut
              - {min_up_Bps: 0, max_up_Bps: 181000.0, cut: edge}
              - {min_up_Bps: 181000.0, max_up_Bps: null, cut: k3}   # null = no upper bound
        conditions:                 # what tune predicted at each named condition
          4g: {up_Bps: 1.5e6, down_Bps: 4.5e6, rtt_ms: 60, cut: k3,
               predicted_ms: 70.1, runner_up: edge, margin_ms: 3.2}
    agents:                         # optional, from a fleet tune: agent id -> model/cut
      cam-1: {model: digits_cnn, cut: k3}

The edge agent calls ``load_prior(path).cut_for(model, up_Bps, rtt_ms)`` to pick its
first cut before it has measured anything, and keeps the table for the bandwidth
thresholds. Pure stdlib + pyyaml.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from placement.costmodel import (
    CloudEstimate,
    Constraints,
    CutProfile,
    LinkEstimate,
    choose,
)

__all__ = [
    "FORMAT",
    "BandwidthRange",
    "ModelPrior",
    "PlacementPrior",
    "PriorTable",
    "bandwidth_ranges",
    "build_model_prior",
    "dump_prior",
    "load_prior",
]

FORMAT = 1


@dataclass(frozen=True, slots=True)
class BandwidthRange:
    """``cut`` is best for uplink bandwidth in ``[min_up_Bps, max_up_Bps)``."""

    min_up_Bps: float
    max_up_Bps: float  # math.inf for the open top range
    cut: str

    def contains(self, up_Bps: float) -> bool:
        return self.min_up_Bps <= up_Bps < self.max_up_Bps


@dataclass(frozen=True)
class PriorTable:
    """Bandwidth -> cut for one link condition (fixed RTT and down/up ratio)."""

    condition: str
    rtt_ms: float
    down_up_ratio: float
    ranges: tuple[BandwidthRange, ...]

    def cut_for(self, up_Bps: float) -> str:
        for r in self.ranges:
            if r.contains(up_Bps):
                return r.cut
        return self.ranges[-1].cut if up_Bps >= self.ranges[-1].min_up_Bps \
            else self.ranges[0].cut


@dataclass(frozen=True)
class ModelPrior:
    model: str
    version: str
    digest: str
    tables: tuple[PriorTable, ...]
    conditions: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    default_cut: str = "edge"

    def table_for(self, rtt_ms: float | None = None) -> PriorTable:
        """The table whose RTT is closest to ``rtt_ms`` (the first one if None)."""
        if rtt_ms is None:
            return self.tables[0]
        return min(self.tables, key=lambda t: abs(math.log1p(t.rtt_ms) - math.log1p(rtt_ms)))

    def cut_for(self, up_Bps: float, rtt_ms: float | None = None) -> str:
        if not self.tables:
            return self.default_cut
        return self.table_for(rtt_ms).cut_for(up_Bps)


@dataclass(frozen=True)
class PlacementPrior:
    """A loaded ``placement.yaml``."""

    models: Mapping[str, ModelPrior]
    agents: Mapping[str, Mapping[str, str]] = field(default_factory=dict)
    codec: str = "raw"
    constraints: Mapping[str, Any] = field(default_factory=dict)
    created: str = ""

    def cut_for(self, model: str, up_Bps: float, rtt_ms: float | None = None) -> str:
        """The prior's cut for ``model`` at uplink ``up_Bps`` (bytes/s) and ``rtt_ms``.

        Raises:
            KeyError: the model is not in the prior.
        """
        if model not in self.models:
            raise KeyError(f"model {model!r} not in placement prior "
                           f"(has {sorted(self.models)})")
        return self.models[model].cut_for(up_Bps, rtt_ms)

    def agent_cut(self, agent_id: str) -> str | None:
        """The fleet-assigned cut of ``agent_id``, if a fleet tune assigned one."""
        a = self.agents.get(agent_id)
        return None if a is None else a.get("cut")


def bandwidth_ranges(cuts: Sequence[CutProfile], rtt_ms: float, down_up_ratio: float = 1.0,
                     cloud: CloudEstimate = CloudEstimate(),
                     constraints: Constraints = Constraints(), codec: str = "raw",
                     lo_Bps: float = 1e2, hi_Bps: float = 1e11,
                     points: int = 241) -> tuple[BandwidthRange, ...]:
    """Split uplink bandwidth into ranges with one best cut each.

    A log-spaced sweep finds where the winner changes; each change is refined by
    bisection (on log bandwidth) to a relative precision of 1e-6.
    """
    def best(up: float) -> str:
        link = LinkEstimate(up, up * down_up_ratio, rtt_ms)
        return choose(cuts, link, cloud, constraints, codec).cut_id

    grid = [lo_Bps * (hi_Bps / lo_Bps) ** (i / (points - 1)) for i in range(points)]
    winners = [best(u) for u in grid]
    ranges: list[BandwidthRange] = []
    start, cur = 0.0, winners[0]
    for i in range(1, points):
        if winners[i] == cur:
            continue
        a, b = grid[i - 1], grid[i]
        while b / a > 1 + 1e-6:
            m = math.sqrt(a * b)
            if best(m) == cur:
                a = m
            else:
                b = m
        ranges.append(BandwidthRange(start, b, cur))
        start, cur = b, best(b)
    ranges.append(BandwidthRange(start, math.inf, cur))
    # Merge neighbours that a refinement step made equal.
    merged: list[BandwidthRange] = []
    for r in ranges:
        if merged and merged[-1].cut == r.cut:
            merged[-1] = BandwidthRange(merged[-1].min_up_Bps, r.max_up_Bps, r.cut)
        else:
            merged.append(r)
    return tuple(merged)


def build_model_prior(model: str, version: str, digest: str, cuts: Sequence[CutProfile],
                      links: Mapping[str, LinkEstimate], cloud: CloudEstimate = CloudEstimate(),
                      constraints: Constraints = Constraints(),
                      codec: str = "raw") -> ModelPrior:
    """The prior of one model: a bandwidth table and the decision at each named link."""
    tables = []
    conditions: dict[str, dict[str, Any]] = {}
    for name, link in links.items():
        ratio = link.down_Bps / link.up_Bps if link.up_Bps else 1.0
        tables.append(PriorTable(name, link.rtt_ms, ratio,
                                 bandwidth_ranges(cuts, link.rtt_ms, ratio, cloud, constraints,
                                                  codec)))
        d = choose(cuts, link, cloud, constraints, codec)
        runner = d.ranking[1] if len(d.ranking) > 1 else None
        conditions[name] = {
            "up_Bps": link.up_Bps, "down_Bps": link.down_Bps, "rtt_ms": link.rtt_ms,
            "cut": d.cut_id, "predicted_ms": round(d.predicted.total_ms, 4),
            "runner_up": runner.cut_id if runner else None,
            "margin_ms": round(d.margin_ms, 4) if runner else None,
        }
    default = next(iter(conditions.values()))["cut"] if conditions else "edge"
    return ModelPrior(model, version, digest, tuple(tables), conditions, default)


def _num(x: float) -> float | None:
    return None if math.isinf(x) else float(x)


def dump_prior(prior: PlacementPrior, path: Path | str | None = None) -> str:
    """Serialise ``prior`` (and write it to ``path`` if given); returns the YAML text."""
    doc: dict[str, Any] = {
        "format": FORMAT,
        "created": prior.created,
        "codec": prior.codec,
        "constraints": dict(prior.constraints),
        "models": {
            name: {
                "version": m.version,
                "digest": m.digest,
                "default_cut": m.default_cut,
                "tables": [
                    {"condition": t.condition, "rtt_ms": float(t.rtt_ms),
                     "down_up_ratio": float(t.down_up_ratio),
                     "ranges": [{"min_up_Bps": float(r.min_up_Bps),
                                 "max_up_Bps": _num(r.max_up_Bps), "cut": r.cut}
                                for r in t.ranges]}
                    for t in m.tables
                ],
                "conditions": {k: dict(v) for k, v in m.conditions.items()},
            }
            for name, m in prior.models.items()
        },
    }
    if prior.agents:
        doc["agents"] = {k: dict(v) for k, v in prior.agents.items()}
    text = yaml.safe_dump(doc, sort_keys=False)
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(text)
    return text


def load_prior(path: Path | str) -> PlacementPrior:
    """Load and validate a ``placement.yaml``.

    Raises:
        ValueError: unreadable, wrong format version, or malformed (names the field).
    """
    path = Path(path)
    try:
        doc = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as e:
        raise ValueError(f"cannot read placement prior {path}: {e}") from e
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise ValueError(f"{path} is not a placement prior of format {FORMAT} "
                         "(write one with `tiersplit place tune`)")
    try:
        models = {}
        for name, m in (doc.get("models") or {}).items():
            tables = []
            for t in m.get("tables") or []:
                ranges = tuple(
                    BandwidthRange(float(r["min_up_Bps"]),
                                   math.inf if r.get("max_up_Bps") is None
                                   else float(r["max_up_Bps"]), str(r["cut"]))
                    for r in t["ranges"])
                if not ranges:
                    raise ValueError(f"model {name!r} table {t.get('condition')!r} is empty")
                for a, b in itertools.pairwise(ranges):
                    if a.max_up_Bps != b.min_up_Bps:
                        raise ValueError(f"model {name!r}: ranges are not contiguous at "
                                         f"{a.max_up_Bps}")
                tables.append(PriorTable(str(t.get("condition", "")), float(t["rtt_ms"]),
                                         float(t.get("down_up_ratio", 1.0)), ranges))
            models[str(name)] = ModelPrior(str(name), str(m.get("version", "")),
                                           str(m.get("digest", "")), tuple(tables),
                                           m.get("conditions") or {},
                                           str(m.get("default_cut", "edge")))
        agents = {str(k): {kk: str(vv) for kk, vv in v.items()}
                  for k, v in (doc.get("agents") or {}).items()}
    except (KeyError, TypeError, AttributeError) as e:
        raise ValueError(f"malformed placement prior {path}: missing or bad {e}") from e
    return PlacementPrior(models, agents, str(doc.get("codec", "raw")),
                          doc.get("constraints") or {}, str(doc.get("created", "")))
