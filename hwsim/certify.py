"""Static accumulator bounds and overflow certificates, in exact integers (never floats).

For output channel c with weights d_k = w_k - z_w and inputs e_k = x_k - z_x ranging over the
grid [x_min - z_x, x_max - z_x], every running value the MAC array holds is bias + a prefix of
whole chunks of sum_k d_k e_k, and every partial-sum register holds one chunk sum. Each is a
linear function of the inputs over a box, so its exact extremes are attained at a vertex:

    hi = b + sum_k max(d_k e_min, d_k e_max),   lo = b + sum_k min(d_k e_min, d_k e_max).

The certificate takes the max/min over every chunk-boundary prefix (the bias alone included) and
over every chunk, and derives the minimum signed widths. ``certified`` means no input in the grid
can cause an accumulator or partial-sum event under ``acc``; when it is False, the vertex input
that attains the violating extreme does cause one (tests check both by brute force). The
looser A2Q-style l1 bound |b| + sum_k |d_k| * max|e| is reported beside it (``l1_bound``); the
two agree when the input range is symmetric around the zero point.

Sums run in int64 only where a bound (computed with Python ints) proves they cannot overflow,
else in Python integers (object arrays), so K beyond 2^20 with 16-bit grids stays exact.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from hwsim.errors import HwsimError


def signed_bits_for(lo: int, hi: int) -> int:
    """Smallest A with -2^(A-1) <= lo and hi <= 2^(A-1) - 1 (at least 1)."""
    a = 1
    while lo < -(1 << (a - 1)) or hi > (1 << (a - 1)) - 1:
        a += 1
    return a


@dataclass
class Certificate:
    """Per-output-channel worst cases (Python ints) and the verdict for one accumulator config."""

    max_abs_acc: list[int]  # max |running value| over prefixes and inputs (tight, vertex-attained)
    acc_range: list[tuple[int, int]]  # (min, max) running value
    max_abs_partial: list[int]  # max |chunk sum| (tight); equals the whole sum when rows is None
    partial_range: list[tuple[int, int]]
    l1_bound: list[int]  # |b| + sum_k |w_k - z_w| * max|x - z_x| (A2Q l1 bound, >= max |final value|)
    min_acc_bits: list[int]
    min_partial_bits: list[int]
    headroom_bits: list[int] | None  # A - min_acc_bits (negative = can overflow); None if A unbounded
    certified: bool
    acc_bits: int | None = None
    partial_bits: int | None = None
    rows: int | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def layer_min_acc_bits(self) -> int:
        return max(self.min_acc_bits, default=1)

    @property
    def layer_min_partial_bits(self) -> int:
        return max(self.min_partial_bits, default=1)

    @property
    def partial_headroom_bits(self) -> list[int] | None:
        """P - min_partial_bits per channel (negative = a chunk sum can leave P bits); None without a partial stage."""
        return None if self.partial_bits is None else [self.partial_bits - m for m in self.min_partial_bits]

    @property
    def layer_headroom_bits(self) -> int | None:
        return None if self.headroom_bits is None else min(self.headroom_bits, default=0)

    def to_dict(self) -> dict:
        return {"certified": self.certified, "acc_bits": self.acc_bits, "partial_bits": self.partial_bits,
                "rows": self.rows, "min_acc_bits": self.layer_min_acc_bits,
                "min_partial_bits": self.layer_min_partial_bits, "headroom_bits": self.layer_headroom_bits,
                "partial_headroom_bits": (None if self.partial_bits is None
                                          else min(self.partial_headroom_bits, default=0)),
                "max_abs_acc": max(self.max_abs_acc, default=0), "max_abs_partial": max(self.max_abs_partial, default=0),
                "l1_bound": max(self.l1_bound, default=0)}


def _cumsum_exact(a: np.ndarray, bound: int) -> np.ndarray:
    """Cumulative sums along axis 1; int64 when ``bound`` (>= every |partial sum|) < 2^62, else Python ints."""
    if bound < (1 << 62):
        return np.cumsum(a.astype(np.int64), axis=1)
    return np.cumsum(a.astype(object), axis=1)


def certify_linear(w_q, bias_q, w_zero_point, x_min: int, x_max: int, x_zero_point: int, acc) -> Certificate:
    """Certificate for a linear/conv layer with weights flattened per output channel in canonical order [M, K].

    Inputs range over the integer grid [x_min, x_max] with zero point x_zero_point.
    """
    w = np.asarray(w_q)
    if w.ndim != 2 or w.dtype.kind not in "iu":
        raise HwsimError(f"certify_linear: w_q must be an integer array [M, K], got {w.dtype} {w.shape}")
    M, K = w.shape
    x_min, x_max, zx = int(x_min), int(x_max), int(x_zero_point)
    if x_min > x_max:
        raise HwsimError(f"certify_linear: x_min {x_min} > x_max {x_max}")
    zw = np.asarray(w_zero_point, dtype=np.int64).reshape(-1)
    if zw.size not in (1, M):
        raise HwsimError(f"certify_linear: w_zero_point has {zw.size} entries: allowed 1 or {M}")
    zw = np.broadcast_to(zw, (M,))
    b = [0] * M if bias_q is None else [int(v) for v in np.asarray(bias_q).reshape(-1)]
    if len(b) != M:
        raise HwsimError(f"certify_linear: bias_q has {len(b)} entries: allowed {M}")
    e_lo, e_hi = x_min - zx, x_max - zx
    emax = max(abs(e_lo), abs(e_hi))
    d = w.astype(np.int64) - zw[:, None]  # |d| < 2^63 for any int64 grid values we accept
    if d.size and int(np.abs(d).max()) >= 1 << 31 or emax >= 1 << 31:
        raise HwsimError("certify_linear: |w - z_w| and |x - z_x| must be below 2^31")
    hi_k = np.maximum(d * e_lo, d * e_hi)  # |.| < 2^62: exact in int64
    lo_k = np.minimum(d * e_lo, d * e_hi)
    abs_sum = [int(v) for v in np.abs(d).sum(axis=1, dtype=np.int64)] if K < (1 << 31) else \
        [sum(abs(int(v)) for v in row) for row in d]
    bound = max((s * emax for s in abs_sum), default=0)
    R = acc.rows if acc.rows is not None else max(K, 1)
    R = min(R, max(K, 1))
    ends = np.array(list(range(R, K, R)) + [K], dtype=np.int64) if K else np.zeros(0, np.int64)  # chunk ends
    cs_hi = _cumsum_exact(hi_k, bound)  # prefix extremes (without bias)
    cs_lo = _cumsum_exact(lo_k, bound)
    max_abs_acc, acc_range, max_abs_part, part_range, l1, min_a, min_p = [], [], [], [], [], [], []
    for c in range(M):
        if K:
            ph = [int(v) for v in cs_hi[c, ends - 1]]
            pl = [int(v) for v in cs_lo[c, ends - 1]]
        else:
            ph, pl = [], []
        run_hi = max([b[c]] + [b[c] + v for v in ph])
        run_lo = min([b[c]] + [b[c] + v for v in pl])
        starts_h = [0] + ph[:-1]
        starts_l = [0] + pl[:-1]
        ch_hi = max((h - s for h, s in zip(ph, starts_h)), default=0)  # each chunk's own extremes
        ch_lo = min((lo - s for lo, s in zip(pl, starts_l)), default=0)
        acc_range.append((run_lo, run_hi))
        part_range.append((ch_lo, ch_hi))
        max_abs_acc.append(max(abs(run_lo), abs(run_hi)))
        max_abs_part.append(max(abs(ch_lo), abs(ch_hi)))
        l1.append(abs(b[c]) + abs_sum[c] * emax)
        min_a.append(signed_bits_for(run_lo, run_hi))
        min_p.append(signed_bits_for(ch_lo, ch_hi))
    A, P = acc.bits, acc.partial_bits
    ok_a = A is None or all(m <= A for m in min_a)
    ok_p = P is None or all(m <= P for m in min_p)
    return Certificate(max_abs_acc=max_abs_acc, acc_range=acc_range, max_abs_partial=max_abs_part,
                       partial_range=part_range, l1_bound=l1, min_acc_bits=min_a, min_partial_bits=min_p,
                       headroom_bits=None if A is None else [A - m for m in min_a], certified=ok_a and ok_p,
                       acc_bits=A, partial_bits=P, rows=acc.rows)


def certify_conv2d(w_q, bias_q, w_zero_point, x_min: int, x_max: int, x_zero_point: int, acc) -> Certificate:
    """Certificate for a conv2d weight [Cout, Cin/groups, kh, kw] (flattened in canonical order (cin, kh, kw)).

    Padding pixels hold the zero point, so the input box is widened to contain x_zero_point.
    """
    w = np.asarray(w_q)
    if w.ndim != 4:
        raise HwsimError(f"certify_conv2d: w_q must be [Cout, Cin/groups, kh, kw], got {w.shape}")
    zx = int(x_zero_point)
    return certify_linear(w.reshape(w.shape[0], -1), bias_q, w_zero_point, min(int(x_min), zx), max(int(x_max), zx),
                          zx, acc)
