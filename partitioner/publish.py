"""Use the DADS min-cut to add a better candidate cut to a bundle (a new version).

For each link condition the min-cut over all closed cuts of the graph is compared with
the best kept candidate *under the same per-node model* (so the comparison is not skewed
by codec overheads the node model leaves out). When a min-cut beats every kept cut by at
least ``min_gain`` and crosses a tensor set no kept cut has, the bundle is re-partitioned
from its own ``full.onnx`` with those sets as ``extra_cuts`` and published as a new
version: bundles are immutable, and a new digest tells agents and cloud the cut list
changed. The new cut is quantized and accuracy-checked like any other, so the accuracy
floor applies to it through the manifest as usual.

onnx, the graph analysis and the partitioner are imported inside the function: the edge
imports :mod:`placement` and must not pay for them.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from placement.costmodel import CloudEstimate, LinkEstimate
from placement.mincut import DagConstraints, evaluate_plan, min_cut_plan
from placement.profiles import CloudProfile, EdgeProfile, cut_profiles

log = logging.getLogger(__name__)

__all__ = ["MinCutReport", "MinCutRow", "propose_and_publish"]


@dataclass(frozen=True)
class MinCutRow:
    """One link condition: best kept candidate vs the min-cut, same node model."""

    link: str
    kept_cut: str
    kept_ms: float
    mincut_ms: float
    crossing: tuple[str, ...]
    is_new: bool

    @property
    def gain(self) -> float:
        return (self.kept_ms - self.mincut_ms) / self.kept_ms if self.kept_ms > 0 else 0.0


@dataclass(frozen=True)
class MinCutReport:
    rows: tuple[MinCutRow, ...]
    proposals: tuple[tuple[str, ...], ...]
    published: Path | None = None
    new_cut_ids: tuple[str, ...] = field(default_factory=tuple)
    reason: str = ""


def propose_and_publish(bundle: Any, edge: EdgeProfile, cloud: CloudProfile | None,
                        links: Mapping[str, LinkEstimate], *, codec: str = "raw",
                        privacy_floor: int = 1, edge_memory_mb: float = 0.0,
                        min_gain: float = 0.03, repo: Path | str | None = None,
                        version: str | None = None, signing_key: Any = None,
                        publish: bool = True, cloud_estimate: CloudEstimate = CloudEstimate(),
                        ) -> MinCutReport:
    """Compare min-cuts with the kept candidates and publish a version with the winners.

    Args:
        bundle: a loaded :class:`contract.bundle.Bundle` (role "all").
        edge / cloud: its profiles; node costs are calibrated on them.
        links: named link conditions to optimise for.
        min_gain: minimum relative improvement over the best kept cut to publish.
        repo: bundle repository root (default: the bundle's own).
        version: new version (default ``<version>-mc``).
        publish: False for a dry run.

    Raises:
        BundleExists: the new version already exists.
        ValueError: profiles do not match the bundle.
    """
    from partitioner.profile import dag_for_bundle

    m = bundle.manifest
    if edge.digest and edge.digest != bundle.digest:
        raise ValueError(f"edge profile is for digest {edge.digest[:12]}, bundle is "
                         f"{bundle.digest[:12]}: profile this bundle first")
    cuts = cut_profiles(edge, cloud)
    dag, info = dag_for_bundle(bundle, cuts, codec=codec)
    from partitioner.graph import validate_cut

    kept_heads: dict[str, frozenset[str]] = {}
    for spec in m.cuts:
        if spec.is_edge:
            kept_heads[spec.id] = frozenset(n.name for n in dag.nodes)
        elif spec.is_cloud:
            if privacy_floor == 0:
                kept_heads[spec.id] = frozenset()
        elif spec.depth >= privacy_floor:
            idx = validate_cut(info, [t.name for t in spec.tensors])
            kept_heads[spec.id] = frozenset(str(i) for i in idx)
    kept_sets = {tuple(sorted(t.name for t in c.tensors)) for c in m.cuts}
    cons = DagConstraints(privacy_floor=privacy_floor, edge_memory_mb=edge_memory_mb)
    rows: list[MinCutRow] = []
    proposals: list[tuple[str, ...]] = []
    for name, link in links.items():
        kept = {cid: evaluate_plan(dag, head, link, cloud_estimate).total_ms
                for cid, head in kept_heads.items()}
        kept_cut = min(kept, key=lambda k: (kept[k], k))
        plan = min_cut_plan(dag, link, cloud_estimate, cons)
        crossing: tuple[str, ...] = ()
        if not plan.is_edge and not plan.is_cloud:
            crossing = tuple(info.crossing(int(n) for n in plan.edge_nodes))
        is_new = bool(crossing) and tuple(sorted(crossing)) not in kept_sets
        row = MinCutRow(name, kept_cut, kept[kept_cut], plan.total_ms, crossing, is_new)
        rows.append(row)
        if is_new and row.gain >= min_gain and crossing not in proposals:
            proposals.append(crossing)
    if not proposals:
        return MinCutReport(tuple(rows), (), reason="no min-cut beats the kept candidates by "
                            f"{min_gain:.0%} with a new tensor set")
    if not publish:
        return MinCutReport(tuple(rows), tuple(proposals), reason="dry run")
    from contract.bundle import Bundle
    from partitioner import partition

    root = Path(repo) if repo is not None else bundle.path.parent.parent
    new_version = version or f"{m.version}-mc"
    out = partition(str(bundle.file(m.full_fp32)), None, root, name=m.name,
                    version=new_version, extra_cuts=[list(p) for p in proposals],
                    max_cuts=len(m.cuts), signing_key=signing_key, task=m.task,
                    progress=False)
    new = Bundle.load(out, require_signature=False)
    wanted = {tuple(sorted(p)) for p in proposals}
    ids = tuple(c.id for c in new.manifest.cuts
                if tuple(sorted(t.name for t in c.tensors)) in wanted)
    log.info("published %s with min-cut candidates %s", out, ", ".join(ids))
    return MinCutReport(tuple(rows), tuple(proposals), out, ids)
