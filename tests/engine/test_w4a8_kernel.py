"""w4a8_native, 4-bit weights as nibbles on the fused VNNI kernel: exact int32 sums against int64 arithmetic for
every 2- to 4-bit weight spec and activation spec and every remainder of the tiles; per weight group, each group's
exact sum rescaled (against a float64 oracle of int64 group sums); the nibble layout against an independent index
formula, the held weight, the portable C loop, selection and refusals."""
from __future__ import annotations

import itertools

import pytest
import torch

from qbench.engine.kernels import KERNELS, native
from qbench.engine.kernels.fused import PANEL, gemm, pack_nibble_panels, unpack_nibble_panels
from qbench.engine.methods import rtn
from qbench.engine.primitives import QuantSpec, quantize

from tests.engine.support import torch_threads
from tests.engine.test_fast_kernels import _portable_library
from tests.engine.test_fused_kernel import check as fused_check
from tests.engine.test_kernels import A_SPECS, make_problem, sid

W4A8, REF = KERNELS.get("w4a8_native"), KERNELS.get("reference")
W4 = QuantSpec(4, True, True, "per_channel")
A_TOKEN = QuantSpec(8, False, False, "per_token")
W_SPECS = [QuantSpec(bits, signed, sym, gran) for bits, signed, sym, gran in itertools.product(
    [4, 3], [True, False], [True, False], ["per_tensor", "per_channel"])] + [QuantSpec(2, False, False, "per_channel")]
needs_w4a8 = pytest.mark.skipif(W4A8.supports(W4, A_TOKEN, "cpu") is not None,
                                reason=f"w4a8_native unavailable: {W4A8.supports(W4, A_TOKEN, 'cpu')}")


def check(m, k, n, w_spec, a_spec, seed, threads=None):
    """int8_native's check (exact int32 sums, the float64 oracle, the reference kernel) on w4a8_native."""
    fused_check(m, k, n, w_spec, a_spec, seed, threads=threads, kernel=W4A8)


