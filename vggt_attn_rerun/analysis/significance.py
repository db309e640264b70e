"""Intervals, p-values and multiple-comparison correction for gains (numpy and math only).

A gain is ``score - null`` where the null is the exact expectation of the score under the null
hypothesis (a head whose map is unrelated to the geometry: ``consistency`` and ``epipolar`` give
each null), so under the null hypothesis a unit's gain has mean 0. Units are scenes in a study
and queries in a single scene. Per cell (e.g. one block x head):

- ``mean_interval``: the mean over the units and its 95% interval, Student's t,
  ``mean -+ t(0.975, n - 1) * sd / sqrt(n)`` (sample standard deviation; NaN for n < 2).
- ``one_sided_p``: the p-value of the one-sided t-test of "mean gain > 0" (larger is better for
  every gain). A cell whose units all equal 0 exactly (a uniform head) gets p = 1; n < 2 gets NaN.
- ``bh_qvalues``: Benjamini-Hochberg q-values over the cells tested together (the block x head
  cells of one measure): a cell is significant at false-discovery rate ``alpha`` when ``q <= alpha``.
- ``finding_p``: the intersection-union test of "the gain beats its uniform null AND its
  positional control": ``p = max(p_null, p_position)``. A head that attends to the query's own
  (row, col) in every view lands near the correspondence whenever the camera moves little, and on
  the epipolar line under sideways or forward motion; it beats the uniform null without matching
  anything. A finding must beat both, and the test keeps its level (each one-sided test has level
  alpha, so the maximum does too) without any correction for taking two.
"""

from __future__ import annotations

import math
import statistics
from functools import lru_cache

import numpy as np

#: the level of the tests and of the false-discovery rate unless told otherwise
ALPHA = 0.05


