"""Draw the Grafana dashboard's panels from a live Prometheus as one PNG (for the docs).

Run by hand, for example against the Prometheus of the observability test
(``TIERSPLIT_DASHBOARD_PNG=docs/img/dashboard.png pytest tests/deploy/test_observability.py``
runs this script before that Prometheus stops), or against any Prometheus that scrapes
tiersplit::

    python deploy/grafana/render_png.py --prometheus http://127.0.0.1:9090 \\
        --out docs/img/dashboard.png --minutes 15

Grafana's variables are substituted as "All" (``$model``/``$cut`` match everything) and
``$__rate_interval`` becomes ``--rate-interval``. Needs matplotlib and httpx.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import time
from pathlib import Path
from typing import Any

import httpx
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

HERE = Path(__file__).resolve().parent


def substitute(expr: str, rate_interval: str) -> str:
    return (expr.replace("$__rate_interval", rate_interval).replace("$model", ".+")
            .replace("$cut", ".+"))


def legend(fmt: str, labels: dict[str, str]) -> str:
    return re.sub(r"\{\{\s*(\w+)\s*\}\}", lambda m: labels.get(m.group(1), ""), fmt).strip()


def query_range(prom: str, expr: str, start: float, end: float, step: float
                ) -> list[dict[str, Any]]:
    r = httpx.get(f"{prom}/api/v1/query_range", timeout=60,
                  params={"query": expr, "start": start, "end": end, "step": step})
    body = r.json()
    if body.get("status") != "success":
        raise SystemExit(f"query failed: {expr}\n{body.get('error', r.text)}")
    return body["data"]["result"]


def render(prom: str, dashboard: dict[str, Any], out: Path, minutes: float,
           rate_interval: str) -> int:
    """Plot every panel; returns how many panels had data."""
    panels = [p for p in dashboard["panels"] if p.get("type") != "row"]
    end = time.time()
    start = end - minutes * 60
    step = max(1.0, minutes * 60 / 300)
    cols = 2
    rows = math.ceil(len(panels) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(16, 3.2 * rows), squeeze=False)
    with_data = 0
    for ax, panel in zip(axes.flat, panels, strict=False):
        drawn = 0
        for target in panel.get("targets", []):
            expr = substitute(target["expr"], rate_interval)
            for series in query_range(prom, expr, start, end, step):
                pts = [(float(t) - end, float(v)) for t, v in series["values"]
                       if math.isfinite(float(v))]
                if not pts:
                    continue
                xs, ys = zip(*pts, strict=True)
                ax.plot(xs, ys, linewidth=1.2,
                        label=legend(target.get("legendFormat", ""), series["metric"]) or None)
                drawn += 1
        with_data += drawn > 0
        unit = panel.get("fieldConfig", {}).get("defaults", {}).get("unit", "")
        ax.set_title(panel["title"] + (f"  [{unit}]" if unit and unit != "short" else ""),
                     fontsize=9)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
        ax.set_xlabel("seconds before now", fontsize=7)
        if drawn:
            ax.legend(fontsize=6, loc="upper left", ncol=2)
        else:
            ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    fig.suptitle(f"{dashboard['title']} — last {minutes:g} min from {prom}", fontsize=11)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=90)
    plt.close(fig)
    return with_data


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--prometheus", required=True, help="base URL, e.g. http://127.0.0.1:9090")
    ap.add_argument("--dashboard", type=Path, default=HERE / "tiersplit.json")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--minutes", type=float, default=15.0)
    ap.add_argument("--rate-interval", default="1m")
    args = ap.parse_args()
    dashboard = json.loads(args.dashboard.read_text())
    n = render(args.prometheus.rstrip("/"), dashboard, args.out, args.minutes,
               args.rate_interval)
    total = sum(1 for p in dashboard["panels"] if p.get("type") != "row")
    print(f"{args.out}: {n}/{total} panels with data")


if __name__ == "__main__":
    main()
