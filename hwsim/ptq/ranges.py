"""Range setting: the clipping range [lo, hi] of a tensor (per tensor, or per row = output channel).

Every method returns a range; :func:`hwsim.compile.scale_zero_point` turns it into a scale and
zero point under the profile's constraints (bits with first/last overrides, signed, symmetric,
narrow, pow2 scales, step_scale), so every method respects all of them. The searches (MSE, Lp,
cross-entropy) evaluate the grid the profile really produces (pow2 rounding included), with
``step_scale`` left out of the search and applied afterwards (it is a deliberate perturbation
of the chosen step, KURE Fig. 4).

Methods (docs/ptq.md): minmax, mse (WP eq. 16), lp (LAPQ eq. 12), percentile, aciq (Banner et
al. 2019), bn (WP eq. 18-19, activations), cross_entropy (WP eq. 17, the last layer's output).
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from hwsim.compile import fake_quant, int_grid, scale_zero_point
from hwsim.profile import TensorFormat

WEIGHT_METHODS = ("minmax", "mse", "lp", "percentile", "aciq")
ACTIVATION_METHODS = ("minmax", "mse", "lp", "percentile", "aciq", "bn")
SEARCH_SAMPLES = 20_000  # activation values a 2-D search looks at (seeded subsample)

# Banner, Nahshan, Soudry: "Post training 4-bit quantization of convolutional networks for
# rapid-deployment" (NeurIPS 2019), §4 (ACIQ): optimal clipping α* for M bits, in units of the
# Laplace scale b and of the Gaussian σ, minimising their closed-form expected MSE
# (aciq_expected_mse below). tests/ptq/test_ranges.py re-derives every constant numerically.
ACIQ_LAPLACE = {2: 2.83, 3: 3.89, 4: 5.03, 5: 6.2, 6: 7.41, 7: 8.64, 8: 9.89}
ACIQ_GAUSS = {2: 1.71, 3: 2.15, 4: 2.55, 5: 2.94, 6: 3.29, 7: 3.61, 8: 3.92}
# kurtosis of the Laplace / Gaussian (6 / 3) and of their one-sided halves (exponential 9,
# half-normal 3.869): a tensor is called Laplace when its kurtosis is nearer the Laplace value
KURT_SPLIT_TWO_SIDED = (6.0 + 3.0) / 2
KURT_SPLIT_ONE_SIDED = (9.0 + 3.869) / 2


# ----------------------------------------------------------------------------- ACIQ
def aciq_expected_mse(alpha: float, bits: int, dist: str, scale: float = 1.0) -> float:
    """Banner et al.'s closed-form expected MSE of clipping at ±α plus uniform quantization with
    2^M levels over [−α, α] (noise α²/(3·4^M)): Laplace(0, b) and N(0, σ²)."""
    a, noise = alpha / scale, (alpha / scale) ** 2 / (3 * 4 ** bits)
    if dist == "laplace":  # 2b²·e^(−α/b) + α²/(3·4^M)
        clip = 2 * math.exp(-a)
    else:  # (α²+σ²)(1 − erf(α/√2σ)) − √(2/π)·α·σ·e^(−α²/2σ²) + α²/(3·4^M)
        clip = (a * a + 1) * (1 - math.erf(a / math.sqrt(2))) - math.sqrt(2 / math.pi) * a * math.exp(-a * a / 2)
    return (clip + noise) * scale ** 2


def aciq_alpha(bits: int, dist: str) -> float:
    """α*/scale for M bits: Banner's table for 2-8 bits, else the numerical minimum of the closed form."""
    table = ACIQ_LAPLACE if dist == "laplace" else ACIQ_GAUSS
    if bits in table:
        return table[bits]
    return aciq_alpha_numeric(bits, dist)


def aciq_alpha_numeric(bits: int, dist: str) -> float:
    """argmin_α of :func:`aciq_expected_mse` (unit scale): a dense grid, then golden-section search."""
    grid = np.linspace(0.05, 40, 8000)
    k = int(np.argmin([aciq_expected_mse(a, bits, dist) for a in grid]))
    a, b = grid[max(k - 1, 0)], grid[min(k + 1, grid.size - 1)]
    r = (math.sqrt(5) - 1) / 2
    for _ in range(100):
        c, d = b - r * (b - a), a + r * (b - a)
        if aciq_expected_mse(c, bits, dist) < aciq_expected_mse(d, bits, dist):
            b = d
        else:
            a = c
    return (a + b) / 2


def _kurtosis(x: np.ndarray, axis=None) -> np.ndarray:
    mu = x.mean(axis=axis, keepdims=True)
    d = x - mu
    var = (d ** 2).mean(axis=axis)
    return np.where(var > 0, (d ** 4).mean(axis=axis) / np.where(var > 0, var, 1) ** 2, 3.0)


