"""What each privacy level costs in latency.

A floor stated as risk (a maximum reconstruction quality the cloud may reach) removes the
cuts whose audited risk exceeds it. :func:`privacy_costs` walks the levels at which the
admitted set changes, from "anything goes" to "nothing leaves the device", and predicts
the best latency per link at each: the operator sees the price of each step of privacy
before choosing a floor. Torch-free; matplotlib only inside :func:`plot_privacy_costs`.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from placement.costmodel import CloudEstimate, Constraints, CutProfile, LinkEstimate, choose
from placement.report import save_figure

__all__ = ["PrivacyCostRow", "plot_privacy_costs", "privacy_costs"]


@dataclass(frozen=True)
class PrivacyCostRow:
    """The best cut and its predicted latency per link under one privacy level.

    Attributes:
        max_risk: the level (cuts with audited risk above it are excluded); None = no
            risk bound.
        allowed: cut ids admitted at this level under all the constraints.
        chosen / predicted_ms: per link name.
    """

    max_risk: float | None
    allowed: frozenset[str]
    chosen: Mapping[str, str]
    predicted_ms: Mapping[str, float]


def privacy_costs(cuts: Sequence[CutProfile], risks: Mapping[str, float | None],
                  links: Mapping[str, LinkEstimate], cloud: CloudEstimate = CloudEstimate(),
                  constraints: Constraints = Constraints(), codec: str = "raw",
                  ) -> list[PrivacyCostRow]:
    """One row per privacy level, loosest first.

    Args:
        cuts: the profiled cuts.
        risks: audited risk per cut id (None or absent = unaudited: admitted only at the
            "no bound" level). The ``edge`` cut is admitted at every level.
        constraints: the other hard limits (depth, accuracy, memory) still apply.
    """
    levels: list[float | None] = [None, *sorted({r for r in risks.values() if r is not None},
                                                reverse=True), 0.0]
    rows: list[PrivacyCostRow] = []
    seen: set[frozenset[str]] = set()
    for level in levels:
        allowed = frozenset(c.cut_id for c in cuts if c.is_edge or level is None or (
            risks.get(c.cut_id) is not None and risks[c.cut_id] <= level))  # type: ignore[operator]
        if constraints.allowed is not None:
            allowed = allowed & (constraints.allowed | {c.cut_id for c in cuts if c.is_edge})
        cons = dataclasses.replace(constraints, allowed=allowed)
        allowed = frozenset(c.cut_id for c in cuts if cons.admits(c))
        if allowed in seen:
            continue
        seen.add(allowed)
        chosen, ms = {}, {}
        for name, link in links.items():
            try:
                d = choose(cuts, link, cloud, cons, codec)
            except ValueError:
                chosen[name], ms[name] = "—", math.inf
                continue
            chosen[name], ms[name] = d.cut_id, d.predicted.total_ms
        rows.append(PrivacyCostRow(level, allowed, chosen, ms))
    return rows


def plot_privacy_costs(rows: Sequence[PrivacyCostRow], path: Path | str,
                       title: str = "", metric: str = "reconstruction quality") -> Path:
    """Best predicted latency per link against the allowed risk (stricter to the right)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.0, 4.5))
    labels = ["any" if r.max_risk is None else f"≤ {r.max_risk:.3f}" for r in rows]
    xs = list(range(len(rows)))
    links = list(rows[0].predicted_ms) if rows else []
    for name in links:
        ys = [r.predicted_ms[name] for r in rows]
        ax.plot(xs, [y if math.isfinite(y) else math.nan for y in ys], marker="o",
                label=name)
        for x, r in zip(xs, rows, strict=True):
            ax.annotate(r.chosen[name], (x, r.predicted_ms[name]), fontsize=7,
                        textcoords="offset points", xytext=(3, 4))
    ax.set_xticks(xs, labels)
    ax.set_xlabel(f"maximum audited {metric} allowed (stricter →)")
    ax.set_ylabel("best predicted latency (ms)")
    ax.set_yscale("log")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(title="link")
    ax.set_title(title or "latency vs privacy")
    return save_figure(fig, path)
