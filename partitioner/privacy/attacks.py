"""The attacks an honest-but-curious cloud can mount on the activations it receives.

* :func:`decoder_attack` (black box) learns a map from activations back to inputs on
  samples the attacker holds, then applies it to activations it never trained on. The
  decoder is kernel ridge regression (linear and RBF kernels, ridge strength chosen on a
  validation slice of the attacker's own data): with the few hundred to few thousand
  samples an audit has, it is as strong as a small trained network, it is deterministic,
  and it trains in seconds on two cores, so every cut and codec can be audited.
  For text, hidden states that keep a per-position axis are decoded position by position
  (linear ridge), which is how token leakage is exploited in practice.
* :func:`whitebox_attack` knows the head's weights: starting from the mean input, it
  optimises an input whose head output matches the received activation (Adam, clamped to
  the data range, a small total-variation prior for images). The head is differentiated
  through a caller-supplied torch program of the fp32 head.
* :func:`nearest_embedding_attack` maps each position's hidden state to the nearest row
  of the token embedding table (cosine), choosing the tensor on the attacker's samples.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

__all__ = ["DecoderChoice", "HeadProgram", "decoder_attack", "nearest_embedding_attack",
           "nearest_tokens", "whitebox_attack"]

#: A differentiable fp32 head: feeds (torch tensors by input name) -> outputs by name.
HeadProgram = Callable[[Mapping[str, object]], Mapping[str, object]]

_LAMBDAS = (1e-4, 1e-3, 1e-2, 1e-1, 1.0)
_VAL_FRACTION = 0.2
_MAX_POSITION_FEATURES = 4096


@dataclass(frozen=True, slots=True)
class DecoderChoice:
    """The hyper-parameters validation picked (recorded for reproduction)."""

    kernel: str
    ridge: float
    per_position: bool


def _flat(arrays: Sequence[np.ndarray]) -> np.ndarray:
    return np.concatenate([np.asarray(a, np.float32).reshape(len(a), -1) for a in arrays],
                          axis=1)


def _standardize(train: np.ndarray, *others: np.ndarray) -> list[np.ndarray]:
    mu = train.mean(axis=0, keepdims=True)
    sd = train.std(axis=0, keepdims=True)
    sd[sd < 1e-6] = 1.0
    return [(z - mu) / sd for z in (train, *others)]


def _kernels(g_ab: np.ndarray, sq_a: np.ndarray, sq_b: np.ndarray, dim: int, gamma: float,
             ) -> dict[str, np.ndarray]:
    d2 = np.maximum(sq_a[:, None] + sq_b[None, :] - 2.0 * g_ab, 0.0)
    return {"linear": g_ab / dim, "rbf": np.exp(-gamma * d2)}


def _kernel_ridge(f_tr: np.ndarray, y_tr: np.ndarray, f_te: np.ndarray,
                  ) -> tuple[np.ndarray, DecoderChoice]:
    """Dual ridge regression with the kernel and ridge validated on the last 20 %."""
    f_tr, f_te = _standardize(f_tr, f_te)
    f_tr64, f_te64 = f_tr.astype(np.float64), f_te.astype(np.float64)
    y = y_tr.reshape(len(y_tr), -1).astype(np.float64)
    n = len(f_tr64)
    n_val = max(2, int(n * _VAL_FRACTION))
    g = f_tr64 @ f_tr64.T
    sq = np.diag(g).copy()
    dim = f_tr64.shape[1]
    fit, val = slice(0, n - n_val), slice(n - n_val, n)
    d2_fit = np.maximum(sq[fit, None] + sq[None, fit] - 2.0 * g[fit, fit], 0.0)
    med = float(np.median(d2_fit[np.triu_indices(n - n_val, 1)])) or 1.0
    gamma = 1.0 / med
    k_fit = _kernels(g[fit, fit], sq[fit], sq[fit], dim, gamma)
    k_val = _kernels(g[val, fit], sq[val], sq[fit], dim, gamma)
    y_mu = y[fit].mean(axis=0, keepdims=True)
    best: tuple[float, str, float] | None = None
    for kind, k in k_fit.items():
        s, u = np.linalg.eigh(k)
        s = np.maximum(s, 0.0)
        uty = u.T @ (y[fit] - y_mu)
        scale = float(s.mean()) or 1.0
        for lam in _LAMBDAS:
            alpha = u @ (uty / (s + lam * scale)[:, None])
            err = float(((k_val[kind] @ alpha + y_mu - y[val]) ** 2).mean())
            if best is None or err < best[0]:
                best = (err, kind, lam * scale)
    assert best is not None
    _, kind, lam = best
    g_te = f_te64 @ f_tr64.T
    sq_te = (f_te64 * f_te64).sum(axis=1)
    k_all = _kernels(g, sq, sq, dim, gamma)[kind]
    k_te = _kernels(g_te, sq_te, sq, dim, gamma)[kind]
    y_mu = y.mean(axis=0, keepdims=True)
    alpha = np.linalg.solve(k_all + lam * np.eye(n), y - y_mu)
    pred = k_te @ alpha + y_mu
    return pred.astype(np.float32), DecoderChoice(kind, lam, False)


def _primal_ridge(f_tr: np.ndarray, y_tr: np.ndarray, f_te: np.ndarray) -> np.ndarray:
    """Linear ridge in feature space (many samples, few features), validated ridge."""
    f_tr, f_te = _standardize(f_tr, f_te)
    x = np.concatenate([f_tr, np.ones((len(f_tr), 1), np.float32)], axis=1).astype(np.float64)
    xt = np.concatenate([f_te, np.ones((len(f_te), 1), np.float32)], axis=1).astype(np.float64)
    y = y_tr.astype(np.float64)
    n_val = max(2, int(len(x) * _VAL_FRACTION))
    fit, val = slice(0, len(x) - n_val), slice(len(x) - n_val, len(x))
    best: tuple[float, float] | None = None
    gram = x[fit].T @ x[fit]
    xty = x[fit].T @ y[fit]
    scale = float(np.trace(gram)) / len(gram)
    for lam in _LAMBDAS:
        w = np.linalg.solve(gram + lam * scale * np.eye(len(gram)), xty)
        err = float(((x[val] @ w - y[val]) ** 2).mean())
        if best is None or err < best[0]:
            best = (err, lam * scale)
    assert best is not None
    w = np.linalg.solve(x.T @ x + best[1] * np.eye(x.shape[1]), x.T @ y)
    return (xt @ w).astype(np.float32)


def _position_arrays(arrays: Sequence[np.ndarray], seq: int) -> list[np.ndarray]:
    return [a for a in arrays if a.ndim >= 3 and a.shape[1] == seq]


def decoder_attack(train: Sequence[np.ndarray], target_train: np.ndarray,
                   evaluate: Sequence[np.ndarray], *, seq: int | None = None,
                   lo: float | None = None, hi: float | None = None,
                   ) -> tuple[np.ndarray, DecoderChoice]:
    """Reconstruct the evaluation targets from their activations.

    Args:
        train / evaluate: the crossing tensors (as received, batch first) of the samples
            the attacker learns from / is scored on.
        target_train: what the attacker knows the training samples' inputs were.
        seq: text only: the sequence length; tensors with that many positions on axis 1
            are decoded per position.
        lo / hi: clamp reconstructions to the data range (known to any attacker).

    Returns:
        reconstructions shaped like ``target_train[0]`` per evaluation sample, and the
        hyper-parameters picked.
    """
    n_eval = len(evaluate[0])
    shape = target_train.shape[1:]
    pos = _position_arrays(train, seq) if seq else []
    pos_dim = sum(int(np.prod(a.shape[2:])) for a in pos)
    if pos and 0 < pos_dim <= _MAX_POSITION_FEATURES:
        pos_eval = _position_arrays(evaluate, seq)

        def per_position(arrays: Sequence[np.ndarray]) -> np.ndarray:
            return np.concatenate([a.reshape(len(a) * seq, -1) for a in arrays], axis=1)

        y = target_train.reshape(len(target_train) * seq, -1)
        pred = _primal_ridge(per_position(pos), y, per_position(pos_eval))
        choice = DecoderChoice("linear", 0.0, True)
    else:
        pred, choice = _kernel_ridge(_flat(train), target_train, _flat(evaluate))
    pred = pred.reshape(n_eval, *shape)
    if lo is not None or hi is not None:
        pred = np.clip(pred, lo, hi)
    return pred, choice


def whitebox_attack(program: HeadProgram, input_name: str, output_names: Sequence[str],
                    received: Sequence[np.ndarray], init: np.ndarray, *, lo: float, hi: float,
                    steps: int, lr: float, image: bool, tv_weight: float = 0.1,
                    batch: int = 64, extra: Mapping[str, np.ndarray] | None = None,
                    ) -> np.ndarray:
    """Optimise inputs whose head outputs match ``received``; returns them (numpy).

    Args:
        program: the differentiable fp32 head.
        input_name / output_names: its input, and the crossing tensors in ``received``
            order.
        init: the starting input of one sample (the attacker's mean input).
        lo / hi: the data range; the input is clamped to it after every step.
        image: add a total-variation prior (natural images are piecewise smooth).
        extra: the head's other inputs (an attention mask), fixed, per sample.
    """
    import torch

    out = []
    n = len(received[0])
    lr_abs = lr * max(hi - lo, 1e-6)
    for start in range(0, n, batch):
        tgt = [torch.from_numpy(np.ascontiguousarray(r[start:start + batch], np.float32))
               for r in received]
        scale = [t.pow(2).mean().clamp_min(1e-8) for t in tgt]
        fixed = {k: torch.from_numpy(np.ascontiguousarray(v[start:start + batch]))
                 for k, v in (extra or {}).items()}
        x = torch.from_numpy(np.repeat(init[None], len(tgt[0]), axis=0).astype(np.float32))
        x.requires_grad_(True)
        opt = torch.optim.Adam([x], lr=lr_abs)
        for _ in range(steps):
            opt.zero_grad()
            got = program({input_name: x, **fixed})
            loss = sum(((got[name] - t) ** 2).mean() / s
                       for name, t, s in zip(output_names, tgt, scale, strict=True))
            if image and x.dim() == 4:
                tv = ((x[..., 1:, :] - x[..., :-1, :]).abs().mean()
                      + (x[..., :, 1:] - x[..., :, :-1]).abs().mean())
                loss = loss + tv_weight * tv / max(hi - lo, 1e-6)
            loss.backward()
            opt.step()
            with torch.no_grad():
                x.clamp_(lo, hi)
        out.append(x.detach().numpy())
    return np.concatenate(out, axis=0)


def nearest_tokens(vectors: np.ndarray, table: np.ndarray) -> np.ndarray:
    """Token id of the nearest (cosine) embedding row for each ``(..., D)`` vector."""
    v = vectors.reshape(-1, vectors.shape[-1]).astype(np.float32)
    t = table.astype(np.float32)
    v = v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-8)
    t = t / np.maximum(np.linalg.norm(t, axis=1, keepdims=True), 1e-8)
    return (v @ t.T).argmax(axis=1).reshape(vectors.shape[:-1])


def nearest_embedding_attack(train: Sequence[np.ndarray], tokens_train: np.ndarray,
                             evaluate: Sequence[np.ndarray], table: np.ndarray,
                             ) -> np.ndarray | None:
    """Tokens read from hidden states by nearest embedding, or None when no crossing
    tensor is a per-position state of the embedding's width (or the ids themselves).

    The attacker picks the tensor that recovers most tokens on its own samples.
    """
    seq, dim = tokens_train.shape[1], table.shape[1]

    def read(a: np.ndarray) -> np.ndarray | None:
        if a.ndim == 2 and a.shape[1] == seq and a.dtype.kind in "iu":
            return np.clip(a, 0, len(table) - 1).astype(np.int64)  # ids as sent
        if a.ndim == 3 and a.shape[1] == seq and a.shape[2] == dim:
            return nearest_tokens(a, table)
        return None

    best: tuple[float, int] | None = None
    for i, a in enumerate(train):
        got = read(a)
        if got is not None:
            rate = float((got == tokens_train).mean())
            if best is None or rate > best[0]:
                best = (rate, i)
    return None if best is None else read(evaluate[best[1]])
