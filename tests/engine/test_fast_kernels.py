"""The fast CPU kernels (int8_onednn, int8_wo_native, int4_wo_native) and qbench's native quantizer.

Oracles: the codes of primitives.quantize (the native quantizer must give identical ones), exact int64
accumulations of (q - z) products, float64 matmuls of dequantized weights, and the reference kernel.
Shapes are random-ish on purpose: M from 1 to 2048, K and N mostly not multiples of 16 or 64.
"""
from __future__ import annotations

import ctypes
import itertools
import os
import shutil

import pytest
import torch

from qbench.engine.kernels import KERNELS, native, select_kernel
from qbench.engine.kernels.decode import DECODE_MAX_M, pack_nibble_blocks, unpack_nibble_blocks
from qbench.engine.modules import QuantLinear
from qbench.engine.primitives import QuantSpec, choose_qparams, quantize
from qbench.errors import KernelUnavailable
from tests.engine.support import torch_threads
from tests.engine.test_kernels import exact_acc, make_problem, weight64

REF = KERNELS.get("reference")
ONEDNN, WO8, WO4 = (KERNELS.get(n) for n in ("int8_onednn", "int8_wo_native", "int4_wo_native"))

needs_native = pytest.mark.skipif(native.unavailable() is not None, reason=f"native kernels: {native.unavailable()}")
needs_onednn = pytest.mark.skipif(
    ONEDNN.supports(QuantSpec(8), QuantSpec(8, False, False), "cpu") is not None,
    reason=f"{ONEDNN.supports(QuantSpec(8), QuantSpec(8, False, False), 'cpu')}")


# ----------------------------------------------------------------------------- native quantizer


A_SPECS = [QuantSpec(bits, signed, sym, gran) for bits, signed, sym, gran in itertools.product(
    [8, 6, 4, 2], [True, False], [True, False], ["per_tensor", "per_token"])]


@needs_native
@pytest.mark.parametrize("spec", A_SPECS, ids=[s.describe().replace(" ", "-") for s in A_SPECS])
def test_native_quantizer_codes_identical(spec):
    g = torch.Generator().manual_seed(spec.bits * 7 + spec.signed * 3 + spec.symmetric)
    shift = 128 if spec.signed else 0
    cases = [torch.randn(m, k, generator=g) * torch.rand(m, 1, generator=g) * 4 + 0.3
             for m, k in ((1, 7), (5, 100), (33, 200), (3, 1000))]
    cases.append(torch.zeros(4, 40))                                             # all-zero blocks
    cases.append(torch.cat([torch.zeros(1, 50), -torch.rand(2, 50, generator=g)]))  # one-signed rows
    for x in cases:
        q = quantize(x, spec)
        codes, s, z = native.quant_u8(x, spec.bits, spec.signed, spec.symmetric, spec.granularity == "per_token")
        assert torch.equal(codes.to(torch.int16), q.data.to(torch.int16) + shift)
        assert torch.equal(s, q.scale.reshape(-1)) and torch.equal(z, q.zero_point.reshape(-1) + shift)


@needs_native
@pytest.mark.parametrize("signed", [True, False])
def test_native_quantizer_static_ties_and_outliers(signed):
    """Exact half steps (round half to even decides), values far outside the range (clamp), and scales
    whose reciprocal is inexact: the codes still match primitives.quantize one for one."""
    spec = QuantSpec(8, signed, False, "per_tensor")
    for scale in (0.01, 0.1, 1 / 3, 7.3e-3, 2.0 ** -9):
        s = torch.tensor(scale, dtype=torch.float32)
        z = torch.tensor(-3 if signed else 131, dtype=torch.int32)
        halves = (torch.arange(-600, 600, dtype=torch.float32) + 0.5) * s            # ties and near-ties
        near = torch.cat([torch.nextafter(halves, halves + 1), torch.nextafter(halves, halves - 1)])
        x = torch.cat([halves, near, torch.tensor([1e9, -1e9, 3e38, -3e38, 1e-40])]).reshape(1, -1)
        q = quantize(x, spec, s, z)
        codes, _, _ = native.quant_u8(x.contiguous(), 8, signed, False, False, (s, z))
        assert torch.equal(codes.to(torch.int16), q.data.to(torch.int16) + (128 if signed else 0))



