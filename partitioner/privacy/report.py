"""The audit as people compare it: a Markdown table, and a picture of what the cloud sees.

:func:`plot_audit` draws, left, the strongest attack's reconstruction quality against cut
depth (one line per codec) and, for images, a grid: the original evaluation samples on
top, then one row per cut with the strongest attack's reconstructions, labelled with the
cut, the attack and its SSIM.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from contract.privacy import CutRisk, PrivacyAudit

if TYPE_CHECKING:
    from partitioner.privacy.audit import AuditOutcome

__all__ = ["markdown_table", "plot_audit", "table_rows", "write_report"]

_NAMES = {"decoder": "decoder", "whitebox": "white-box", "nearest_embedding": "nearest emb."}


def _fmt(v: float | None, spec: str = ".3f") -> str:
    return "—" if v is None else format(v, spec)


def _cells(row: CutRisk, audit: PrivacyAudit) -> list[str]:
    cells = []
    for attack in audit.attacks:
        s = next((x for x in row.scores if x.attack == attack), None)
        if s is None:
            cells.append("—")
        elif audit.metric == "ssim":
            cells.append(f"{_fmt(s.ssim)} / {_fmt(s.psnr, '.1f')} dB")
        else:
            cells.append(_fmt(s.token_recovery))
    return cells


def table_rows(audit: PrivacyAudit) -> tuple[list[str], list[list[str]]]:
    """Header and rows (strings) shared by the Markdown and the rich renderings."""
    unit = "SSIM / PSNR" if audit.metric == "ssim" else "tokens recovered"
    header = ["cut", "depth", "codec", "noise", *(f"{_NAMES.get(a, a)} {unit}"
                                                  for a in audit.attacks),
              "risk", "dCor", "top-1 agreement"]
    rows = []
    for r in audit.cuts:
        rows.append([r.cut, str(r.depth), r.codec, f"{r.noise_std:g}", *_cells(r, audit),
                     _fmt(r.risk(audit.metric)), _fmt(r.dcor), _fmt(r.accuracy)])
    return header, rows


def markdown_table(audit: PrivacyAudit) -> str:
    header, rows = table_rows(audit)
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def write_report(outcome: AuditOutcome, path: Path | str, bundle_name: str,
                 plot: Path | str | None = None) -> Path:
    """A Markdown report: what was attacked with what, the table, notes, the picture."""
    a = outcome.audit
    metric = ("SSIM (1 = the image is rebuilt exactly)" if a.metric == "ssim"
              else "token recovery rate (1 = every token recovered)")
    parts = [
        f"# Privacy audit of {bundle_name}", "",
        f"- date: {a.date}",
        f"- data: {a.data}",
        f"- attacker trained on {a.attack_train} samples, scored on {a.attack_eval} it never "
        "saw",
        f"- attacks: {', '.join(_NAMES.get(x, x) for x in a.attacks)}; risk = the strongest "
        f"attack's {metric}",
        f"- settings: {', '.join(f'{k}={v}' for k, v in a.settings.items())}", "",
        markdown_table(a), "",
    ]
    parts += [f"- note: {n}" for n in outcome.notes]
    if plot is not None:
        parts += ["", f"![reconstructions per cut]({Path(plot).name})"]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(parts) + "\n")
    return path


def _show(img: np.ndarray) -> np.ndarray:
    """(C, H, W) -> something imshow draws: grey for 1 channel or the channel mean."""
    if img.shape[0] == 3:
        return np.clip(np.transpose(img, (1, 2, 0)), 0.0, None)
    return img.mean(axis=0)


def plot_audit(outcome: AuditOutcome, path: Path | str, title: str = "") -> Path:
    """PNG: risk vs depth per codec, plus reconstructions per cut for images."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    a = outcome.audit
    images = bool(a.metric == "ssim" and outcome.examples)
    cuts = list(dict.fromkeys(r.cut for r in a.cuts if r.noise_std == 0))
    n_ex = len(outcome.originals) if images else 0
    rows = len(cuts) + 1
    if images:
        fig = plt.figure(figsize=(5.0 + 1.0 * n_ex + 1.2, max(4.0, 1.05 * rows + 0.5)),
                         layout="constrained")
        left, right = fig.subfigures(1, 2, width_ratios=[5.0, 1.0 * n_ex + 1.2])
        ax = left.subplots()
    else:
        fig, ax = plt.subplots(figsize=(6.0, 4.2), layout="constrained")
    for codec in a.codecs:
        pts = [(r.depth, r.risk(a.metric)) for r in a.cuts
               if r.codec == codec and r.noise_std == 0 and r.risk(a.metric) is not None]
        if pts:
            xs, ys = zip(*pts, strict=True)
            ax.plot(xs, ys, marker="o", label=f"{codec}: strongest attack")
    dc = [(r.depth, r.dcor) for r in a.cuts if r.codec == a.codecs[0] and r.noise_std == 0]
    if dc:
        xs, ys = zip(*dc, strict=True)
        ax.plot(xs, ys, linestyle="--", color="grey", label=f"{a.codecs[0]}: dCor")
    ax.set_xlabel("cut depth (nodes on the device)")
    ax.set_ylabel("SSIM of reconstruction" if a.metric == "ssim" else "tokens recovered")
    ax.set_ylim(-0.05, 1.05)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(title or "what the cloud can recover, by cut", fontsize=10)
    if images:
        grid = right.subplots(rows, n_ex, squeeze=False)
        right.suptitle(f"strongest attack's reconstructions ({a.codecs[0]})", fontsize=10)
        vmin, vmax = float(outcome.originals.min()), float(outcome.originals.max())
        for j in range(n_ex):
            _cell(grid[0, j], outcome.originals[j], vmin, vmax, "original" if j == 0 else "")
        for i, cid in enumerate(cuts, start=1):
            attack, recs = outcome.examples.get(cid, ("", None))
            row = next(r for r in a.cuts if r.cut == cid and r.codec == a.codecs[0]
                       and r.noise_std == 0)
            label = f"{cid}\n{_NAMES.get(attack, attack)}\nSSIM {_fmt(row.risk(a.metric), '.2f')}"
            for j in range(n_ex):
                if recs is not None and j < len(recs):
                    _cell(grid[i, j], recs[j], vmin, vmax, label if j == 0 else "")
                else:
                    grid[i, j].axis("off")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _cell(ax, img: np.ndarray, vmin: float, vmax: float, label: str) -> None:
    ax.imshow(_show(img), cmap="gray", vmin=vmin, vmax=vmax, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])
    if label:
        ax.set_ylabel(label, fontsize=8, rotation=0, ha="right", va="center")
