"""qbench's own C kernels as checked Python functions: each wraps one entry point of the native library.

The C sources are the .c files of this folder, mapped with every entry point in qbench_cpu.h (one concern per
file: thread pool, int8 and int4 weight-only GEMMs, activation quantizer, per-row epilogue, fused W8A8 GEMM).
build.py compiles them into one shared library on first use (cached per machine) and loads it with ctypes;
where that is impossible, `unavailable()` says why and the kernels that need it decline every configuration.
"""
from __future__ import annotations

import ctypes
from typing import Callable, Optional

import torch

from qbench.engine.kernels.native.build import FLAGS, HEADERS, SOURCES, declare  # noqa: F401  (re-exported)
from qbench.engine.kernels.native.build import build as _build, load as _load


def unavailable() -> Optional[str]:
    """None when the native library is built and loaded, else the reason it is not."""
    return _load()[1] or None


def isa() -> str:
    """How the library was built, as qb_isa reports it: "avx512, openmp", "avx512", "portable-c, openmp" or
    "portable-c" (the AVX-512 F+BW code or the portable C loops; OpenMP or qbench's own thread pool), else
    "unavailable (why)". Builds the library on first use."""
    lib, why = _load()
    return lib.qb_isa().decode() if lib is not None else f"unavailable ({why})"


def w8a8_isa() -> str:
    """The code path of the library's integer dot products (the fused GEMMs' and qb_attention's), as qb_w8a8_isa
    reports it: "avx512-vnni" or "portable-c" (exact, far slower), else "unavailable (why)". Builds the library on
    first use."""
    lib, why = _load()
    return lib.qb_w8a8_isa().decode() if lib is not None else f"unavailable ({why})"


def lib() -> ctypes.CDLL:
    """The loaded library (built on first use), for calls with no wrapper here; RuntimeError if unavailable."""
    loaded, why = _load()
    if loaded is None:
        raise RuntimeError(why)
    return loaded


def threads(work: int) -> int:
    """Threads for a call doing `work` elements (multiply-adds, or values quantized): torch's intra-op thread
    count, or 1 where starting a thread costs more than it saves (~10 us)."""
    return torch.get_num_threads() if work >= SERIAL_WORK else 1


SERIAL_WORK = 1 << 17    # elements (multiply-adds, or values quantized) below which one thread runs


def ptr(t: Optional[torch.Tensor]) -> Optional[int]:
    """The address of t's data (None for None), as the library's pointer arguments take it."""
    return None if t is None else t.data_ptr()


def bound(fn, args: tuple, error: Callable[[int], Exception], keep: tuple = ()) -> Callable[[], None]:
    """A function of no arguments calling the library function fn(*args) (arguments converted once, for a loop
    that calls it again and again on the same buffers), raising error(rc) when it returns nonzero. `keep`: the
    tensors the pointers in args point into, held as long as the function is."""
    def run():
        rc = fn(*args)
        if rc:
            raise error(rc)
    run.keep = keep
    return run


_lib, _threads, _ptr = lib, threads, ptr          # the names callers used before lib(), threads() and ptr()


def _check_wo_args(what: str, w: torch.Tensor, w_dtype: torch.dtype, row_bytes: int, s: torch.Tensor,
                   zc: torch.Tensor, k: int, groups: int, *floats: Optional[torch.Tensor]) -> None:
    """Raise ValueError unless w is (N, row_bytes) of w_dtype, s and zc (N, groups), K splits into the groups,
    and s, zc and every given tensor of `floats` are float32; all contiguous."""
    n = w.shape[0]
    for t in (w, s, zc, *floats):
        if t is not None and (not t.is_contiguous() or t.dtype != (w_dtype if t is w else torch.float32)):
            raise ValueError(f"native {what} needs contiguous tensors: w {w_dtype}, the others float32")
    if k < 1 or groups < 1 or k % groups or w.shape[1] != row_bytes or s.shape != (n, groups) or zc.shape != (n, groups):
        raise ValueError(f"native {what}: inconsistent shapes w {tuple(w.shape)}, scales {tuple(s.shape)} for "
                         f"{k} columns in {groups} groups")


