"""int8_native, the fused W8A8 C kernel: exact int32 sums against int64 arithmetic, outputs against float64 and
the reference kernel, its weight layout against an independent index formula, and its refusals."""
from __future__ import annotations

import itertools

import pytest
import torch

from qbench.engine.kernels import KERNELS, native
from qbench.engine.kernels.fused import MAX_K, PANEL, gemm, pack_panels
from qbench.engine.primitives import QuantSpec

from tests.engine.test_fast_kernels import _portable_library
from tests.engine.support import first_available, torch_threads
from tests.engine.test_kernels import A_SPECS, W_SPECS, exact_acc, make_problem, sid

FUSED, REF = KERNELS.get("int8_native"), KERNELS.get("reference")
W8 = QuantSpec(8, True, True, "per_channel")
A_TOKEN = QuantSpec(8, False, False, "per_token")
needs_fused = pytest.mark.skipif(FUSED.supports(W8, A_TOKEN, "cpu") is not None,
                                 reason=f"int8_native unavailable: {FUSED.supports(W8, A_TOKEN, 'cpu')}")


def check(m, k, n, w_spec, a_spec, seed, act_qparams=None, threads=None, kernel=FUSED):
    """Exact int32 sums, then float outputs against the float64 oracle and the reference kernel (`kernel`: the
    fused kernel, int8_native, or its nibble twin w4a8_native)."""
    w, b, x = make_problem(m, k, n, seed)
    exact, a_s, w_s = exact_acc(x, a_spec, w, w_spec, act_qparams)
    with torch_threads(threads):
        acc = gemm(kernel.prepare(w, None, w_spec, a_spec, act_qparams), x, exact=True)
        y = kernel.forward(kernel.prepare(w, b, w_spec, a_spec, act_qparams), x)
    assert acc.dtype == torch.int32 and torch.equal(acc.long(), exact), (m, k, n, sid(w_spec), sid(a_spec))
    y64 = exact.double() * a_s * w_s + b.double()
    scale = float(y64.abs().max())
    assert y.shape == (m, n) and y.dtype == torch.float32
    assert (y.double() - y64).abs().max() <= 1e-5 * scale
    y_ref = REF.forward(REF.prepare(w, b, w_spec, a_spec, act_qparams), x)
    assert (y.double() - y_ref.double()).abs().max() <= 1e-5 * scale


