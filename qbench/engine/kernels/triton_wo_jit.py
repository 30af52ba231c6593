"""The Triton programs behind triton_wo.py. Imported only when a Triton kernel runs (imports triton).

Both compute y (M, N) = x (M, K) @ dequant(W)^T (+ bias) for W stored as integer codes, one program per
(BLOCK_M, BLOCK_N) output tile looping over K; each program reads its weight tile once and dequantizes it
in registers: w = (code - zero) * scale.

Quantization parameters arrive as float32 (N, G) tensors, G groups of GS consecutive columns per row
(per_channel and per_tensor weights: G = 1, GS = K). With PER_ROW (G == 1) the scale is applied once to
the accumulator instead of to every weight element.

Under TRITON_INTERPRET=1 (set before this module is imported) the same programs run on CPU tensors in
Triton's interpreter, which is how the test suite checks them without a GPU.
"""
from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def wo_int8_kernel(x_ptr, q_ptr, s_ptr, z_ptr, b_ptr, y_ptr, M, N, K, G, GS, stride_xm, stride_ym,
                   PER_ROW: tl.constexpr, HAS_BIAS: tl.constexpr, IEEE: tl.constexpr,
                   BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """Codes (N, K) int8/uint8, one per byte."""
    rm = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    m_ok = rm[:, None] < M
    n_ok = rn[:, None] < N
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    if PER_ROW:
        z_row = tl.load(z_ptr + rn[:, None] * G, mask=n_ok, other=0.0)               # (BN, 1)
    for k0 in range(0, K, BLOCK_K):
        rk = k0 + tl.arange(0, BLOCK_K)
        k_ok = rk[None, :] < K
        x = tl.load(x_ptr + rm[:, None] * stride_xm + rk[None, :], mask=m_ok & k_ok, other=0.0)  # (BM, BK)
        q = tl.load(q_ptr + rn[:, None] * K + rk[None, :], mask=n_ok & k_ok, other=0)             # (BN, BK)
        if PER_ROW:
            w = q.to(tl.float32) - z_row
        else:
            gi = rn[:, None] * G + rk[None, :] // GS
            s = tl.load(s_ptr + gi, mask=n_ok & k_ok, other=0.0)
            z = tl.load(z_ptr + gi, mask=n_ok & k_ok, other=0.0)
            w = (q.to(tl.float32) - z) * s
        if IEEE:
            acc += tl.dot(x, tl.trans(w), input_precision="ieee")
        else:
            acc += tl.dot(x, tl.trans(w.to(x.dtype)))
    _epilogue(acc, s_ptr, b_ptr, y_ptr, rm, rn, M, N, G, stride_ym, PER_ROW, HAS_BIAS)


@triton.jit
def wo_int4_kernel(x_ptr, p_ptr, s_ptr, z_ptr, b_ptr, y_ptr, M, N, K, G, GS, stride_xm, stride_ym,
                   PER_ROW: tl.constexpr, HAS_BIAS: tl.constexpr, IEEE: tl.constexpr,
                   BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_KB: tl.constexpr):
    """Codes two per byte, (N, ceil(K/2)) uint8: column 2j in the low nibble, 2j+1 in the high nibble.

    Nibbles are unsigned (code - qmin); z_ptr holds zero - qmin so w = (nibble - z) * s. Even and odd
    columns are two dot products against the matching strided columns of x, so no interleave is needed.
    """
    KB = (K + 1) // 2
    rm = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    m_ok = rm[:, None] < M
    n_ok = rn[:, None] < N
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    if PER_ROW:
        z_row = tl.load(z_ptr + rn[:, None] * G, mask=n_ok, other=0.0)               # (BN, 1)
    for j0 in range(0, KB, BLOCK_KB):
        rj = j0 + tl.arange(0, BLOCK_KB)                                              # byte columns
        p = tl.load(p_ptr + rn[:, None] * KB + rj[None, :], mask=n_ok & (rj[None, :] < KB), other=0)
        lo = (p & 0xF).to(tl.float32)                                                 # (BN, BKB) col 2j
        hi = (p >> 4).to(tl.float32)                                                  # col 2j + 1
        ke = 2 * rj
        ko = ke + 1
        xe = tl.load(x_ptr + rm[:, None] * stride_xm + ke[None, :], mask=m_ok & (ke[None, :] < K), other=0.0)
        xo = tl.load(x_ptr + rm[:, None] * stride_xm + ko[None, :], mask=m_ok & (ko[None, :] < K), other=0.0)
        if PER_ROW:
            we = lo - z_row
            wo = hi - z_row
        else:
            ge = rn[:, None] * G + ke[None, :] // GS
            go = rn[:, None] * G + ko[None, :] // GS
            ok_e = n_ok & (ke[None, :] < K)
            ok_o = n_ok & (ko[None, :] < K)
            we = (lo - tl.load(z_ptr + ge, mask=ok_e, other=0.0)) * tl.load(s_ptr + ge, mask=ok_e, other=0.0)
            wo = (hi - tl.load(z_ptr + go, mask=ok_o, other=0.0)) * tl.load(s_ptr + go, mask=ok_o, other=0.0)
        if IEEE:
            acc += tl.dot(xe, tl.trans(we), input_precision="ieee")
            acc += tl.dot(xo, tl.trans(wo), input_precision="ieee")
        else:
            acc += tl.dot(xe, tl.trans(we.to(xe.dtype)))
            acc += tl.dot(xo, tl.trans(wo.to(xo.dtype)))
    _epilogue(acc, s_ptr, b_ptr, y_ptr, rm, rn, M, N, G, stride_ym, PER_ROW, HAS_BIAS)


@triton.jit
def _epilogue(acc, s_ptr, b_ptr, y_ptr, rm, rn, M, N, G, stride_ym, PER_ROW: tl.constexpr,
              HAS_BIAS: tl.constexpr):
    """Per-row scale (when factored out), float32 bias, cast to y's dtype, masked store."""
    n_in = rn < N
    if PER_ROW:
        acc = acc * tl.load(s_ptr + rn * G, mask=n_in, other=0.0)[None, :]
    if HAS_BIAS:
        acc = acc + tl.load(b_ptr + rn, mask=n_in, other=0.0)[None, :]
    out = y_ptr + rm[:, None] * stride_ym + rn[None, :]
    tl.store(out, acc.to(y_ptr.dtype.element_ty), mask=(rm[:, None] < M) & n_in[None, :])
