"""Kernels against the reference kernel, float64 oracles and exact int64 integer arithmetic.

Integer codes and qparams are taken from qbench.engine.primitives.quantize with the same specs
(quantization itself is tested in test_primitives.py); everything computed from them here is
independent: int64 matmuls of (q - z), float64 rescaling.
"""
from __future__ import annotations

import itertools

import pytest
import torch

from qbench.engine.kernels import KERNELS, select_kernel
from qbench.engine.modules import QuantLinear
from qbench.engine.primitives import QuantSpec, choose_qparams, quantize
from qbench.errors import ConfigError, KernelUnavailable
from tests.engine.support import require_kernel

REF, INT_MM, W8, INT4 = (KERNELS.get(n) for n in ("reference", "int8_int_mm", "int8_weight_only", "int4_packed"))

MS, KS, NS = (1, 3, 17, 64, 200), (24, 100, 384), (8, 50, 129)
SHAPES = list(itertools.product(MS, KS, NS))

W_SPECS = [QuantSpec(8, signed, sym, gran)
           for signed, sym, gran in itertools.product([True, False], [True, False], ["per_tensor", "per_channel"])]
A_SPECS = [QuantSpec(bits, signed, sym, gran)
           for bits, signed, sym, gran in itertools.product([8, 4], [True, False], [True, False],
                                                            ["per_tensor", "per_token"])]
COMBOS = list(itertools.product(range(len(W_SPECS)), range(len(A_SPECS))))


def sid(s: QuantSpec) -> str:
    return s.describe().replace(" ", "-")


