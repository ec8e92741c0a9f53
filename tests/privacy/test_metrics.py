"""The audit's yardsticks: SSIM/PSNR rank reconstructions as people would, distance
correlation separates dependence from independence, codecs round-trip as on the wire."""

from __future__ import annotations

import numpy as np
import pytest

from partitioner.privacy.audit import codec_round_trip
from partitioner.privacy.data import digits_images
from partitioner.privacy.metrics import (
    PSNR_CAP,
    distance_correlation,
    psnr,
    ssim,
    token_recovery,
)


@pytest.fixture(scope="module")
def digits() -> np.ndarray:
    return digits_images((1, 16, 16))[:64]


def test_ssim_and_psnr_order_reconstructions(digits: np.ndarray) -> None:
    rng = np.random.default_rng(0)
    assert ssim(digits, digits, 1.0) == pytest.approx(np.ones(64))
    assert psnr(digits, digits, 1.0).min() == PSNR_CAP
    slight = np.clip(digits + 0.02 * rng.standard_normal(digits.shape), 0, 1)
    heavy = np.clip(digits + 0.3 * rng.standard_normal(digits.shape), 0, 1)
    mean_image = np.broadcast_to(digits.mean(axis=0), digits.shape)
    s_slight, s_heavy, s_mean = (ssim(digits, x, 1.0).mean() for x in (slight, heavy,
                                                                      mean_image))
    assert 0.9 < s_slight <= 1.0
    assert s_heavy < s_slight - 0.3 and s_mean < 0.5
    assert psnr(digits, slight, 1.0).mean() > psnr(digits, heavy, 1.0).mean() + 10
    with pytest.raises(ValueError, match="mismatched"):
        ssim(digits, digits[:, :, :8], 1.0)


def test_distance_correlation_detects_dependence() -> None:
    rng = np.random.default_rng(1)
    x = rng.standard_normal((200, 8))
    assert distance_correlation(x, 3 * x + 1) == pytest.approx(1.0)
    assert distance_correlation(x, x @ rng.standard_normal((8, 30))) > 0.9
    independent = distance_correlation(x, rng.standard_normal((200, 8)))
    assert independent < 0.45  # sample dCor is biased upwards at small n, never 0
    assert distance_correlation(x, x[:, :4]) > independent + 0.2  # half the input
    with pytest.raises(ValueError, match="paired"):
        distance_correlation(x, x[:10])


def test_token_recovery() -> None:
    ref = np.arange(12).reshape(3, 4)
    rec = ref.copy()
    rec[0, :2] = 99
    assert token_recovery(ref, rec) == pytest.approx(10 / 12)


def test_codec_round_trip_is_per_request_and_lossy_only_for_floats() -> None:
    rng = np.random.default_rng(2)
    a = rng.standard_normal((5, 4, 3, 3)).astype(np.float32)
    a[0] *= 100  # one request with a large range must not coarsen the others
    ids = rng.integers(0, 50, (5, 7))
    raw, f16 = codec_round_trip([a, ids], "raw"), codec_round_trip([a, ids], "fp16")
    assert raw[0] is a and raw[1] is ids
    np.testing.assert_allclose(f16[0], a, rtol=1e-3)
    q = codec_round_trip([a, ids], "int8+lz4")
    np.testing.assert_array_equal(q[1], ids)
    for i in range(5):
        step = (a[i].max() - a[i].min()) / 255
        assert np.abs(q[0][i] - a[i]).max() <= step / 2 + 1e-5
    assert np.abs(q[0][1:] - a[1:]).max() < 0.05
