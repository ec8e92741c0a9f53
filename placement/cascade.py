"""The device cascade's confidence scores and its threshold tuner (pure, torch-free).

A cascade lets the device's int8 full model answer alone when it is sure and sends only
the hard inputs down the split path: easy inputs then cost no bytes and no round trip.
Whether that pays depends on one number, the confidence threshold, and it is picked
here from held-back data: for each sample, the device's confidence and whether its
answer agreed with the full-precision model. The same :func:`confidence` is what the
edge agent computes at run time, so the tuner and the agent never disagree on a score.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

__all__ = ["KINDS", "CascadeTuning", "confidence", "tune_threshold"]

#: Built-in confidence scores: the largest class probability, or its margin over the
#: second largest (softmax over the last axis of the logits).
KINDS = ("max-softmax", "margin")


def confidence(logits: np.ndarray, kind: str = "max-softmax") -> np.ndarray:
    """One score in [0, 1] per sample of ``logits`` ``[batch, ..., classes]``.

    Scores of samples with several positions (a sequence of tokens) are their least
    confident position: the answer is only as sure as its weakest part.

    Raises:
        ValueError: an unknown ``kind`` or logits without a class axis.
    """
    if kind not in KINDS:
        raise ValueError(f"unknown confidence kind {kind!r}; expected one of {list(KINDS)}")
    z = np.asarray(logits, dtype=np.float64)
    if z.ndim < 2 or z.shape[-1] < 2:
        raise ValueError(f"confidence needs logits [batch, ..., classes >= 2], got shape "
                         f"{list(z.shape)}")
    z = z - z.max(axis=-1, keepdims=True)
    p = np.exp(z)
    p /= p.sum(axis=-1, keepdims=True)
    if kind == "max-softmax":
        score = p.max(axis=-1)
    else:
        top2 = np.sort(p, axis=-1)[..., -2:]
        score = top2[..., 1] - top2[..., 0]
    return score.reshape(score.shape[0], -1).min(axis=1)


@dataclass(frozen=True, slots=True)
class CascadeTuning:
    """What :func:`tune_threshold` chose and what it buys on the held-back data.

    Attributes:
        threshold: the confidence at or above which the device answers alone
            (``inf``: never; no threshold met the target).
        target: the agreement asked for.
        achieved: agreement with the full model of the answers the device gives alone
            (1.0 when it gives none).
        overall: agreement of all the cascade's answers, the split ones counted at
            ``split_agreement``.
        local_share: share of samples the device answers alone.
        samples: held-back samples used.
        latency_saved_ms: mean latency saved per request against always splitting
            (negative: the cascade costs more than it saves); None without timings.
        bytes_saved: mean bytes per request not sent; None without ``split_bytes``.
    """

    threshold: float
    target: float
    achieved: float
    overall: float
    local_share: float
    samples: int
    latency_saved_ms: float | None = None
    bytes_saved: float | None = None

    @property
    def met(self) -> bool:
        return self.local_share > 0 and self.achieved >= self.target

    def as_dict(self) -> dict[str, float | int | bool | None]:
        return {"threshold": self.threshold, "target": self.target, "achieved": self.achieved,
                "overall": self.overall, "local_share": self.local_share,
                "samples": self.samples, "latency_saved_ms": self.latency_saved_ms,
                "bytes_saved": self.bytes_saved, "met": self.met}


def tune_threshold(scores: np.ndarray, agree: np.ndarray, target: float = 0.99, *,
                   local_ms: float | None = None, split_ms: float | None = None,
                   split_bytes: float | None = None, split_agreement: float = 1.0,
                   min_local: int = 1) -> CascadeTuning:
    """The lowest threshold whose local answers agree with the full model at ``target``.

    Lower thresholds answer more inputs locally; the chosen one is the lowest at which
    the answers the device would give alone (every held-back sample scoring at or above
    it) still agree with the full model at least ``target`` of the time, so the promise
    holds on the held-back data exactly, not on an assumption about the split path.

    Args:
        scores: the device's confidence per held-back sample (:func:`confidence`).
        agree: whether the device's answer matched the full model's, per sample.
        target: agreement asked of the local answers (0..1).
        local_ms: the device's full-model time per request (cascade cost, always paid).
        split_ms: the split path's time per request (paid by the inputs sent on).
        split_bytes: bytes the split path sends per request.
        split_agreement: agreement of the split path's answers, for ``overall``.
        min_local: fewest local answers a threshold must keep to count.

    Raises:
        ValueError: empty or mismatched inputs, or a target outside 0..1.
    """
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    a = np.asarray(agree, dtype=bool).reshape(-1)
    if s.size == 0 or s.size != a.size:
        raise ValueError(f"need one agreement flag per score, got {s.size} scores and "
                         f"{a.size} flags")
    if not 0.0 <= target <= 1.0:
        raise ValueError(f"target agreement must be in 0..1, got {target}")
    order = np.argsort(-s, kind="stable")
    s_sorted, a_sorted = s[order], a[order]
    hits = np.cumsum(a_sorted)
    n = s.size
    best_k, threshold = 0, math.inf
    for k in range(1, n + 1):
        # a threshold admits every sample at or above it: only cut between distinct scores
        if k < n and s_sorted[k] == s_sorted[k - 1]:
            continue
        if k >= min_local and hits[k - 1] / k >= target:
            best_k, threshold = k, float(s_sorted[k - 1])
    achieved = float(hits[best_k - 1] / best_k) if best_k else 1.0
    share = best_k / n
    overall = achieved * share + split_agreement * (1.0 - share)
    saved_ms = None
    if local_ms is not None and split_ms is not None:
        saved_ms = split_ms - (local_ms + (1.0 - share) * split_ms)
    saved_bytes = None if split_bytes is None else share * split_bytes
    return CascadeTuning(threshold, target, achieved, overall, share, n, saved_ms, saved_bytes)
