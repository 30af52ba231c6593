"""Summary statistics and confidence intervals for benchmark measurements.

Pure numpy + math: the normal and Student-t quantiles are implemented here so the
core package does not depend on scipy. All intervals are two-sided and every
number returned is a plain Python float.
"""
from __future__ import annotations

import math
from typing import Callable, Sequence

import numpy as np

ArrayLike = Sequence[float] | np.ndarray

# Acklam's rational approximation of the inverse normal CDF (rel. error < 1.15e-9
# before refinement); coefficients from P. J. Acklam, "An algorithm for computing
# the inverse normal cumulative distribution function".
_A = (-3.969683028665376e01, 2.209460984245205e02, -2.759285104469687e02,
      1.383577518672690e02, -3.066479806614716e01, 2.506628277459239e00)
_B = (-5.447609879822406e01, 1.615858368580409e02, -1.556989798598866e02,
      6.680131188771972e01, -1.328068155288572e01, 1.0)
_C = (-7.784894002430293e-03, -3.223964580411365e-01, -2.400758277161838e00,
      -2.549732539343734e00, 4.374664141464968e00, 2.938163982698783e00)
_D = (7.784695709041462e-03, 3.224671290700398e-01, 2.445134137142996e00,
      3.754408661907416e00, 1.0)
_P_LOW = 0.02425


def _finite_1d(samples: ArrayLike, name: str = "samples") -> np.ndarray:
    """Return samples as a 1-D float array, rejecting empty or non-finite input."""
    x = np.asarray(samples, dtype=float)
    if x.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional, got shape {x.shape}")
    if x.size == 0:
        raise ValueError(f"{name} is empty")
    if not np.all(np.isfinite(x)):
        raise ValueError(f"{name} contains non-finite values")
    return x


def _check_level(level: float) -> float:
    """Validate a confidence level and return the matching upper quantile 1 - alpha/2."""
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1), got {level}")
    return 0.5 + 0.5 * level


def _paired(a: ArrayLike, b: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    x, y = _finite_1d(a, "a"), _finite_1d(b, "b")
    if x.size != y.size:
        raise ValueError(f"paired samples differ in length: {x.size} != {y.size}")
    return x, y


def _percentile_bootstrap(n: int, resample_stat: Callable[[np.ndarray], float],
                          level: float, n_boot: int, seed: int) -> tuple[float, float]:
    """Percentile interval of resample_stat(idx) over n_boot seeded index resamples."""
    upper = _check_level(level)
    if n_boot < 1:
        raise ValueError(f"n_boot must be >= 1, got {n_boot}")
    rng = np.random.default_rng(seed)
    # One resample at a time keeps memory O(n) for long latency traces.
    boot = np.array([resample_stat(rng.integers(0, n, n)) for _ in range(n_boot)])
    lo, hi = np.quantile(boot, [1.0 - upper, upper])
    return float(lo), float(hi)


def _horner(coefs: tuple[float, ...], x: float) -> float:
    """Evaluate a polynomial given highest-degree-first coefficients."""
    acc = 0.0
    for c in coefs:
        acc = acc * x + c
    return acc


def norm_ppf(q: float) -> float:
    """Inverse standard normal CDF: Acklam's approximation plus one Halley/Newton step.

    The refinement uses math.erfc and brings the error to ~1e-15; upper quantiles are
    computed by symmetry so the step always works on a small, exactly representable tail.
    """
    if not 0.0 < q < 1.0:
        raise ValueError(f"q must be in (0, 1), got {q}")
    if q > 0.5:
        return -norm_ppf(1.0 - q)  # 1 - q is exact here (Sterbenz), so no tail is lost
    if q < _P_LOW:
        r = math.sqrt(-2.0 * math.log(q))
        x = _horner(_C, r) / _horner(_D, r)
    else:
        r = (q - 0.5) ** 2
        x = _horner(_A, r) * (q - 0.5) / _horner(_B, r)
    e = 0.5 * math.erfc(-x / math.sqrt(2.0)) - q
    u = e * math.sqrt(2.0 * math.pi) * math.exp(0.5 * x * x)
    return x - u / (1.0 + 0.5 * x * u)


def _betacf(a: float, b: float, x: float) -> float:
    """Continued fraction of the incomplete beta function (modified Lentz)."""
    tiny, c, d = 1e-300, 1.0, 1.0 - (a + b) * x / (a + 1.0)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 100_000):  # converges in O(sqrt(max(a, b))) terms
        for aa in (m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
                   -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))):
            d = 1.0 + aa * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + aa / c
            c = c if abs(c) > tiny else tiny
            h *= d * c
        if abs(d * c - 1.0) < 1e-16:
            break
    return h


