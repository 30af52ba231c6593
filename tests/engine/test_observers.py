"""Calibration observers: exact min/max, percentile clipping, MSE search, empty observers."""
from __future__ import annotations

import pytest
import torch

from qbench.engine.observers import MSEObserver, Observer, PercentileObserver, make_observer
from qbench.engine.primitives import QuantSpec

A8 = QuantSpec(8, signed=False, symmetric=False)       # the default activation format
S8 = QuantSpec(8, signed=True, symmetric=True)


def ref_qparams(lo: float, hi: float, spec: QuantSpec) -> tuple[float, int]:
    """float64 scale / zero point from the affine-mapping definitions (range widened to include 0)."""
    lo, hi = min(lo, 0.0), max(hi, 0.0)
    qmin = -(2 ** (spec.bits - 1)) if spec.signed else 0
    qmax = 2 ** (spec.bits - 1) - 1 if spec.signed else 2 ** spec.bits - 1
    if spec.symmetric:
        zp = 0 if spec.signed else 2 ** (spec.bits - 1)
        return max(-lo, hi) / (qmax - zp), zp
    scale = (hi - lo) / (qmax - qmin)
    return scale, int(min(max(round(qmin - lo / scale), qmin), qmax))


def ref_mse(x: torch.Tensor, scale: float, zp: int, spec: QuantSpec) -> float:
    """Mean squared error of a float64 quantize -> dequantize of x with the given qparams."""
    qmin = -(2 ** (spec.bits - 1)) if spec.signed else 0
    qmax = 2 ** (spec.bits - 1) - 1 if spec.signed else 2 ** spec.bits - 1
    x = x.double()
    q = torch.clamp(torch.round(x / scale) + zp, qmin, qmax)
    return float(((q - zp) * scale - x).pow(2).mean())


