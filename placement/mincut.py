"""Latency-optimal partition of a DAG over *all* valid cuts (the DADS construction).

The candidate cuts in a bundle are a short list picked offline; for branchy models the
best split may cross several tensors at places the list never considered. Following
DADS (Hu et al., INFOCOM 2019) we turn "which ops run on the edge" into an s-t minimum
cut:

* source ``s`` = the edge, sink ``t`` = the cloud; every op ``v`` gets ``s -> v`` with
  its cloud time (paid when ``v`` lands on the cloud side) and ``v -> t`` with its edge
  time (paid when it stays on the edge);
* every tensor ``x`` produced by ``u`` gets an auxiliary vertex ``a_x``: ``u -> a_x``
  carries the transfer time of ``x`` and ``a_x -> w`` (each consumer ``w``) is infinite,
  so a tensor read by several cloud ops is paid once, not once per consumer;
* infinite reverse edges ``w -> u`` keep the cut *closed*: no cloud op may feed an edge
  op (the edge never waits for the cloud mid-graph);
* graph inputs come from a virtual op pinned to the edge (raw data lives on the device);
  sending them is allowed only when the privacy floor is 0;
* the reply (model outputs computed in the cloud) is added to the cloud time of their
  producer; the fixed RTT and cloud queueing are paid by every split but not by
  "all on the edge", so they are added after the cut and compared to the all-edge plan.

The max-flow is Dinic's algorithm in pure Python: model graphs have at most a few
thousand ops and the edge must not need networkx. Memory limits are not a cut
constraint; they are met by Lagrangian relaxation (raise the price of edge memory until
the plan fits), which is a heuristic: it returns a feasible, not always optimal, plan.
"""

from __future__ import annotations

import itertools
import math
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from placement.costmodel import CloudEstimate, LinkEstimate

__all__ = [
    "Dag",
    "DagConstraints",
    "DagNode",
    "DagPlan",
    "brute_force_plan",
    "chain_dag",
    "evaluate_plan",
    "min_cut_plan",
]

INF = math.inf
_INPUT = "<input>"  # virtual op producing the graph inputs, pinned to the edge


@dataclass(frozen=True, slots=True)
class DagNode:
    """One op with its measured or estimated cost on each tier.

    Attributes:
        name: unique op name.
        inputs / outputs: tensor names it reads / writes (weights left out).
        edge_ms: time of the op on the edge (int8 head runtime).
        cloud_ms: time of the op in the cloud (per request, at the expected batch).
        memory_mb: memory the op needs when it runs on the edge (weights + workspace).
    """

    name: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    edge_ms: float
    cloud_ms: float
    memory_mb: float = 0.0


@dataclass(frozen=True)
class Dag:
    """A model graph reduced to what placement needs. ``nodes`` are in topological order.

    ``tensor_bytes`` gives per-sample bytes on the wire for every activation that may
    cross (already in the codec that will be used); tensors missing from it are taken as
    free (constants folded into both sides).
    """

    nodes: tuple[DagNode, ...]
    tensor_bytes: Mapping[str, float]
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]

    def __post_init__(self) -> None:
        names = [n.name for n in self.nodes]
        if len(set(names)) != len(names):
            raise ValueError("DAG node names must be unique")
        produced: set[str] = set(self.inputs)
        prod = self._producer_map()
        for n in self.nodes:
            for x in n.inputs:
                if x in prod and x not in produced:
                    raise ValueError(f"nodes are not in topological order: {n.name!r} "
                                     f"reads {x!r} before it is produced")
            produced.update(n.outputs)

    def _producer_map(self) -> dict[str, str]:
        return {x: n.name for n in self.nodes for x in n.outputs}

    @property
    def producers(self) -> dict[str, str]:
        """tensor -> producing op (graph inputs map to the virtual input op)."""
        m = {x: _INPUT for x in self.inputs}
        m.update(self._producer_map())
        return m

    @property
    def consumers(self) -> dict[str, list[str]]:
        m: dict[str, list[str]] = {}
        for n in self.nodes:
            for x in dict.fromkeys(n.inputs):
                m.setdefault(x, []).append(n.name)
        return m

    def predecessors(self) -> dict[str, set[str]]:
        prod = self._producer_map()
        return {n.name: {prod[x] for x in n.inputs if x in prod} for n in self.nodes}


