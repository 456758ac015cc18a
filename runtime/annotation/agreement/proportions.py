"""Reporting bands and tests on proportions: Landis-Koch bands, Wilson intervals, binomial test.

Gold accuracy needs an interval that behaves near 0 and 1 (Wilson's), position bias an exact
two-sided binomial test; both equal scipy's (``binomtest``) in tests/annotation/test_agreement.py.
"""

from __future__ import annotations

import math
import numbers
from statistics import NormalDist

import numpy as np
import numpy.typing as npt

from rlhfspec.runtime.annotation.agreement.encoding import AgreementError

# Tolerance for floating-point noise at the Landis-Koch band boundaries.
_BAND_TOL = 1e-12

_BANDS: tuple[tuple[float, str], ...] = (
    (0.20, "slight"),
    (0.40, "fair"),
    (0.60, "moderate"),
    (0.80, "substantial"),
    (1.00, "almost perfect"),
)


def landis_koch_band(kappa: float) -> str:
    """The Landis & Koch (1977) verbal band for a kappa (or alpha) value.

    Why: reviewers of an annotation report read "moderate" faster than 0.47; the bands are the
    conventional ones, not a statistical test. Boundaries as published, upper bounds inclusive:
    < 0 "poor", 0.00-0.20 "slight", 0.21-0.40 "fair", 0.41-0.60 "moderate",
    0.61-0.80 "substantial", 0.81-1.00 "almost perfect" (so 0.20 is "slight" and 0.2001 is
    "fair"). A 1e-12 tolerance absorbs floating-point noise at the boundaries.

    Raises:
        AgreementError: NaN, or a value above 1.
    """
    value = float(kappa)
    if math.isnan(value):
        raise AgreementError("kappa is NaN (undefined); there is no Landis-Koch band for it")
    if value < -_BAND_TOL:
        return "poor"
    for upper, name in _BANDS:
        if value <= upper + _BAND_TOL:
            return name
    raise AgreementError(f"kappa cannot exceed 1, got {value!r}")