@needs_native
@pytest.mark.parametrize("bits", [8, 6])
def test_native_quantizer_non_finite_inputs(bits):
    """NaN gets the lowest code and +-inf clamp, in both AVX-512 code paths: 64 codes a step (full 8-bit
    range) and 16 lanes (narrower codes, and the end of a row)."""
    s, z = torch.tensor(0.05), torch.tensor(7, dtype=torch.int32)
    x = torch.randn(1, 150, generator=torch.Generator().manual_seed(2))
    bad = {3: float("nan"), 70: float("nan"), 135: float("nan"), 149: float("nan"), 10: float("inf"),
           140: float("-inf"), 20: -1e30, 146: 1e30}
    for col, v in bad.items():
        x[0, col] = v
    for signed in (True, False):
        codes, _, _ = native.quant_u8(x, bits, signed, False, False, (s, z))
        qmin_u = (-(1 << (bits - 1)) + 128) if signed else 0
        qmax_u = qmin_u + (1 << bits) - 1
        for col, v in bad.items():
            expect = qmin_u if v != v or v < 0 else qmax_u
            assert int(codes[0, col]) == expect, (signed, col, v)
        finite = torch.isfinite(x) & (x.abs() < 1e29)
        q = quantize(x, QuantSpec(bits, signed, False, "per_tensor"), s, z)
        assert torch.equal(codes[finite].to(torch.int16), q.data[finite].to(torch.int16) + (128 if signed else 0))

@needs_native
def test_native_quantizer_two_threads():
    """Large enough to be split across threads (per-tensor: min/max per span, then codes per span)."""
    with torch_threads(2):
        x = torch.randn(301, 1003, generator=torch.Generator().manual_seed(5)) * 2 + 0.5
        for spec in (QuantSpec(8, False, False, "per_tensor"), QuantSpec(8, True, True, "per_token")):
            q = quantize(x, spec)
            codes, s, z = native.quant_u8(x, 8, spec.signed, spec.symmetric, spec.granularity == "per_token")
            assert torch.equal(codes.to(torch.int16), q.data.to(torch.int16) + (128 if spec.signed else 0))
            assert torch.equal(s, q.scale.reshape(-1))


# ----------------------------------------------------------------------------- int8_onednn (W8A8)


W_SYM = [QuantSpec(8, True, True, "per_channel"), QuantSpec(8, True, True, "per_tensor"),
         QuantSpec(8, False, True, "per_channel"), QuantSpec(7, True, True, "per_channel")]
ONEDNN_SHAPES = [(1, 24, 8), (2, 100, 50), (7, 200, 129), (16, 384, 300), (17, 1000, 33), (33, 96, 64),
                 (130, 200, 136), (2048, 72, 40)]


def check_onednn(m, k, n, w_spec, a_spec, seed, act_qparams=None, x=None):
    w, b, x0 = make_problem(m, k, n, seed)
    x = x0 if x is None else x
    exact, a_s, w_s = exact_acc(x, a_spec, w, w_spec, act_qparams)
    assert int(exact.abs().max()) < 2 ** 20
    # the integer products: output / scales recovers the exact int64 accumulation to float32 rounding
    y_nb = ONEDNN.forward(ONEDNN.prepare(w, None, w_spec, a_spec, act_qparams), x)
    acc = y_nb.double() / (a_s * w_s)
    assert (acc - exact.double()).abs().max() < 0.25 + 4e-7 * float(exact.abs().max())
    # rescale and bias against float64, and against the reference kernel
    y = ONEDNN.forward(ONEDNN.prepare(w, b, w_spec, a_spec, act_qparams), x)
    assert y.shape == (m, n) and y.dtype == torch.float32
    y64 = exact.double() * a_s * w_s + b.double()
    out_scale = float(y64.abs().max())
    assert (y.double() - y64).abs().max() <= 1e-5 * out_scale
    y_ref = REF.forward(REF.prepare(w, b, w_spec, a_spec, act_qparams), x)
    assert (y.double() - y_ref.double()).abs().max() <= 1e-5 * out_scale
    return y


ONEDNN_COMBOS = list(itertools.product(range(len(W_SYM)), range(len(A_SPECS))))


