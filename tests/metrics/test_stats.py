"""Tests for qbench.metrics.stats against hand arithmetic, scipy oracles and simulation."""
from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.stats
from hypothesis import given, settings
from hypothesis import strategies as st

from qbench.metrics import stats

finite_lists = st.lists(
    st.floats(min_value=-1e6, max_value=1e6, allow_nan=False, allow_infinity=False),
    min_size=1, max_size=60,
)


# ---------------------------------------------------------------- summarize / quantiles

def test_summarize_hand_computed():
    s = stats.summarize([4.0, 1.0, 3.0, 2.0])
    # sorted 1,2,3,4: median (2+3)/2 = 2.5; p10 at position 0.1*3 = 0.3 -> 1 + 0.3 = 1.3;
    # p90 at position 2.7 -> 3 + 0.7 = 3.7; mean 10/4 = 2.5;
    # std = sqrt((1.5^2 + 0.5^2 + 0.5^2 + 1.5^2) / 3) = sqrt(5/3)
    assert s == pytest.approx({"n": 4, "median": 2.5, "p10": 1.3, "p90": 3.7, "mean": 2.5,
                               "std": math.sqrt(5 / 3), "min": 1.0, "max": 4.0})
    assert type(s["n"]) is int
    assert all(type(s[k]) is float for k in s if k != "n")


def test_summarize_single_sample_has_zero_std():
    assert stats.summarize([7.5]) == {"n": 1, "median": 7.5, "p10": 7.5, "p90": 7.5,
                                      "mean": 7.5, "std": 0.0, "min": 7.5, "max": 7.5}


@pytest.mark.parametrize("bad", [[], [1.0, float("nan")], [1.0, float("inf")],
                                 [[1.0, 2.0], [3.0, 4.0]]])
def test_summarize_rejects_bad_input(bad):
    with pytest.raises(ValueError):
        stats.summarize(bad)


@given(finite_lists)
def test_summarize_is_ordered(xs):
    s = stats.summarize(xs)
    assert s["min"] <= s["p10"] <= s["median"] <= s["p90"] <= s["max"]
    assert s["n"] == len(xs) and s["std"] >= 0.0


def test_quantiles_hand_computed():
    # positions q*(n-1) = q*4 into 10,20,30,40,50: 0 -> 10, 0.4 -> 14, 1 -> 20, 2 -> 30, 4 -> 50
    got = stats.quantiles([50, 10, 40, 20, 30], [0.0, 0.1, 0.25, 0.5, 1.0])
    assert got == pytest.approx([10.0, 14.0, 20.0, 30.0, 50.0])
    assert all(type(v) is float for v in got)


@pytest.mark.parametrize("qs", [[1.5], [-0.1], [float("nan")]])
def test_quantiles_rejects_bad_levels(qs):
    with pytest.raises(ValueError):
        stats.quantiles([1.0, 2.0], qs)


def test_quantiles_rejects_empty_samples():
    with pytest.raises(ValueError):
        stats.quantiles([], [0.5])


# ---------------------------------------------------------------- normal and t quantiles

def test_norm_ppf_known_values():
    assert stats.norm_ppf(0.5) == 0.0
    assert stats.norm_ppf(0.975) == pytest.approx(1.959963984540054, abs=1e-12)
    assert stats.norm_ppf(0.995) == pytest.approx(2.5758293035489004, abs=1e-12)


def test_norm_ppf_matches_scipy_everywhere():
    qs = np.concatenate([np.logspace(-300, -2, 300), np.linspace(0.01, 0.99, 981),
                         1.0 - np.logspace(-15, -2, 100)])
    for q in qs:
        want = scipy.stats.norm.ppf(q)
        assert abs(stats.norm_ppf(q) - want) <= 1e-9 * max(1.0, abs(want)), q


def test_norm_ppf_is_antisymmetric():
    for q in (1e-8, 0.01, 0.2, 0.4999):
        assert stats.norm_ppf(1 - q) == pytest.approx(-stats.norm_ppf(q), abs=1e-9)


@pytest.mark.parametrize("q", [0.0, 1.0, -0.1, 1.1, float("nan")])
def test_norm_ppf_rejects_out_of_range(q):
    with pytest.raises(ValueError):
        stats.norm_ppf(q)


@pytest.mark.parametrize("level", [0.9, 0.95, 0.99])
def test_t_ppf_matches_scipy_df_1_to_200(level):
    q = 0.5 + level / 2
    for df in range(1, 201):
        want = scipy.stats.t.ppf(q, df)
        got = stats.t_ppf(q, df)
        assert abs(got - want) <= 1e-4 * want, (df, level)  # the contract
        assert abs(got - want) <= 1e-9 * want, (df, level)  # what the Newton steps deliver
        assert stats.t_ppf(1 - q, df) == pytest.approx(-got, rel=1e-9)


