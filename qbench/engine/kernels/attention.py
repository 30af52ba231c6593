"""The two attention matmuls on quantized inputs: S = Q K^T and O = P V.

Both products contract a dimension whose operands are quantized along the other one, so every scale and zero point
factors out of the integer sum. Codes follow the activation spec `a` (kernels.codes.quantize_activations, the one
activation quantizer):

  Q, K   one scale per tensor, or per token: per (batch, head, position) row, over head_dim
  P      the softmax output, unsigned (a probability is never negative, so a sign bit would be wasted; with the
         range widened to include 0 its zero point is 0): per tensor, or per query row, over the keys
  V      per tensor, or per head_dim channel, over the keys (a per-token scale of V would sit on the contracted
         dimension and could not factor out; the channel is the dimension that survives the product)

For A (G, M, K) and B (G, N, K), codes a, b in the int8 domain with zero points za (per row of A) and zb (per row
of B):
  sum_k (a_ik - za_i)(b_jk - zb_j) = sum_k a_ik b_jk - zb_j sum_k a_ik - za_i sum_k b_jk + K za_i zb_j
and the product is sa_i sb_j times that. Two ways to compute the integer sum:

  int8_attention_native  qbench's C kernel (native/attention.c, qb_attention): every slice's quantization, both
                   integer products (vpdpbusd), the mask, the softmax and P's codes in one call, threads over the
                   slices; per-token specs on CPUs with AVX-512 VNNI
  int8_attention   torch._int_mm (oneDNN, VNNI on CPUs that have it) on each (batch, head) slice, exact int32
  attention_qdq    the dequantized codes in a float matmul (emulated: the same numbers up to float rounding, for
                   devices where torch._int_mm does not take these shapes)

The three give the same integer sums and the same float operations after them; the softmax's exp and sum may
round differently in the C kernel than in torch (an ulp), which can move a code of P by one, rarely.
"""
from __future__ import annotations

import torch

from qbench.engine.kernels import native
from qbench.engine.kernels.codes import quantize_activations
from qbench.engine.primitives import QuantSpec

KERNELS = {
    "int8_attention_native": ("qbench's C kernel: per (batch, head) slice, Q and K per row and V per channel "
                              "quantized, uint8 x int8 -> int32 dot products (vpdpbusd), mask and softmax in "
                              "float32, P quantized per row, one call for all slices; per-token specs", False),
    "int8_attention": ("torch._int_mm (int8 x int8 -> int32) per (batch, head) slice for Q K^T and P V, zero points "
                       "corrected from row sums, softmax in float32", False),
    "attention_qdq": ("quantize-dequantize of Q, K, P, V, then float matmuls (emulated)", True),
}


def attention_kernel(device: str, a: QuantSpec | None = None) -> str:
    """The attention kernel that runs on `device` for activation spec `a`: on the CPU qbench's C kernel for
    per-token specs where it has AVX-512 VNNI (else torch._int_mm's), the emulated one elsewhere."""
    if torch.device(device).type != "cpu":
        return "attention_qdq"
    if a is not None and a.granularity == "per_token" and native_attention_reason() is None:
        return "int8_attention_native"
    return "int8_attention"


def native_attention_reason() -> str | None:
    """None when qb_attention runs its AVX-512 VNNI path here (the library's one VNNI switch, native.w8a8_isa),
    else why int8_attention runs instead."""
    from qbench.engine.kernels.native_status import native_reason

    why = native_reason()
    if why:
        return why
    isa = native.w8a8_isa()
    return None if isa == "avx512-vnni" else f"qb_attention here is {isa}"


def prob_spec(a: QuantSpec) -> QuantSpec:
    """The spec of P: `a`'s bits and granularity, unsigned and asymmetric (zero point 0 for values >= 0)."""
    return QuantSpec(a.bits, False, False, a.granularity)


def quantize_rows(x: torch.Tensor, a: QuantSpec) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """x (G, M, K) float -> (codes (G, M, K) int8, scale (G, M) float32, zero point (G, M) int32), per row of
    (G, M) for per_token specs, one for all otherwise."""
    g, m, k = x.shape
    c = quantize_activations(x.reshape(g * m, k), a, None)
    q8, z8 = c.int8_()
    scale = c.scale.float().reshape(-1).expand(g * m)       # (G*M,): a per-tensor scale repeated
    z8 = z8.to(torch.int32).reshape(-1).expand(g * m)
    return q8.reshape(g, m, k), scale.reshape(g, m), z8.reshape(g, m)