def wo8_gemm(w: torch.Tensor, x: torch.Tensor, xg: torch.Tensor, s: torch.Tensor, zc: torch.Tensor,
             bias: Optional[torch.Tensor], groups: int) -> torch.Tensor:
    """int8 weight-only GEMM (qb_wo8_gemm, wo8_gemm.c): w (N, K) int8 codes, x (M, K) float32, xg (M, G) group
    sums of x, s and zc (N, G) float32 (w = s * (code + zc)), bias (N,) or None -> (M, N) float32."""
    m, n, k = x.shape[0], w.shape[0], x.shape[1]
    _check_wo_args("wo8_gemm", w, torch.int8, k, s, zc, k, groups, x, xg, bias)
    if xg.shape != (m, groups) or (bias is not None and bias.shape != (n,)):
        raise ValueError(f"native wo8_gemm: inconsistent shapes xg {tuple(xg.shape)} or bias for ({m}, {n})")
    y = torch.empty(m, n, dtype=torch.float32)
    rc = lib().qb_wo8_gemm(ptr(w), ptr(x), ptr(xg), ptr(s), ptr(zc), ptr(bias), ptr(y), m, n, k, groups,
                           threads(m * n * k))
    if rc:
        raise ValueError(f"native wo8_gemm rejected its arguments (code {rc})")
    return y


def wo8_dequant(w: torch.Tensor, s: torch.Tensor, zc: torch.Tensor, groups: int) -> torch.Tensor:
    """(N, K) float32 weights (code + zc) * s from int8 codes w (N, K)."""
    n, k = w.shape
    _check_wo_args("wo8_dequant", w, torch.int8, k, s, zc, k, groups)
    out = torch.empty(n, k, dtype=torch.float32)
    rc = lib().qb_wo8_dequant(ptr(w), ptr(s), ptr(zc), ptr(out), n, k, groups, threads(n * k))
    if rc:
        raise ValueError(f"native wo8_dequant rejected its arguments (code {rc})")
    return out