def test_pack_panels_layout():
    """[p][k // 4][j][k % 4] = codes[64 p + j, k], zero codes in the padding, against the index formula."""
    n, k = 70, 9
    codes = torch.randint(-128, 128, (n, k), dtype=torch.int8, generator=torch.Generator().manual_seed(3))
    flat = pack_panels(codes)
    npad, kpad = 128, 12
    assert flat.dtype == torch.int8 and flat.numel() == npad * kpad
    for nn in range(npad):
        for kk in range(kpad):
            p, j = divmod(nn, PANEL)
            at = int(flat[p * kpad * PANEL + (kk // 4) * 4 * PANEL + 4 * j + kk % 4])
            assert at == (int(codes[nn, kk]) if nn < n and kk < k else 0), (nn, kk)


CASES = list(itertools.product(range(len(W_SPECS)), range(len(A_SPECS))))


@needs_fused
@pytest.mark.parametrize("wi,ai", CASES, ids=[f"{sid(W_SPECS[i])}-x-{sid(A_SPECS[j])}" for i, j in CASES])
def test_int8_native_every_spec(wi, ai):
    """All 8-bit weight specs (signed / unsigned, sym / asym, per tensor / channel) x 8- and 4-bit
    activation specs, on shapes that are not multiples of the panel, the tile or 4."""
    check(13, 37, 70, W_SPECS[wi], A_SPECS[ai], seed=wi * 100 + ai)


@needs_fused
@pytest.mark.parametrize("m,k,n", [(1, 1, 1), (1, 4096, 65), (5, 3, 200), (6, 64, 64), (7, 130, 129),
                                   (16, 384, 384), (47, 100, 63), (49, 257, 130), (97, 96, 50),
                                   (300, 200, 136), (1024, 384, 384), (2048, 129, 71)])
def test_int8_native_shapes(m, k, n):
    """Tile remainders (M mod 6), row blocks (M mod 48), panel remainders (N mod 64), K mod 4, the split
    by panels (few rows) and by rows."""
    check(m, k, n, W8, A_TOKEN, seed=m * 7 + k + n)
    check(m, k, n, QuantSpec(8, False, False, "per_tensor"), QuantSpec(8, True, True, "per_tensor"),
          seed=m + k * 3 + n)


@needs_fused
@pytest.mark.parametrize("threads", [1, 2, 3])
def test_int8_native_thread_counts(threads):
    for m in (2, 40, 301):
        check(m, 200, 300, QuantSpec(8, True, False, "per_channel"), A_TOKEN, seed=m, threads=threads)


@needs_fused
def test_int8_native_random_shapes():
    """Random (M, K, N) with M in 1..2048, K and N mostly not multiples of 64."""
    g = torch.Generator().manual_seed(11)
    for i in range(12):
        m = int(torch.randint(1, 2049, (1,), generator=g))
        k, n = (int(v) for v in torch.randint(1, 700, (2,), generator=g))
        w_spec, a_spec = W_SPECS[i % len(W_SPECS)], A_SPECS[(3 * i) % len(A_SPECS)]
        check(m, k, n, w_spec, a_spec, seed=100 + i)


@needs_fused
@pytest.mark.parametrize("a_spec", [QuantSpec(8, False, False, "per_tensor"), QuantSpec(8, True, True, "per_tensor"),
                                    QuantSpec(8, True, False, "per_tensor")], ids=sid)
def test_int8_native_static_activations(a_spec):
    """Calibrated (static) qparams in the spec's own domain; values beyond their range clamp like quantize."""
    zp = 0 if a_spec.symmetric else (-3 if a_spec.signed else 120)
    qp = (torch.tensor(0.02), torch.tensor(zp, dtype=torch.int32))
    check(21, 90, 77, W8, a_spec, seed=5, act_qparams=qp)


@needs_fused
def test_int8_native_exact_near_the_int32_limit():
    """Extreme codes at K = MAX_K: (u - za)(c - zc) = +-255 * 255 per term, sums of about +-2^31 (the int32
    limit), and intermediate terms that wrap; the result stays exact."""
    k = MAX_K
    w = torch.full((3, k), -1.0)
    w[1] = 1.0
    w[2, ::2] = 1.0
    x = torch.ones(2, k)
    x[1, ::3] = -1.0
    check_specs = (QuantSpec(8, False, False, "per_channel"), QuantSpec(8, False, False, "per_token"))
    exact, _, _ = exact_acc(x, check_specs[1], w, check_specs[0])
    acc = gemm(FUSED.prepare(w, None, *check_specs), x.contiguous(), exact=True)
    assert int(exact.abs().max()) == 255 * 255 * k > 2 ** 31 - 2 ** 27
    assert torch.equal(acc.long(), exact)


@needs_fused
def test_int8_native_half_inputs_and_no_bias():
    w, b, x = make_problem(9, 64, 40, seed=2)
    state = FUSED.prepare(w, None, W8, A_TOKEN)
    y32 = FUSED.forward(state, x)
    y16 = FUSED.forward(state, x.bfloat16())
    assert y16.dtype == torch.bfloat16
    torch.testing.assert_close(y16.float(), y32, rtol=0.02, atol=0.02 * float(y32.abs().max()))
    xt = x.t().contiguous().t()                                   # non-contiguous input
    assert torch.equal(FUSED.forward(state, xt), y32)


@pytest.mark.parametrize("w_spec,a_spec,match", [
    (QuantSpec(8, True, True, "per_group", 32), A_TOKEN, "per_group"),
    (W8, None, "needs quantized activations"),
    (W8, QuantSpec(8, False, False, "per_group", 32), "per_tensor or per_token"),
])
def test_int8_native_refuses(w_spec, a_spec, match):
    assert match in FUSED.supports(w_spec, a_spec, "cpu")
    with pytest.raises(ValueError, match=match):
        FUSED.prepare(torch.randn(8, 64), None, w_spec, a_spec)


@needs_fused
def test_int8_native_refuses_shapes_and_inputs():
    assert FUSED.shape_reason(16, MAX_K) is None and "int32" in FUSED.shape_reason(16, MAX_K + 1)
    with pytest.raises(ValueError, match="int32"):
        FUSED.prepare(torch.randn(2, MAX_K + 1), None, W8, A_TOKEN)
    state = FUSED.prepare(torch.randn(8, 64), None, W8, A_TOKEN)
    with pytest.raises(ValueError, match="float32"):
        gemm(state, torch.randn(3, 63))
    with pytest.raises(ValueError, match="one scale"):
        FUSED.prepare(torch.randn(8, 64), None, W8, QuantSpec(8, False, False, "per_tensor"),
                      (torch.ones(2), torch.zeros(2, dtype=torch.int32)))
    assert "cuda" in FUSED.supports(W8, A_TOKEN, "cuda")


def test_portable_c_w8a8_is_exact(monkeypatch, tmp_path):
    """The loop that runs without VNNI gives the same exact int32 sums and outputs."""
    if native.unavailable():
        pytest.skip(native.unavailable())
    lib = _portable_library(tmp_path)
    if lib is None:
        pytest.skip("this compiler cannot build without AVX-512 (-mno-avx512f)")
    assert lib.qb_w8a8_isa().decode() == "portable-c"
    monkeypatch.setattr(native, "_load", lambda: (lib, ""))
    assert "VNNI" in FUSED.supports(W8, A_TOKEN, "cpu")                   # auto never picks the slow loop
    for i, (m, k, n) in enumerate([(1, 5, 3), (7, 37, 70), (50, 130, 65)]):
        check(m, k, n, W_SPECS[(3 * i + 1) % len(W_SPECS)], A_SPECS[(5 * i) % len(A_SPECS)], seed=i)


@needs_fused
def test_auto_passes_over_int8_native_for_rows_too_long():
    """quantize_ with kernel auto picks one kernel for all the model's linear modules: when one of them has
    K > MAX_K, int8_native cannot hold it and the whole model goes to the next kernel that holds every layer
    (recorded), the small layer included; a forced int8_native is refused before any module changes, naming the
    misfit."""
    from qbench.engine.api import quantize_
    from qbench.engine.modules import QuantLinear
    from qbench.errors import KernelUnavailable

    scheme = {"name": "w8a8", "weights": {"bits": 8, "granularity": "per_channel"},
              "activations": {"bits": 8, "signed": False, "symmetric": False, "granularity": "per_token"}}
    model = torch.nn.Sequential(torch.nn.Linear(MAX_K + 1, 8), torch.nn.Linear(8, 4))
    records = quantize_(model, scheme)
    after = first_available(W8, QuantSpec(8, False, False, "per_token"), "int8_onednn", "int8_int_mm")  # VNNI
    assert {r.kernel for r in records if r.applied} == {after}
    assert isinstance(model[0], QuantLinear)
    untouched = torch.nn.Sequential(torch.nn.Linear(MAX_K + 1, 8), torch.nn.Linear(8, 4))
    with pytest.raises(KernelUnavailable, match=f"{MAX_K + 1}"):
        quantize_(untouched, {**scheme, "kernel": "int8_native"})
    assert not any(isinstance(m, QuantLinear) for m in untouched)
    small = torch.nn.Sequential(torch.nn.Linear(64, 8))
    assert {r.kernel for r in quantize_(small, scheme) if r.applied} == {"int8_native"}
