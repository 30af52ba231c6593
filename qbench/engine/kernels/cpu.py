"""Integer kernels backed by PyTorch's CPU primitives, behind qbench's own quantization.

int8_int_mm      W8A8: (M, K) int8 @ (K, N) int8 -> (M, N) int32 via torch._int_mm (oneDNN,
                 VNNI on this CPU class), zero-point corrections from precomputed sums, rescale.
int8_weight_only int8 weights with float activations: dequantize + float matmul; the zero point
                 is corrected by x.sum(-1).
int4_packed      two 4-bit codes per byte, unpacked and dequantized per call, float matmul.
"""
from __future__ import annotations

from typing import Optional

import torch

from qbench.engine.kernels import native
from qbench.engine.kernels.base import KERNELS, Kernel
from qbench.engine.primitives import QuantSpec, choose_qparams, dequantize, quantize, reduce_minmax
from qbench.engine.tensors import PackedWeight


def _to_int8(q: torch.Tensor, zp: torch.Tensor, spec: QuantSpec) -> tuple[torch.Tensor, torch.Tensor]:
    """Shift unsigned codes by 128 so every <=8-bit code fits int8; the zero point moves with it.

    x = s * (q - z) = s * ((q - 128) - (z - 128)), exactly.
    """
    if spec.signed:
        return q.to(torch.int8), zp.to(torch.int32)
    return (q.to(torch.int16) - 128).to(torch.int8), zp.to(torch.int32) - 128


class Int8IntMM(Kernel):
    name = "int8_int_mm"
    backend = "torch._int_mm (int8 x int8 -> int32)"
    devices = ("cpu",)

    def supports(self, w, a, device):
        if a is None:
            return "needs quantized activations (weight-only schemes use other kernels)"
        if w.granularity == "per_group":
            return "per_group weight scales do not factor out of an integer matmul"
        return self._device_reason(device)

    def prepare(self, weight, bias, w, a, act_qparams=None):
        q = quantize(weight, w)
        w8, wz = _to_int8(q.data, q.zero_point, w)                     # (N, K) int8
        n = weight.shape[0]
        return {
            "w8": w8.contiguous(),
            "w_scale": q.scale.reshape(-1).expand(n).float().contiguous(),   # (N,)
            "w_zp": wz.reshape(-1).expand(n).contiguous(),                  # (N,)
            "w_rowsum": w8.sum(dim=1, dtype=torch.int32),                    # (N,) for activation zp
            "asym_w": bool((wz != 0).any()),
            "bias": bias, "a": a, "act_qparams": act_qparams, "k": weight.shape[1],
        }

    def forward(self, state, x):
        a8, a_scale, az = quantize_to_int8(x, state["a"], state["act_qparams"])  # (M, K) int8
        acc = torch._int_mm(a8, state["w8"].t())                         # (M, K)@(K, N) -> (M, N) int32
        correct_(acc, a8, az, state)
        w_scale, bias = state["w_scale"], state["bias"]
        y = acc.to(torch.float32)                                        # one conversion pass
        if a_scale.numel() == 1:
            w_scale = w_scale * a_scale.reshape(())                      # (N,) combined scale
        else:
            y.mul_(a_scale)                                              # per-token scales (M, 1)
        if bias is None:
            y.mul_(w_scale)
        else:
            torch.addcmul(bias, y, w_scale, out=y)                       # rescale + bias in one pass
        return y.to(x.dtype)


def quantize_to_int8(x: torch.Tensor, a: QuantSpec, act_qparams: Optional[tuple]):
    """Activation codes already shifted into int8, with their scale and (shifted) zero point.

    Same codes as primitives.quantize followed by _to_int8: from qbench's native quantizer when it is built
    (uint8 codes, then u - 128 as a bit flip), else in fewer torch passes over x.
    """
    if native.unavailable() is None:
        per_row = a.granularity == "per_token" and act_qparams is None
        codes, scale, zp = native.quant_u8(x.float().contiguous(), a.bits, a.signed, a.symmetric, per_row,
                                           act_qparams)
        a8 = codes.view(torch.int8).bitwise_xor_(-128)                   # u - 128, same bits as int8
        if per_row:
            return a8, scale.reshape(-1, 1), (zp - 128).reshape(-1, 1)
        return a8, scale.reshape(()), (zp - 128).reshape(())
    x = x.float()
    if act_qparams is not None:
        scale, zp = act_qparams
    else:
        scale, zp = choose_qparams(*reduce_minmax(x, a), a)
    shift = 0 if a.signed else 128
    s = scale.reshape(-1, 1) if scale.numel() > 1 else scale
    z = (zp.reshape(-1, 1) if zp.numel() > 1 else zp) - shift
    t = torch.div(x, s)
    t.round_().add_(z).clamp_(a.qmin - shift, a.qmax - shift)
    return t.to(torch.int8), s, z.to(torch.int32)