def _betainc(a: float, b: float, x: float, y: float) -> float:
    """Regularized incomplete beta I_x(a, b); y = 1 - x is passed to avoid cancellation."""
    if x <= 0.0:
        return 0.0
    if y <= 0.0:
        return 1.0
    front = math.exp(math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b)
                     + a * math.log(x) + b * math.log(y))
    if x < (a + 1.0) / (a + b + 2.0):
        return front * _betacf(a, b, x) / a
    return 1.0 - front * _betacf(b, a, y) / b


def _t_tail(t: float, df: float) -> float:
    """P(T > t) for t >= 0."""
    return 0.5 * _betainc(0.5 * df, 0.5, df / (df + t * t), t * t / (df + t * t))


def _t_pdf(t: float, df: float) -> float:
    return math.exp(math.lgamma(0.5 * (df + 1)) - math.lgamma(0.5 * df)
                    - 0.5 * math.log(df * math.pi) - 0.5 * (df + 1) * math.log1p(t * t / df))


def _hill_t(p: float, df: float) -> float:
    """Hill (1970, CACM algorithm 396) |t| quantile for two-sided tail probability p."""
    if df == 1.0:
        return 1.0 / math.tan(0.5 * math.pi * p)
    if df == 2.0:
        return math.sqrt(2.0 / (p * (2.0 - p)) - 2.0)
    a = 1.0 / (df - 0.5)
    b = 48.0 / (a * a)
    c = ((20700.0 * a / b - 98.0) * a - 16.0) * a + 96.36
    d = ((94.5 / (b + c) - 3.0) / b + 1.0) * math.sqrt(a * math.pi / 2.0) * df
    y = (d * p) ** (2.0 / df)
    if (df < 2.1 and p > 0.5) or y > 0.05 + a:
        x = norm_ppf(0.5 * p)  # asymptotic expansion about the normal
        y = x * x
        if df < 5:
            c += 0.3 * (df - 4.5) * (x + 0.6)
        c = (((0.05 * d * x - 5.0) * x - 7.0) * x - 2.0) * x + b + c
        y = (((((0.4 * y + 6.3) * y + 36.0) * y + 94.5) / c - y - 3.0) / b + 1.0) * x
        y = math.expm1(a * y * y)
    else:
        y = ((1.0 / (((df + 6.0) / (df * y) - 0.089 * d - 0.822) * (df + 2.0) * 3.0)
              + 0.5 / (df + 4.0)) * y - 1.0) * (df + 1.0) / (df + 2.0) + 1.0 / y
    return math.sqrt(df * y)


def t_ppf(q: float, df: float) -> float:
    """Student-t quantile: Hill's approximation refined by Newton steps on the exact CDF.

    Hill alone is good to ~1e-5 at small df; Newton steps on the exact CDF (incomplete
    beta continued fraction) bring it to ~1e-11 or better. Requires df >= 1.
    """
    if not 0.0 < q < 1.0:
        raise ValueError(f"q must be in (0, 1), got {q}")
    if not df >= 1.0:
        raise ValueError(f"df must be >= 1, got {df}")
    if math.isinf(df):
        return norm_ppf(q)
    if q == 0.5:
        return 0.0
    tail = min(q, 1.0 - q)
    t = _hill_t(2.0 * tail, df)
    # Hill is already within 1e-11 for df >= 1000, while the lgamma differences in the
    # exact CDF lose digits to cancellation there, so only refine below that.
    for _ in range(4 if df < 1000 else 0):
        step = (_t_tail(t, df) - tail) / _t_pdf(t, df)
        t += step
        if abs(step) <= 1e-15 * t:
            break
    return t if q > 0.5 else -t


def summarize(samples: ArrayLike) -> dict:
    """Robust and classical summary: n, median, p10, p90, mean, std (ddof=1), min, max."""
    x = _finite_1d(samples)
    p10, med, p90 = np.quantile(x, [0.1, 0.5, 0.9])
    std = float(x.std(ddof=1)) if x.size > 1 else 0.0  # ddof=1 is undefined for n=1
    return {"n": int(x.size), "median": float(med), "p10": float(p10), "p90": float(p90),
            "mean": float(x.mean()), "std": std, "min": float(x.min()), "max": float(x.max())}


def quantiles(samples: ArrayLike, qs: Sequence[float]) -> list[float]:
    """Quantiles with linear interpolation between order statistics (numpy's default).

    (No caller in the package yet: kept for qbench.bench.gemm, whose percentiles should come from here.)"""
    x = _finite_1d(samples)
    q = np.asarray(qs, dtype=float)
    if q.ndim != 1 or np.any(~((q >= 0.0) & (q <= 1.0))):
        raise ValueError(f"qs must be a sequence of values in [0, 1], got {qs}")
    return [float(v) for v in np.quantile(x, q)]


