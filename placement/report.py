"""What ``tiersplit place tune`` shows: per-link predictions as rows, and the plot.

Rows are plain data (the CLI renders them with rich); the plot imports matplotlib only
when called, so the edge never pays for it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from placement.costmodel import (
    CloudEstimate,
    Constraints,
    CutProfile,
    LinkEstimate,
    choose,
    predict,
)

__all__ = ["LinkRow", "link_rows", "plot_latency"]


@dataclass(frozen=True)
class LinkRow:
    """Predictions of every cut under one link condition.

    ``predicted_ms[cut]`` is None for a cut the constraints exclude.
    """

    link: str
    estimate: LinkEstimate
    predicted_ms: Mapping[str, float | None]
    chosen: str
    runner_up: str | None
    margin_ms: float


def link_rows(cuts: Sequence[CutProfile], links: Mapping[str, LinkEstimate],
              cloud: CloudEstimate = CloudEstimate(), constraints: Constraints = Constraints(),
              codec: str = "raw") -> list[LinkRow]:
    rows = []
    for name, link in links.items():
        d = choose(cuts, link, cloud, constraints, codec)
        pred = {c.cut_id: (predict(c, link, cloud, codec).total_ms
                           if constraints.admits(c) else None) for c in cuts}
        runner = d.ranking[1].cut_id if len(d.ranking) > 1 else None
        rows.append(LinkRow(name, link, pred, d.cut_id, runner, d.margin_ms))
    return rows


def save_figure(fig: object, path: Path | str) -> Path:
    """Lay out, write (folders made as needed) and close a matplotlib figure."""
    import matplotlib.pyplot as plt

    fig.tight_layout()  # type: ignore[attr-defined]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)  # type: ignore[attr-defined]
    plt.close(fig)  # type: ignore[arg-type]
    return path


def plot_latency(rows: Sequence[LinkRow], cut_order: Sequence[str], path: Path | str,
                 title: str = "") -> Path:
    """Predicted latency vs cut (cuts in depth order), one line per link; chosen cuts
    marked. Log scale: 3G and LAN differ by orders of magnitude."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(max(6.0, 0.9 * len(cut_order) + 3), 4.5))
    xs = list(range(len(cut_order)))
    for r in rows:
        ys = [r.predicted_ms.get(c) for c in cut_order]
        ys_plot = [math.nan if y is None else y for y in ys]
        (line,) = ax.plot(xs, ys_plot, marker="o", label=r.link)
        if r.chosen in cut_order:
            i = cut_order.index(r.chosen)
            ax.plot([i], [ys_plot[i]], marker="*", markersize=16, color=line.get_color())
    ax.set_xticks(xs, list(cut_order))
    ax.set_xlabel("cut (edge side grows to the right)")
    ax.set_ylabel("predicted latency (ms)")
    ax.set_yscale("log")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(title="link (★ chosen)")
    if title:
        ax.set_title(title)
    return save_figure(fig, path)