@dataclass(frozen=True, slots=True)
class DagConstraints:
    """Hard limits on a DAG plan.

    Attributes:
        privacy_floor: the first ``privacy_floor`` ops (topological order) must run on
            the edge and, when it is at least 1, no graph input may be sent (every op
            reading one stays local); 0 allows sending the raw inputs.
        edge_memory_mb: total ``memory_mb`` of edge ops must not exceed this (0 = none).
        force_edge / force_cloud: op names pinned to a tier (e.g. unsupported int8 ops).
    """

    privacy_floor: int = 1
    edge_memory_mb: float = 0.0
    force_edge: frozenset[str] = frozenset()
    force_cloud: frozenset[str] = frozenset()


@dataclass(frozen=True)
class DagPlan:
    """A placement of every op. ``crossing`` are the tensors sent edge -> cloud."""

    edge_nodes: frozenset[str]
    cloud_nodes: frozenset[str]
    crossing: frozenset[str]
    total_ms: float
    edge_ms: float
    network_ms: float
    cloud_ms: float
    optimal: bool = True
    notes: tuple[str, ...] = field(default_factory=tuple)

    @property
    def is_edge(self) -> bool:
        return not self.cloud_nodes

    @property
    def is_cloud(self) -> bool:
        return not self.edge_nodes

    @property
    def depth(self) -> int:
        return len(self.edge_nodes)


def _transfer_ms(nbytes: float, bps: float) -> float:
    return nbytes / bps * 1e3 if nbytes else 0.0


def evaluate_plan(dag: Dag, edge_nodes: Iterable[str], link: LinkEstimate,
                  cloud: CloudEstimate = CloudEstimate()) -> DagPlan:
    """Latency of placing ``edge_nodes`` on the edge and the rest in the cloud.

    Raises:
        ValueError: the plan is not closed (a cloud op feeds an edge op).
    """
    edge = frozenset(edge_nodes)
    names = {n.name for n in dag.nodes}
    if not edge <= names:
        raise ValueError(f"unknown ops in plan: {sorted(edge - names)[:5]}")
    cloud_set = frozenset(names - edge)
    for n, preds in dag.predecessors().items():
        if n in edge and preds & cloud_set:
            raise ValueError(f"plan not closed: {n!r} on the edge reads from the cloud")
    edge_ms = sum(n.edge_ms for n in dag.nodes if n.name in edge)
    if not cloud_set:
        return DagPlan(edge, cloud_set, frozenset(), edge_ms, edge_ms, 0.0, 0.0)
    prod = dag.producers
    cons = dag.consumers
    crossing = frozenset(
        x for x, ws in cons.items()
        if x in prod and (prod[x] == _INPUT or prod[x] in edge) and any(w in cloud_set
                                                                         for w in ws))
    up = sum(dag.tensor_bytes.get(x, 0.0) for x in crossing)
    down = sum(dag.tensor_bytes.get(x, 0.0) for x in dag.outputs if prod.get(x) in cloud_set)
    network = link.rtt_ms + _transfer_ms(up, link.up_Bps) + _transfer_ms(down, link.down_Bps)
    cloud_ms = cloud.queue_ms + sum(n.cloud_ms for n in dag.nodes if n.name in cloud_set)
    return DagPlan(edge, cloud_set, crossing, edge_ms + network + cloud_ms, edge_ms, network,
                   cloud_ms)


def _feasible(dag: Dag, plan_edge: frozenset[str], c: DagConstraints) -> bool:
    order = [n.name for n in dag.nodes]
    if not set(order[: c.privacy_floor]) <= plan_edge:
        return False
    if c.privacy_floor > 0:  # raw inputs never leave: every reader stays on the edge
        readers = {n.name for n in dag.nodes if set(n.inputs) & set(dag.inputs)}
        if not readers <= plan_edge:
            return False
    if c.force_edge - plan_edge or c.force_cloud & plan_edge:
        return False
    if c.edge_memory_mb:
        mem = sum(n.memory_mb for n in dag.nodes if n.name in plan_edge)
        if mem > c.edge_memory_mb:
            return False
    return True