def _t_two_sided_mass(t: float, df: int) -> float:
    """P(|T| <= t) for Student's t with ``df`` degrees of freedom (Abramowitz and Stegun 26.7.3/4)."""
    theta = math.atan(t / math.sqrt(df))
    c2, s = math.cos(theta) ** 2, math.sin(theta)
    if df % 2 == 1:
        term, total = math.cos(theta), 0.0
        for k in range(1, (df - 1) // 2 + 1):  # cos + 2/3 cos^3 + (2*4)/(3*5) cos^5 + ...
            total += term
            term *= c2 * (2 * k) / (2 * k + 1)
        return (2 / math.pi) * (theta + s * total) if df > 1 else 2 * theta / math.pi
    term, total = 1.0, 0.0
    for k in range(1, df // 2 + 1):  # 1 + 1/2 cos^2 + (1*3)/(2*4) cos^4 + ...
        total += term
        term *= c2 * (2 * k - 1) / (2 * k)
    return s * total


def t_sf(t: float, df: int) -> float:
    """P(T > t) for Student's t with ``df >= 1`` degrees of freedom (the normal tail for df > 1000)."""
    if not math.isfinite(t):
        return 0.0 if t > 0 else 1.0
    if df > 1000:
        return 1.0 - statistics.NormalDist().cdf(t)
    tail = (1.0 - _t_two_sided_mass(abs(t), df)) / 2
    return tail if t >= 0 else 1.0 - tail


@lru_cache(maxsize=256)
def t_quantile(p: float, df: int) -> float:
    """The ``p`` quantile (p > 0.5) of Student's t with ``df >= 1`` degrees of freedom, by bisection."""
    if df < 1 or not 0.5 < p < 1:
        raise ValueError(f"t_quantile needs df >= 1 and 0.5 < p < 1, got df={df}, p={p}")
    if df > 1000:  # the series below would need df/2 terms; the Cornish-Fisher expansion is exact to ~1e-12 here
        z = statistics.NormalDist().inv_cdf(p)
        return (z + (z**3 + z) / (4 * df) + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * df**2)
                + (3 * z**7 + 19 * z**5 + 17 * z**3 - 15 * z) / (384 * df**3))  # fmt: skip
    mass = 2 * p - 1
    lo, hi = 0.0, 1.0
    while _t_two_sided_mass(hi, df) < mass:
        hi *= 2
    for _ in range(64):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if _t_two_sided_mass(mid, df) < mass else (lo, mid)
    return (lo + hi) / 2


def _mean_sd(values: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``values [G, N]`` (NaN = missing) -> mean, sample sd, n ``[G]`` over the finite entries."""
    ok = np.isfinite(values)
    n = ok.sum(axis=1)
    v = np.where(ok, values, 0.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(n > 0, v.sum(axis=1) / np.maximum(n, 1), np.nan)
        var = np.where(ok, (values - mean[:, None]) ** 2, 0.0).sum(axis=1) / np.maximum(n - 1, 1)
    return mean, np.sqrt(var), n


def mean_interval(values: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``values [G, N]`` (NaN = missing) -> mean, low, high, n ``[G]`` over the finite entries."""
    mean, sd, n = _mean_sd(values)
    tq = np.array([t_quantile(0.975, int(k) - 1) if k >= 2 else np.nan for k in n])
    half = tq * sd / np.sqrt(np.maximum(n, 1))
    return mean, mean - half, mean + half, n


#: gains this close to 0 are 0: a uniform head's gain is 0 up to float rounding (about 1e-15)
ROUNDING = 1e-12


def one_sided_p(values: np.ndarray) -> np.ndarray:
    """``values [G, N]`` unit gains (NaN = missing) -> ``[G]`` p-values of "mean > 0" (t-test).

    Gains within ``ROUNDING`` of 0 count as 0 (float rounding must not become a finding). p = 1
    where every unit is 0 (nothing to find), p = 0 or 1 where the units agree exactly on another
    value (sd 0), NaN where fewer than 2 units have a value.
    """
    values = np.where(np.abs(values) <= ROUNDING, 0.0, values)
    mean, sd, n = _mean_sd(values)
    out = np.full(mean.shape, np.nan)
    for g in range(mean.size):
        if n[g] < 2:
            continue
        if sd[g] == 0:
            out[g] = 0.0 if mean[g] > 0 else 1.0
        else:
            out[g] = t_sf(float(mean[g] / (sd[g] / math.sqrt(n[g]))), int(n[g]) - 1)
    return out


def bh_qvalues(p: np.ndarray) -> np.ndarray:
    """Benjamini-Hochberg q-values of ``p [...]`` over its finite entries (NaN stays NaN).

    ``q_(i) = min over j >= i of p_(j) * m / j`` for the sorted p-values, capped at 1, where m
    counts the finite p-values: ``q <= alpha`` controls the false-discovery rate at ``alpha``.
    """
    p = np.asarray(p, np.float64)
    flat = p.ravel()
    ok = np.flatnonzero(np.isfinite(flat))
    out = np.full(flat.shape, np.nan)
    if ok.size:
        order = ok[np.argsort(flat[ok], kind="stable")]
        m = ok.size
        scaled = flat[order] * m / np.arange(1, m + 1)
        out[order] = np.minimum(np.minimum.accumulate(scaled[::-1])[::-1], 1.0)
    return out.reshape(p.shape)


def finding_p(values: np.ndarray, position_values: np.ndarray) -> np.ndarray:
    """``[G, N]`` unit gains against the null and against position -> ``[G]`` intersection-union p-values.

    ``max(one_sided_p(values), one_sided_p(position_values))``: small only where the gain beats
    both its uniform null and its positional control (NaN where either is NaN).
    """
    return np.maximum(one_sided_p(values), one_sided_p(position_values))  # NaN propagates


def cell_tests(values: np.ndarray, position_values: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """``values [G, N]`` unit gains -> ``mean, low, high, n, p, q`` ``[G]`` (q: BH over the G cells).

    With ``position_values`` (the same units' gains against the positional control) p is the
    intersection-union ``finding_p``: a cell is significant only where it beats both.
    """
    mean, low, high, n = mean_interval(values)
    p = one_sided_p(values) if position_values is None else finding_p(values, position_values)
    return {"mean": mean, "low": low, "high": high, "n": n, "p": p, "q": bh_qvalues(p)}