@pytest.mark.parametrize("df", [1.5, 2.5, 3.7, 250, 999, 1000, 5000, 1e6, 1e9])
@pytest.mark.parametrize("q", [1e-10, 1e-4, 0.05, 0.6, 0.9995])
def test_t_ppf_matches_scipy_fractional_and_large_df(df, q):
    assert stats.t_ppf(q, df) == pytest.approx(scipy.stats.t.ppf(q, df), rel=1e-8)


def test_t_ppf_closed_forms():
    # df=1 is Cauchy: t = tan(pi (q - 1/2)) -> tan(0.475 pi) = 12.706204736174...
    assert stats.t_ppf(0.975, 1) == pytest.approx(math.tan(0.475 * math.pi), rel=1e-12)
    # df=2: t = (2q - 1) / sqrt(2 q (1 - q)) -> 0.95 / sqrt(0.04875) = 4.30265272991...
    assert stats.t_ppf(0.975, 2) == pytest.approx(0.95 / math.sqrt(0.04875), rel=1e-12)
    assert stats.t_ppf(0.975, math.inf) == stats.norm_ppf(0.975)
    assert stats.t_ppf(0.5, 7) == 0.0


@pytest.mark.parametrize("q,df", [(0.5, 0.5), (0.5, 0), (0.0, 5), (1.0, 5)])
def test_t_ppf_rejects_bad_arguments(q, df):
    with pytest.raises(ValueError):
        stats.t_ppf(q, df)


# ---------------------------------------------------------------- median_ci

def test_median_ci_n9_hand_computed():
    # Binomial(9, 1/2) CDF: P(B<=0) = 1/512, P(B<=1) = 10/512 = 0.0195 <= 0.025,
    # P(B<=2) = 46/512 = 0.0898 > 0.025  -> k = 2 -> [x_(2), x_(8)], coverage 1 - 20/512
    xs = [9.0, 1.0, 8.0, 2.0, 7.0, 3.0, 6.0, 4.0, 5.0]
    assert stats.median_ci(xs) == (2.0, 8.0)


def test_median_ci_n8_level90_hand_computed():
    # alpha/2 = 0.05; P(B<=1) = 9/256 = 0.035 <= 0.05, P(B<=2) = 37/256 = 0.145 -> k = 2
    # -> [x_(2), x_(7)] = (20, 70)
    xs = [10.0, 20.0, 30.0, 40.0, 50.0, 60.0, 70.0, 80.0]
    assert stats.median_ci(xs, level=0.9) == (20.0, 70.0)
    # at 0.99 (alpha/2 = 0.005): only P(B<=0) = 1/256 = 0.0039 qualifies -> k = 1 -> (min, max)
    assert stats.median_ci(xs, level=0.99) == (10.0, 80.0)


def test_median_ci_too_small_n_falls_back_to_range():
    # n=5: P(B<=0) = 1/32 = 0.031 > 0.025, no k reaches 95% -> (min, max)
    assert stats.median_ci([3.0, 1.0, 2.0, 5.0, 4.0]) == (1.0, 5.0)
    assert stats.median_ci([4.2]) == (4.2, 4.2)


def test_median_ci_n30_picks_order_statistics_10_and_21():
    # P(B<=9) = 0.0214 <= 0.025 < P(B<=10) = 0.0494 for Binomial(30, 1/2) -> k = 10
    assert scipy.stats.binom.cdf(9, 30, 0.5) <= 0.025 < scipy.stats.binom.cdf(10, 30, 0.5)
    x = np.random.default_rng(1).normal(size=30)
    s = np.sort(x)
    assert stats.median_ci(x) == (s[9], s[20])


def test_median_ci_coverage_simulation():
    # Nominal coverage for n=30 at k=10 is 1 - 2*0.0214 = 0.957.
    rng = np.random.default_rng(12345)
    hits = 0
    for _ in range(2000):
        lo, hi = stats.median_ci(rng.normal(3.0, 2.0, size=30))
        hits += lo <= 3.0 <= hi
    assert 0.93 <= hits / 2000 <= 0.97


def test_median_ci_large_n_is_tight_and_fast():
    x = np.random.default_rng(0).exponential(size=100_000)
    lo, hi = stats.median_ci(x)
    assert lo < np.median(x) < hi and hi - lo < 0.02  # se of median ~ 0.0069


@given(finite_lists)
@settings(max_examples=200)
def test_median_ci_brackets_sample_median(xs):
    lo, hi = stats.median_ci(xs)
    assert lo <= float(np.median(xs)) <= hi
    assert lo in xs and hi in xs