def _check_count(value: int, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise AgreementError(f"{name} must be an integer, got {value!r}")
    return int(value)


def wilson_interval(successes: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion (e.g. accuracy on gold questions).

    Why: unlike the Wald interval it stays inside [0, 1] and keeps its coverage for small n and
    for proportions near 0 or 1, which is exactly where gold accuracy lives. Equals
    ``scipy.stats.binomtest(successes, n).proportion_ci(confidence, method="wilson")``.

    Raises:
        AgreementError: ``n < 1``, ``successes`` outside ``[0, n]``, or ``confidence`` not in
            (0, 1).
    """
    k = _check_count(successes, "successes")
    trials = _check_count(n, "n")
    if trials < 1:
        raise AgreementError(f"n must be at least 1, got {trials}")
    if not 0 <= k <= trials:
        raise AgreementError(f"successes must be between 0 and n={trials}, got {k}")
    if not 0.0 < confidence < 1.0:
        raise AgreementError(f"confidence must be between 0 and 1, got {confidence!r}")
    z = NormalDist().inv_cdf(0.5 + 0.5 * confidence)
    p = k / trials
    denom = 2.0 * (trials + z * z)
    center = (2.0 * trials * p + z * z) / denom
    delta = z / denom * math.sqrt(4.0 * trials * p * (1.0 - p) + z * z)
    low = 0.0 if k == 0 else max(0.0, center - delta)
    high = 1.0 if k == trials else min(1.0, center + delta)
    return low, high


_LN_SQRT_2PI = 0.5 * math.log(2.0 * math.pi)
# stirlerr(m) = log(m!) - log(sqrt(2 pi m) (m/e)^m) for m = 0..15 (m = 0 is never used).
_STIRLERR_TABLE = np.array(
    [0.0]
    + [math.lgamma(m + 1.0) - (m + 0.5) * math.log(m) + m - _LN_SQRT_2PI for m in range(1, 16)]
)


def _stirlerr(m: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """Error of Stirling's formula for log(m!), accurate to full precision (Loader 2000)."""
    small = m <= 15
    big = np.where(small, 16.0, m)
    m2 = big * big
    series = (
        1.0 / 12 - (1.0 / 360 - (1.0 / 1260 - (1.0 / 1680 - 1.0 / 1188 / m2) / m2) / m2) / m2
    ) / big
    return np.where(small, _STIRLERR_TABLE[np.minimum(m, 15).astype(np.int64)], series)


def _bd0(x: npt.NDArray[np.float64], mean: float) -> npt.NDArray[np.float64]:
    """Deviance term ``x log(x/mean) + mean - x`` without cancellation (Loader 2000)."""
    with np.errstate(over="ignore", divide="ignore"):  # tiny means: the pmf underflows to 0
        out = x * np.log(x / mean) + mean - x
    near = np.flatnonzero(np.abs(x - mean) < 0.1 * (x + mean))
    if near.size:
        xn = x[near]
        v = (xn - mean) / (xn + mean)
        series = (xn - mean) * v
        term = 2.0 * xn * v
        v2 = v * v
        for j in range(1, 13):  # |v| < 0.1: term j is below |v|^(2j-1) of the sum
            term = term * v2
            series = series + term / (2 * j + 1)
        out[near] = series
    return out


def _binomial_pmf(n: int, p: float) -> npt.NDArray[np.float64]:
    """P(X = i) for i = 0..n, X ~ Binomial(n, p), to full relative precision (Loader 2000)."""
    pmf = np.zeros(n + 1, dtype=np.float64)
    if p == 0.0:
        pmf[0] = 1.0
        return pmf
    if p == 1.0:
        pmf[n] = 1.0
        return pmf
    q = 1.0 - p
    pmf[0] = math.exp(n * math.log1p(-p))
    pmf[n] = math.exp(n * math.log(p))
    if n >= 2:
        i = np.arange(1, n, dtype=np.float64)
        log_core = (
            _stirlerr(np.array([float(n)]))[0]
            - _stirlerr(i)
            - _stirlerr(n - i)
            - _bd0(i, n * p)
            - _bd0(n - i, n * q)
        )
        log_scale = math.log(2.0 * math.pi) + np.log(i) + np.log1p(-i / n)
        pmf[1:n] = np.exp(log_core - 0.5 * log_scale)
    return pmf


def binomial_test_two_sided(k: int, n: int, p: float = 0.5) -> float:
    """Exact two-sided binomial test p-value, as ``scipy.stats.binomtest(k, n, p).pvalue``.

    Why: position bias ("chose the first response in k of n comparisons") and gold accuracy
    against a known rate are counts of successes; the exact test is valid for any n, where the
    normal approximation fails for the small per-annotator counts seen in QC. The p-value sums
    the probabilities of all outcomes no more likely than the observed one (with scipy's
    relative slack of 1e-7 for ties).

    Raises:
        AgreementError: ``n < 1``, ``k`` outside ``[0, n]`` or ``p`` outside ``[0, 1]``.
    """
    successes = _check_count(k, "k")
    trials = _check_count(n, "n")
    if trials < 1:
        raise AgreementError(f"n must be at least 1, got {trials}")
    if not 0 <= successes <= trials:
        raise AgreementError(f"k must be between 0 and n={trials}, got {successes}")
    prob = float(p)
    if not 0.0 <= prob <= 1.0:
        raise AgreementError(f"p must be between 0 and 1, got {p!r}")
    if successes == prob * trials:
        return 1.0
    pmf = _binomial_pmf(trials, prob)
    threshold = pmf[successes] * (1.0 + 1e-7)
    if successes < prob * trials:
        # lower tail: all outcomes <= k; upper tail: outcomes past the mean no more likely
        lower = pmf[: successes + 1].sum()
        tail = pmf[math.ceil(prob * trials) :]
        other = tail[tail <= threshold].sum()
    else:
        lower = pmf[successes:].sum()
        tail = pmf[: math.floor(prob * trials) + 1]
        other = tail[tail <= threshold].sum()
    return float(min(1.0, lower + other))