def test_nibble_panel_layout():
    """byte [p][k // 8][j][k % 4] holds codes[64 p + j, k] in its low nibble when k % 8 < 4, else its high one;
    zero codes in the padding; unpacking gives the codes back."""
    n, k = 70, 13
    codes = torch.randint(0, 16, (n, k), dtype=torch.uint8, generator=torch.Generator().manual_seed(3))
    flat = pack_nibble_panels(codes)
    npad, kpad = 128, 16
    assert flat.dtype == torch.uint8 and flat.numel() == npad * kpad // 2
    for nn in range(npad):
        for kk in range(kpad):
            p, j = divmod(nn, PANEL)
            byte = int(flat[p * kpad // 2 * PANEL + (kk // 8) * 4 * PANEL + 4 * j + kk % 4])
            got = byte & 15 if kk % 8 < 4 else byte >> 4
            assert got == (int(codes[nn, kk]) if nn < n and kk < k else 0), (nn, kk)
    assert torch.equal(unpack_nibble_panels(flat, n, k), codes)


CASES = list(itertools.product(range(len(W_SPECS)), range(len(A_SPECS))))


@needs_w4a8
@pytest.mark.parametrize("wi,ai", CASES, ids=[f"{sid(W_SPECS[i])}-x-{sid(A_SPECS[j])}" for i, j in CASES])
def test_w4a8_every_spec(wi, ai):
    check(13, 37, 70, W_SPECS[wi], A_SPECS[ai], seed=wi * 100 + ai)


@needs_w4a8
@pytest.mark.parametrize("m,k,n", [(1, 1, 1), (1, 4096, 65), (5, 3, 200), (6, 64, 64), (7, 130, 129),
                                   (16, 384, 384), (47, 100, 63), (49, 257, 130), (97, 9, 50), (300, 200, 136),
                                   (1024, 384, 384), (2048, 129, 71)])
def test_w4a8_shapes(m, k, n):
    """Tile remainders (M mod 6), panel remainders (N mod 64), K mod 8 (the nibble pairs), the split by panels
    and by rows."""
    check(m, k, n, W4, A_TOKEN, seed=m * 7 + k + n)
    check(m, k, n, QuantSpec(4, False, False, "per_tensor"), QuantSpec(8, True, True, "per_tensor"), seed=m + k * 3)


@needs_w4a8
@pytest.mark.parametrize("threads", [1, 2, 3])
def test_w4a8_thread_counts(threads):
    for m in (2, 40, 301):
        check(m, 200, 300, QuantSpec(4, True, False, "per_channel"), A_TOKEN, seed=m, threads=threads)


@needs_w4a8
def test_w4a8_holds_the_codes_it_was_given_in_half_the_bytes():
    w = torch.randn(130, 96)
    for spec in (W4, QuantSpec(4, False, False, "per_channel"), QuantSpec(3, True, False, "per_tensor")):
        qw = rtn(w, spec)
        state = W4A8.pack(qw, None, A_TOKEN)
        held = W4A8.held_weight(state)
        assert torch.equal(held.codes, qw.codes)
        torch.testing.assert_close(held.dequantize(torch.float64), qw.dequantize(torch.float64), rtol=0, atol=0)
        int8 = KERNELS.get("int8_native").pack(qw, None, A_TOKEN)
        assert state.wp.numel() * 2 == int8.wp.numel()


def test_portable_c_w4a8_is_exact(monkeypatch, tmp_path):
    if native.unavailable():
        pytest.skip(native.unavailable())
    lib = _portable_library(tmp_path)
    if lib is None:
        pytest.skip("this compiler cannot build without AVX-512 (-mno-avx512f)")
    monkeypatch.setattr(native, "_load", lambda: (lib, ""))
    for i, (m, k, n) in enumerate([(1, 5, 3), (7, 37, 70), (50, 130, 65)]):
        check(m, k, n, W_SPECS[(3 * i + 1) % len(W_SPECS)], A_SPECS[(5 * i) % len(A_SPECS)], seed=i)


@pytest.mark.parametrize("w_spec,a_spec,match", [
    (QuantSpec(8, True, True, "per_channel"), A_TOKEN, "4-bit"),
    (QuantSpec(4, False, True, "per_tensor", None, "nf4"), A_TOKEN, "4-bit"),
    (QuantSpec(4, True, True, "per_group", 12), A_TOKEN, "multiple of 8"),
    (W4, None, "needs quantized activations"),
])
def test_w4a8_refuses(w_spec, a_spec, match):
    assert match in W4A8.supports(w_spec, a_spec, "cpu")


@needs_w4a8
def test_auto_picks_w4a8_for_4_bit_weights_with_activations():
    from qbench.engine.kernels import select_kernel

    assert select_kernel(W4, A_TOKEN, "cpu").name == "w4a8_native"
    assert select_kernel(QuantSpec(8, True, True, "per_channel"), A_TOKEN, "cpu").name == "int8_native"


def check_groups(m, k, n, w_spec, a_spec, seed, threads=None, problem=None):
    """y = sa * sum_g ws_g * (exact int64 sum of group g) + b in float64, against the kernel and the reference."""
    w, b, x = problem or make_problem(m, k, n, seed)
    qa, qw = quantize(x, a_spec), quantize(w, w_spec)
    gs, groups = w_spec.group_size, k // w_spec.group_size
    a = (qa.data.long() - qa.zero_point.long().reshape(-1, 1)).reshape(m, groups, gs)
    c = (qw.data.long() - qw.zero_point.long().reshape(n, groups, 1).expand(n, groups, gs).reshape(n, k))
    exact = torch.einsum("mgk,ngk->mng", a, c.reshape(n, groups, gs))                    # (M, N, G) int64
    y64 = (exact.double() * qw.scale.double().reshape(1, n, groups)).sum(-1) * qa.scale.double().reshape(-1, 1) \
        + b.double()
    with torch_threads(threads):
        y = W4A8.forward(W4A8.prepare(w, b, w_spec, a_spec), x)
    scale = float(y64.abs().max())
    assert (y.double() - y64).abs().max() <= 1e-5 * scale, (m, k, n, sid(w_spec), sid(a_spec))
    y_ref = REF.forward(REF.prepare(w, b, w_spec, a_spec), x)
    assert (y.double() - y_ref.double()).abs().max() <= 1e-5 * scale


G_SPECS = [QuantSpec(4, signed, sym, "per_group", gs) for signed, sym, gs in
           itertools.product([True, False], [True, False], [8, 32])] + [QuantSpec(3, True, False, "per_group", 16)]
G_CASES = list(itertools.product(range(len(G_SPECS)), range(len(A_SPECS))))


@needs_w4a8
@pytest.mark.parametrize("wi,ai", G_CASES, ids=[f"{sid(G_SPECS[i])}-x-{sid(A_SPECS[j])}" for i, j in G_CASES])
def test_w4a8_groups_every_spec(wi, ai):
    check_groups(13, 64, 70, G_SPECS[wi], A_SPECS[ai], seed=wi * 100 + ai)


@needs_w4a8
@pytest.mark.parametrize("m,k,n,gs", [(1, 8, 1, 8), (1, 4096, 65, 128), (2, 24, 200, 8), (4, 128, 64, 64),
                                      (5, 96, 129, 32), (7, 64, 63, 16), (49, 256, 130, 128), (300, 192, 136, 64),
                                      (1024, 384, 384, 128), (3, 512, 70, 256)])
def test_w4a8_groups_shapes(m, k, n, gs):
    """Row tiles of 3 inside blocks of 6 (M mod 3, M mod 6), panel remainders, one group per row and many."""
    check_groups(m, k, n, QuantSpec(4, False, False, "per_group", gs), A_TOKEN, seed=m + k + n)


@needs_w4a8
def test_w4a8_group_words_hold_the_extremes():
    """Groups of up to 128 keep each column's sum and zero point as the 16-bit halves of one word, multiplied
    against (za, rt) by one vpmaddwd: exact at the extremes (rt = +-128 * 255 with za = 0 and 255, column sums of
    127 * 15, zero points 0 and 15); groups of 256 keep 32-bit words, as exact."""
    k, n = 512, 70
    g = torch.Generator().manual_seed(11)
    x = torch.rand(4, k, generator=g)
    x[0, :128], x[0, 128:] = 1.0, torch.linspace(0, 1, k - 128)          # min 0: za = 0, group 0 all 255
    x[1, :128], x[1, 128:] = -1.0, torch.linspace(-1, 0, k - 128)        # max 0: za = 255, group 0 all 0
    w = torch.rand(n, k, generator=g)
    w[0], w[0, ::128] = 1.0, 0.0                      # each group of row 0: one code 0, the rest 15
    w[1], w[1, ::128] = -1.0, 0.0                     # row 1: one code 15, the rest 0 (zero point 15)
    b = torch.randn(n, generator=g)
    for gs, words in ((128, True), (64, True), (256, False)):
        spec = QuantSpec(4, False, False, "per_group", gs)
        assert W4A8.pack(rtn(w, spec), b, A_TOKEN).meta16 is words
        check_groups(4, k, n, spec, A_TOKEN, seed=0, problem=(w, b, x))
        state = W4A8.pack(rtn(w, spec), b, A_TOKEN)
        held = W4A8.held_weight(state)
        assert torch.equal(held.codes, rtn(w, spec).codes) and torch.equal(held.zero_point, rtn(w, spec).zero_point)


@needs_w4a8
@pytest.mark.parametrize("threads", [1, 2, 3])
def test_w4a8_groups_thread_counts(threads):
    for m in (2, 40, 301):
        check_groups(m, 128, 300, QuantSpec(4, True, True, "per_group", 32), A_TOKEN, seed=m, threads=threads)


@needs_w4a8
def test_w4a8_groups_hold_their_codes_and_refuse_an_exact_sum():
    w = torch.randn(70, 96)
    qw = rtn(w, QuantSpec(4, False, False, "per_group", 32))
    state = W4A8.pack(qw, None, A_TOKEN)
    held = W4A8.held_weight(state)
    assert state.groups == 3 and torch.equal(held.codes, qw.codes)
    assert torch.equal(held.scale, qw.scale) and torch.equal(held.zero_point, qw.zero_point)
    with pytest.raises(ValueError, match="no single int32 sum"):
        gemm(state, torch.randn(2, 96), exact=True)


def test_portable_c_w4a8_groups(monkeypatch, tmp_path):
    if native.unavailable():
        pytest.skip(native.unavailable())
    lib = _portable_library(tmp_path)
    if lib is None:
        pytest.skip("this compiler cannot build without AVX-512 (-mno-avx512f)")
    monkeypatch.setattr(native, "_load", lambda: (lib, ""))
    for i, (m, k, n) in enumerate([(1, 32, 3), (7, 64, 70), (50, 96, 65)]):
        check_groups(m, k, n, G_SPECS[(3 * i + 1) % len(G_SPECS)], A_SPECS[(5 * i) % len(A_SPECS)], seed=i)
