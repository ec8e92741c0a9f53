"""Many agents, one cloud: choose every agent's cut jointly, with cloud queueing.

Per-agent placement (Neurosurgeon, DADS, our runtime policy) treats the cloud's queue as
an exogenous number. When a fleet shares one cloud tier, each agent's choice *is* the
cloud's load: if everyone offloads, batches grow, the queue grows and the cloud ends up
slower than keeping layers local. This module predicts the cloud's utilisation and
queueing from the cuts the agents choose and searches the joint assignment.

Queueing model (documented approximation, deliberately simple and monotone):

* the batcher groups requests; at offered load ``Λ`` it runs the smallest batch ``b``
  (1..max_batch) that keeps utilisation ``ρ(b) = Σ λ_i·tail_i(b)/b / workers`` under
  ``target_utilisation`` (batching trades per-request latency for throughput only when
  it must). If even ``max_batch`` gives ``ρ ≥ 1`` the cloud is saturated;
* batches are served by ``workers`` servers with deterministic service time
  ``S = Σ λ_i·tail_i(b) / Λ``; queue wait is M/D/c, approximated as half the M/M/c
  (Erlang C) wait (exact for c = 1: Pollaczek-Khinchine);
* waiting for a batch to fill adds ``(b-1)/(2Λ)``, capped by ``max_queue_delay_ms``;
* each agent's own device is an M/D/1 server for its edge work (head + encode), so
  "everything local" is not free at high request rates either;
* p95 of a wait uses the exponential tail of M/M/c, ``ln(C/0.05)·S/(c-a)``, halved.

Search: coordinate descent (best response on the *fleet* objective). Starting from
(a) each agent's stand-alone best cut and (b) every agent at its deepest admitted cut,
visit agents in turn and give each the cut that minimises the fleet objective with the
others fixed; stop when a full pass changes nothing. The objective is compared as
``(overload, value)`` so a start that saturates the cloud is first driven to stability.
Each pass cannot increase the objective, so the search terminates; it finds a local
optimum of the joint problem (exact for one agent).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from placement.costmodel import (
    CloudEstimate,
    Constraints,
    CutProfile,
    LinkEstimate,
    predict,
)
from placement.profiles import (
    CloudProfile,
    EdgeProfile,
    cut_profiles,
    link_conditions,
    load_profile,
)

__all__ = [
    "CloudCapacity",
    "CloudLoad",
    "FleetAgent",
    "FleetPlan",
    "FleetSpec",
    "cloud_load",
    "load_fleet_spec",
    "optimize_fleet",
]

Objective = Literal["mean", "p95"]


@dataclass(frozen=True)
class FleetAgent:
    """One edge agent of the fleet.

    Attributes:
        agent_id: unique id.
        cuts: the agent's cut profiles (its own device's head times, the shared cloud's
            tail curves); must include "edge" for the agent to be able to stay local.
        link: the agent's link to the cloud.
        rate_rps: requests per second the agent serves.
        model: model name (several models may share the cloud).
        constraints: the agent's hard limits (privacy floor, memory, accuracy...).
        codec: wire codec the agent uses.
    """

    agent_id: str
    cuts: tuple[CutProfile, ...]
    link: LinkEstimate
    rate_rps: float
    model: str = "model"
    constraints: Constraints = field(default_factory=Constraints)
    codec: str = "raw"

    def admitted(self) -> list[CutProfile]:
        return [c for c in self.cuts if self.constraints.admits(c)]


@dataclass(frozen=True, slots=True)
class CloudCapacity:
    """The cloud's serving capacity.

    Attributes:
        workers: backend instances serving batches in parallel.
        max_batch: largest batch the batcher forms.
        max_queue_delay_ms: the batcher's wait for a batch to fill.
        target_utilisation: the batcher grows batches only to stay under this.
        speed: multiplies throughput (0.5 = a cloud half as fast as profiled).
    """

    workers: int = 1
    max_batch: int = 8
    max_queue_delay_ms: float = 2.0
    target_utilisation: float = 0.8
    speed: float = 1.0

    def __post_init__(self) -> None:
        if self.workers < 1 or self.max_batch < 1 or self.speed <= 0:
            raise ValueError(f"invalid cloud capacity {self!r}")


@dataclass(frozen=True, slots=True)
class CloudLoad:
    """Predicted cloud state for an assignment."""

    offered_rps: float
    utilisation: float
    batch: float
    queue_ms: float
    queue_p95_ms: float

    @property
    def saturated(self) -> bool:
        return self.utilisation >= 1.0

    def estimate(self) -> CloudEstimate:
        return CloudEstimate(queue_ms=self.queue_ms, batch=self.batch)


@dataclass(frozen=True)
class FleetPlan:
    """The chosen cut of every agent and the predicted outcome."""

    cuts: Mapping[str, str]
    mean_ms: Mapping[str, float]
    p95_ms: Mapping[str, float]
    fleet_mean_ms: float
    fleet_p95_ms: float
    load: CloudLoad
    objective: Objective
    passes: int
    notes: tuple[str, ...] = field(default_factory=tuple)

    @property
    def value(self) -> float:
        return self.fleet_mean_ms if self.objective == "mean" else self.fleet_p95_ms


def _erlang_c(c: int, a: float) -> float:
    """Probability of waiting in M/M/c with offered load ``a`` (< c) erlangs."""
    term, total = 1.0, 1.0
    for k in range(1, c):
        term *= a / k
        total += term
    last = term * a / c / (1 - a / c)
    return last / (total + last)


def _tail(cut: CutProfile, batch: float, speed: float) -> float:
    return cut.tail_at(batch) / speed


def cloud_load(load: Sequence[tuple[float, CutProfile]], cap: CloudCapacity) -> CloudLoad:
    """Predicted utilisation, batch size and queueing for ``(rate_rps, cut)`` streams.

    Streams whose cut is "edge" put no load on the cloud.
    """
    streams = [(r, c) for r, c in load if not c.is_edge and r > 0]
    lam = sum(r for r, _ in streams)
    if lam <= 0:
        return CloudLoad(0.0, 0.0, 1.0, 0.0, 0.0)

    def rho(b: float) -> float:
        return sum(r * _tail(c, b, cap.speed) / b for r, c in streams) / 1e3 / cap.workers

    b = 1.0
    if rho(1.0) > cap.target_utilisation:
        if rho(cap.max_batch) > cap.target_utilisation:
            b = float(cap.max_batch)
        else:
            lo, hi = 1.0, float(cap.max_batch)
            for _ in range(50):
                mid = (lo + hi) / 2
                lo, hi = (lo, mid) if rho(mid) <= cap.target_utilisation else (mid, hi)
            b = hi
    util = rho(b)
    if util >= 1.0:
        return CloudLoad(lam, util, b, math.inf, math.inf)
    service = sum(r * _tail(c, b, cap.speed) for r, c in streams) / lam  # ms per batch
    a = (lam / b) * service / 1e3  # erlangs of batches
    c = cap.workers
    pw = _erlang_c(c, a)
    wq = pw * service / (c - a) / 2
    wq_p95 = max(0.0, math.log(pw / 0.05)) * service / (c - a) / 2 if pw > 0.05 else 0.0
    fill = min(cap.max_queue_delay_ms, (b - 1) / (2 * lam) * 1e3)
    fill_max = min(cap.max_queue_delay_ms, (b - 1) / lam * 1e3)
    return CloudLoad(lam, util, b, wq + fill, max(wq_p95, wq) + fill_max)


def _scaled(cut: CutProfile, speed: float) -> CutProfile:
    if speed == 1.0 or cut.is_edge:
        return cut
    return dataclasses.replace(cut, tail_ms={b: t / speed for b, t in cut.tail_ms.items()})


def _agent_latency(agent: FleetAgent, cut: CutProfile, load: CloudLoad,
                   cap: CloudCapacity) -> tuple[float, float, float]:
    """(mean ms, p95 ms, edge utilisation) of one agent on ``cut``."""
    p = predict(_scaled(cut, cap.speed), agent.link, load.estimate(), agent.codec)
    edge_work = cut.head_ms + cut.encode_ms.get(agent.codec, 0.0)
    rho_e = agent.rate_rps * edge_work / 1e3
    if rho_e >= 1.0:
        return math.inf, math.inf, rho_e
    wait_e = rho_e * edge_work / (2 * (1 - rho_e))
    tail95 = math.log(rho_e / 0.05) * edge_work / (1 - rho_e) / 2 if rho_e > 0.05 else 0.0
    wait_e95 = max(wait_e, tail95)
    cloud_extra = 0.0 if cut.is_edge else load.queue_p95_ms - load.queue_ms
    return p.total_ms + wait_e, p.total_ms + wait_e95 + cloud_extra, rho_e


def _weighted_quantile(values: Sequence[float], weights: Sequence[float], q: float) -> float:
    pairs = sorted(zip(values, weights, strict=True))
    total = sum(weights)
    acc = 0.0
    for v, w in pairs:
        acc += w
        if acc >= q * total - 1e-12:
            return v
    return pairs[-1][0]


def _evaluate(agents: Sequence[FleetAgent], choice: Sequence[CutProfile], cap: CloudCapacity,
              objective: Objective) -> tuple[tuple[float, float], FleetPlan]:
    load = cloud_load([(a.rate_rps, c) for a, c in zip(agents, choice, strict=True)], cap)
    means, p95s, overload = {}, {}, max(0.0, load.utilisation - 0.999)
    for a, c in zip(agents, choice, strict=True):
        m, p, rho_e = _agent_latency(a, c, load, cap)
        overload += max(0.0, rho_e - 0.999)
        means[a.agent_id], p95s[a.agent_id] = m, p
    rates = [max(a.rate_rps, 1e-9) for a in agents]
    ids = [a.agent_id for a in agents]
    if overload > 0:
        fmean = fp95 = math.inf
    else:
        fmean = sum(means[i] * r for i, r in zip(ids, rates, strict=True)) / sum(rates)
        fp95 = _weighted_quantile([p95s[i] for i in ids], rates, 0.95)
    plan = FleetPlan({a.agent_id: c.cut_id for a, c in zip(agents, choice, strict=True)},
                     means, p95s, fmean, fp95, load, objective, 0)
    return (overload, plan.value), plan


def optimize_fleet(agents: Sequence[FleetAgent], capacity: CloudCapacity,
                   objective: Objective = "mean", max_passes: int = 50) -> FleetPlan:
    """Per-agent cuts minimising the fleet's mean or p95 latency (see module doc).

    Raises:
        ValueError: an agent has no admitted cut, ids repeat, or the objective is unknown.
    """
    if objective not in ("mean", "p95"):
        raise ValueError(f"objective must be 'mean' or 'p95', not {objective!r}")
    ids = [a.agent_id for a in agents]
    if len(set(ids)) != len(ids):
        raise ValueError("agent ids must be unique")
    options: list[list[CutProfile]] = []
    for a in agents:
        adm = a.admitted()
        if not adm:
            raise ValueError(f"agent {a.agent_id!r}: no cut satisfies {a.constraints!r}")
        options.append(adm)
    if not agents:
        return FleetPlan({}, {}, {}, 0.0, 0.0, CloudLoad(0, 0, 1, 0, 0), objective, 0)

    idle = CloudLoad(0.0, 0.0, 1.0, 0.0, 0.0)
    selfish = [min(opts, key=lambda c, a=a: _agent_latency(a, c, idle, capacity)[0])
               for a, opts in zip(agents, options, strict=True)]
    deepest = [max(opts, key=lambda c: (c.is_edge, c.depth)) for opts in options]

    best_key: tuple[float, float] | None = None
    best_plan: FleetPlan | None = None
    for start in (selfish, deepest):
        choice = list(start)
        key, plan = _evaluate(agents, choice, capacity, objective)
        passes = 0
        for passes in range(1, max_passes + 1):  # noqa: B007 - reported in the plan
            changed = False
            for i, opts in enumerate(options):
                for c in opts:
                    if c.cut_id == choice[i].cut_id:
                        continue
                    trial = [*choice[:i], c, *choice[i + 1:]]
                    k, p = _evaluate(agents, trial, capacity, objective)
                    if k < key and (key[0] > 0 or k[1] < key[1] - 1e-9):
                        key, plan, choice, changed = k, p, trial, True
            if not changed:
                break
        plan = dataclasses.replace(plan, passes=passes)
        if best_key is None or key < best_key:
            best_key, best_plan = key, plan
    assert best_plan is not None and best_key is not None
    if best_key[0] > 0:
        best_plan = dataclasses.replace(
            best_plan, notes=("no assignment keeps the cloud and every device below "
                              "saturation; the plan minimises the overload",))
    return best_plan


@dataclass(frozen=True)
class FleetSpec:
    """A parsed ``fleet.yaml`` (see ``configs/fleet.yaml``), profiles not yet loaded.

    Attributes:
        objective: "mean" or "p95".
        capacity: the cloud's capacity.
        agents: raw agent entries (``id``, ``rate_rps``, ``link``, optional ``count``,
            ``edge_profile``, ``edge_speed``, ``model``, ``constraints``).
        cloud_profile: path of the shared cloud profile (None: use the CLI's).
        base: directory relative paths are resolved against.
    """

    objective: Objective
    capacity: CloudCapacity
    agents: tuple[Mapping[str, Any], ...]
    cloud_profile: str | None = None
    base: Path = Path(".")

    def build(self, links: Mapping[str, LinkEstimate], edge: EdgeProfile | None = None,
              cloud: CloudProfile | None = None,
              constraints: Constraints | None = None) -> list[FleetAgent]:
        """Resolve profiles and links into :class:`FleetAgent`s (``count`` expands).

        Raises:
            ValueError: an unknown link name, or no edge/cloud profile for an agent.
        """
        if self.cloud_profile:
            loaded = load_profile(self.base / self.cloud_profile)
            if not isinstance(loaded, CloudProfile):
                raise ValueError(f"{self.cloud_profile} is not a cloud profile")
            cloud = loaded
        out: list[FleetAgent] = []
        for a in self.agents:
            prof = edge
            if a.get("edge_profile"):
                loaded = load_profile(self.base / str(a["edge_profile"]))
                if not isinstance(loaded, EdgeProfile):
                    raise ValueError(f"{a['edge_profile']} is not an edge profile")
                prof = loaded
            if prof is None:
                raise ValueError(f"fleet agent {a.get('id')!r} has no edge_profile and none "
                                 "was given on the command line")
            link = a.get("link")
            if isinstance(link, Mapping):
                est = link_conditions({"x": link})["x"]
            elif str(link) in links:
                est = links[str(link)]
            else:
                raise ValueError(f"fleet agent {a.get('id')!r}: unknown link {link!r} "
                                 f"(known: {sorted(links)})")
            cons = constraints or Constraints()
            if a.get("constraints"):
                c = dict(a["constraints"])
                cons = Constraints(
                    privacy_floor=int(c.get("privacy_floor", cons.privacy_floor)),
                    accuracy_floor=float(c.get("accuracy_floor", cons.accuracy_floor)),
                    edge_memory_mb=float(c.get("edge_memory_mb", cons.edge_memory_mb)))
            cuts = tuple(cut_profiles(prof, cloud,
                                      edge_speed=float(a.get("edge_speed", 1.0))))
            count = int(a.get("count", 1))
            for i in range(count):
                aid = str(a["id"]) if count == 1 else f"{a['id']}-{i}"
                out.append(FleetAgent(aid, cuts, est, float(a.get("rate_rps", 1.0)),
                                      str(a.get("model", prof.model)), cons,
                                      str(a.get("codec", "raw"))))
        return out


def load_fleet_spec(path: Path | str) -> FleetSpec:
    """Parse a ``fleet.yaml``.

    Raises:
        ValueError: unreadable or malformed (names the field).
    """
    path = Path(path)
    try:
        doc = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as e:
        raise ValueError(f"cannot read fleet {path}: {e}") from e
    if not isinstance(doc, dict) or not isinstance(doc.get("agents"), list):
        raise ValueError(f"fleet {path} needs an 'agents' list")
    c = doc.get("cloud") or {}
    try:
        cap = CloudCapacity(workers=int(c.get("workers", 1)),
                            max_batch=int(c.get("max_batch", 8)),
                            max_queue_delay_ms=float(c.get("max_queue_delay_ms", 2.0)),
                            target_utilisation=float(c.get("target_utilisation", 0.8)),
                            speed=float(c.get("speed", 1.0)))
    except (TypeError, ValueError) as e:
        raise ValueError(f"fleet {path}: bad cloud section: {e}") from e
    for a in doc["agents"]:
        if not isinstance(a, dict) or "id" not in a or "link" not in a:
            raise ValueError(f"fleet {path}: each agent needs 'id' and 'link', got {a!r}")
    objective = doc.get("objective", "mean")
    if objective not in ("mean", "p95"):
        raise ValueError(f"fleet {path}: objective must be mean or p95")
    return FleetSpec(objective, cap, tuple(doc["agents"]), c.get("profile"), path.parent)
