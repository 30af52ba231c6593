"""W8A8 on oneDNN's prepacked quantized linear, behind qbench's own activation quantization.

int8_onednn  (M, K) uint8 activation codes @ (K, N) int8 weight codes -> int32 (VNNI vpdpbusd), with the
             activation zero point, the scales and the bias applied by oneDNN in fp32
             (torch.ops.onednn.qlinear_pointwise on a weight reordered once by qlinear_prepack).

Activations: any <= 8-bit spec, per tensor (dynamic or static) or per token. Codes are computed by
qbench's quantizer (native C when built, else the torch one; identical codes) and shifted into uint8
(signed codes + 128, zero point with them), because oneDNN's fast path takes uint8 activations.
- per tensor: oneDNN gets the scale and zero point; nothing is left to do.
- per token, symmetric: all rows share the zero point, oneDNN gets it with scale 1; the row scales are
  applied with the bias in one fp32 pass (native C, else torch.addcmul).
- per token, asymmetric: oneDNN gets one shared zero point z0; the rest, (z_m - z0) * s_w[n] * sum_k w[n, k],
  is a rank-1 correction from precomputed weight row sums, folded into the same single pass.
Weights: symmetric (the shifted zero point is 0), per tensor or per channel. oneDNN computes u8 x s8
products exactly only with VNNI (without it, vpmaddubsw saturates at int16), so the kernel needs it.
"""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Optional

import torch

from qbench.engine.kernels import native
from qbench.engine.kernels.base import KERNELS, Kernel, integer_matmul_reason
from qbench.engine.primitives import QuantSpec, choose_qparams, quantize, reduce_minmax


@lru_cache(maxsize=1)
def _onednn_reason() -> Optional[str]:
    if "onednn" not in torch.backends.quantized.supported_engines:
        return "this torch build has no oneDNN quantized engine"
    if not hasattr(torch.ops.onednn, "qlinear_pointwise"):
        return "this torch build lacks torch.ops.onednn.qlinear_pointwise"
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return "cannot read /proc/cpuinfo to confirm VNNI (uint8 x int8 products are exact only with VNNI)"
    if not any(f in flags for f in (" avx512_vnni", " avx_vnni", " amx_int8")):
        return "CPU lacks VNNI: oneDNN's uint8 x int8 path saturates at int16 without it"
    return None


def quantize_u8(x: torch.Tensor, a: QuantSpec, act_qparams: Optional[tuple]):
    """(codes (M, K) uint8, scale (M, 1) or (), zero point (M,) or () int32), codes and zero point + 128 for
    signed specs. The same codes as primitives.quantize."""
    per_row = a.granularity == "per_token" and act_qparams is None
    if native.unavailable() is None:
        codes, s, z = native.quant_u8(x, a.bits, a.signed, a.symmetric, per_row, act_qparams)
        return (codes, s.reshape(-1, 1), z) if per_row else (codes, s.reshape(()), z.reshape(()))
    scale, zp = act_qparams if act_qparams is not None else choose_qparams(*reduce_minmax(x, a), a)
    q = quantize(x, a, scale, zp)
    shift = 128 if a.signed else 0
    codes = (q.data.to(torch.int16) + shift).to(torch.uint8)
    s = scale.reshape(-1, 1) if scale.numel() > 1 else scale.reshape(())
    return codes, s.float(), (zp.reshape(-1) if zp.numel() > 1 else zp.reshape(())).to(torch.int32) + shift


class Int8OneDNN(Kernel):
    name = "int8_onednn"
    devices = ("cpu",)

    @property
    def backend(self) -> str:
        quantizer = "native C" if native.unavailable() is None else "torch"
        return ("oneDNN qlinear_pointwise (uint8 x int8 -> int32, VNNI; fp32 rescale + bias fused) on a weight "
                f"prepacked once; qbench activation quantizer ({quantizer}), per-token scales applied after")

    def supports(self, w, a, device):
        reason = integer_matmul_reason(w, a)
        if reason:
            return reason
        if not w.symmetric:
            return "oneDNN takes weight zero points of 0: asymmetric weights run on int8_native or int8_int_mm"
        return _onednn_reason() or self._device_reason(device)

    def prepare(self, weight, bias, w, a, act_qparams=None):
        reason = self.supports(w, a, "cpu")
        if reason:
            raise ValueError(f"{self.name}: {reason}")
        n, k = weight.shape
        q = quantize(weight, w)
        w8 = (q.data.to(torch.int16) - q.zero_point.reshape(-1, 1).to(torch.int16)
              if q.zero_point.dim() else q.data.to(torch.int16) - int(q.zero_point)).to(torch.int8)  # (N, K), zp 0
        w_scale = q.scale.reshape(-1).expand(n).float().contiguous()                # (N,)
        wsum = w8.sum(dim=1, dtype=torch.int32)                                      # (N,) exact
        return {
            "packed": torch.ops.onednn.qlinear_prepack(w8.contiguous(), None),
            "w_scale": w_scale, "w_zeros": torch.zeros(n, dtype=torch.int64),
            "c": (w_scale.double() * wsum.double()).float(),                          # s_w[n] * sum_k w[n, k]
            "bias": None if bias is None else bias.float().contiguous(),
            "a": a, "act_qparams": act_qparams,
        }

    def forward(self, state, x):
        xf = x.float().contiguous()
        codes, a_scale, az = quantize_u8(xf, state["a"], state["act_qparams"])
        if a_scale.dim() == 0:                                                       # per tensor
            y = self._qlinear(state, codes, float(a_scale), int(az), state["bias"])
            return y.to(x.dtype)
        fast = native.unavailable() is None
        if state["a"].symmetric:                                                     # one zero point for all rows
            z0, dz = int(az[0]), None
        elif fast:
            z0, dz = native.center_zero_points(az)                                   # z0 = round(mean), dz = az - z0
        else:
            z0 = int(torch.round(az.float().mean()))
            dz = (az - z0).float()
        y = self._qlinear(state, codes, 1.0, z0, None)                               # s_w[n] * acc[m, n]
        if fast:                                                                     # one fused pass
            return native.row_epilogue_(y, a_scale.reshape(-1), dz, state["c"], state["bias"]).to(x.dtype)
        if dz is not None:
            y.addr_(dz, state["c"], alpha=-1)
        if state["bias"] is None:
            return y.mul_(a_scale).to(x.dtype)
        return torch.addcmul(state["bias"], y, a_scale, out=y).to(x.dtype)

    @staticmethod
    def _qlinear(state, codes, x_scale, x_zp, bias):
        return torch.ops.onednn.qlinear_pointwise(codes, x_scale, x_zp, state["packed"], state["w_scale"],
                                                  state["w_zeros"], bias, 1.0, 0, torch.float32, "none", [], "")


KERNELS.add(Int8OneDNN.name, Int8OneDNN())