@needs_onednn
@pytest.mark.parametrize("wi", range(len(W_SYM)), ids=[s.describe().replace(" ", "-") for s in W_SYM])
def test_int8_onednn_exact_and_matches_reference(wi):
    for ai, a_spec in enumerate(A_SPECS):
        m, k, n = ONEDNN_SHAPES[(wi * 5 + ai) % len(ONEDNN_SHAPES)]
        if m * k * n > 20_000_000:
            continue
        check_onednn(m, k, n, W_SYM[wi], a_spec, seed=wi * 100 + ai)


@needs_onednn
@pytest.mark.parametrize("a_spec", [QuantSpec(8, False, False, "per_token"), QuantSpec(8, True, True, "per_tensor")],
                         ids=["token-asym", "tensor-sym"])
def test_int8_onednn_all_shapes(a_spec):
    for i, (m, k, n) in enumerate(ONEDNN_SHAPES):
        check_onednn(m, k, n, W_SYM[0], a_spec, seed=500 + i)


@needs_onednn
@pytest.mark.parametrize("a_spec", [QuantSpec(8, False, False), QuantSpec(8, True, False), QuantSpec(8, True, True)],
                         ids=["uint8-asym", "int8-asym", "int8-sym"])
def test_int8_onednn_static_activations(a_spec):
    m, k, n = 17, 100, 50
    g = torch.Generator().manual_seed(11)
    calib = torch.randn(64, k, generator=g) + 0.4
    qp = choose_qparams(calib.min(), calib.max(), a_spec)
    x = (torch.randn(m, k, generator=g) + 0.4) * 1.5                     # partly outside: those clamp
    y = check_onednn(m, k, n, W_SYM[0], a_spec, seed=7, act_qparams=qp, x=x)
    w, b, _ = make_problem(m, k, n, 7)
    y_dyn = ONEDNN.forward(ONEDNN.prepare(w, b, W_SYM[0], a_spec), x)
    assert not torch.allclose(y, y_dyn, rtol=0, atol=1e-6)               # the static qparams are used


@needs_onednn
def test_int8_onednn_without_native_quantizer_gives_same_outputs(monkeypatch):
    """Where the C library cannot be built, the torch quantizer and epilogue run: same codes, same outputs."""
    w, b, x = make_problem(19, 200, 40, seed=3)
    for a_spec in (QuantSpec(8, False, False, "per_token"), QuantSpec(8, True, True, "per_token"),
                   QuantSpec(8, False, False, "per_tensor")):
        state = ONEDNN.prepare(w, b, W_SYM[0], a_spec)
        y_native = ONEDNN.forward(state, x)
        monkeypatch.setattr(native, "unavailable", lambda: "no compiler (test)")
        y_torch = ONEDNN.forward(state, x)
        monkeypatch.undo()
        torch.testing.assert_close(y_torch, y_native, rtol=1e-6, atol=1e-6 * float(y_native.abs().max()))


@pytest.mark.parametrize("w_spec", [QuantSpec(8, True, True, "per_channel"), QuantSpec(8, False, False, "per_tensor")],
                         ids=["sym", "asym-uint8"])
def test_int8_int_mm_native_and_torch_quantizers_agree(monkeypatch, w_spec):
    """int8_int_mm quantizes with the native quantizer when built, else with torch: identical outputs."""
    int_mm = KERNELS.get("int8_int_mm")
    w, b, x = make_problem(23, 200, 40, seed=4)
    for a_spec in (QuantSpec(8, False, False, "per_token"), QuantSpec(8, True, True, "per_tensor"),
                   QuantSpec(4, True, False, "per_token")):
        state = int_mm.prepare(w, b, w_spec, a_spec)
        y_native = int_mm.forward(state, x)
        monkeypatch.setattr(native, "unavailable", lambda: "no compiler (test)")
        y_torch = int_mm.forward(state, x)
        monkeypatch.undo()
        assert torch.equal(y_native, y_torch)


# ----------------------------------------------------------------------------- weight-only native kernels


WO8_SPECS = [QuantSpec(8, signed, sym, gran, gs) for signed, sym, (gran, gs) in itertools.product(
    [True, False], [True, False], [("per_tensor", None), ("per_channel", None), ("per_group", 20)])]
WO4_SPECS = [QuantSpec(bits, signed, sym, gran, gs) for bits, signed, sym, (gran, gs) in itertools.product(
    [4, 3, 2], [True, False], [True, False], [("per_group", 128), ("per_group", 6), ("per_channel", None)])]