@pytest.mark.parametrize("args", [([],), ([1.0, math.nan],), ([1.0, 2.0], 1.0), ([1.0, 2.0], 0.0)])
def test_median_ci_rejects_bad_input(args):
    with pytest.raises(ValueError):
        stats.median_ci(*args)


# ---------------------------------------------------------------- bootstrap

def test_bootstrap_ci_is_deterministic_per_seed():
    x = np.random.default_rng(3).lognormal(size=40)
    assert stats.bootstrap_ci(x, seed=7) == stats.bootstrap_ci(x, seed=7)
    assert stats.bootstrap_ci(x, seed=7) != stats.bootstrap_ci(x, seed=8)


def test_bootstrap_ci_constant_data_is_degenerate():
    assert stats.bootstrap_ci([2.5] * 10) == (2.5, 2.5)


def test_bootstrap_ci_of_mean_agrees_with_t_interval():
    x = np.random.default_rng(4).normal(10.0, 1.0, size=400)
    lo, hi = stats.bootstrap_ci(x, stat=np.mean, n_boot=4000)
    _, tlo, thi = stats.mean_ci(x)
    # percentile bootstrap of the mean ~ normal interval, a bit narrower (sqrt((n-1)/n))
    assert lo == pytest.approx(tlo, abs=0.02) and hi == pytest.approx(thi, abs=0.02)


def test_bootstrap_ci_custom_stat_and_level_width():
    x = np.random.default_rng(5).normal(size=100)
    lo90, hi90 = stats.bootstrap_ci(x, stat=np.max, level=0.9)
    assert hi90 == x.max()  # the max of a resample can never exceed the sample max
    lo50, hi50 = stats.bootstrap_ci(x, level=0.5)
    lo99, hi99 = stats.bootstrap_ci(x, level=0.99)
    assert lo99 < lo50 < hi50 < hi99


@pytest.mark.parametrize("kwargs", [{"level": 1.0}, {"n_boot": 0}])
def test_bootstrap_ci_rejects_bad_arguments(kwargs):
    with pytest.raises(ValueError):
        stats.bootstrap_ci([1.0, 2.0, 3.0], **kwargs)


def test_bootstrap_ci_rejects_empty():
    with pytest.raises(ValueError):
        stats.bootstrap_ci([])


# ---------------------------------------------------------------- paired_ratio

def test_paired_ratio_point_estimate_hand_computed():
    # median(2,4,6) = 4, median(1,1,3) = 1 -> 4.0
    ratio, lo, hi = stats.paired_ratio([2.0, 4.0, 6.0], [1.0, 1.0, 3.0])
    assert ratio == 4.0 and lo <= hi


def test_paired_ratio_exact_when_noise_is_shared():
    base = np.random.default_rng(6).lognormal(2.0, 0.5, size=50)
    ratio, lo, hi = stats.paired_ratio(base, base * 0.5)
    # halving is exact in binary floating point, so every resample ratio is exactly 2
    assert ratio == pytest.approx(2.0, abs=1e-12)
    assert lo == pytest.approx(2.0, abs=1e-12) and hi == pytest.approx(2.0, abs=1e-12)


def test_paired_ratio_is_narrower_than_ignoring_pairing():
    rng = np.random.default_rng(8)
    drift = rng.lognormal(0.0, 0.3, size=200)  # shared by both arms (thermal, clocks)
    base = 10.0 * drift * rng.lognormal(0.0, 0.01, size=200)
    other = 5.0 * drift * rng.lognormal(0.0, 0.01, size=200)
    ratio, lo, hi = stats.paired_ratio(base, other)
    assert lo < ratio < hi and lo < 2.0 < hi
    # breaking the pairing destroys the shared noise and must widen the interval a lot
    _, ulo, uhi = stats.paired_ratio(base, rng.permutation(other))
    assert (hi - lo) * 5 < (uhi - ulo)


def test_paired_ratio_is_deterministic():
    rng = np.random.default_rng(9)
    a, b = rng.normal(10, 1, 30), rng.normal(8, 1, 30)
    assert stats.paired_ratio(a, b, seed=1) == stats.paired_ratio(a, b, seed=1)


@pytest.mark.parametrize("base,other", [([1.0, 2.0], [1.0]), ([1.0, 2.0], [0.0, 0.0]),
                                        ([], []), ([1.0, math.inf], [1.0, 2.0])])
def test_paired_ratio_rejects_bad_input(base, other):
    with pytest.raises(ValueError):
        stats.paired_ratio(base, other)


# ---------------------------------------------------------------- mean / paired t