def padded_columns(k: int) -> int:
    """Columns of x that wo4_gemm reads: K rounded up to a multiple of 16 (one 16-column sub-block)."""
    return -(-k // 16) * 16


def nibble_tail_unit(k: int) -> int:
    """Bytes per word of the short block that ends a row of K codes in the blocked nibble layout (0: none):
    the fewest of 1, 2, 4 that hold one nibble per 16-column sub-block of the last K % 128 columns."""
    subs = -(-(k % 128) // 16)
    return 0 if subs == 0 else 1 if subs <= 2 else 2 if subs <= 4 else 4


def nibble_row_bytes(k: int) -> int:
    """Bytes per row of K codes in the blocked nibble layout: 64 per 128 columns, 16 words for the rest."""
    return 64 * (k // 128) + 16 * nibble_tail_unit(k)


def wo4_gemm(w: torch.Tensor, x: torch.Tensor, s: torch.Tensor, zc: torch.Tensor, bias: Optional[torch.Tensor],
             k: int, groups: int) -> torch.Tensor:
    """4-bit weight-only GEMM (qb_wo4_gemm, wo4_gemm.c): w (N, nibble_row_bytes(K)) uint8 in the blocked nibble
    layout (decode.pack_nibble_blocks), x (M, padded_columns(K)) float32 with zeros past column K, s and zc (N, G)
    float32 (w = s * (code + zc)), bias (N,) or None -> (M, N) float32."""
    m, n, kp = x.shape[0], w.shape[0], padded_columns(k)
    _check_wo_args("wo4_gemm", w, torch.uint8, nibble_row_bytes(k), s, zc, k, groups, x, bias)
    if x.shape[1] != kp or (bias is not None and bias.shape != (n,)):
        raise ValueError(f"native wo4_gemm: inconsistent shapes x {tuple(x.shape)} for {k} columns (padded to {kp}) "
                         f"or bias for {n} rows")
    y = torch.empty(m, n, dtype=torch.float32)
    rc = lib().qb_wo4_gemm(ptr(w), ptr(x), ptr(s), ptr(zc), ptr(bias), ptr(y), m, n, k, groups,
                           threads(m * n * k))
    if rc:
        raise ValueError(f"native wo4_gemm rejected its arguments (code {rc})")
    return y


def wo4_dequant(w: torch.Tensor, s: torch.Tensor, zc: torch.Tensor, k: int, groups: int) -> torch.Tensor:
    """(N, K) float32 weights (code + zc) * s from the blocked nibble layout w (N, nibble_row_bytes(K)) uint8."""
    n = w.shape[0]
    _check_wo_args("wo4_dequant", w, torch.uint8, nibble_row_bytes(k), s, zc, k, groups)
    out = torch.empty(n, k, dtype=torch.float32)
    rc = lib().qb_wo4_dequant(ptr(w), ptr(s), ptr(zc), ptr(out), n, k, groups, threads(n * k))
    if rc:
        raise ValueError(f"native wo4_dequant rejected its arguments (code {rc})")
    return out


def quant_u8(x: torch.Tensor, bits: int, signed: bool, symmetric: bool, per_row: bool,
             qparams: Optional[tuple[torch.Tensor, torch.Tensor]] = None):
    """qbench's quantization of x (M, K) float32 with codes shifted into uint8 (signed + 128).

    Returns (codes uint8 (M, K), scale (M,) or (1,) float32, zero point (M,) or (1,) int32 in the
    uint8 domain). With `qparams` (per-tensor scale and zero point in the spec's own domain) they are used.
    """
    if not x.is_contiguous() or x.dtype != torch.float32 or x.dim() != 2:
        raise ValueError("native quant_u8 needs a contiguous 2-D float32 tensor")
    m, k = x.shape
    out = torch.empty(m, k, dtype=torch.uint8)
    rows = m if per_row and qparams is None else 1
    scale = torch.empty(rows, dtype=torch.float32)
    zp = torch.empty(rows, dtype=torch.int32)
    if qparams is not None:
        if qparams[0].numel() != 1 or qparams[1].numel() != 1:
            raise ValueError("native quant_u8: given (static) qparams must be one scale and one zero point")
        scale.copy_(qparams[0].reshape(-1)[:1])
        zp.copy_(qparams[1].reshape(-1)[:1].to(torch.int32) + (128 if signed else 0))
    rc = lib().qb_quant_u8(ptr(x), ptr(out), ptr(scale), ptr(zp), m, k, int(per_row and qparams is None),
                           int(symmetric), int(signed), bits, int(qparams is not None), threads(m * k))
    if rc:
        raise ValueError(f"native quant_u8 rejected its arguments (code {rc})")
    return out, scale, zp


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: Optional[torch.Tensor], heads: int,
              scaling: float, bits: int, signed: bool, symmetric: bool) -> torch.Tensor:
    """Quantized attention (qb_attention, attention.c): q (G, S, D), k and v (G, T, D) float32 contiguous with
    G = batch x heads; mask additive float32 (B, H, S, T) with keys contiguous (any other strides, 0 for a
    broadcast dimension) or None -> (G, S, D) float32. Q, K per row, V per channel, P per row (unsigned)."""
    for t in (q, k, v):
        if t.dtype != torch.float32 or not t.is_contiguous() or t.dim() != 3:
            raise ValueError("native attention needs contiguous 3-D float32 q, k and v")
    g, s, d = q.shape
    t = k.shape[1]
    if k.shape != (g, t, d) or v.shape != (g, t, d) or heads < 1 or g % heads:
        raise ValueError(f"native attention: inconsistent shapes q {tuple(q.shape)}, k {tuple(k.shape)}, "
                         f"v {tuple(v.shape)} for {heads} heads")
    strides = (0, 0, 0)
    if mask is not None:
        if (mask.dtype != torch.float32 or mask.dim() != 4 or mask.shape != (g // heads, heads, s, t)
                or mask.stride(3) != 1):
            raise ValueError(f"native attention: the mask must be float32 {(g // heads, heads, s, t)} with "
                             f"contiguous keys, got {tuple(mask.shape)} {mask.dtype}")
        strides = mask.stride()[:3]
    out = torch.empty(g, s, d, dtype=torch.float32)
    rc = lib().qb_attention(ptr(q), ptr(k), ptr(v), ptr(mask), ptr(out), g, heads, s, t, d, *strides, scaling,
                            int(symmetric), int(signed), bits, threads(g * s * t * d))
    if rc:
        raise ValueError("native attention: out of memory for its buffers" if rc == 2 else
                         f"native attention rejected its arguments (code {rc})")
    return out


def _f32(*ts: torch.Tensor) -> bool:
    """Every tensor float32, contiguous and on the CPU (a loop, not a generator: these run per decode step)."""
    for t in ts:
        if t.dtype != torch.float32 or not t.is_cpu or not t.is_contiguous():
            return False
    return True


def rmsnorm(x: torch.Tensor, w: torch.Tensor, eps: float,
            res: Optional[torch.Tensor] = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(xo, h) for x (..., D) float32 contiguous and w (D,) (qb_rmsnorm, decoder.c): xo = x + res (x itself when
    res is None), h = xo * (1 / sqrt(mean(xo^2) + eps)) * w per row, in one pass."""
    d = x.shape[-1]
    if not _f32(x, w) or w.shape != (d,) or (res is not None and (not _f32(res) or res.shape != x.shape)):
        raise ValueError(f"native rmsnorm needs contiguous float32 x (..., {d}), res like x and w ({d},); got x "
                         f"{tuple(x.shape)} {x.dtype}, w {tuple(w.shape)} {w.dtype}")
    xo = x if res is None else torch.empty_like(x)
    h = torch.empty_like(x)
    m = x.numel() // d
    rc = lib().qb_rmsnorm(ptr(x), ptr(res), ptr(w), ptr(xo) if res is not None else None, ptr(h), m, d, eps,
                          threads(m * d))
    if rc:
        raise ValueError(f"native rmsnorm rejected its arguments (code {rc})")
    return xo, h


def _rows(*ts: torch.Tensor) -> bool:
    """Every tensor float32, 2-D, on the CPU, its rows contiguous (any row stride: column views of a wider output)."""
    for t in ts:
        if t.dtype != torch.float32 or not t.is_cpu or t.dim() != 2 or (t.shape[1] > 1 and t.stride(1) != 1):
            return False
    return True


def decode_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, kc: torch.Tensor, vc: torch.Tensor,
                     cos: torch.Tensor, sin: torch.Tensor, p: int, scale: float) -> torch.Tensor:
    """One decode step's attention (qb_decode_attention, decoder.c): q (B, H * D), k and v (B, KV * D) the new
    token's projections (rows contiguous; k and v with one row stride, e.g. column views of one joined output); kc,
    vc (B, KV, Tmax, D) the caches, written at position p; cos, sin (D,) the rotary table's row for p -> (B, H * D)
    float32: rotary on q and k, then softmax(scale q . K[0..p]) V[0..p] per head, query head h reading key/value
    head h // (H // KV)."""
    b, kv, tmax, d = kc.shape
    heads = q.shape[-1] // d if d else 0
    if (not _f32(kc, vc, cos, sin) or not _rows(q, k, v) or q.shape != (b, heads * d) or k.shape != (b, kv * d)
            or v.shape != k.shape or k.stride(0) != v.stride(0) or vc.shape != kc.shape or cos.shape != (d,)
            or sin.shape != (d,) or heads < 1 or heads % kv or not 0 <= p < tmax):
        raise ValueError(f"native decode_attention: inconsistent float32 shapes q {tuple(q.shape)}, k "
                         f"{tuple(k.shape)}, v {tuple(v.shape)}, caches {tuple(kc.shape)}, rotary {tuple(cos.shape)} "
                         f"at position {p}")
    out = torch.empty(b, heads * d, dtype=torch.float32)
    rc = lib().qb_decode_attention(ptr(q), ptr(k), ptr(v), ptr(kc), ptr(vc), ptr(cos), ptr(sin), ptr(out), b, heads,
                                   kv, d, tmax, p, scale, q.stride(0), k.stride(0),
                                   threads(2 * b * heads * (p + 1) * d))
    if rc:
        raise ValueError("native decode_attention: out of memory for its buffers" if rc == 2 else
                         f"native decode_attention rejected its arguments (code {rc})")
    return out


def prefill_rotary(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, kc: torch.Tensor, vc: torch.Tensor,
                   cos: torch.Tensor, sin: torch.Tensor, t0: int, t: int) -> torch.Tensor:
    """A prefill's rotary embedding (qb_prefill_rotary, decoder.c): q (B * T, H * D), k and v (B * T, KV * D) the
    projections of positions t0 .. t0 + T - 1 (sequence-major rows, rows contiguous, k and v with one row stride);
    kc, vc (B, KV, Tmax, D) the caches, where the rotated keys and the values are written; cos, sin (Tmax, D) the
    rotary tables -> the rotated queries (B, H, T, D) float32."""
    b, kv, tmax, d = kc.shape
    heads = q.shape[-1] // d if d else 0
    if (not _f32(kc, vc, cos, sin) or not _rows(q, k, v) or t < 1 or q.shape != (b * t, heads * d)
            or k.shape != (b * t, kv * d) or v.shape != k.shape or k.stride(0) != v.stride(0) or vc.shape != kc.shape
            or cos.shape != (tmax, d) or sin.shape != cos.shape or heads < 1 or t0 < 0 or t0 + t > tmax):
        raise ValueError(f"native prefill_rotary: inconsistent float32 shapes q {tuple(q.shape)}, k {tuple(k.shape)}, "
                         f"v {tuple(v.shape)}, caches {tuple(kc.shape)}, rotary {tuple(cos.shape)} for {t} positions "
                         f"from {t0}")
    qo = torch.empty(b, heads, t, d, dtype=torch.float32)
    rc = lib().qb_prefill_rotary(ptr(q), ptr(k), ptr(v), ptr(cos), ptr(sin), ptr(qo), ptr(kc), ptr(vc), b, t, heads,
                                 kv, d, tmax, t0, q.stride(0), k.stride(0), threads(b * t * (heads + 2 * kv) * d))
    if rc:
        raise ValueError(f"native prefill_rotary rejected its arguments (code {rc})")
    return qo


def silu_mul(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """silu(gate) * up (qb_silu_mul, decoder.c) for gate and up (M, N) float32 with contiguous rows (any row
    strides: column views of one joined output) -> (M, N) float32."""
    if not _rows(gate, up) or gate.shape != up.shape:
        raise ValueError(f"native silu_mul needs float32 (M, N) gate and up with contiguous rows; got "
                         f"{tuple(gate.shape)} {gate.dtype} and {tuple(up.shape)} {up.dtype}")
    m, n = gate.shape
    out = torch.empty(m, n, dtype=torch.float32)
    rc = lib().qb_silu_mul(ptr(gate), ptr(up), ptr(out), m, n, gate.stride(0), up.stride(0), threads(m * n))
    if rc:
        raise ValueError(f"native silu_mul rejected its arguments (code {rc})")
    return out


def center_zero_points(zp: torch.Tensor) -> tuple[int, torch.Tensor]:
    """(z0, dz) for per-row zero points zp (M,) int32: z0 = round(mean(zp)) (as torch.round of the float32
    mean), dz = (zp - z0) as float32 (M,). One C call instead of a handful of small torch ops per layer."""
    if zp.dtype != torch.int32 or not zp.is_contiguous() or zp.dim() != 1:
        raise ValueError("native center_zero_points needs a contiguous 1-D int32 tensor")
    dz = torch.empty(zp.shape[0], dtype=torch.float32)
    return int(lib().qb_center_zp(ptr(zp), zp.shape[0], ptr(dz))), dz


def row_epilogue_(y: torch.Tensor, row_scale: torch.Tensor, dz: Optional[torch.Tensor], c: Optional[torch.Tensor],
                  bias: Optional[torch.Tensor]) -> torch.Tensor:
    """In place, one pass: y[m, n] = row_scale[m] * (y[m, n] - dz[m] * c[n]) + bias[n] (dz, bias optional).
    y (M, N), row_scale and dz (M,), c and bias (N,): contiguous float32."""
    m, n = y.shape
    for t, size in ((y, m * n), (row_scale, m), (dz, m), (c, n if dz is not None else None), (bias, n)):
        if t is not None and (t.dtype != torch.float32 or not t.is_contiguous() or (size and t.numel() != size)):
            raise ValueError("native row_epilogue_: float32 contiguous tensors of matching sizes needed")
    rc = lib().qb_row_epilogue(ptr(y), ptr(row_scale), ptr(dz), ptr(c), ptr(bias), m, n, threads(m * n))
    if rc:
        raise ValueError(f"native row_epilogue_ rejected its arguments (code {rc})")
    return y
