"""Range setting: ACIQ constants and clips, Lp/MSE searches against brute force, BN and CE ranges."""

import dataclasses

import numpy as np
import pytest

from hwsim.profile import TensorFormat
from hwsim.ptq import ranges


@pytest.mark.parametrize("dist", ["laplace", "gauss"])
@pytest.mark.parametrize("bits", range(2, 9))
def test_aciq_constants_minimise_banners_closed_form(dist, bits):
    """Banner et al. 2019's α* table = argmin of their closed-form expected MSE (to their 2-3 digits)."""
    table = ranges.ACIQ_LAPLACE if dist == "laplace" else ranges.ACIQ_GAUSS
    num = ranges.aciq_alpha_numeric(bits, dist)
    assert abs(table[bits] - num) <= 0.01 * num
    # and it is a minimum: 2% either side is worse
    e = ranges.aciq_expected_mse(num, bits, dist)
    assert e < ranges.aciq_expected_mse(num * 0.98, bits, dist) and e < ranges.aciq_expected_mse(num * 1.02, bits, dist)


@pytest.mark.parametrize("dist", ["laplace", "gauss"])
@pytest.mark.parametrize("bits", range(2, 9))
def test_aciq_range_is_the_closed_form_on_synthetic_data(dist, bits):
    rng = np.random.default_rng(bits)
    x = rng.laplace(0, 0.5, 200_000) if dist == "laplace" else rng.normal(0, 0.5, 200_000)
    lo, hi = ranges.aciq_range(x.reshape(1, -1), bits, dist)
    mu = x.mean()
    s = np.mean(np.abs(x - mu)) if dist == "laplace" else x.std()
    a = (ranges.ACIQ_LAPLACE if dist == "laplace" else ranges.ACIQ_GAUSS)[bits] * s
    assert lo[0] == pytest.approx(max(x.min(), mu - a)) and hi[0] == pytest.approx(min(x.max(), mu + a))
    # auto picks the right distribution from the kurtosis
    lo2, hi2 = ranges.aciq_range(x.reshape(1, -1), bits, "auto")
    assert (lo2[0], hi2[0]) == (lo[0], hi[0])


# ACIQ's closed form models quantization noise as uniform (Δ²/12): at 2 bits that is coarse.
ACIQ_TOLERANCE = {2: 1.10, 3: 1.05, 4: 1.05, 5: 1.05, 6: 1.05, 7: 1.05, 8: 1.05}


@pytest.mark.parametrize("dist", ["laplace", "gauss"])
@pytest.mark.parametrize("bits", range(2, 9))
def test_aciq_within_tolerance_of_brute_force_mse(dist, bits):
    """On samples, the MSE at ACIQ's clip is within ACIQ_TOLERANCE × the brute-force optimum
    (symmetric grid with 2^M levels over [−α, α], as Banner's model assumes)."""
    rng = np.random.default_rng(10 + bits)
    x = rng.laplace(0, 1, 100_000) if dist == "laplace" else rng.normal(0, 1, 100_000)
    levels = 2 ** bits

    def mse(a):
        d = 2 * a / levels
        q = np.clip(np.floor(x / d) + 0.5, -levels / 2 + 0.5, levels / 2 - 0.5) * d  # midrise, 2^M levels
        return np.mean((x - q) ** 2)

    grid = np.linspace(0.3, 14, 1400)
    best = min(mse(a) for a in grid)
    s = np.mean(np.abs(x - x.mean())) if dist == "laplace" else x.std()
    a = ranges.aciq_alpha(bits, dist) * s
    assert mse(a) <= ACIQ_TOLERANCE[bits] * best


def test_aciq_one_sided_uses_the_clip_from_zero():
    x = np.maximum(np.random.default_rng(0).laplace(0, 1, 50_000), 0)
    lo, hi = ranges.aciq_range(x.reshape(1, -1), 4, "laplace")
    assert lo[0] == 0.0
    assert hi[0] == pytest.approx(ranges.ACIQ_LAPLACE[5] * x[x > 0].mean())


def _brute(x, fmt, p, n=400):
    """Dense brute force of the same parametrisation as ranges.lp_range."""
    mn, mx = x.min(), x.max()
    if fmt.symmetric:
        amax = max(abs(mn), abs(mx)) if fmt.signed else mx
        lo0 = -amax if fmt.signed else 0.0
        errs = [(ranges.grid_error(x[None], np.array([a * lo0]), np.array([a * amax]), fmt, p)[0], a)
                for a in np.linspace(1e-3, 1, n * 5)]
        return min(errs)[0]
    g = np.linspace(1e-3, 1, n)
    return min(ranges.grid_error(x[None], np.array([a * mn]), np.array([b * mx]), fmt, p)[0] for a in g for b in g)


@pytest.mark.parametrize("p", [2.0, 2.5, 3.5])
@pytest.mark.parametrize("fmt", [TensorFormat(bits=4, symmetric=True, narrow=True),
                                 TensorFormat(bits=3, symmetric=False),
                                 TensorFormat(bits=4, symmetric=True, scale="pow2"),
                                 TensorFormat(bits=4, signed=False, symmetric=False)], ids=["sym", "asym", "pow2", "unsigned"])
def test_lp_and_mse_minimizers_match_brute_force(p, fmt):
    rng = np.random.default_rng(int(p * 10))
    x = rng.laplace(0.3, 1, 300) if fmt.signed else np.abs(rng.laplace(0, 1, 300))
    lo, hi = ranges.lp_range(x[None], fmt, p)
    got = ranges.grid_error(x[None], lo, hi, fmt, p)[0]
    best = _brute(x, fmt, p, n=120 if not fmt.symmetric else 400)
    assert got <= best * 1.01 + 1e-12


def test_mse_is_lp_2_and_per_channel_rows_are_independent():
    rng = np.random.default_rng(3)
    w = rng.normal(0, 1, (4, 50)) * np.array([[0.1], [1], [3], [10]])
    fmt = TensorFormat(bits=4, symmetric=True, narrow=True)
    lo, hi = ranges.tensor_range("mse", w, fmt)
    for r in range(4):
        lo_r, hi_r = ranges.lp_range(w[r:r + 1], fmt, 2.0)
        assert (lo[r], hi[r]) == (lo_r[0], hi_r[0])


def test_search_ignores_step_scale():
    x = np.random.default_rng(0).normal(0, 1, (1, 500))
    f1 = TensorFormat(bits=4)
    f2 = dataclasses.replace(f1, step_scale=1.3)
    assert ranges.lp_range(x, f1, 2.0)[1][0] == ranges.lp_range(x, f2, 2.0)[1][0]


def test_bn_range_is_beta_plus_minus_six_gamma():
    g, b = np.array([1.0, -2.0]), np.array([0.5, -1.0])
    assert ranges.bn_range(g, b, None) == (-13.0, 11.0)  # WP eq. 18-19: min(β − 6|γ|), max(β + 6|γ|)
    assert ranges.bn_range(g, b, "relu") == (0.0, 11.0)
    assert ranges.bn_range(g, b, "relu6") == (0.0, 6.0)


def test_cross_entropy_range_beats_minmax_on_outlier_logits():
    rng = np.random.default_rng(0)
    v = rng.normal(0, 2, (200, 10))
    v[0, 0] = 80.0  # one outlier stretches min-max
    fmt = TensorFormat(bits=3, symmetric=False)
    lo, hi = ranges.cross_entropy_range(v, fmt)
    assert hi < 80.0 and lo >= v.min()
