"""W8A8 on qbench's own fused C kernel (native/qbench_cpu.c, qb_w8a8_gemm): one call per layer.

int8_native  (M, K) float32 -> (M, N) float32 in one pass over x: each block of rows is quantized by qbench's
             quantizer (the same codes as primitives.quantize, shifted into uint8) into a buffer that stays
             in cache, multiplied against the packed int8 weight codes with uint8 x int8 -> int32 dot products
             (AVX-512 VNNI vpdpbusd), and the zero-point corrections, the rescale and the bias are applied in
             registers before the one store of y.

Why fused: on a layer like all-MiniLM's 1024 x 384 x 384, the separate passes of int8_onednn (quantize, then
the library GEMM, then the per-token rescale) each cost about as much as the handover between them; one call
removes them (measured side by side by `qbench bench gemm`).

Activations: <= 8-bit, signed or unsigned, symmetric or asymmetric, per token (dynamic) or per tensor
(dynamic, or static from calibration). Weights: <= 8-bit, signed or unsigned, symmetric or asymmetric, per
tensor or per channel. With u the activation codes (uint8 domain, zero point za per row) and c the weight
codes (int8 domain, zero point zc per column), the kernel computes sum_k (u - za)(c - zc) exactly in int32 as
acc - za * csum[n] - zc[n] * (sum_k u - K za), from weight column sums precomputed here and activation row
sums taken while quantizing: no operand is widened. Exact while the sum fits int32, hence K <= 32768.
"""
from __future__ import annotations

import torch

from qbench.engine.kernels import native
from qbench.engine.kernels.base import KERNELS, Kernel, integer_matmul_reason
from qbench.engine.primitives import quantize

PANEL = 64          # weight columns per panel of the packed layout
MAX_K = 32768       # (u - za)(c - zc) <= 255 * 255: the int32 sum is exact up to this K


def pack_panels(codes: torch.Tensor) -> torch.Tensor:
    """(N, K) int8 codes -> the kernel's layout, flat int8: 64-column panels, each holding for every 4 k the
    64 columns' 4 bytes side by side, [p][k // 4][j][k % 4] = codes[64 p + j, k]; N padded to a multiple of
    64 and K to a multiple of 4 with zero codes."""
    n, k = codes.shape
    npad, kpad = -(-n // PANEL) * PANEL, -(-k // 4) * 4
    c = torch.nn.functional.pad(codes, (0, kpad - k, 0, npad - n))                    # (Np, Kp)
    return c.reshape(npad // PANEL, PANEL, kpad // 4, 4).permute(0, 2, 1, 3).contiguous().reshape(-1)


def _padded(t: torch.Tensor, n: int) -> torch.Tensor:
    return torch.nn.functional.pad(t, (0, -(-n // PANEL) * PANEL - n)).contiguous()


def gemm(state: dict, x: torch.Tensor, exact: bool = False) -> torch.Tensor:
    """x (M, K) float32 contiguous -> y (M, N) float32; exact=True returns the int32 sums
    sum_k (u - za)(c - zc) instead (no rescale, no bias), for checking against integer arithmetic."""
    if x.dtype != torch.float32 or not x.is_contiguous() or x.dim() != 2 or x.shape[1] != state["k"]:
        raise ValueError(f"int8_native needs a contiguous float32 (M, {state['k']}) input, got "
                         f"{tuple(x.shape)} {x.dtype}")
    a, static = state["a"], state["static"]
    m, n = x.shape[0], state["n"]
    out = torch.empty(m, n, dtype=torch.int32 if exact else torch.float32)
    p = native._ptr
    rc = native._lib().qb_w8a8_gemm(
        p(x), p(state["wp"]), p(state["csum"]), p(state["zc"]), p(state["ws"]), p(state["bias"]),
        None if exact else p(out), p(out) if exact else None, m, n, state["k"],
        int(a.granularity == "per_token"), int(a.symmetric), int(a.signed), a.bits, int(static is not None),
        *(static or (1.0, 0)), native._threads(m * n * state["k"]))
    if rc:
        raise ValueError("int8_native: " + ("out of memory for its row buffers" if rc == 2 else
                                            f"the C kernel rejected its arguments (code {rc})"))
    return out


class Int8Native(Kernel):
    name = "int8_native"
    devices = ("cpu",)

    @property
    def backend(self) -> str:
        return (f"qbench fused C kernel ({native.isa()}, {self._isa()}): per-row-block activation quantization, "
                f"uint8 x int8 -> int32 (vpdpbusd), zero-point corrections, rescale and bias in registers, one call; "
                f"any M and N, K <= {MAX_K}; other float dtypes go through float32 and come back in their own")

    @staticmethod
    def _isa() -> str:
        return native._lib().qb_w8a8_isa().decode() if native.unavailable() is None else "unavailable"

    def supports(self, w, a, device):
        reason = self._config_reason(w, a)
        if reason:
            return reason
        if self._isa() != "avx512-vnni":
            return "this CPU (or compiler) lacks AVX-512 VNNI; the portable C loop is exact but far slower"
        return self._device_reason(device)

    @staticmethod
    def _config_reason(w, a):
        return integer_matmul_reason(w, a) or native.unavailable()

    def shape_reason(self, n, k):
        return f"K = {k} > {MAX_K}: the int32 sums could overflow" if k > MAX_K else None

    def prepare(self, weight, bias, w, a, act_qparams=None):
        reason = self._config_reason(w, a)         # the ISA is supports()'s concern: the portable loop is exact
        if reason:
            raise ValueError(f"{self.name}: {reason}")
        n, k = weight.shape
        if self.shape_reason(n, k):
            raise ValueError(f"{self.name}: {self.shape_reason(n, k)}")
        if act_qparams is not None and (act_qparams[0].numel() != 1 or act_qparams[1].numel() != 1):
            raise ValueError(f"{self.name}: static activation qparams must be one scale and one zero point")
        q = quantize(weight, w)
        shift = 0 if w.signed else 128                                            # codes into int8
        codes = (q.data.to(torch.int16) - shift).to(torch.int8)                  # (N, K)
        zc = (q.zero_point.to(torch.int32) - shift).reshape(-1).expand(n)        # (N,) zero point of the codes
        return {
            "wp": pack_panels(codes), "n": n, "k": k, "a": a,
            # static activation qparams as the C call takes them: scale, zero point in the uint8 domain
            "static": None if act_qparams is None else
            (float(act_qparams[0]), int(act_qparams[1]) + (128 if a.signed else 0)),
            "csum": _padded(codes.sum(dim=1, dtype=torch.int32), n),                  # exact column sums
            "zc": _padded(zc.contiguous(), n) if bool((zc != 0).any()) else None,
            "ws": _padded(q.scale.reshape(-1).expand(n).float(), n),
            "bias": None if bias is None else _padded(bias.detach().float(), n),
        }

    def forward(self, state, x):
        xf = x if x.dtype == torch.float32 and x.is_contiguous() else x.float().contiguous()
        y = gemm(state, xf)
        return y if x.dtype == torch.float32 else y.to(x.dtype)


KERNELS.add(Int8Native.name, Int8Native())