def make_problem(m: int, k: int, n: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(n, k, generator=g) * 0.08 + torch.randn(n, 1, generator=g) * 0.03   # row offsets
    b = torch.randn(n, generator=g) * 0.1
    x = (torch.randn(m, k, generator=g) + 0.4) * (0.5 + 3 * torch.rand(m, 1, generator=g))  # row scales
    return w, b, x


def rows(p: torch.Tensor) -> torch.Tensor:
    return p.reshape(-1, 1)


def weight64(w, w_spec) -> torch.Tensor:
    """Dequantized weight in float64, from the integer codes and qparams: (q - z) * s."""
    qw = quantize(w, w_spec)
    s, z = qw.scale.double(), qw.zero_point.double()
    if w_spec.granularity == "per_group":
        s, z = s.repeat_interleave(w_spec.group_size, 1), z.repeat_interleave(w_spec.group_size, 1)
    else:
        s, z = rows(s), rows(z)
    return (qw.data.double() - z) * s


def exact_acc(x, a_spec, w, w_spec, act_qparams=None) -> tuple[torch.Tensor, ...]:
    """sum_k (a_q - a_z)(w_q - w_z) in int64, plus the float64 scales."""
    qa = quantize(x, a_spec, *act_qparams) if act_qparams else quantize(x, a_spec)
    qw = quantize(w, w_spec)
    a = qa.data.long() - rows(qa.zero_point.long())          # (M, K)
    wc = qw.data.long() - rows(qw.zero_point.long())         # (N, K)
    acc = a @ wc.t()                                         # exact int64 (M, N)
    return acc, rows(qa.scale.double()), rows(qw.scale.double()).t()


def check_int_mm(m, k, n, w_spec, a_spec, seed, act_qparams=None, x=None):
    w, b, x0 = make_problem(m, k, n, seed)
    x = x0 if x is None else x
    exact, a_s, w_s = exact_acc(x, a_spec, w, w_spec, act_qparams)

    # 1. the integer accumulation with zero-point corrections is exact. Without a bias the kernel
    #    returns acc * (a_scale * w_scale) with acc converted to float32 exactly (|acc| < 2^24), so
    #    dividing by the float64 product of the scales recovers acc to within a few float32 ulps
    #    (relative 3 * 2^-24): below 0.25 while |acc| < 2^20, so any integer error shows.
    assert int(exact.abs().max()) < 2 ** 20
    y_nb = INT_MM.forward(INT_MM.prepare(w, None, w_spec, a_spec, act_qparams), x)
    acc = y_nb.double() / (a_s * w_s)
    assert (acc - exact.double()).abs().max() < 0.25
    assert torch.equal(torch.round(acc).long(), exact)

    # 2. with a bias: output = exact integers * a_scale * w_scale + bias (float64 oracle)
    y = INT_MM.forward(INT_MM.prepare(w, b, w_spec, a_spec, act_qparams), x)
    assert y.shape == (m, n) and y.dtype == torch.float32
    y64 = exact.double() * a_s * w_s + b.double()
    out_scale = float(y64.abs().max())
    assert (y.double() - y64).abs().max() <= 1e-5 * out_scale

    # 3. the reference (emulated) kernel agrees
    y_ref = REF.forward(REF.prepare(w, b, w_spec, a_spec, act_qparams), x)
    assert (y.double() - y_ref.double()).abs().max() <= 1e-5 * out_scale
    return y


@pytest.mark.parametrize("wi,ai", COMBOS, ids=[f"{sid(W_SPECS[i])}-x-{sid(A_SPECS[j])}" for i, j in COMBOS])
def test_int8_int_mm_exact_and_matches_reference(wi, ai):
    w_spec, a_spec = W_SPECS[wi], A_SPECS[ai]
    case = wi * len(A_SPECS) + ai
    # four shapes per combination, rotating so that every (M, K, N) value appears across the suite
    for j in range(4):
        m, k, n = SHAPES[(case * 4 + j * 13) % len(SHAPES)]
        check_int_mm(m, k, n, w_spec, a_spec, seed=case * 10 + j)


@pytest.mark.parametrize("w_spec,a_spec", [
    (QuantSpec(8, False, False, "per_channel"), QuantSpec(8, False, False, "per_tensor")),
    (QuantSpec(8, True, True, "per_channel"), QuantSpec(4, True, False, "per_token")),
], ids=["asym-asym", "sym-per_token4"])
def test_int8_int_mm_all_shapes(w_spec, a_spec):
    for i, (m, k, n) in enumerate(SHAPES):
        check_int_mm(m, k, n, w_spec, a_spec, seed=1000 + i)


@pytest.mark.parametrize("m,n", [(1, 1), (5, 7), (33, 64)])
def test_int8_int_mm_one_input_column(m, n):
    """K = 1, where torch._int_mm's CPU path itself returns wrong sums (torch 2.13): exact all the same."""
    check_int_mm(m, 1, n, QuantSpec(8, True, False, "per_channel"), QuantSpec(8, False, False, "per_token"), seed=m)


@pytest.mark.parametrize("ai", [i for i, a in enumerate(A_SPECS) if a.granularity == "per_tensor"],
                         ids=[sid(a) for a in A_SPECS if a.granularity == "per_tensor"])
@pytest.mark.parametrize("wi", [1, 3, 5, 7], ids=[sid(W_SPECS[i]) for i in (1, 3, 5, 7)])
def test_int8_int_mm_static_activations(wi, ai):
    w_spec, a_spec = W_SPECS[wi], A_SPECS[ai]
    m, k, n = 17, 100, 50
    g = torch.Generator().manual_seed(wi * 31 + ai)
    calib = torch.randn(64, k, generator=g) + 0.4
    qp = choose_qparams(calib.min(), calib.max(), a_spec)
    # new inputs, partly outside the calibrated range (those clamp)
    x = (torch.randn(m, k, generator=g) + 0.4) * 1.5
    assert float(x.max()) > float(calib.max()) or float(x.min()) < float(calib.min())
    y = check_int_mm(m, k, n, w_spec, a_spec, seed=7, act_qparams=qp, x=x)
    # static qparams are really used: a dynamic run of the same input gives a different result
    w, b, _ = make_problem(m, k, n, 7)
    y_dyn = INT_MM.forward(INT_MM.prepare(w, b, w_spec, a_spec), x)
    assert not torch.allclose(y, y_dyn, rtol=0, atol=1e-6)


@pytest.mark.parametrize("w_spec", W_SPECS, ids=[sid(s) for s in W_SPECS])
def test_int8_weight_only_matches_reference(w_spec):
    for i, m in enumerate(MS):
        k, n = KS[i % 3], NS[(i + 1) % 3]
        w, b, x = make_problem(m, k, n, seed=50 + i)
        y = W8.forward(W8.prepare(w, b, w_spec, None), x)
        y_ref = REF.forward(REF.prepare(w, b, w_spec, None), x)
        qw = quantize(w, w_spec)
        w64 = (qw.data.double() - rows(qw.zero_point.double())) * rows(qw.scale.double())
        y64 = x.double() @ w64.t() + b.double()
        out_scale = float(y64.abs().max())
        assert y.shape == (m, n)
        assert (y.double() - y64).abs().max() <= 1e-5 * out_scale
        assert (y.double() - y_ref.double()).abs().max() <= 1e-5 * out_scale


INT4_SPECS = [QuantSpec(bits, signed, sym, gran, gs)
              for bits, signed, sym, (gran, gs) in itertools.product(
                  [2, 3, 4], [True, False], [True, False],
                  [("per_group", 8), ("per_group", 32), ("per_channel", None)])]


@pytest.mark.parametrize("w_spec", INT4_SPECS, ids=[sid(s) for s in INT4_SPECS])
def test_int4_packed_matches_reference(w_spec):
    # per_channel also runs with an odd K (packing pads the last byte)
    ks = (96, 160) if w_spec.granularity == "per_group" else (96, 99)
    for i, (m, k) in enumerate(zip((1, 17, 64), ks + (ks[0],))):
        w, b, x = make_problem(m, k, 50, seed=70 + i)
        state = INT4.prepare(w, b, w_spec, None)
        assert state.weight.packed4 and state.weight.codes.shape == (50, (k + 1) // 2)
        y = INT4.forward(state, x)
        y_ref = REF.forward(REF.prepare(w, b, w_spec, None), x)
        y64 = x.double() @ weight64(w, w_spec).t() + b.double()
        out_scale = float(y64.abs().max())
        assert (y.double() - y64).abs().max() <= 1e-5 * out_scale
        assert (y.double() - y_ref.double()).abs().max() <= 1e-6 * out_scale


@pytest.mark.parametrize("w_spec,a_spec", [
    (QuantSpec(6, True, False, "per_group", 16), QuantSpec(8, False, False)),
    (QuantSpec(5, False, True, "per_channel"), QuantSpec(3, True, True, "per_token")),
    (QuantSpec(8, True, True, "per_group", 4), None),
], ids=["w6g16-a8", "w5-a3tok", "w8g4"])
def test_reference_kernel_against_float64(w_spec, a_spec):
    """The reference kernel itself: float64 fake-quantized activations times dequantized weights."""
    w, b, x = make_problem(17, 96, 33, seed=5)
    y = REF.forward(REF.prepare(w, b, w_spec, a_spec), x)
    x64 = x.double()
    if a_spec is not None:
        qa = quantize(x, a_spec)
        x64 = (qa.data.double() - rows(qa.zero_point.double())) * rows(qa.scale.double())
    y64 = x64 @ weight64(w, w_spec).t() + b.double()
    assert (y.double() - y64).abs().max() <= 1e-5 * float(y64.abs().max())


# ----------------------------------------------------------------------------- reduced-precision inputs


@pytest.mark.parametrize("name,w_spec,a_spec", [
    ("reference", QuantSpec(8, True, True, "per_channel"), None),
    ("reference", QuantSpec(8, True, True, "per_channel"), QuantSpec(8, False, False)),
    ("int4_packed", QuantSpec(4, True, True, "per_group", 16), None),
    ("int8_weight_only", QuantSpec(8, True, False, "per_channel"), None),
    ("int8_int_mm", QuantSpec(8, True, True, "per_channel"), QuantSpec(8, False, False)),
])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_inputs_with_bias(name, w_spec, a_spec, dtype):
    """fp16 / bf16 baselines feed half-precision activations; the float32 bias must not break them."""
    w, b, x = make_problem(5, 64, 24, seed=9)
    layer = QuantLinear(w, b, KERNELS.get(name), w_spec, a_spec)
    y32 = layer(x)
    y = layer(x.to(dtype))
    assert y.dtype == dtype and y.shape == (5, 24)
    torch.testing.assert_close(y.float(), y32, rtol=0.05, atol=0.05 * float(y32.abs().max()))


# ----------------------------------------------------------------------------- selection


W8_CH = QuantSpec(8, True, True, "per_channel")
A8 = QuantSpec(8, False, False)


@pytest.mark.parametrize("w_spec,a_spec,expected", [
    (W8_CH, A8, "int8_native"),
    (QuantSpec(8, False, True, "per_tensor"), QuantSpec(8, True, True, "per_token"), "int8_native"),
    (QuantSpec(8, False, False, "per_channel"), QuantSpec(8, True, True, "per_token"), "int8_native"),
    (W8_CH, None, "int8_wo_native"),
    (QuantSpec(8, True, False, "per_tensor"), None, "int8_wo_native"),
    (QuantSpec(4, True, True, "per_group", 32), None, "int4_wo_native"),
    (QuantSpec(2, False, False, "per_group", 8), None, "int4_wo_native"),
    (QuantSpec(4, True, True, "per_group", 7), None, "int4_wo_native"),
    (QuantSpec(6, True, True, "per_group", 32), A8, "reference"),
    (QuantSpec(8, True, True, "per_group", 32), None, "int8_wo_native"),
    (QuantSpec(4, True, True, "per_group", 32), A8, "w4a8_native"),
    (QuantSpec(4, True, True, "per_group", 12), A8, "reference"),
    (QuantSpec(4, True, True, "per_channel"), A8, "w4a8_native"),
])
def test_select_kernel_auto(w_spec, a_spec, expected):
    require_kernel(expected, w_spec, a_spec)          # the native kernels need a C compiler, int8_native VNNI
    k = select_kernel(w_spec, a_spec, "cpu")
    assert k.name == expected
    assert k.supports(w_spec, a_spec, "cpu") is None


def test_select_kernel_auto_on_cuda_skips_cpu_only_kernels():
    assert select_kernel(W8_CH, A8, "cuda").name == "reference"
    assert select_kernel(W8_CH, None, "cuda:0").name == "reference"
    assert select_kernel(QuantSpec(4, True, True, "per_group", 32), None, "cuda").name == "int4_packed"


def test_forced_kernels():
    assert select_kernel(W8_CH, A8, "cpu", "reference").name == "reference"
    assert select_kernel(W8_CH, A8, "cpu", "int8_int_mm").name == "int8_int_mm"
    with pytest.raises(KernelUnavailable, match="per_group"):
        select_kernel(QuantSpec(8, True, True, "per_group", 32), A8, "cpu", "int8_int_mm")
    with pytest.raises(KernelUnavailable, match="needs quantized activations"):
        select_kernel(W8_CH, None, "cpu", "int8_int_mm")
    with pytest.raises(KernelUnavailable, match="activations"):
        select_kernel(W8_CH, A8, "cpu", "int8_weight_only")
    with pytest.raises(KernelUnavailable, match="at most 4-bit"):
        select_kernel(W8_CH, None, "cpu", "int4_packed")
    with pytest.raises(KernelUnavailable, match="cuda"):
        select_kernel(W8_CH, A8, "cuda", "int8_int_mm")


def test_forced_unknown_kernel_has_did_you_mean_hint():
    with pytest.raises(ConfigError, match=r"did you mean 'int8_int_mm'\?") as e:
        select_kernel(W8_CH, A8, "cpu", "int8_intmm")
    assert e.value.exit_code == 2
    with pytest.raises(ConfigError, match="known: "):
        select_kernel(W8_CH, A8, "cpu", "tensorrt")


def test_registry_lists_all_kernels():
    assert {"reference", "int8_int_mm", "int8_weight_only", "int4_packed", "int8_onednn", "int8_native",
            "int8_wo_native", "int4_wo_native"} <= set(KERNELS)
    assert KERNELS.get("reference").emulated and not KERNELS.get("int8_int_mm").emulated