def median_ci(samples: ArrayLike, level: float = 0.95) -> tuple[float, float]:
    """Distribution-free CI for the median from order statistics [x_(k), x_(n+1-k)].

    The number of samples below the true median is Binomial(n, 1/2), so the interval
    covers it with probability 1 - 2 P(B <= k-1); we take the largest k keeping that
    >= level. When n is too small for any k to reach the level (n <= 5 at 95%), we
    return (min, max), whose coverage 1 - 2^(1-n) is then LOWER than requested.
    """
    upper = _check_level(level)
    x = np.sort(_finite_1d(samples))
    n = x.size
    i = np.arange(n // 2 + 1)
    # log pmf of Binomial(n, 1/2) by the ratio recurrence; exact enough and O(n).
    log_ratio = np.log((n - i[:-1]) / (i[:-1] + 1.0))
    log_pmf = -n * math.log(2.0) + np.concatenate(([0.0], np.cumsum(log_ratio)))
    cdf = np.cumsum(np.exp(log_pmf))
    ok = np.nonzero(cdf <= (1.0 - upper) * (1.0 + 1e-12))[0]  # cdf[k-1] <= alpha/2
    k = int(ok[-1]) + 1 if ok.size else 1
    return float(x[k - 1]), float(x[n - k])


def bootstrap_ci(samples: ArrayLike, stat: Callable[[np.ndarray], float] = np.median,
                 level: float = 0.95, n_boot: int = 2000, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap CI of stat; seeded numpy Generator, so results are reproducible."""
    x = _finite_1d(samples)
    return _percentile_bootstrap(x.size, lambda idx: stat(x[idx]), level, n_boot, seed)


def paired_ratio(base: ArrayLike, other: ArrayLike, level: float = 0.95,
                 n_boot: int = 2000, seed: int = 0) -> tuple[float, float, float]:
    """median(base) / median(other) with a paired percentile bootstrap CI.

    base[i] and other[i] were measured interleaved and share drift (thermal, clocks), so
    pair indices are resampled jointly: that noise then cancels in the ratio instead of
    widening the interval. Speed-up = paired_ratio(baseline_latency, quantized_latency).
    """
    x, y = _paired(base, other)
    if np.median(y) == 0.0:
        raise ValueError("median of other is zero; ratio undefined")
    lo, hi = _percentile_bootstrap(
        x.size, lambda idx: np.median(x[idx]) / np.median(y[idx]), level, n_boot, seed)
    return float(np.median(x) / np.median(y)), lo, hi


def gap_recovery(before: ArrayLike, after: ArrayLike, level: float = 0.95,
                 n_boot: int = 2000, seed: int = 0) -> tuple[float, float, float]:
    """(mean(before) - mean(after)) / mean(before), the fraction of a degradation that `after` removed, with a
    paired percentile bootstrap interval: before[i] and after[i] are the same sequence, resampled jointly."""
    x, y = _paired(before, after)
    if x.mean() == 0.0:
        raise ValueError("mean of before is zero: no gap to recover")

    def rec(idx):
        b = x[idx].mean()
        return (b - y[idx].mean()) / b if b != 0 else math.nan
    lo, hi = _percentile_bootstrap(x.size, rec, level, n_boot, seed)
    return float((x.mean() - y.mean()) / x.mean()), lo, hi


def mean_ci(samples: ArrayLike, level: float = 0.95) -> tuple[float, float, float]:
    """(mean, lo, hi): Student-t interval mean -/+ t_{n-1} s / sqrt(n); NaN bounds at n == 1."""
    upper = _check_level(level)
    x = _finite_1d(samples)
    m = float(x.mean())
    if x.size == 1:
        return m, math.nan, math.nan  # no spread estimate from a single sample
    half = t_ppf(upper, x.size - 1) * float(x.std(ddof=1)) / math.sqrt(x.size)
    return m, m - half, m + half


def paired_mean_diff_ci(a: ArrayLike, b: ArrayLike,
                        level: float = 0.95) -> tuple[float, float, float]:
    """Mean of a - b with a t interval over the per-pair differences (paired t).

    (No caller in the package yet: kept for comparing two schemes on the same sequences, issue 19.)"""
    x, y = _paired(a, b)
    return mean_ci(x - y, level)


def _check_counts(successes: int, n: int) -> None:
    if n <= 0:
        raise ValueError(f"n must be positive, got {n}")
    if not 0 <= successes <= n:
        raise ValueError(f"successes must be in [0, n], got {successes} of {n}")


def proportion_ci(successes: int, n: int, level: float = 0.95) -> tuple[float, float, float]:
    """(p, lo, hi) with the Wilson score interval, which stays inside [0, 1] and keeps
    near-nominal coverage at p near 0 or 1 where the Wald interval collapses."""
    upper = _check_level(level)
    _check_counts(successes, n)
    p = successes / n
    z = norm_ppf(upper)
    denom = 1.0 + z * z / n
    center = (p + z * z / (2 * n)) / denom
    half = z / denom * math.sqrt(p * (1.0 - p) / n + z * z / (4 * n * n))
    # At k = 0 or k = n the bound is exactly 0 or 1; pin it so rounding cannot exclude p.
    lo = 0.0 if successes == 0 else center - half
    hi = 1.0 if successes == n else center + half
    return p, lo, hi