def correct_(acc: torch.Tensor, a8: torch.Tensor, az: torch.Tensor, state: dict) -> torch.Tensor:
    """In place: acc -> sum_k (a - za)(w - zw) = acc - za*sum_k w - zw*(sum_k a - K*za), exact int32.

    Only O(M + N) vectors and rank-1 updates; nothing is widened to the operands' size.
    """
    m = acc.shape[0]
    za = az.reshape(-1).to(torch.int32).expand(m)                         # (M,)
    if bool((za != 0).any()):
        acc.addr_(za, state["w_rowsum"], alpha=-1)
    if state["asym_w"]:
        a_rowsum = a8.sum(dim=1, dtype=torch.int32)                       # (M,)
        acc.addr_(a_rowsum - state["k"] * za, state["w_zp"], alpha=-1)
    return acc


class Int8WeightOnly(Kernel):
    name = "int8_weight_only"
    # torch._weight_int8pack_mm was measured slower than dequantize + matmul at every M from 1 to 1024
    # on the 2-core AVX-512 CPU (e.g. 0.22 vs 0.15 ms at M=1, 314 vs 3.9 ms at M=1024, 384x1536).
    backend = "int8 codes held in memory; dequantized per call + float matmul (torch)"
    emulated = True  # the matmul runs in float: storage is real, the arithmetic is not integer
    devices = ("cpu",)

    def supports(self, w, a, device):
        if a is not None:
            return "weight-only kernel; activations are quantized in this scheme"
        if w.granularity == "per_group":
            return "holds one scale per output channel; per_group weights run on int4_packed or reference"
        return self._device_reason(device)

    def prepare(self, weight, bias, w, a, act_qparams=None):
        q = quantize(weight, w)
        w8, wz = _to_int8(q.data, q.zero_point, w)
        n = weight.shape[0]
        scale = q.scale.reshape(-1).expand(n).float().contiguous()
        zp = wz.reshape(-1).expand(n)
        return {"w8": w8.contiguous(), "scale": scale, "szp": (scale * zp.float()),
                "asym": bool((zp != 0).any()), "bias": bias}

    def forward(self, state, x):
        xf = x.float()
        y = torch.nn.functional.linear(xf, state["w8"].float() * state["scale"][:, None])  # x @ (w8 s)^T
        if state["asym"]:
            y = y - xf.sum(dim=1, keepdim=True) * state["szp"]           # remove s * zw * sum_k x
        if state["bias"] is not None:
            y = y + state["bias"].float()
        return y.to(x.dtype)


class Int4Packed(Kernel):
    name = "int4_packed"
    backend = "qbench int4 two-per-byte, unpack + dequantize per call, float matmul (torch)"
    emulated = True  # packed storage is real; the matmul runs in float
    devices = ("cpu", "cuda")

    def supports(self, w, a, device):
        if w.bits > 4:
            return f"holds at most 4-bit weights, scheme has {w.bits}"
        if a is not None:
            return "weight-only kernel; activations are quantized in this scheme"
        return self._device_reason(device)

    def prepare(self, weight, bias, w, a, act_qparams=None):
        return {"weight": PackedWeight.from_qtensor(quantize(weight, w), pack4=True), "bias": bias}

    def forward(self, state, x):
        w = dequantize(state["weight"].to_qtensor(), x.dtype)            # (N, K)
        b = state["bias"]  # kept float32; cast so fp16/bf16 inputs work
        return torch.nn.functional.linear(x, w, None if b is None else b.to(x.dtype))


for _k in (Int8IntMM(), Int8WeightOnly(), Int4Packed()):
    KERNELS.add(_k.name, _k)