def test_mean_ci_hand_computed():
    # [1,2,3]: mean 2, s = 1, t_{2, 0.975} = 4.302652729911275, half = 4.3027/sqrt(3) = 2.48414
    m, lo, hi = stats.mean_ci([1.0, 2.0, 3.0])
    assert m == 2.0
    assert lo == pytest.approx(2.0 - 2.484138, abs=1e-6)
    assert hi == pytest.approx(2.0 + 2.484138, abs=1e-6)


@pytest.mark.parametrize("n", [2, 5, 30, 500])
@pytest.mark.parametrize("level", [0.9, 0.95, 0.99])
def test_mean_ci_matches_scipy(n, level):
    x = np.random.default_rng(n).gamma(2.0, size=n)
    want = scipy.stats.t.interval(level, n - 1, loc=x.mean(), scale=scipy.stats.sem(x))
    m, lo, hi = stats.mean_ci(x, level)
    assert m == pytest.approx(x.mean(), rel=1e-12)
    assert (lo, hi) == pytest.approx(want, rel=1e-9)


def test_mean_ci_single_sample_has_nan_bounds():
    m, lo, hi = stats.mean_ci([3.25])
    assert m == 3.25 and math.isnan(lo) and math.isnan(hi)


def test_mean_ci_coverage_simulation():
    rng = np.random.default_rng(10)
    hits = sum(lo <= 1.0 <= hi for _, lo, hi in
               (stats.mean_ci(rng.normal(1.0, 3.0, size=8)) for _ in range(2000)))
    assert 0.93 <= hits / 2000 <= 0.97


def test_paired_mean_diff_ci_hand_computed_and_scipy():
    # differences 2,3,4: mean 3, s = 1 -> same half-width as mean_ci([1,2,3])
    m, lo, hi = stats.paired_mean_diff_ci([3.0, 5.0, 7.0], [1.0, 2.0, 3.0])
    assert m == 3.0 and (lo, hi) == pytest.approx((3.0 - 2.484138, 3.0 + 2.484138), abs=1e-6)
    rng = np.random.default_rng(11)
    a = rng.normal(5, 1, 40)
    b = a - 0.3 + rng.normal(0, 0.1, 40)
    ci = scipy.stats.ttest_rel(a, b).confidence_interval(0.95)
    m, lo, hi = stats.paired_mean_diff_ci(a, b)
    assert (lo, hi) == pytest.approx((ci.low, ci.high), rel=1e-9)
    assert m == pytest.approx(np.mean(a - b), rel=1e-12)


@pytest.mark.parametrize("a,b", [([1.0, 2.0], [1.0]), ([], []), ([1.0, math.nan], [1.0, 2.0])])
def test_paired_mean_diff_ci_rejects_bad_input(a, b):
    with pytest.raises(ValueError):
        stats.paired_mean_diff_ci(a, b)


def test_mean_ci_rejects_bad_level():
    with pytest.raises(ValueError):
        stats.mean_ci([1.0, 2.0], level=1.5)


# ---------------------------------------------------------------- proportions

def test_proportion_ci_hand_computed():
    # k=5, n=10, z=1.959964: z^2 = 3.841459; denom = 1 + z^2/10 = 1.3841459; center = 0.5;
    # half = z/denom * sqrt(0.025 + z^2/400) = 1.4160097 * 0.1860206 = 0.2634069
    p, lo, hi = stats.proportion_ci(5, 10)
    assert p == 0.5
    assert (lo, hi) == pytest.approx((0.5 - 0.2634069, 0.5 + 0.2634069), abs=1e-6)
    # k=0: center = (z^2/20)/denom = half, so the lower bound is exactly 0 (no clipping
    # needed); the upper is z^2/10/denom = 0.3841459/1.3841459 = 0.2775328
    assert stats.proportion_ci(0, 10) == pytest.approx((0.0, 0.0, 0.2775328), abs=1e-6)
    assert stats.proportion_ci(10, 10)[2] == 1.0


@pytest.mark.parametrize("k,n", [(0, 10), (10, 10), (3, 10), (50, 100), (1, 1000), (999, 1000),
                                 (0, 1), (17, 23)])
@pytest.mark.parametrize("level", [0.9, 0.95, 0.99])
def test_proportion_ci_matches_scipy_wilson(k, n, level):
    want = scipy.stats.binomtest(k, n).proportion_ci(confidence_level=level, method="wilson")
    p, lo, hi = stats.proportion_ci(k, n, level)
    assert p == k / n
    assert lo == pytest.approx(want.low, abs=1e-12)
    assert hi == pytest.approx(want.high, abs=1e-12)
    assert 0.0 <= lo <= p <= hi <= 1.0


@pytest.mark.parametrize("k,n", [(0, 0), (-1, 10), (11, 10)])
def test_proportion_ci_rejects_bad_counts(k, n):
    with pytest.raises(ValueError):
        stats.proportion_ci(k, n)