def brute_force_plan(dag: Dag, link: LinkEstimate, cloud: CloudEstimate = CloudEstimate(),
                     constraints: DagConstraints = DagConstraints(),
                     max_nodes: int = 18) -> DagPlan:
    """Best plan by enumerating every closed edge set: the reference for small graphs.

    Raises:
        ValueError: more than ``max_nodes`` ops, or no plan meets the constraints.
    """
    if len(dag.nodes) > max_nodes:
        raise ValueError(f"{len(dag.nodes)} ops: brute force is for <= {max_nodes}")
    preds = dag.predecessors()
    names = [n.name for n in dag.nodes]
    best: DagPlan | None = None
    for bits in itertools.product((False, True), repeat=len(names)):
        edge = frozenset(n for n, b in zip(names, bits, strict=True) if b)
        if any(n in edge and not preds[n] <= edge for n in names):
            continue
        if not _feasible(dag, edge, constraints):
            continue
        plan = evaluate_plan(dag, edge, link, cloud)
        if best is None or plan.total_ms < best.total_ms - 1e-12:
            best = plan
    if best is None:
        raise ValueError(f"no plan satisfies {constraints!r}")
    return best


class _FlowGraph:
    """Dinic's max-flow on an adjacency list with float capacities."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.adj: list[list[int]] = [[] for _ in range(n)]
        self.to: list[int] = []
        self.cap: list[float] = []

    def add(self, u: int, v: int, c: float) -> None:
        if c <= 0:
            return
        self.adj[u].append(len(self.to))
        self.to.append(v)
        self.cap.append(c)
        self.adj[v].append(len(self.to))
        self.to.append(u)
        self.cap.append(0.0)

    def max_flow(self, s: int, t: int) -> float:
        flow = 0.0
        eps = 1e-12
        while True:
            level = [-1] * self.n
            level[s] = 0
            q = deque([s])
            while q:
                u = q.popleft()
                for e in self.adj[u]:
                    if self.cap[e] > eps and level[self.to[e]] < 0:
                        level[self.to[e]] = level[u] + 1
                        q.append(self.to[e])
            if level[t] < 0:
                return flow
            it = [0] * self.n
            while True:
                pushed = self._push(s, t, INF, level, it, eps)
                if pushed <= eps:
                    break
                if pushed == INF:
                    return INF
                flow += pushed

    def _push(self, s: int, t: int, limit: float, level: list[int], it: list[int],
              eps: float) -> float:
        # Iterative DFS along the level graph; returns the bottleneck pushed.
        path: list[int] = []
        u = s
        while True:
            if u == t:
                f = min([limit, *(self.cap[e] for e in path)])
                for e in path:
                    self.cap[e] -= f
                    self.cap[e ^ 1] += f
                return f
            advanced = False
            while it[u] < len(self.adj[u]):
                e = self.adj[u][it[u]]
                v = self.to[e]
                if self.cap[e] > eps and level[v] == level[u] + 1:
                    path.append(e)
                    u = v
                    advanced = True
                    break
                it[u] += 1
            if not advanced:
                if u == s:
                    return 0.0
                level[u] = -1  # dead end: prune
                e = path.pop()
                u = self.to[e ^ 1]
                it[u] += 1

    def source_side(self, s: int) -> set[int]:
        seen = {s}
        q = deque([s])
        while q:
            u = q.popleft()
            for e in self.adj[u]:
                v = self.to[e]
                if self.cap[e] > 1e-9 and v not in seen:
                    seen.add(v)
                    q.append(v)
        return seen


def _cut_once(dag: Dag, link: LinkEstimate, constraints: DagConstraints,
              mem_price: float) -> frozenset[str]:
    names = [n.name for n in dag.nodes]
    idx = {n: i + 2 for i, n in enumerate(names)}  # 0 = s (edge), 1 = t (cloud)
    idx[_INPUT] = len(idx) + 2
    prod = dag.producers
    cons = dag.consumers
    tensors = [x for x in cons if x in prod]
    aux = {x: len(idx) + 2 + i for i, x in enumerate(tensors)}
    g = _FlowGraph(len(idx) + 2 + len(aux))
    s, t = 0, 1
    # A very large finite capacity instead of inf keeps the arithmetic exact enough and
    # lets a pinned-but-infeasible instance show up as a huge (not infinite) flow.
    big = 1e12
    g.add(s, idx[_INPUT], big)
    forced_edge = set(names[: constraints.privacy_floor]) | set(constraints.force_edge)
    out_down = {x: _transfer_ms(dag.tensor_bytes.get(x, 0.0), link.down_Bps)
                for x in dag.outputs}
    for n in dag.nodes:
        cloud_cost = n.cloud_ms + sum(out_down.get(x, 0.0) for x in n.outputs)
        g.add(s, idx[n.name], cloud_cost)
        g.add(idx[n.name], t, n.edge_ms + mem_price * n.memory_mb)
        if n.name in forced_edge:
            g.add(s, idx[n.name], big)
        if n.name in constraints.force_cloud:
            g.add(idx[n.name], t, big)
    for x in tensors:
        u = prod[x]
        if u == _INPUT and constraints.privacy_floor > 0:
            cost = big
        else:
            cost = _transfer_ms(dag.tensor_bytes.get(x, 0.0), link.up_Bps)
        g.add(idx[u], aux[x], cost)
        for w in cons[x]:
            g.add(aux[x], idx[w], big)
            g.add(idx[w], idx[u], big)  # closure: cloud u may not feed edge w
    g.max_flow(s, t)
    side = g.source_side(s)
    return frozenset(n for n in names if idx[n] in side)


def min_cut_plan(dag: Dag, link: LinkEstimate, cloud: CloudEstimate = CloudEstimate(),
                 constraints: DagConstraints = DagConstraints()) -> DagPlan:
    """The latency-optimal closed plan (edge ops, crossing tensors) under ``link``.

    Optimal when ``constraints.edge_memory_mb`` is 0; with a memory limit the result is
    the best plan found by pricing edge memory (``optimal=False`` when the price bound).

    Raises:
        ValueError: no plan meets the constraints (e.g. pinned ops already exceed memory).
    """
    if not cloud.available:
        edge = frozenset(n.name for n in dag.nodes)
        if not _feasible(dag, edge, constraints):
            raise ValueError("cloud unavailable and the whole model does not fit the edge "
                             f"under {constraints!r}")
        return evaluate_plan(dag, edge, link, cloud)
    notes: list[str] = []
    split = _cut_once(dag, link, constraints, 0.0)
    optimal = True
    if not _feasible(dag, split, constraints):
        if not constraints.edge_memory_mb:
            raise ValueError(f"no plan satisfies {constraints!r}: pinned ops conflict")
        # Lagrangian relaxation on edge memory: bisect the price per MB.
        lo, hi = 0.0, 1.0
        while not _feasible(dag, _cut_once(dag, link, constraints, hi), constraints):
            hi *= 4
            if hi > 1e9:
                raise ValueError(f"no plan satisfies {constraints!r}: the pinned edge ops "
                                 "alone exceed the memory limit")
        for _ in range(40):
            mid = (lo + hi) / 2
            if _feasible(dag, _cut_once(dag, link, constraints, mid), constraints):
                hi = mid
            else:
                lo = mid
        split = _cut_once(dag, link, constraints, hi)
        optimal = False
        notes.append(f"edge memory priced at {hi:.4g} ms/MB to fit {constraints.edge_memory_mb}"
                     " MB")
    best = evaluate_plan(dag, split, link, cloud)
    all_edge = frozenset(n.name for n in dag.nodes)
    if best.cloud_nodes and _feasible(dag, all_edge, constraints):
        local = evaluate_plan(dag, all_edge, link, cloud)
        if local.total_ms <= best.total_ms:
            best = local
    return DagPlan(best.edge_nodes, best.cloud_nodes, best.crossing, best.total_ms,
                   best.edge_ms, best.network_ms, best.cloud_ms, optimal, tuple(notes))


def chain_dag(names: Sequence[str], edge_ms: Sequence[float], cloud_ms: Sequence[float],
              out_bytes: Sequence[float], input_bytes: float) -> Dag:
    """A chain ``x -> op0 -> op1 -> ...`` (helper for tests and chain-only models)."""
    nodes = []
    prev = "input"
    tb: dict[str, float] = {"input": input_bytes}
    for i, n in enumerate(names):
        out = f"{n}:out"
        nodes.append(DagNode(n, (prev,), (out,), edge_ms[i], cloud_ms[i]))
        tb[out] = out_bytes[i]
        prev = out
    return Dag(tuple(nodes), tb, ("input",), (prev,))