WO_MS = (1, 2, 3, 5, 16, 17, 40)


def check_weight_only(kernel, w_spec, k, seed, ms=WO_MS, n=45):
    for i, m in enumerate(ms):
        w, b, x = make_problem(m, k, n, seed + i)
        bias = b if i % 2 == 0 else None
        y = kernel.forward(kernel.prepare(w, bias, w_spec, None), x)
        y64 = x.double() @ weight64(w, w_spec).t() + (0 if bias is None else bias.double())
        y_ref = REF.forward(REF.prepare(w, bias, w_spec, None), x)
        out_scale = float(y64.abs().max())
        assert y.shape == (m, n) and y.dtype == torch.float32
        assert (y.double() - y64).abs().max() <= 1e-5 * out_scale, (m, k)
        assert (y.double() - y_ref.double()).abs().max() <= 1e-5 * out_scale, (m, k)


@needs_native
@pytest.mark.parametrize("w_spec", WO8_SPECS, ids=[s.describe().replace(" ", "-") for s in WO8_SPECS])
def test_int8_wo_native_against_float64(w_spec):
    check_weight_only(WO8, w_spec, k=100 if w_spec.group_size else 131, seed=40)


@needs_native
@pytest.mark.parametrize("n", [45, 46, 47, 48])
def test_int8_wo_native_tile_edges(n):
    """From M = 3 the int8 kernel runs tiles of 4 weight rows x 4 rows of x: every remainder of both (N % 4,
    M % 4), with groups that end inside a 16-column vector and with one scale per row."""
    check_weight_only(WO8, QuantSpec(8, True, False, "per_group", 20), k=100, seed=41, ms=(3, 4, 5, 6, 7, 8), n=n)
    check_weight_only(WO8, QuantSpec(8, False, True, "per_channel"), k=131, seed=42, ms=(3, 6, 11, 16), n=n)


@needs_native
@pytest.mark.parametrize("w_spec", WO4_SPECS, ids=[s.describe().replace(" ", "-") for s in WO4_SPECS])
def test_int4_wo_native_against_float64(w_spec):
    k = {128: 384, 6: 102, None: 99}[w_spec.group_size]              # per_channel: odd K (padded nibble)
    check_weight_only(WO4, w_spec, k=k, seed=60)


@needs_native
def test_weight_only_native_larger_shapes_two_threads():
    """Both paths (M <= 16: the C GEMM; above: C dequantize + matmul) on bigger layers, split over threads."""
    with torch_threads(2):
        check_weight_only(WO4, QuantSpec(4, False, False, "per_group", 128), k=1536, seed=80,
                          ms=(1, DECODE_MAX_M, DECODE_MAX_M + 1, 300), n=389)
        check_weight_only(WO8, QuantSpec(8, True, True, "per_channel"), k=1000, seed=90,
                          ms=(1, 9, DECODE_MAX_M + 1, 2048), n=77)


@needs_native
def test_weight_only_native_dequantizes_in_blocks_of_rows(monkeypatch):
    """Large weights at large M are dequantized a block of rows at a time; 45 rows in blocks of 8."""
    from qbench.engine.kernels import decode

    monkeypatch.setattr(decode, "CHUNK_BYTES", 1 << 14)
    check_weight_only(WO8, QuantSpec(8, False, False, "per_channel"), k=1000, seed=95, ms=(17, 64))
    check_weight_only(WO4, QuantSpec(4, True, False, "per_group", 128), k=1024, seed=96, ms=(17, 33))


@needs_native
def test_int4_wo_native_keeps_weights_packed():
    """Two codes per byte; a row's last K % 128 columns in a short block of 16, 32 or 64 bytes."""
    for k, row_bytes in ((256, 128), (64, 32), (32, 16), (200, 128), (300, 160), (99, 64)):
        w, b, _ = make_problem(1, k, 64, seed=1)
        state = WO4.prepare(w, b, QuantSpec(4, True, False, "per_channel"), None)
        assert state.codes.dtype == torch.uint8 and state.codes.shape == (64, row_bytes), k


# ----------------------------------------------------------------------------- int4_wo_native's nibble layout


NIBBLE_SPECS = [QuantSpec(4, False, False, "per_group", gs) for gs in (16, 32, 48, 64, 128, 256)] + [
    QuantSpec(4, True, True, "per_channel"), QuantSpec(3, False, False, "per_group", 24),
    QuantSpec(4, True, False, "per_group", 7), QuantSpec(2, True, True, "per_group", 2)]
