"""Small-sample statistics for sweep reports: means with Student-t intervals, Welch differences,
ratios of means by the delta method. Seeds are few (3-5), so every interval uses t quantiles."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
from scipy import stats


@dataclasses.dataclass(frozen=True)
class Summary:
    n: int
    mean: float
    std: float  # sample standard deviation (ddof=1); nan for n < 2
    ci_low: float
    ci_high: float

    @property
    def half_width(self) -> float:
        return (self.ci_high - self.ci_low) / 2


def summarize(values, confidence: float = 0.95) -> Summary:
    """Mean, standard deviation and the t interval of the mean of `values` (nan-free)."""
    x = np.asarray([v for v in values if v is not None and math.isfinite(v)], dtype=np.float64)
    n = len(x)
    if n == 0:
        return Summary(0, math.nan, math.nan, math.nan, math.nan)
    mean = float(x.mean())
    if n < 2:
        return Summary(1, mean, math.nan, math.nan, math.nan)
    std = float(x.std(ddof=1))
    half = float(stats.t.ppf(0.5 + confidence / 2, n - 1)) * std / math.sqrt(n)
    return Summary(n, mean, std, mean - half, mean + half)


def welch_difference(a: Summary, b: Summary, confidence: float = 0.95):
    """(mean_a - mean_b, low, high): Welch's t interval with Welch-Satterthwaite df."""
    diff = a.mean - b.mean
    if a.n < 2 or b.n < 2:
        return diff, math.nan, math.nan
    va, vb = a.std**2 / a.n, b.std**2 / b.n
    se = math.sqrt(va + vb)
    if se == 0:
        return diff, diff, diff
    df = (va + vb) ** 2 / (va**2 / (a.n - 1) + vb**2 / (b.n - 1))
    half = float(stats.t.ppf(0.5 + confidence / 2, df)) * se
    return diff, diff - half, diff + half


def ratio_of_means(a: Summary, b: Summary, confidence: float = 0.95):
    """(mean_a / mean_b, low, high): delta method on the log ratio, with the smaller sample's
    n - 1 degrees of freedom (conservative). Needs positive means."""
    if not (a.mean > 0 and b.mean > 0):
        return math.nan, math.nan, math.nan
    ratio = a.mean / b.mean
    if a.n < 2 or b.n < 2:
        return ratio, math.nan, math.nan
    se = math.sqrt((a.std / a.mean) ** 2 / a.n + (b.std / b.mean) ** 2 / b.n)
    t = float(stats.t.ppf(0.5 + confidence / 2, min(a.n, b.n) - 1))
    return ratio, ratio * math.exp(-t * se), ratio * math.exp(t * se)
