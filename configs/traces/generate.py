"""Synthesise the link traces in this folder (seeded, deterministic).

    python configs/traces/generate.py [--out DIR]

Writes ``lte_drive.csv``, ``wifi_congestion.csv`` and ``handover_3g_wifi.csv``: 60 s each,
one row per 0.5 s, columns ``t_s,up_bps,down_bps,rtt_ms,loss`` (the format
``transport.linktrace.Trace`` reads). The processes and their parameters, and the published
measurements they are loosely modelled on, are in ``README.md`` next to this file: these
are synthetic traces shaped like the published statistics, not recordings.

Only the standard library, ``random.Random(seed)`` and values rounded before writing (whole
bit/s, 0.1 ms, 1e-4 loss), so the same files come out on every machine; a test regenerates
them and compares bytes.
"""

from __future__ import annotations

import argparse
import math
import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

DT_S = 0.5
DURATION_S = 60.0
HEADER = "t_s,up_bps,down_bps,rtt_ms,loss"


@dataclass(frozen=True)
class Sample:
    up_bps: float
    down_bps: float
    rtt_ms: float
    loss: float


class LogAR1:
    """A log-normal AR(1) process: ``median * exp(x)``, ``x`` mean-reverting with the
    given stationary log-standard deviation and one-step correlation ``rho``."""

    def __init__(self, rng: random.Random, median: float, log_sd: float, rho: float) -> None:
        self.rng, self.median, self.log_sd, self.rho = rng, median, log_sd, rho
        self.x = rng.gauss(0.0, log_sd)

    def step(self) -> float:
        innov = self.log_sd * math.sqrt(1.0 - self.rho ** 2)
        self.x = self.rho * self.x + self.rng.gauss(0.0, innov)
        return self.median * math.exp(self.x)


def _steps() -> int:
    return round(DURATION_S / DT_S)


def lte_drive(seed: int = 15) -> list[Sample]:
    """LTE while driving: a wandering rate with deep drops (cell edge, handover) of
    1-4 s every ~15 s on average, when RTT and loss rise too."""
    rng = random.Random(seed)
    down = LogAR1(rng, 12e6, 0.6, 0.9)
    ratio = LogAR1(rng, 0.35, 0.25, 0.8)  # uplink / downlink
    rtt = LogAR1(rng, 50.0, 0.2, 0.7)
    drop_left = 0
    out = []
    for i in range(_steps()):
        d, r, lat = down.step(), ratio.step(), rtt.step()
        if drop_left == 0 and i > 4 and rng.random() < DT_S / 15.0:
            drop_left = rng.randint(2, 8)  # 1-4 s
        if drop_left:
            drop_left -= 1
            depth = rng.uniform(0.02, 0.08)
            out.append(Sample(max(1e5, d * r * depth), max(2e5, d * depth),
                              lat * rng.uniform(3.0, 6.0), rng.uniform(0.02, 0.05)))
        else:
            out.append(Sample(max(3e5, d * r), max(5e5, d), lat, rng.uniform(0.0, 0.005)))
    return out


def wifi_congestion(seed: int = 23) -> list[Sample]:
    """A home/office Wi-Fi link with congestion bursts of 2-8 s: the rate falls to a few
    Mbit/s and a full buffer inflates the RTT (bufferbloat)."""
    rng = random.Random(seed)
    up = LogAR1(rng, 30e6, 0.3, 0.8)
    rtt = LogAR1(rng, 6.0, 0.3, 0.5)
    burst_left = 0
    out = []
    for i in range(_steps()):
        u, lat = up.step(), rtt.step()
        if burst_left == 0 and i > 4 and rng.random() < DT_S / 12.0:
            burst_left = rng.randint(4, 16)  # 2-8 s
        if burst_left:
            burst_left -= 1
            rate = rng.uniform(1e6, 4e6)
            out.append(Sample(rate, rate * rng.uniform(1.0, 1.5), rng.uniform(60.0, 250.0),
                              rng.uniform(0.01, 0.03)))
        else:
            out.append(Sample(u, u * 1.2, lat, rng.uniform(0.0, 0.002)))
    return out


def handover_3g_wifi(seed: int = 37) -> list[Sample]:
    """Wi-Fi, then a handover to 3G (HSPA) for ~20 s, then back: each handover is a
    1.5 s gap with a trickle of bandwidth and a long RTT."""
    rng = random.Random(seed)
    wifi_up = LogAR1(rng, 25e6, 0.3, 0.8)
    wifi_rtt = LogAR1(rng, 8.0, 0.3, 0.5)
    hspa_down = LogAR1(rng, 3e6, 0.5, 0.85)
    hspa_ratio = LogAR1(rng, 0.35, 0.2, 0.8)
    hspa_rtt = LogAR1(rng, 120.0, 0.25, 0.7)
    out = []
    for i in range(_steps()):
        t = i * DT_S
        wu, wl, hd, hr, hl = (wifi_up.step(), wifi_rtt.step(), hspa_down.step(),
                              hspa_ratio.step(), hspa_rtt.step())
        if 18.0 <= t < 19.5 or 40.0 <= t < 41.5:
            out.append(Sample(5e4, 5e4, rng.uniform(600.0, 1200.0), rng.uniform(0.05, 0.1)))
        elif 19.5 <= t < 40.0:
            out.append(Sample(max(1e5, hd * hr), max(2e5, hd), hl, rng.uniform(0.002, 0.01)))
        else:
            out.append(Sample(wu, wu * 1.2, wl, rng.uniform(0.0, 0.002)))
    return out


TRACES: dict[str, tuple[Callable[[], list[Sample]], str]] = {
    "lte_drive": (lte_drive, "LTE drive with drops (seed 15)"),
    "wifi_congestion": (wifi_congestion, "Wi-Fi with congestion bursts (seed 23)"),
    "handover_3g_wifi": (handover_3g_wifi, "Wi-Fi -> 3G -> Wi-Fi handover (seed 37)"),
}


def render(name: str) -> str:
    """The CSV text of trace ``name``."""
    make, title = TRACES[name]
    lines = [f"# {title}: synthetic, from configs/traces/generate.py (see README.md)",
             HEADER]
    for i, s in enumerate(make()):
        lines.append(f"{i * DT_S:.1f},{round(s.up_bps)},{round(s.down_bps)},"
                     f"{s.rtt_ms:.1f},{s.loss:.4f}")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parent,
                    help="folder to write the CSVs to (default: next to this script)")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    for name in TRACES:
        path = args.out / f"{name}.csv"
        path.write_text(render(name))
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