def aciq_range(x: np.ndarray, bits: int, dist: str = "auto"):
    """ACIQ clipping of the rows of ``x`` (2-D, one row per channel/tensor) -> (lo, hi) arrays.

    Two-sided rows (negative values present): centred at the mean, α = α*(M)·b (Laplace, b =
    mean |x − μ|) or α*(M)·σ; one-sided rows (x ≥ 0, post-ReLU): [0, α] with the one-sided α,
    which is the two-sided α* of M+1 bits (half the range, half the levels: the same step) with
    b = mean(x > 0) (exponential fit) or σ = rms(x > 0) (half-normal fit). ``dist = "auto"``
    picks per row by kurtosis: Laplace when it is nearer 6 (one-sided: 9) than 3 (3.87).
    """
    x = np.asarray(x, np.float64)
    lo, hi = np.empty(x.shape[0]), np.empty(x.shape[0])
    for r, row in enumerate(x):
        mn, mx = float(row.min()), float(row.max())
        if mn >= 0:  # one-sided
            pos = row[row > 0]
            if pos.size == 0:
                lo[r], hi[r] = 0.0, 0.0
                continue
            d = dist
            if d == "auto":
                full = np.concatenate([pos, -pos])  # kurtosis of the mirrored half
                d = "laplace" if _kurtosis(full) > KURT_SPLIT_TWO_SIDED else "gauss"
            s = float(pos.mean()) if d == "laplace" else float(np.sqrt(np.mean(pos ** 2)))
            lo[r], hi[r] = 0.0, min(mx, aciq_alpha(bits + 1, d) * s)
            continue
        mu = float(row.mean())
        d = dist
        if d == "auto":
            d = "laplace" if _kurtosis(row) > KURT_SPLIT_TWO_SIDED else "gauss"
        s = float(np.mean(np.abs(row - mu))) if d == "laplace" else float(row.std())
        a = aciq_alpha(bits, d) * s
        lo[r], hi[r] = max(mn, mu - a), min(mx, mu + a)
    return lo, hi


# ----------------------------------------------------------------------------- searches
def _search_fmt(fmt: TensorFormat) -> TensorFormat:
    return dataclasses.replace(fmt, step_scale=1.0)


def grid_error(x: np.ndarray, lo, hi, fmt: TensorFormat, p: float = 2.0) -> np.ndarray:
    """Mean |x − Q(x)|^p per row of ``x`` for the grid the profile builds from [lo, hi] (no step_scale)."""
    qmin, qmax = int_grid(fmt, fmt.bits)
    s, z = scale_zero_point(lo, hi, _search_fmt(fmt), qmin, qmax)
    s, z = np.asarray(s, np.float64).reshape(-1, 1), np.asarray(z).reshape(-1, 1)
    e = np.abs(x - fake_quant(x, s, z, qmin, qmax))
    return (e * e if p == 2 else e ** p).mean(axis=1)


def _two_sided(fmt: TensorFormat, x: np.ndarray) -> bool:
    """Whether the grid has two free ends (asymmetric, and values on both sides of zero)."""
    return not fmt.symmetric and bool((x.min(axis=1) < 0).any() and (x.max(axis=1) > 0).any())