def batches(seed: int, n: int = 4, size: int = 5000, shift: float = 0.0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(8, size // 8, generator=g) * (1 + i) + shift * i for i in range(n)]


@pytest.mark.parametrize("spec", [A8, S8], ids=["uint8-asym", "int8-sym"])
def test_minmax_range_is_exact_over_updates(spec):
    obs = Observer(spec)
    xs = batches(0, shift=0.7)
    xs[2][3, 5] = -17.25   # extremes planted in different updates
    xs[1][0, 0] = 23.5
    for x in xs:
        obs.update(x)
    lo, hi = obs.range()
    allx = torch.cat([x.reshape(-1) for x in xs])
    assert float(lo) == -17.25 == float(allx.min())
    assert float(hi) == 23.5 == float(allx.max())
    assert obs.seen == allx.numel()
    s, z = obs.qparams()
    rs, rz = ref_qparams(-17.25, 23.5, spec)
    # uint8 asym: scale = 40.75 / 255, zp = round(17.25 / scale) = round(107.945...) = 108
    # int8 sym:   scale = 23.5 / 127, zp = 0
    assert float(s) == pytest.approx(rs, rel=1e-6) and int(z) == rz
    if spec is A8:
        assert int(z) == 108
    else:
        assert int(z) == 0


def test_minmax_all_positive_range_includes_zero():
    obs = Observer(A8)
    obs.update(torch.tensor([1.0, 2.0, 5.1]))
    obs.update(torch.tensor([0.5, 3.0]))
    assert [float(v) for v in obs.range()] == [0.5, pytest.approx(5.1)]
    s, z = obs.qparams()
    # widened to [0, 5.1]: scale 5.1 / 255 = 0.02, zero point 0
    assert float(s) == pytest.approx(0.02, rel=1e-6) and int(z) == 0


@pytest.mark.parametrize("spec", [A8, S8], ids=["uint8-asym", "int8-sym"])
def test_percentile_clips_a_single_huge_outlier(spec):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(100_000, generator=g)
    x[12345] = 1e4
    obs = PercentileObserver(spec, percentile=99.9)
    obs.update(x[:50_000])
    obs.update(x[50_000:])
    lo, hi = obs.range()
    # the 99.9th percentile of a standard normal (or of |x|) is about 3.1 to 3.3
    assert 2.5 < float(hi) < 4.5
    assert -4.5 < float(lo) < -2.5
    assert float(hi) < 1e-2 * 1e4
    # min-max on the same data keeps the outlier
    mm = Observer(spec)
    mm.update(x)
    assert float(mm.range()[1]) == 1e4
    # the chosen scale resolves the bulk far better than min-max's
    assert float(obs.qparams()[0]) < float(mm.qparams()[0]) / 1000


def test_percentile_100_equals_minmax_range():
    obs = PercentileObserver(A8, percentile=100.0)
    x = torch.linspace(-2.0, 6.0, 1001)
    obs.update(x)
    lo, hi = obs.range()
    # with percentile 100 the range is the sample's extremes, never outside the true min / max
    assert -2.0 <= float(lo) <= -1.9 and 5.9 <= float(hi) <= 6.0


SPECS = [A8, S8, QuantSpec(4, signed=False, symmetric=False), QuantSpec(4, signed=True, symmetric=True)]
SPEC_IDS = ["uint8-asym", "int8-sym", "uint4-asym", "int4-sym"]


def _qp(obs):
    s, z = obs.qparams()
    return float(s), int(z)


@pytest.mark.parametrize("spec", SPECS, ids=SPEC_IDS)
def test_mse_observer_beats_minmax_on_heavy_tails(spec):
    # Student-t with 3 degrees of freedom: heavy tails, the extremes are far from the bulk
    torch.manual_seed(3)
    x = torch.distributions.StudentT(torch.tensor(3.0)).sample((40_000,))
    mse_obs, mm_obs = MSEObserver(spec), Observer(spec)
    for chunk in x.split(10_000):
        mse_obs.update(chunk)
        mm_obs.update(chunk)
    err_mse = ref_mse(x, *_qp(mse_obs), spec)
    err_mm = ref_mse(x, *_qp(mm_obs), spec)
    assert err_mse <= err_mm
    # clipping helps clearly, and a lot at 4 bits
    assert err_mse < (0.95 if spec.bits == 8 else 0.5) * err_mm
    (lo, hi), (mlo, mhi) = mse_obs.range(), mm_obs.range()
    assert float(hi) <= float(mhi) and float(lo) >= float(mlo)
    assert float(hi) < float(mhi) or float(lo) > float(mlo)


@pytest.mark.parametrize("spec", SPECS, ids=SPEC_IDS)
def test_mse_observer_never_worse_than_minmax_when_data_fits(spec):
    """The search grid includes the full min/max range, so on data that fits the observer's sample
    budget (all of it is searched) the chosen range cannot be worse than min-max on that data.
    Student-t with 2 degrees of freedom: a handful of huge values dominate the error; losing them
    from the searched sample (as a with-replacement draw does) makes the search clip them."""
    torch.manual_seed(2)
    x = torch.distributions.StudentT(torch.tensor(2.0)).sample((40_000,))
    mse_obs, mm_obs = MSEObserver(spec), Observer(spec)
    for chunk in x.split(10_000):
        mse_obs.update(chunk)
        mm_obs.update(chunk)
    err_mse = ref_mse(x, *_qp(mse_obs), spec)
    err_mm = ref_mse(x, *_qp(mm_obs), spec)
    assert err_mse <= err_mm * (1 + 1e-6)


@pytest.mark.parametrize("percentile", [90.0, 99.0, 99.9])
def test_percentile_is_exact_when_data_fits(percentile):
    """Asymmetric percentile range = the (1-q, q) quantiles of all values seen (linear interpolation),
    computed here in float64 over the concatenated batches."""
    g = torch.Generator().manual_seed(7)
    xs = [torch.randn(3, 1000, generator=g).exp() - 1.0 for _ in range(5)]   # skewed
    obs = PercentileObserver(A8, percentile=percentile)
    for x in xs:
        obs.update(x)
    v = torch.cat([x.reshape(-1) for x in xs]).double().sort().values
    def q(p):  # linear interpolation between order statistics
        pos = p * (v.numel() - 1)
        i = int(pos)
        return float(v[i] + (pos - i) * (v[min(i + 1, v.numel() - 1)] - v[i]))
    lo, hi = obs.range()
    assert float(hi) == pytest.approx(q(percentile / 100), rel=1e-5)
    assert float(lo) == pytest.approx(q(1 - percentile / 100), rel=1e-5)


def test_mse_observer_on_uniform_data_keeps_close_to_full_range():
    # no outliers: clipping only hurts, the search must keep (nearly) the full range
    x = torch.linspace(-1.0, 1.0, 20_001)
    obs = MSEObserver(S8)
    obs.update(x)
    lo, hi = obs.range()
    assert float(hi) >= 0.95


@pytest.mark.parametrize("method", ["minmax", "percentile", "mse"])
def test_observer_without_data_raises(method):
    obs = make_observer(method, A8)
    with pytest.raises(RuntimeError, match="no data"):
        obs.qparams()
    obs.update(torch.empty(0))          # an empty batch is still no data
    with pytest.raises(RuntimeError, match="no data"):
        obs.range()


def test_make_observer_types_and_errors():
    assert type(make_observer("minmax", A8)) is Observer
    assert type(make_observer("percentile", A8, percentile=99.0)) is PercentileObserver
    assert make_observer("percentile", A8, percentile=99.0).percentile == 99.0
    assert type(make_observer("mse", A8)) is MSEObserver
    with pytest.raises(ValueError, match="unknown calibration method"):
        make_observer("entropy", A8)
    with pytest.raises(ValueError, match="per_tensor"):
        Observer(QuantSpec(8, granularity="per_token"))


def test_observer_memory_stays_bounded_over_many_updates():
    from qbench.engine.observers import RESERVOIR, Observer
    from qbench.engine.primitives import QuantSpec

    obs = Observer(QuantSpec(8, False, False, "per_tensor"))
    for i in range(40):
        obs.update(torch.randn(RESERVOIR // 4) * (i + 1))
    assert sum(t.numel() for t in obs.samples) <= 2 * RESERVOIR + RESERVOIR // 4
    assert obs.seen == 40 * (RESERVOIR // 4)
    assert obs.max.item() > 30  # exact running max is kept even when samples are thinned
