"""Reconstruction quality and model-free leakage, in numpy.

* :func:`ssim` — structural similarity (Wang et al. 2004, Gaussian window sigma 1.5),
  per image and channel, averaged over pixels: 1 means identical structure. It is the
  audit's headline for images because PSNR alone rewards blurry mean images.
* :func:`psnr` — peak signal-to-noise ratio in dB over the data set's range.
* :func:`distance_correlation` — Székely's dCor between inputs and activations: 0 iff
  independent (in the population), needs no attack and no training, so it bounds what
  *any* attacker could exploit with the same samples in a way a single attack cannot.
* :func:`token_recovery` — share of tokens recovered exactly.
"""

from __future__ import annotations

import numpy as np

__all__ = ["PSNR_CAP", "distance_correlation", "psnr", "ssim", "token_recovery"]

PSNR_CAP = 100.0  # dB reported for a pixel-exact reconstruction
_K1, _K2, _SIGMA = 0.01, 0.03, 1.5


def _images(x: np.ndarray) -> np.ndarray:
    """(N, C, H, W) float64 view of image batches given as (N, H, W) or (N, C, H, W)."""
    x = np.asarray(x, dtype=np.float64)
    if x.ndim == 3:
        x = x[:, None]
    if x.ndim != 4:
        raise ValueError(f"images must be (N, C, H, W) or (N, H, W), got shape {x.shape}")
    return x


def ssim(ref: np.ndarray, rec: np.ndarray, data_range: float) -> np.ndarray:
    """Per-image SSIM of ``rec`` against ``ref`` (both (N, C, H, W)); shape (N,)."""
    from scipy.ndimage import gaussian_filter

    a, b = _images(ref), _images(rec)
    if a.shape != b.shape:
        raise ValueError(f"ssim of mismatched shapes {a.shape} and {b.shape}")
    c1, c2 = (_K1 * data_range) ** 2, (_K2 * data_range) ** 2
    sig = (0, 0, _SIGMA, _SIGMA)

    def blur(z: np.ndarray) -> np.ndarray:
        return gaussian_filter(z, sigma=sig, mode="reflect", truncate=3.5)

    mu_a, mu_b = blur(a), blur(b)
    var_a = blur(a * a) - mu_a ** 2
    var_b = blur(b * b) - mu_b ** 2
    cov = blur(a * b) - mu_a * mu_b
    s = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / (
        (mu_a ** 2 + mu_b ** 2 + c1) * (var_a + var_b + c2))
    return s.reshape(len(s), -1).mean(axis=1)


def psnr(ref: np.ndarray, rec: np.ndarray, data_range: float) -> np.ndarray:
    """Per-sample PSNR in dB (capped at :data:`PSNR_CAP`); shape (N,)."""
    a = np.asarray(ref, dtype=np.float64).reshape(len(ref), -1)
    b = np.asarray(rec, dtype=np.float64).reshape(len(rec), -1)
    mse = ((a - b) ** 2).mean(axis=1)
    with np.errstate(divide="ignore"):
        db = 10.0 * np.log10(data_range ** 2 / mse)
    return np.minimum(np.where(mse > 0, db, PSNR_CAP), PSNR_CAP)


def _centered_distances(z: np.ndarray) -> np.ndarray:
    z = np.asarray(z, dtype=np.float64).reshape(len(z), -1)
    sq = (z * z).sum(axis=1)
    d = np.sqrt(np.maximum(sq[:, None] + sq[None, :] - 2.0 * (z @ z.T), 0.0))
    return d - d.mean(axis=0, keepdims=True) - d.mean(axis=1, keepdims=True) + d.mean()


def distance_correlation(x: np.ndarray, y: np.ndarray, max_samples: int = 256,
                         seed: int = 0) -> float:
    """Sample distance correlation of ``x`` and ``y`` (first axis = samples), in [0, 1].

    At most ``max_samples`` samples are used (O(n^2) memory); the subsample is seeded.
    """
    n = len(x)
    if n != len(y):
        raise ValueError(f"distance correlation needs paired samples ({n} vs {len(y)})")
    if n < 2:
        raise ValueError("distance correlation needs at least 2 samples")
    if n > max_samples:
        idx = np.sort(np.random.default_rng(seed).choice(n, max_samples, replace=False))
        x, y = x[idx], y[idx]
    a, b = _centered_distances(x), _centered_distances(y)
    dcov = (a * b).mean()
    denom = np.sqrt((a * a).mean() * (b * b).mean())
    if denom <= 0:
        return 0.0
    return float(np.sqrt(max(dcov, 0.0) / denom))


def token_recovery(ref: np.ndarray, rec: np.ndarray) -> float:
    """Share of positions where the recovered token id equals the true one."""
    ref, rec = np.asarray(ref), np.asarray(rec)
    if ref.shape != rec.shape:
        raise ValueError(f"token arrays differ in shape: {ref.shape} vs {rec.shape}")
    return float((ref == rec).mean()) if ref.size else 0.0
