"""Weight-only kernels for decode-sized inputs, on qbench's native C kernels (native/qbench_cpu.c).

int8_wo_native  int8 codes (5- to 8-bit specs, shifted into int8), per-tensor / per-channel / per-group scales
int4_wo_native  <= 4-bit codes two per byte (engine.tensors.pack_int4 layout), per-channel or per-group

For M <= DECODE_MAX_M the C kernel reads every packed weight byte once, turns it into float32 in registers
(int4: a 16-entry table of s * (code - z) per group) and accumulates fp32 FMAs with float32 activations.
Larger M is compute-bound: the weight is dequantized per call to float32 (one C pass, the same
arithmetic as primitives.dequantize), a cache-sized block of rows at a time, and multiplied by torch's
fp32 matmul.
"""
from __future__ import annotations

import torch

from qbench.engine.kernels import native
from qbench.engine.kernels.base import KERNELS, Kernel
from qbench.engine.primitives import quantize
from qbench.engine.tensors import pack_int4

DECODE_MAX_M = 16
CHUNK_BYTES = 4 << 20    # fp32 block dequantized at a time at larger M (measured best of 1, 4, 16 MiB here)


def _per_group(scale: torch.Tensor, n: int) -> torch.Tensor:
    """Scale or zero point of any weight granularity as an (N, G) float32 tensor."""
    t = scale.float()
    if t.dim() == 0:
        return t.reshape(1, 1).expand(n, 1).contiguous()
    return t.reshape(n, -1).contiguous()


def _x_group_sums(x: torch.Tensor, groups: int) -> torch.Tensor:
    m, k = x.shape
    return x.reshape(m, groups, k // groups).sum(-1) if groups > 1 else x.sum(1, keepdim=True)


class _NativeWeightOnly(Kernel):
    devices = ("cpu",)
    arithmetic = "fp32"    # packed codes are read directly; the products are fp32 (activations are float)
    bits = 8

    def _common_reason(self, w, a, device):
        if a is not None:
            return "weight-only kernel; activations are quantized in this scheme"
        why = native.unavailable()
        if why:
            return why
        return self._device_reason(device)

    def forward(self, state, x):
        xf = x.float().contiguous()
        if xf.shape[0] > DECODE_MAX_M:
            return self._dequant_matmul(state, xf).to(x.dtype)
        return self._gemm(state, xf).to(x.dtype)

    def _dequant_matmul(self, state, xf):
        """Compute-bound M: dequantize to fp32 and let torch's matmul run. A weight larger than CHUNK_BYTES is
        dequantized a block of rows at a time into a cache-sized buffer: (rows, K) @ x^T -> rows of y^T."""
        codes, s, zc, k, g, b = (state[key] for key in ("codes", "s", "zc", "k", "groups", "bias"))
        n = codes.shape[0]
        if n * k * 4 <= CHUNK_BYTES:
            return torch.nn.functional.linear(xf, native.wo_dequant(self.bits, codes, s, zc, k, g), b)
        rows = max(8, CHUNK_BYTES // (4 * k))
        yt = torch.empty(n, xf.shape[0])                                    # (N, M)
        for r0 in range(0, n, rows):
            w = native.wo_dequant(self.bits, codes[r0:r0 + rows], s[r0:r0 + rows], zc[r0:r0 + rows], k, g)
            torch.mm(w, xf.t(), out=yt[r0:r0 + rows])
        y = yt.t().contiguous()
        return y if b is None else y.add_(b)


class Int8WeightOnlyNative(_NativeWeightOnly):
    name = "int8_wo_native"
    bits = 8

    @property
    def backend(self) -> str:
        return (f"qbench C kernel ({native.isa()}): int8 codes -> fp32 in registers, fp32 FMA, weights read once "
                f"for M <= {DECODE_MAX_M}; larger M: C dequantize to fp32 per call + torch fp32 matmul")

    def supports(self, w, a, device):
        if w.bits <= 4:
            return "4-bit and narrower weights are kept two per byte (int4_wo_native, int4_packed)"
        return self._common_reason(w, a, device)

    def prepare(self, weight, bias, w, a, act_qparams=None):
        n, k = weight.shape
        q = quantize(weight, w)
        if w.granularity == "per_group" and k % w.group_size:
            raise ValueError(f"group_size {w.group_size} does not divide {k} columns")
        shift = 0 if w.signed else 128                                     # unsigned codes -> int8
        codes = (q.data.to(torch.int16) - shift).to(torch.int8).contiguous()   # (N, K)
        s = _per_group(q.scale, n)                                          # (N, G)
        zc = -(_per_group(q.zero_point, n) - shift)                         # (N, G): w = s * (code + zc)
        return {"codes": codes, "s": s, "zc": zc.contiguous(), "groups": s.shape[1], "k": k,
                "bias": None if bias is None else bias.float().contiguous()}

    def _gemm(self, state, xf):
        g = state["groups"]
        return native.wo_gemm(8, state["codes"], xf, None, _x_group_sums(xf, g).contiguous(), state["s"],
                              state["zc"], state["bias"], g)


class Int4WeightOnlyNative(_NativeWeightOnly):
    name = "int4_wo_native"
    bits = 4

    @property
    def backend(self) -> str:
        return (f"qbench C kernel ({native.isa()}): two 4-bit codes per byte -> fp32 through a per-group table of "
                f"s * (code - z), fp32 FMA, weights read once for M <= {DECODE_MAX_M}; larger M: C dequantize to "
                "fp32 per call + torch fp32 matmul")

    def supports(self, w, a, device):
        if w.bits > 4:
            return f"holds at most 4-bit weights, scheme has {w.bits}"
        if w.granularity == "per_group" and w.group_size % 2:
            return f"per_group needs an even group_size (two codes per byte), got {w.group_size}"
        return self._common_reason(w, a, device)

    def prepare(self, weight, bias, w, a, act_qparams=None):
        n, k = weight.shape
        if w.granularity == "per_group" and k % w.group_size:
            raise ValueError(f"group_size {w.group_size} does not divide {k} columns")
        q = quantize(weight, w)
        packed = pack_int4(q.data, w)                                       # (N, ceil(K/2)) uint8
        s = _per_group(q.scale, n)
        zc = float(w.qmin) - _per_group(q.zero_point, n)                    # nibble c = q - qmin
        return {"codes": packed, "s": s, "zc": zc.contiguous(), "groups": s.shape[1], "k": k,
                "bias": None if bias is None else bias.float().contiguous(), "spec": w}

    def _gemm(self, state, xf):
        k, g = state["k"], state["groups"]
        xg = _x_group_sums(xf, g).contiguous()
        if k % 2:
            xf = torch.nn.functional.pad(xf, (0, 1))                        # the padded nibble is code 0
        xe, xo = xf[:, 0::2].contiguous(), xf[:, 1::2].contiguous()         # (M, ceil(K/2)) each
        return native.wo_gemm(4, state["codes"], xe, xo, xg, state["s"], state["zc"], state["bias"], g)


for _k in (Int8WeightOnlyNative(), Int4WeightOnlyNative()):
    KERNELS.add(_k.name, _k)
