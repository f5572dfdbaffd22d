"""Statistics of a comparison: paired-by-seed differences with a confidence interval and a test.

Two strategies run with the same seed see the same problem order and the same held-out problems, so
their per-seed results are paired: the comparison of strategy A with baseline B is the mean of the
per-seed differences d_s = A_s - B_s, with

- a Student-t confidence interval ``mean(d) ± t_{n-1, 1-α/2} · sd(d) / sqrt(n)`` and the two-sided
  paired t-test ``t = mean(d) / (sd(d) / sqrt(n))``, p = P(|T_{n-1}| >= |t|) (docs/methods.md §5: a
  strategy beats another only when the interval excludes 0);
- optionally a percentile bootstrap interval over seeds (resampling the d_s with replacement).

Everything is plain numpy and :mod:`math` (the Student-t distribution through the regularized
incomplete beta function), so no SciPy is needed.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np


def _betacf(a: float, b: float, x: float, iters: int = 300, eps: float = 1e-15) -> float:
    """The continued fraction of the incomplete beta function (modified Lentz's method)."""
    tiny = 1e-300
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, iters + 1):
        m2 = 2 * m
        aa = m * (b - m) * x / ((qam + m2) * (a + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        h *= d * c
        aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < eps:
            break
    return h


def betainc(a: float, b: float, x: float) -> float:
    """The regularized incomplete beta function I_x(a, b), for a, b > 0 and 0 <= x <= 1."""
    if not (a > 0 and b > 0):
        raise ValueError(f"Expected a > 0 and b > 0, got a={a}, b={b}.")
    if not 0.0 <= x <= 1.0:
        raise ValueError(f"Expected 0 <= x <= 1, got {x}.")
    if x in (0.0, 1.0):
        return x
    log_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    if x < (a + 1.0) / (a + b + 2.0):
        return math.exp(log_front) * _betacf(a, b, x) / a
    return 1.0 - math.exp(log_front) * _betacf(b, a, 1.0 - x) / b


def t_sf_two_sided(t: float, df: float) -> float:
    """P(|T| >= |t|) for Student's t with ``df`` degrees of freedom: I_{df/(df+t^2)}(df/2, 1/2)."""
    if df <= 0:
        raise ValueError(f"Expected df > 0, got {df}.")
    if not math.isfinite(t):
        return 0.0 if not math.isnan(t) else float("nan")
    return betainc(df / 2.0, 0.5, df / (df + t * t))


def t_quantile(q: float, df: float) -> float:
    """The ``q`` quantile of Student's t with ``df`` degrees of freedom (bisection on the CDF)."""
    if not 0.0 < q < 1.0:
        raise ValueError(f"Expected 0 < q < 1, got {q}.")
    if q == 0.5:
        return 0.0
    target = 2.0 * min(q, 1.0 - q)  # two-sided tail mass at |t|
    lo, hi = 0.0, 1.0
    while t_sf_two_sided(hi, df) > target:
        hi *= 2.0
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if t_sf_two_sided(mid, df) > target:
            lo = mid
        else:
            hi = mid
    x = 0.5 * (lo + hi)
    return x if q > 0.5 else -x


@dataclass(frozen=True)
class PairedDifference:
    """Mean per-seed difference of a strategy and a baseline, its confidence interval and paired t-test."""

    n: int
    """Seeds both runs have a finite value for."""
    mean: float
    """mean over seeds of (strategy - baseline)."""
    sd: float
    """Sample standard deviation (ddof 1) of the per-seed differences."""
    ci_low: float
    ci_high: float
    """The Student-t confidence interval of the mean difference (nan with fewer than 2 seeds)."""
    t: float
    """Paired t statistic mean / (sd / sqrt(n)) (inf when every difference is the same non-zero value)."""
    p: float
    """Two-sided p-value of the paired t-test."""
    confidence: float = 0.95

    def excludes_zero(self) -> bool:
        """Whether the interval lies strictly on one side of 0 (the difference is resolved)."""
        return bool(self.ci_low > 0 or self.ci_high < 0)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def paired_difference(values: Sequence[float], baseline: Sequence[float], *, confidence: float = 0.95) -> PairedDifference:
    """The paired-by-seed comparison of ``values`` with ``baseline`` (same seed order).

    Seeds where either value is not finite are left out. With one seed the interval and test are nan.

    Raises:
        ValueError: If the lengths differ or ``confidence`` is not in (0, 1).
    """
    a = np.asarray(values, dtype=np.float64)
    b = np.asarray(baseline, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"Expected two 1-d sequences of the same length (one value per seed), got shapes "
                         f"{a.shape} and {b.shape}.")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"Expected 0 < confidence < 1, got {confidence}.")
    d = (a - b)[np.isfinite(a) & np.isfinite(b)]
    n = int(d.size)
    nan = float("nan")
    if n == 0:
        return PairedDifference(0, nan, nan, nan, nan, nan, nan, confidence)
    mean = float(d.mean())
    if n == 1:
        return PairedDifference(1, mean, nan, nan, nan, nan, nan, confidence)
    sd = float(d.std(ddof=1))
    se = sd / math.sqrt(n)
    if se == 0.0:
        t = 0.0 if mean == 0.0 else math.copysign(math.inf, mean)
        return PairedDifference(n, mean, sd, mean, mean, t, 1.0 if mean == 0.0 else 0.0, confidence)
    half = t_quantile(0.5 + confidence / 2.0, n - 1) * se
    t = mean / se
    return PairedDifference(n, mean, sd, mean - half, mean + half, t, t_sf_two_sided(t, n - 1), confidence)


def bootstrap_ci(values: Sequence[float], baseline: Sequence[float], *, confidence: float = 0.95,
                 resamples: int = 10_000, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean per-seed difference (seeds resampled with replacement)."""
    d = np.asarray(values, dtype=np.float64) - np.asarray(baseline, dtype=np.float64)
    d = d[np.isfinite(d)]
    if d.size < 2:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    means = d[rng.integers(0, d.size, size=(resamples, d.size))].mean(axis=1)
    alpha = (1.0 - confidence) / 2.0
    return float(np.quantile(means, alpha)), float(np.quantile(means, 1.0 - alpha))


__all__ = ["PairedDifference", "betainc", "bootstrap_ci", "paired_difference", "t_quantile", "t_sf_two_sided"]