def lp_range(x: np.ndarray, fmt: TensorFormat, p: float = 2.0, coarse: int = 50, fine: int = 21):
    """argmin over the clipping range of E|x − Q(x)|^p per row (WP eq. 16 for p = 2; LAPQ eq. 12).

    Symmetric grids: a 1-D search over the clip c = α·max|x| (unsigned: α·max x). Asymmetric
    grids: the 2-D search over (q_min, q_max) = (a·min x, b·max x) of WP eq. 16. Coarse grid over
    (0, 1], then a finer grid around the best point.
    """
    x = np.asarray(x, np.float64)
    mn, mx = x.min(axis=1), x.max(axis=1)
    n = x.shape[0]
    if not _two_sided(fmt, x):
        if fmt.symmetric and fmt.signed:
            amax = np.maximum(np.abs(mn), np.abs(mx))
            base_lo, base_hi = -amax, amax
        else:
            base_lo, base_hi = np.minimum(mn, 0), np.maximum(mx, 0)
        best_a, best_e = np.ones(n), np.full(n, np.inf)

        def scan(alphas):
            nonlocal best_a, best_e
            for a in alphas:
                a = np.clip(a, 1e-6, 1.0)
                e = grid_error(x, a * base_lo, a * base_hi, fmt, p)
                better = e < best_e
                best_a, best_e = np.where(better, a, best_a), np.where(better, e, best_e)

        scan(np.linspace(1.0 / coarse, 1.0, coarse)[:, None] * np.ones(n))
        step = 1.0 / coarse
        scan(best_a[None, :] + np.linspace(-step, step, fine)[:, None])
        return best_a * base_lo, best_a * base_hi
    # 2-D (q_min, q_max) search, WP eq. 16
    best = (np.ones(n), np.ones(n))
    best_e = np.full(n, np.inf)

    def scan2(alist, blist):
        nonlocal best, best_e
        for a in alist:
            for b in blist:
                a_, b_ = np.clip(a, 1e-6, 1.0), np.clip(b, 1e-6, 1.0)
                e = grid_error(x, a_ * mn, b_ * mx, fmt, p)
                better = e < best_e
                best = (np.where(better, a_, best[0]), np.where(better, b_, best[1]))
                best_e = np.where(better, e, best_e)

    k = max(coarse // 3, 8)
    g = np.linspace(1.0 / k, 1.0, k)
    scan2([np.full(n, a) for a in g], [np.full(n, b) for b in g])
    step = 1.0 / k
    offs = np.linspace(-step, step, 9)
    a0, b0 = best
    scan2([a0 + o for o in offs], [b0 + o for o in offs])
    return best[0] * mn, best[1] * mx


def percentile_range(x: np.ndarray, pct: float):
    x = np.asarray(x, np.float64)
    return np.percentile(x, 100 - pct, axis=1), np.percentile(x, pct, axis=1)


def cross_entropy_range(logits: np.ndarray, fmt: TensorFormat, steps: int = 60):
    """WP eq. 17: the clip of the last layer's output minimising CE(softmax(V), softmax(V̂)).

    A 1-D search over the shrink factor α of the min-max range (per-tensor grid).
    """
    v = np.asarray(logits, np.float64).reshape(len(logits), -1)
    mn, mx = float(v.min()), float(v.max())
    qmin, qmax = int_grid(fmt, fmt.bits)
    p = _softmax(v)
    best, best_ce = (mn, mx), np.inf
    for a in np.linspace(1.0 / steps, 1.0, steps):
        s, z = scale_zero_point(a * mn, a * mx, _search_fmt(fmt), qmin, qmax)
        vq = fake_quant(v, float(s), int(z), qmin, qmax)
        ce = float(-np.mean(np.sum(p * _log_softmax(vq), axis=1)))
        if ce < best_ce:
            best, best_ce = (a * mn, a * mx), ce
    return best


def _log_softmax(v: np.ndarray) -> np.ndarray:
    m = v.max(axis=1, keepdims=True)
    return v - m - np.log(np.sum(np.exp(v - m), axis=1, keepdims=True))


def _softmax(v: np.ndarray) -> np.ndarray:
    return np.exp(_log_softmax(v))


def bn_range(gamma: np.ndarray, beta: np.ndarray, activation: str | None, alpha: float = 6.0):
    """WP eq. 18-19: [min(β − α|γ|), max(β + α|γ|)] over channels, then the fused ReLU/ReLU6 clip."""
    g, b = np.abs(np.asarray(gamma, np.float64)), np.asarray(beta, np.float64)
    lo, hi = float(np.min(b - alpha * g)), float(np.max(b + alpha * g))
    if activation in ("relu", "relu6"):
        lo = max(lo, 0.0)
    if activation == "relu6":
        hi = min(hi, 6.0)
    return lo, max(hi, lo)


def subsample(v: np.ndarray, n: int = SEARCH_SAMPLES, seed: int = 0) -> np.ndarray:
    """A seeded subsample of at most ``n`` values (its min and max always included)."""
    v = np.asarray(v).reshape(-1)
    if v.size <= n:
        return v
    idx = np.random.default_rng(seed).choice(v.size, n - 2, replace=False)
    return np.concatenate([v[idx], [v.min(), v.max()]])


def tensor_range(method: str, x2: np.ndarray, fmt: TensorFormat, *, p: float = 2.0, percentile: float = 99.99,
                 aciq_dist: str = "auto"):
    """Dispatch for weights (rows = output channels) and activations (one row): -> (lo, hi) arrays."""
    if method == "minmax":
        return x2.min(axis=1), x2.max(axis=1)
    if method == "mse":
        return lp_range(x2, fmt, 2.0)
    if method == "lp":
        return lp_range(x2, fmt, p)
    if method == "percentile":
        return percentile_range(x2, percentile)
    if method == "aciq":
        return aciq_range(x2, fmt.bits, aciq_dist)
    raise ValueError(method)
