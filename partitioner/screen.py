"""Held-back evaluation that stops as soon as a candidate provably misses the floor.

The floor is judged on means over the held-back samples (mean cosine, top-1 agreement),
and no sample can score above 1. After ``n`` of ``N`` samples, the best the full set can
still reach is therefore ``(sum so far + N - n) / N``; when that bound is already below
the floor, the remaining samples cannot rescue the candidate, and evaluating them would
only cost time. That is what dominates the precision search on a model whose int8 heads
miss the floor: every fallback candidate used to run on the whole held-back set.

The screen never weakens the floor: a candidate is *accepted* only after every held-back
sample was evaluated (the figures are then exactly those of :func:`split.compare` on the
whole set); a rejection is a proof, not an estimate. A user metric cannot be bounded, so
with one every candidate is evaluated in full.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from partitioner import cache as _cache
from partitioner import stages
from partitioner.split import Comparison, compare

__all__ = ["SCREEN_SAMPLES", "Screen", "bound", "judged", "rejected"]

#: Samples in the screening chunk where a run evaluates its candidates in one batch.
SCREEN_SAMPLES = 8

Runner = Callable[[dict[str, np.ndarray]], list[np.ndarray]]


def _row_cosines(ref: Sequence[np.ndarray], got: Sequence[np.ndarray]) -> np.ndarray:
    r = np.concatenate([np.asarray(x, np.float64).reshape(len(x), -1) for x in ref], 1)
    a = np.concatenate([np.asarray(x, np.float64).reshape(len(x), -1) for x in got], 1)
    den = np.linalg.norm(r, axis=1) * np.linalg.norm(a, axis=1)
    return np.where(den > 0, (r * a).sum(1) / np.where(den > 0, den, 1.0), 1.0)


def bound(cosine_sum: float, agree: float | None, seen: int, total: int
          ) -> tuple[float, float | None]:
    """The best mean cosine and top-1 agreement the whole set can still reach after
    ``seen`` of ``total`` samples (each remaining sample scoring a perfect 1)."""
    rest = max(total - seen, 0)
    best_top1 = None if agree is None else (agree + rest) / total
    return (cosine_sum + rest) / total, best_top1


def rejected(c: Comparison, total: int, cosine_floor: float, top1_floor: float | None) -> bool:
    """True when the partial comparison ``c`` (on ``c.samples`` of ``total``) proves the
    whole set misses the floor."""
    agree = None if c.top1_agreement is None else c.top1_agreement * c.samples
    best_cos, best_top1 = bound(c.cosine * c.samples, agree, c.samples, total)
    if best_cos < cosine_floor:
        return True
    return top1_floor is not None and best_top1 is not None and best_top1 < top1_floor


@dataclass(frozen=True)
class Screen:
    """How one run screens candidates: the held-back inputs and fp32 reference outputs,
    the floor, the evaluation batch, and whether outputs may be split by sample.

    With ``whole`` unset the held-back set runs in the run's usual batches (the first one
    doubles as the screen), so the figures of a candidate that passes are exactly those
    of an unscreened run; with ``whole`` a survivor of the screening chunk runs once more
    on the whole set at once, for evaluations that never batched (dynamic int8 scales
    per batch, so batching would change the figures)."""

    feeds: Mapping[str, np.ndarray]
    reference: Sequence[np.ndarray]
    classification: bool
    cosine_floor: float
    top1_floor: float | None
    batch: int
    chunked: bool = True
    enabled: bool = True
    first: int | None = None  # samples in the screening chunk (None: one batch)
    whole: bool = False  # a candidate that survives the screen is then run on all at once
    size: int | None = None  # samples in ``feeds``, when they are computed lazily

    @property
    def total(self) -> int:
        if self.size is not None:
            return self.size
        return len(next(iter(self.feeds.values())))

    def _chunks(self) -> list[tuple[int, int]]:
        n = self.total
        if not (self.enabled and self.chunked):
            if self.whole or not self.chunked or n <= self.batch:
                return [(0, n)]
            return [(i, min(i + self.batch, n)) for i in range(0, n, self.batch)]
        edges = [0, min(self.first or self.batch, n)]
        if self.whole:
            return [(0, edges[1]), (0, n)] if edges[1] < n else [(0, n)]
        while edges[-1] < n:
            edges.append(min(edges[-1] + self.batch, n))
        return list(itertools.pairwise(edges))

    def run(self, fn: Runner) -> tuple[list[np.ndarray], Comparison | None]:
        """``fn`` over the held-back inputs chunk by chunk.

        Returns:
            (the outputs on every sample, None) when no chunk proved a miss, else (the
            outputs so far, the comparison on those samples that proves it).
        """
        top1 = self.top1_floor if self.classification else None
        parts: list[list[np.ndarray]] = []
        cos_sum, agree, seen = 0.0, 0.0 if self.classification else None, 0
        chunks = self._chunks()
        for lo, hi in chunks:
            outs = fn({k: v[lo:hi] for k, v in self.feeds.items()})
            if lo == 0 and hi == self.total:  # the whole set in one run: that is the result
                return outs, None
            parts.append(outs)
            if not (self.enabled and self.chunked) or hi == self.total:
                continue
            ref = [r[lo:hi] for r in self.reference]
            cos_sum += float(_row_cosines(ref, outs).sum())
            if agree is not None:
                same = np.asarray(ref[0]).argmax(-1) == np.asarray(outs[0]).argmax(-1)
                agree += float(same.reshape(len(same), -1).mean(1).sum())
            seen = hi
            best_cos, best_top1 = bound(cos_sum, agree, seen, self.total)
            if best_cos < self.cosine_floor or (
                    top1 is not None and best_top1 is not None and best_top1 < top1):
                got = _join(parts)
                return got, compare([r[:seen] for r in self.reference], got,
                                    self.classification)
        return _join(parts), None


def _join(parts: list[list[np.ndarray]]) -> list[np.ndarray]:
    if len(parts) == 1:
        return parts[0]
    return [np.concatenate([p[j] for p in parts]) for j in range(len(parts[0]))]


def judged(screen: Screen, key: str | None, runner: Callable[[], Runner],
           judge: Callable[[list[np.ndarray]], tuple[Comparison, float | None]]
           ) -> tuple[Comparison, float | None]:
    """One candidate's figures on the held-back set: from the run's cache when ``key``
    (a digest of the candidate's exact bytes and the held-back data) has them, else
    screened (``runner()`` opens the candidate's session only then) and judged in full
    by ``judge`` when the screen cannot reject it. A cached rejection holds only while
    it still proves a miss under this run's floor; a user metric is never cached."""
    run_cache = _cache.current()
    if run_cache is None:
        key = None
    if key is not None:
        hit = run_cache.get_json("evaluate", key)  # type: ignore[union-attr]
        if hit is not None:
            cmp = Comparison(**hit)
            if cmp.samples == screen.total or rejected(cmp, screen.total, screen.cosine_floor,
                                                       screen.top1_floor):
                return cmp, None
    outs, partial = screen.run(runner())
    if partial is not None:
        stages.current().count("screened out")
        result: tuple[Comparison, float | None] = (partial, None)
    else:
        result = judge(outs)
    if key is not None:
        run_cache.put_json("evaluate", key, dataclasses.asdict(result[0]))  # type: ignore
    return result
