"""Synthetic cut profiles with a known shape, shared by the placement tests."""

from __future__ import annotations

from placement import CutProfile


def synthetic_cuts(edge_scale: float = 1.0) -> list[CutProfile]:
    """A 4-cut model: deeper cuts cost more edge time, send fewer bytes, leave less
    cloud work. Tail times grow sub-linearly with batch (batching pays)."""

    def tail(ms: float) -> dict[int, float]:
        return {1: ms, 2: ms * 1.3, 4: ms * 1.9, 8: ms * 3.0, 16: ms * 5.2}

    return [
        CutProfile("cloud", 0, 0.0, tail(4.0), {"raw": 600_000}, reply_bytes=40),
        CutProfile("k1", 1, 2.0 * edge_scale, tail(3.5), {"raw": 200_000}, reply_bytes=40,
                   accuracy=0.999),
        CutProfile("k2", 3, 6.0 * edge_scale, tail(2.0), {"raw": 30_000}, reply_bytes=40,
                   accuracy=0.995, edge_memory_mb=20),
        CutProfile("k3", 6, 14.0 * edge_scale, tail(0.8), {"raw": 4_000}, reply_bytes=40,
                   accuracy=0.97, edge_memory_mb=40),
        CutProfile("edge", 8, 20.0 * edge_scale, {}, {}, accuracy=0.96, edge_memory_mb=60),
    ]
