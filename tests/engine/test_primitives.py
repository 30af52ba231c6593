"""qbench.engine.primitives against an independent float64 reference of the affine mapping.

The reference below (`ref_qparams`, `ref_codes`) re-derives scale, zero point and integer codes in
float64 from the definitions in the module docstring (x ~= scale * (q - zero_point), range widened
to include 0, restricted symmetric grid) without calling the code under test.
"""
from __future__ import annotations

import itertools

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from qbench.engine.primitives import QTensor, QuantSpec, choose_qparams, dequantize, fake_quantize, quantize

# ----------------------------------------------------------------------------- float64 reference


def int_range(bits: int, signed: bool) -> tuple[int, int]:
    return (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2 ** bits - 1)


def blocks(w: torch.Tensor, granularity: str, group_size: int | None):
    """Per-block min and max of a 2-D float64 tensor, shaped like the scale."""
    if granularity == "per_tensor":
        return w.min(), w.max()
    if granularity in ("per_channel", "per_token"):
        return w.min(dim=1).values, w.max(dim=1).values
    n, k = w.shape
    g = w.reshape(n, k // group_size, group_size)
    return g.min(dim=2).values, g.max(dim=2).values


def ref_qparams(lo: torch.Tensor, hi: torch.Tensor, bits: int, signed: bool, symmetric: bool):
    """float64 scale and int64 zero point, straight from the definitions."""
    qmin, qmax = int_range(bits, signed)
    lo = torch.clamp(lo.double(), max=0.0)
    hi = torch.clamp(hi.double(), min=0.0)
    if symmetric:
        zp_val = 0 if signed else 2 ** (bits - 1)
        scale = torch.maximum(-lo, hi) / (qmax - zp_val)      # signed: amax / qmax (restricted grid)
        zp = torch.full_like(scale, zp_val, dtype=torch.int64)
    else:
        scale = (hi - lo) / (qmax - qmin)
        safe = torch.where(scale > 0, scale, torch.ones_like(scale))
        zp = torch.clamp(torch.round(qmin - lo / safe), qmin, qmax).to(torch.int64)
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    return scale, zp


def expand(p: torch.Tensor, shape, granularity: str, group_size: int | None) -> torch.Tensor:
    n, k = shape
    if granularity == "per_tensor":
        return p.expand(n, k)
    if granularity in ("per_channel", "per_token"):
        return p.reshape(n, 1).expand(n, k)
    return p.repeat_interleave(group_size, dim=1)


def spec_of(bits, signed, symmetric, gran) -> QuantSpec:
    if isinstance(gran, int):
        return QuantSpec(bits, signed, symmetric, "per_group", gran)
    return QuantSpec(bits, signed, symmetric, gran)


GRANS = ["per_tensor", "per_channel", 4, 16]
ALL_SPECS = list(itertools.product(range(2, 9), [True, False], [True, False], GRANS))


def spec_id(p):
    bits, signed, sym, gran = p
    return f"{'s' if signed else 'u'}{bits}-{'sym' if sym else 'asym'}-{gran if isinstance(gran, str) else f'g{gran}'}"


def make_weight(seed: int, n: int = 6, k: int = 32) -> torch.Tensor:
    """float64 weights with an offset, a few large outliers and some exact zeros."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(n, k, generator=g, dtype=torch.float64) * 0.7 + 0.2
    w[0, 3] = 25.0                     # outliers (in different blocks)
    w[n - 1, k - 2] = -40.0
    w[2, 17] = 9.5
    w[:, 5] = 0.0                      # exact zeros
    w[1, 20:24] = 0.0
    return w


# ----------------------------------------------------------------------------- parametrized round trip


@pytest.mark.parametrize("bits,signed,symmetric,gran", ALL_SPECS, ids=[spec_id(p) for p in ALL_SPECS])
def test_round_trip_against_float64_reference(bits, signed, symmetric, gran):
    spec = spec_of(bits, signed, symmetric, gran)
    gs = gran if isinstance(gran, int) else None
    w = make_weight(seed=bits * 10 + signed * 3 + symmetric)
    n, k = w.shape
    qmin, qmax = int_range(bits, signed)

    q = quantize(w, spec)
    assert isinstance(q, QTensor)
    # storage dtype and declared range
    assert q.data.dtype == (torch.int8 if signed else torch.uint8)
    assert q.data.shape == w.shape
    assert int(q.data.min()) >= qmin and int(q.data.max()) <= qmax
    assert q.zero_point.dtype == torch.int32

    # qparam shapes
    expected_shape = {"per_tensor": (), "per_channel": (n,)}.get(gran, (n, k // gs if gs else 0))
    assert tuple(q.scale.shape) == expected_shape
    assert tuple(q.zero_point.shape) == expected_shape

    # qparams equal the float64 derivation
    ref_s, ref_z = ref_qparams(*blocks(w, spec.granularity, gs), bits, signed, symmetric)
    torch.testing.assert_close(q.scale.double(), ref_s, rtol=2e-6, atol=0)
    assert torch.equal(q.zero_point.long(), ref_z)
    if symmetric:
        assert (q.zero_point == (0 if signed else 2 ** (bits - 1))).all()
    assert (q.zero_point >= qmin).all() and (q.zero_point <= qmax).all()

    # codes equal round(w / s) + z clamped, except possibly for values sitting on a rounding tie
    s = expand(q.scale.double(), w.shape, spec.granularity, gs)
    z = expand(q.zero_point.long(), w.shape, spec.granularity, gs)
    t = w / s
    ref_q = torch.clamp(torch.round(t) + z, qmin, qmax)
    near_tie = ((t - torch.floor(t)) - 0.5).abs() < 1e-4
    mismatch = q.data.long() != ref_q.long()
    assert not (mismatch & ~near_tie).any()
    assert ((q.data.long() - ref_q.long()).abs() <= 1).all()

    # dequantize(quantize(w)) within half a step everywhere (outliers and range ends included)
    for dtype in (torch.float32, torch.float64):
        d = dequantize(q, dtype)
        assert d.dtype == dtype
        err = (d.double() - w).abs()
        assert (err <= s / 2 * (1 + 1e-6)).all(), float((err / s).max())
    # the dequantized value is exactly scale * (q - z) computed from the stored integers
    torch.testing.assert_close(dequantize(q, torch.float64), (q.data.long() - z).double() * s,
                               rtol=1e-6, atol=0)

    # zero is exactly representable: inserted zeros come back as exactly 0.0
    d = dequantize(q)
    assert (d[w == 0] == 0.0).all()
    assert (q.data.long()[w == 0] == z[w == 0]).all()

    # the block extremes (range ends) round trip within half a step
    lo, hi = blocks(w, spec.granularity, gs)
    lo_e, hi_e = expand(lo, w.shape, spec.granularity, gs), expand(hi, w.shape, spec.granularity, gs)
    ends = (w == lo_e) | (w == hi_e)
    assert ends.any()
    assert ((d.double() - w).abs()[ends] <= s[ends] / 2 * (1 + 1e-6)).all()


@pytest.mark.parametrize("bits,signed,symmetric", list(itertools.product(range(2, 9), [True, False], [True, False])))
def test_values_exactly_at_range_ends(bits, signed, symmetric):
    """A per_tensor range [-a, b] with the ends present: both ends round trip within half a step and
    for symmetric signed the positive end is the code qmax exactly."""
    w = torch.tensor([[-3.0, -1.25, 0.0, 0.5, 2.0]], dtype=torch.float64)
    spec = QuantSpec(bits, signed, symmetric)
    q = quantize(w, spec)
    s = float(q.scale)
    d = dequantize(q, torch.float64)
    # 0.5 and -1.25 can sit exactly on a rounding tie (e.g. int8 asym: 0.5 / (5/255) = 25.5), where the
    # engine's float32 arithmetic may land a few float32 ulps past half a step: allow that much.
    assert ((d - w).abs() <= s / 2 * (1 + 1e-6) + w.abs() * 2.0 ** -22).all()
    # the range ends themselves are not ties and stay within half a step
    assert ((d - w).abs()[0, [0, 4]] <= s / 2 * (1 + 1e-6)).all()
    qmin, qmax = int_range(bits, signed)
    if symmetric and signed:
        # amax = 3 -> scale = 3 / qmax; -3 -> -qmax (restricted grid, qmin unused)
        assert s == pytest.approx(3.0 / qmax, rel=1e-7)
        assert int(q.data[0, 0]) == -qmax
        assert float(d[0, 0]) == pytest.approx(-3.0, rel=1e-6)
    if not symmetric:
        # the full code range is used: the low end maps to (about) qmin
        assert int(q.data[0, 0]) <= qmin + 1


# ----------------------------------------------------------------------------- hand-computed values


def test_hand_symmetric_per_channel_int8():
    w = torch.tensor([[-1.0, 0.5], [2.0, -4.0]])
    q = quantize(w, QuantSpec(8, True, True, "per_channel"))
    # row 0: amax = max(|-1|, |0.5|) = 1 -> scale = 1 / 127
    # row 1: amax = max(|2|, |-4|) = 4   -> scale = 4 / 127
    torch.testing.assert_close(q.scale, torch.tensor([1 / 127, 4 / 127]), rtol=1e-7, atol=0)
    assert q.zero_point.tolist() == [0, 0]
    # -1 / (1/127) = -127 and -4 / (4/127) = -127: the row extremes use the full restricted grid
    assert int(q.data[0, 0]) == -127 and int(q.data[1, 1]) == -127


def test_hand_asymmetric_uint8_on_0_to_2_55():
    w = torch.linspace(0, 2.55, 256, dtype=torch.float64)
    q = quantize(w, QuantSpec(8, signed=False, symmetric=False))
    # scale = (2.55 - 0) / (255 - 0) = 0.01; zero point = round(0 - 0 / 0.01) = 0
    assert float(q.scale) == pytest.approx(0.01, rel=1e-6)
    assert int(q.zero_point) == 0
    # w_i = 0.01 * i -> code i
    assert torch.equal(q.data.long(), torch.arange(256))


def test_hand_asymmetric_int8_on_minus1_to_3():
    w = torch.tensor([-1.0, 0.0, 1.0, 3.0])
    q = quantize(w, QuantSpec(8, signed=True, symmetric=False))
    # scale = (3 - (-1)) / (127 - (-128)) = 4 / 255
    # zero point = round(-128 - (-1) / (4/255)) = round(-128 + 63.75) = round(-64.25) = -64
    assert float(q.scale) == pytest.approx(4 / 255, rel=1e-6)
    assert int(q.zero_point) == -64
    # codes: -1 -> round(-63.75) - 64 = -128; 0 -> -64; 1 -> round(63.75) - 64 = 0; 3 -> round(191.25) - 64 = 127
    assert q.data.tolist() == [-128, -64, 0, 127]


def test_hand_symmetric_unsigned_4bit():
    w = torch.tensor([-7.0, -3.0, 0.0, 2.0, 7.0])
    q = quantize(w, QuantSpec(4, signed=False, symmetric=True))
    # zero point 2^(4-1) = 8, qmax 15: 15 - 8 = 7 steps each side; amax 7 -> scale 1
    assert float(q.scale) == 1.0 and int(q.zero_point) == 8
    assert q.data.tolist() == [1, 5, 8, 10, 15]
    assert dequantize(q).tolist() == [-7.0, -3.0, 0.0, 2.0, 7.0]


def test_hand_per_group_scales():
    w = torch.tensor([[1.0, -2.0, 0.5, 0.25],
                      [0.0, 0.0, -8.0, 4.0]])
    q = quantize(w, QuantSpec(8, True, True, "per_group", 2))
    # groups: [1,-2] amax 2, [0.5,0.25] amax 0.5, [0,0] all-zero -> scale 1, [-8,4] amax 8
    expected = torch.tensor([[2 / 127, 0.5 / 127], [1.0, 8 / 127]])
    torch.testing.assert_close(q.scale, expected, rtol=1e-7, atol=0)
    assert q.data[1, :2].tolist() == [0, 0]
    assert int(q.data[0, 1]) == -127 and int(q.data[1, 2]) == -127 and int(q.data[0, 2]) == 127


def test_given_qparams_are_used_and_clamped():
    w = torch.tensor([-100.0, 0.0, 1.2, 100.0])
    spec = QuantSpec(8, signed=True, symmetric=False)
    q = quantize(w, spec, torch.tensor(0.5), torch.tensor(3, dtype=torch.int32))
    # round(-200)+3 = -197 -> clamp -128; 0 -> 3; round(2.4)+3 = 5; round(200)+3 = 203 -> clamp 127
    assert q.data.tolist() == [-128, 3, 5, 127]
    assert dequantize(q).tolist() == [-65.5, 0.0, 1.0, 62.0]


def test_choose_qparams_widens_range_to_include_zero():
    spec = QuantSpec(8, signed=False, symmetric=False)
    s, z = choose_qparams(torch.tensor(1.0), torch.tensor(3.0), spec)
    # range widened to [0, 3]: scale 3/255, zero point 0
    assert float(s) == pytest.approx(3 / 255, rel=1e-6) and int(z) == 0
    s, z = choose_qparams(torch.tensor(-3.0), torch.tensor(-1.0), spec)
    # range widened to [-3, 0]: scale 3/255, zero point round(0 + 3/(3/255)) = 255
    assert float(s) == pytest.approx(3 / 255, rel=1e-6) and int(z) == 255


def test_per_token_on_3d_activation():
    x = torch.randn(2, 3, 8, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    spec = QuantSpec(8, False, False, "per_token")
    q = quantize(x, spec)
    assert q.scale.shape == (6,) and q.data.shape == x.shape
    rows = x.reshape(6, 8)
    ref_s, ref_z = ref_qparams(rows.min(1).values, rows.max(1).values, 8, False, False)
    torch.testing.assert_close(q.scale.double(), ref_s, rtol=2e-6, atol=0)
    assert torch.equal(q.zero_point.long(), ref_z)
    s = ref_s.reshape(2, 3, 1)
    assert ((dequantize(q, torch.float64) - x).abs() <= s / 2 * (1 + 1e-6)).all()


def test_fake_quantize_keeps_dtype_and_matches_round_trip():
    x = make_weight(5).float()
    spec = QuantSpec(6, True, False, "per_group", 4)
    y = fake_quantize(x, spec)
    assert y.dtype == torch.float32
    assert torch.equal(y, dequantize(quantize(x, spec)))
    assert fake_quantize(x.double(), spec).dtype == torch.float64


# ----------------------------------------------------------------------------- degenerate inputs / errors


@pytest.mark.parametrize("bits,signed,symmetric,gran", ALL_SPECS[::3], ids=[spec_id(p) for p in ALL_SPECS[::3]])
def test_all_zero_tensor_round_trips_exactly(bits, signed, symmetric, gran):
    spec = spec_of(bits, signed, symmetric, gran)
    w = torch.zeros(4, 16)
    q = quantize(w, spec)
    assert torch.isfinite(q.scale).all() and (q.scale > 0).all()
    assert torch.equal(dequantize(q), w)


def test_group_size_not_dividing_row_raises():
    with pytest.raises(ValueError, match="does not divide"):
        quantize(torch.randn(4, 10), QuantSpec(8, granularity="per_group", group_size=4))


def test_per_channel_needs_2d():
    with pytest.raises(ValueError):
        quantize(torch.randn(10), QuantSpec(8, granularity="per_channel"))


@pytest.mark.parametrize("kwargs", [
    dict(bits=1), dict(bits=9), dict(bits=0), dict(bits=8.0),
    dict(bits=4, group_size=32),                               # group_size without per_group
    dict(bits=4, granularity="per_channel", group_size=32),
    dict(bits=4, granularity="per_group"),                     # per_group without group_size
    dict(bits=4, granularity="per_group", group_size=0),
    dict(bits=4, granularity="per_row"),
])
def test_quantspec_rejects_invalid(kwargs):
    with pytest.raises(ValueError):
        QuantSpec(**kwargs)


@pytest.mark.parametrize("bits", range(2, 9))
def test_quantspec_ranges(bits):
    s, u = QuantSpec(bits, signed=True), QuantSpec(bits, signed=False)
    assert (s.qmin, s.qmax) == (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1)
    assert (u.qmin, u.qmax) == (0, 2 ** bits - 1)
    assert s.storage_dtype == torch.int8 and u.storage_dtype == torch.uint8


# ----------------------------------------------------------------------------- property


def _finite32(v: float) -> bool:
    # keep magnitudes where scale = amax / qmax stays a normal float32 (subnormal scales lose precision)
    return v == 0.0 or abs(v) >= 1e-20


@st.composite
def case(draw):
    bits = draw(st.integers(2, 8))
    signed, symmetric = draw(st.booleans()), draw(st.booleans())
    n, k = draw(st.integers(1, 5)), draw(st.integers(1, 40))
    gran = draw(st.sampled_from(["per_tensor", "per_channel", "per_group"]))
    gs = draw(st.sampled_from([d for d in range(1, k + 1) if k % d == 0])) if gran == "per_group" else None
    vals = draw(st.lists(st.floats(-1e5, 1e5, width=32, allow_subnormal=False).filter(_finite32),
                         min_size=n * k, max_size=n * k))
    return QuantSpec(bits, signed, symmetric, gran, gs), torch.tensor(vals, dtype=torch.float64).reshape(n, k)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case())
def test_property_round_trip_within_half_step(c):
    spec, w = c
    q = quantize(w, spec)
    assert int(q.data.min()) >= spec.qmin and int(q.data.max()) <= spec.qmax
    s = expand(q.scale.double(), w.shape, spec.granularity, spec.group_size)
    err = (dequantize(q, torch.float64) - w).abs()
    # half a step, plus float32 rounding of the value itself (the engine computes in float32)
    bound = s / 2 * (1 + 1e-6) + w.abs() * 2.0 ** -22
    assert (err <= bound).all(), (spec, float((err / s).max()))
    assert (dequantize(q)[w == 0] == 0).all()
    ref_s, ref_z = ref_qparams(*blocks(w, spec.granularity, spec.group_size), spec.bits, spec.signed,
                               spec.symmetric)
    torch.testing.assert_close(q.scale.double(), ref_s, rtol=2e-6, atol=0)