NIBBLE_K = {16: 400, 32: 352, 48: 432, 64: 320, 128: 640, 256: 768, None: 300, 24: 264, 7: 91, 2: 130}


@pytest.mark.parametrize("k", [300, 200, 160, 99, 17, 256])
def test_nibble_blocks_layout(k):
    """Column 128 b + 16 j + d sits in bits 4j..4j+3 of little-endian word d of block b: 4-byte words in
    the full blocks, and in the short block for the last K % 128 columns the fewest bytes that hold its
    sub-blocks' nibbles; code 0 past column K. The byte arithmetic is spelled out apart from the packer."""
    g = torch.Generator().manual_seed(k)
    n, full = 3, k // 128
    subs = -(-(k % 128) // 16)
    unit = 0 if subs == 0 else 1 if subs <= 2 else 2 if subs <= 4 else 4
    codes = torch.randint(0, 16, (n, k), generator=g)
    packed = pack_nibble_blocks(codes)
    assert packed.dtype == torch.uint8 and packed.shape == (n, 64 * full + 16 * unit)
    for row in range(n):
        for col in range(128 * full + 16 * subs):
            b, j, d = col // 128, col % 128 // 16, col % 16
            size = 4 if b < full else unit
            word = sum(int(packed[row, 64 * b + size * d + i]) << (8 * i) for i in range(size))
            assert (word >> (4 * j)) & 15 == (int(codes[row, col]) if col < k else 0), (row, col)


@pytest.mark.parametrize("n,k", [(1, 1), (5, 99), (2, 128), (3, 129), (4, 300), (2, 160), (7, 1024), (2, 4097)])
def test_nibble_blocks_round_trip(n, k):
    codes = torch.randint(0, 16, (n, k), generator=torch.Generator().manual_seed(n * k))
    packed = pack_nibble_blocks(codes)
    assert packed.shape == (n, native.nibble_row_bytes(k))
    assert torch.equal(unpack_nibble_blocks(packed, k).long(), codes)


def test_nibble_blocks_refuse_wide_codes():
    with pytest.raises(ValueError, match="0..15"):
        pack_nibble_blocks(torch.tensor([[3, 16]]))
    with pytest.raises(ValueError, match="blocks of 128"):
        unpack_nibble_blocks(torch.zeros(2, 100, dtype=torch.uint8), 200)


@needs_native
@pytest.mark.parametrize("w_spec", NIBBLE_SPECS, ids=[s.describe().replace(" ", "-") for s in NIBBLE_SPECS])
def test_int4_wo_native_state_round_trips(w_spec):
    """prepare() keeps exactly the codes of primitives.quantize (as nibbles q - qmin), for K not a multiple
    of 128 and every group size the kernel handles differently."""
    k = NIBBLE_K[w_spec.group_size]
    w, b, _ = make_problem(1, k, 37, seed=k)
    state = WO4.prepare(w, b, w_spec, None)
    q = quantize(w, w_spec)
    assert torch.equal(unpack_nibble_blocks(state.codes, k).long(), q.data.long() - w_spec.qmin)


@needs_native
@pytest.mark.parametrize("w_spec", NIBBLE_SPECS, ids=[s.describe().replace(" ", "-") for s in NIBBLE_SPECS])
def test_int4_wo_native_group_sizes_against_float64(w_spec):
    """Every table schedule of the kernel (one table per block, per 64, 32 or 16 columns, per-lane groups)
    at every tile shape (M = 1..4 rows of x per pass, 1, 2 or 4 weight rows per tile plus leftovers: N = 45),
    and the dequantize path (M > 16)."""
    check_weight_only(WO4, w_spec, k=NIBBLE_K[w_spec.group_size], seed=70, ms=(1, 2, 3, 4, 5, 16, 17, 40))


@needs_native
def test_int4_wo_native_dequantizes_exactly():
    """The M > 16 path's fp32 weights are primitives.dequantize's, bit for bit (same float operations)."""
    from qbench.engine.primitives import dequantize

    for w_spec in NIBBLE_SPECS:
        k = NIBBLE_K[w_spec.group_size]
        w, b, _ = make_problem(1, k, 21, seed=k + 1)
        state = WO4.prepare(w, b, w_spec, None)
        assert torch.equal(WO4._dequant(state, 0, 21), dequantize(quantize(w, w_spec))), w_spec


def _portable_library(tmp_path):
    """The native library built without AVX-512 (its portable C loops), or None where this compiler cannot."""
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    lib_path = tmp_path / "qbench_cpu_portable.so"
    if not cc or native._build(cc, [*native.FLAGS, "-mno-avx512f"], lib_path):
        return None
    lib = ctypes.CDLL(str(lib_path))
    native.declare(lib)
    return lib


@needs_native
def test_portable_c_kernels_against_float64(monkeypatch, tmp_path):
    """The loops that run on CPUs without AVX-512 read the same layouts and give the same results."""
    lib = _portable_library(tmp_path)
    if lib is None:
        pytest.skip("this compiler cannot build without AVX-512 (-mno-avx512f)")
    assert lib.qb_isa().decode().startswith("portable-c")
    monkeypatch.setattr(native, "_load", lambda: (lib, ""))
    for i, w_spec in enumerate(NIBBLE_SPECS):
        check_weight_only(WO4, w_spec, k=NIBBLE_K[w_spec.group_size], seed=75 + i, ms=(1, 3, 4, 17))
    check_weight_only(WO8, QuantSpec(8, False, False, "per_group", 20), k=100, seed=78, ms=(1, 5, 17))
    check_weight_only(WO8, QuantSpec(8, True, True, "per_channel"), k=131, seed=79, ms=(2, 17))


# ----------------------------------------------------------------------------- dtypes, selection, refusals


@pytest.mark.parametrize("name,w_spec,a_spec", [
    ("int8_onednn", QuantSpec(8, True, True, "per_channel"), QuantSpec(8, False, False, "per_token")),
    ("int8_wo_native", QuantSpec(8, True, False, "per_channel"), None),
    ("int4_wo_native", QuantSpec(4, True, True, "per_group", 32), None),
])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_inputs(name, w_spec, a_spec, dtype):
    kernel = KERNELS.get(name)
    if kernel.supports(w_spec, a_spec, "cpu"):
        pytest.skip(kernel.supports(w_spec, a_spec, "cpu"))
    w, b, x = make_problem(5, 64, 24, seed=9)
    layer = QuantLinear(w, b, kernel, w_spec, a_spec)
    y32 = layer(x)
    y = layer(x.to(dtype))
    assert y.dtype == dtype and y.shape == (5, 24)
    torch.testing.assert_close(y.float(), y32, rtol=0.05, atol=0.05 * float(y32.abs().max()))


W8_CH, A8 = QuantSpec(8, True, True, "per_channel"), QuantSpec(8, False, False)


@pytest.mark.parametrize("name,w_spec,a_spec,match", [
    ("int8_onednn", QuantSpec(8, True, False, "per_channel"), A8, "asymmetric weights"),
    ("int8_onednn", QuantSpec(8, True, True, "per_group", 32), A8, "per_group"),
    ("int8_onednn", W8_CH, None, "needs quantized activations"),
    ("int8_wo_native", W8_CH, A8, "activations"),
    ("int8_wo_native", QuantSpec(4, True, True, "per_channel"), None, "two per byte"),
    ("int4_wo_native", W8_CH, None, "at most 4-bit"),
    ("int4_wo_native", QuantSpec(4, True, True, "per_group", 32), A8, "activations"),
])
def test_forced_fast_kernels_refuse_what_they_cannot_run(name, w_spec, a_spec, match):
    with pytest.raises(KernelUnavailable, match=match):
        select_kernel(w_spec, a_spec, "cpu", name)


@pytest.mark.parametrize("name", ["int8_onednn", "int8_wo_native", "int4_wo_native"])
def test_fast_kernels_are_cpu_only(name):
    with pytest.raises(KernelUnavailable, match="cuda"):
        select_kernel(QuantSpec(4, True, True, "per_group", 32) if name == "int4_wo_native" else W8_CH,
                      A8 if name == "int8_onednn" else None, "cuda", name)


@needs_native
def test_unsupported_shapes_raise():
    w = torch.randn(16, 100)
    with pytest.raises(ValueError, match="group_size"):
        WO4.prepare(w, None, QuantSpec(4, True, True, "per_group", 32), None)     # 32 does not divide 100
    with pytest.raises(ValueError, match="group_size"):
        WO8.prepare(w, None, QuantSpec(8, True, True, "per_group", 30), None)
    state = WO8.prepare(w, None, W8_CH, None)
    with pytest.raises(ValueError, match="inconsistent"):
        native.wo8_gemm(state.codes, torch.randn(2, 99), torch.randn(2, 1), state.s, state.zc, None, 1)
    with pytest.raises(ValueError, match="inconsistent"):                          # K mismatch, C path
        WO8.forward(state, torch.randn(2, 99))
    with pytest.raises(RuntimeError):                                              # K mismatch, matmul path
        WO8.forward(state, torch.randn(DECODE_MAX_M + 1, 99))
    for k in (100, 256):                                   # x padded to 128 columns by the kernel, or not
        state = WO4.prepare(torch.randn(16, k), None, QuantSpec(4, True, True, "per_group", 4), None)
        with pytest.raises(ValueError, match="inconsistent"):                      # K mismatch, C path
            WO4.forward(state, torch.randn(2, k - 4))
        with pytest.raises(RuntimeError):                                          # K mismatch, matmul path
            WO4.forward(state, torch.randn(DECODE_MAX_M + 1, k - 4))
    state = WO4.prepare(torch.randn(16, 250), None, QuantSpec(4, True, True, "per_group", 5), None)
    with pytest.raises(ValueError, match="inconsistent"):                          # x not padded to Kp
        native.wo4_gemm(state.codes, torch.randn(1, 250), state.s, state.zc, None, 250, 50)
    with pytest.raises(ValueError, match="contiguous"):
        native.wo4_gemm(state.codes, torch.randn(1, 512)[:, ::2], state.s, state.zc, None, 250, 50)
    with pytest.raises(ValueError, match="float32"):
        native.wo4_gemm(state.codes, torch.randn(1, 256).double(), state.s, state.zc, None, 250, 50)


def test_native_unavailable_is_a_reason_not_a_crash(monkeypatch):
    monkeypatch.setattr(native, "unavailable", lambda: "no C compiler (test)")
    assert WO8.supports(W8_CH, None, "cpu") == "no C compiler (test)"
    assert WO4.supports(QuantSpec(4, True, True, "per_group", 32), None, "cpu") == "no C compiler (test)"
    assert select_kernel(W8_CH, None, "cpu").name == "int8_weight_only"
    assert select_kernel(QuantSpec(4, True, True, "per_group", 32), None, "cpu").name == "int4_packed"


def test_native_build_failure_is_a_reason(monkeypatch, tmp_path):
    """A compiler that fails (here /bin/false) gives a reason string; nothing raises."""
    monkeypatch.setenv("CC", "false")
    monkeypatch.setenv("QBENCH_CACHE_DIR", str(tmp_path))
    lib, why = native._load.__wrapped__()
    assert lib is None and "native kernels" in why


@needs_native
def test_native_kernels_many_parallel_dispatches():
    """Dispatch after dispatch across threads (torch's OpenMP runtime, or the native pool): same results."""
    with torch_threads(2):
        w, b, x = make_problem(3, 2048, 256, seed=12)
        state = WO8.prepare(w, b, W8_CH, None)
        first = WO8.forward(state, x)
        for i in range(200):
            assert torch.equal(WO8.forward(state, x), first)
            if i % 50 == 0:
                torch.nn.functional.linear(x, w)                      # torch's own parallel work in between


@needs_native
def test_center_zero_points_matches_torch_round_of_the_mean():
    from qbench.engine.kernels import native

    g = torch.Generator().manual_seed(11)
    cases = [torch.randint(0, 256, (m,), generator=g, dtype=torch.int32) for m in (1, 2, 7, 1000)]
    cases += [torch.tensor([3, 4], dtype=torch.int32), torch.tensor([4, 5], dtype=torch.int32)]   # ties: to even
    for zp in cases:
        z0, dz = native.center_zero_points(zp)
        assert z0 == int(torch.round(zp.float().mean()))
        assert torch.equal(dz, (zp - z0).float())
    assert native.center_zero_points(torch.tensor([3, 4], dtype=torch.int32))[0] == 4
    assert native.center_zero_points(torch.tensor([4, 5], dtype=torch.int32))[0] == 4