_WORKSPACE: dict = {}
_WORKSPACE_MAX = 16 << 20          # int32 elements (64 MiB): larger products get a buffer of their own


def _workspace(shape: tuple) -> torch.Tensor:
    """An int32 buffer of `shape`, reused across calls of one shape (one per shape, the last four kept, none past
    64 MiB): a fresh buffer is first touched page by page, which cost more than the integer products at
    attention sizes (MiniLM, 96 x 128 x 128: 7.5 ms fresh against 1.7 ms reused, one thread)."""
    if shape[0] * shape[1] * shape[2] > _WORKSPACE_MAX:
        return torch.empty(shape, dtype=torch.int32)
    buf = _WORKSPACE.get(shape)
    if buf is None:
        if len(_WORKSPACE) >= 4:
            _WORKSPACE.pop(next(iter(_WORKSPACE)))
        buf = _WORKSPACE[shape] = torch.empty(shape, dtype=torch.int32)
    return buf


def matmul_nt(a: tuple, b: tuple, kernel: str, scale: float = 1.0) -> torch.Tensor:
    """(A) (G, M, K) x (B) (G, N, K) -> (G, M, N) float32: scale * sum_k A_ik B_jk from quantize_rows' codes."""
    qa, sa, za = a
    qb, sb, zb = b
    g, m, k = qa.shape
    n = qb.shape[1]
    if kernel == "int8_attention":
        # torch._int_mm on the CPU returns wrong sums when K = 1 (torch 2.13; e.g. P V over a single key): a zero
        # column leaves every sum unchanged (as kernels.cpu.int_mm does)
        pa, pb = (torch.nn.functional.pad(t, (0, 1)) for t in (qa, qb)) if k == 1 else (qa, qb)
        acc = _workspace((g, m, n))
        for i in range(g):
            torch._int_mm(pa[i], pb[i].t(), out=acc[i])                   # (M, K) @ (K, N) -> (M, N) int32
        # zero points: acc -= za_i sum_k b_jk + zb_j (sum_k a_ik - K za_i), one exact rank-2 integer update; in
        # place, as every fresh (G, M, N) tensor costs more than the arithmetic at these sizes
        u = torch.stack([za, qa.sum(-1, dtype=torch.int32) - k * za], -1)          # (G, M, 2)
        v = torch.stack([qb.sum(-1, dtype=torch.int32), zb], 1)                    # (G, 2, N)
        acc.baddbmm_(u, v, alpha=-1)
        out = acc.float()
        return out.mul_((sa * scale)[:, :, None]).mul_(sb[:, None, :])
    fa = (qa.float() - za[..., None].float()) * sa[..., None]
    fb = (qb.float() - zb[..., None].float()) * sb[..., None]
    return (fa @ fb.transpose(1, 2)).mul_(scale)


def quantized_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask, scaling: float, a: QuantSpec,
                        kernel: str) -> torch.Tensor:
    """q (B, H, S, D), k and v (B, H, T, D) (heads already repeated for grouped queries), mask additive (B|1, 1|H,
    S, T) float or None -> the attention output (B, H, S, D) in q's dtype."""
    b, h, s, d = q.shape
    t = k.shape[2]
    qf, kf, vf = (x.float().reshape(b * h, -1, d) for x in (q, k, v))
    if kernel == "int8_attention_native":
        if a.granularity != "per_token":
            raise ValueError("int8_attention_native quantizes Q and K per row: a per-token spec is needed")
        m = None if mask is None else mask.float().expand(b, h, s, t)
        if m is not None and m.stride(3) != 1:
            m = m.contiguous()
        out = native.attention(qf.contiguous(), kf.contiguous(), vf.contiguous(), m, h, scaling, a.bits, a.signed,
                               a.symmetric)
        return out.reshape(b, h, s, d).to(q.dtype)
    scores = matmul_nt(quantize_rows(qf, a), quantize_rows(kf, a), kernel, scaling).reshape(b, h, s, t)
    if mask is not None:
        scores.add_(mask.float())
    p = torch.softmax(scores, dim=-1).reshape(b * h, s, t)
    out = matmul_nt(quantize_rows(p, prob_spec(a)), quantize_rows(vf.transpose(1, 2).contiguous(), a), kernel)
    return out.reshape(b, h, s, d).to(q.dtype)
