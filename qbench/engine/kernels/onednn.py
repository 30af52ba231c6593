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

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Optional

import torch

from qbench.engine.kernels import native
from qbench.engine.kernels.base import KERNELS, Kernel, integer_matmul_reason
from qbench.engine.kernels.codes import quantize_activations
from qbench.engine.kernels.native_status import asked, native_reason
from qbench.engine.kernels.state import KernelState
from qbench.engine.primitives import QuantSpec
from qbench.engine.tensors import qparams_from_rows


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


@dataclass
class OneDNNState(KernelState):
    spec: QuantSpec                  # the weight's (symmetric)
    packed: torch.Tensor             # oneDNN's reordered weight (opaque); to_dense() gives the (K, N) int8 codes
    w_scale: torch.Tensor            # (N,) float32
    w_zeros: torch.Tensor            # (N,) int64 zeros: the codes are centred (zero point 0)
    c: torch.Tensor                  # (N,) float32 s_w[n] * sum_k w[n, k], for per-token zero points
    bias: Optional[torch.Tensor]     # (N,) float32
    a: QuantSpec
    act_qparams: Optional[tuple]     # static (scale, zero point), or None (dynamic)


class Int8OneDNN(Kernel):
    name = "int8_onednn"
    devices = ("cpu",)

    @property
    def backend(self) -> str:
        quantizer = ("native C when built, else torch" if not asked() else
                     "native C" if native_reason() is None else "torch")
        return ("oneDNN qlinear_pointwise (uint8 x int8 -> int32, VNNI; fp32 rescale + bias fused) on a weight "
                f"prepacked once; qbench activation quantizer ({quantizer}), per-token scales applied after")

    def supports(self, w, a, device):
        reason = integer_matmul_reason(w, a)
        if reason:
            return reason
        if not w.symmetric:
            return "oneDNN takes weight zero points of 0: asymmetric weights run on int8_native or int8_int_mm"
        return self._device_reason(device) or _onednn_reason()

    def pack(self, qweight, bias, a, act_qparams=None):
        self._require(self.supports(qweight.spec, a, "cpu"))
        q, n = qweight, qweight.shape[0]
        # symmetric weights: subtracting the (symmetric) zero point centres the codes on 0, which oneDNN takes
        w8 = (q.codes.to(torch.int16) - q.zero_point.reshape(-1, 1).to(torch.int16)
              if q.zero_point.dim() else q.codes.to(torch.int16) - int(q.zero_point)).to(torch.int8)  # (N, K), zp 0
        w_scale = q.scale.reshape(-1).expand(n).float().contiguous()                # (N,)
        wsum = w8.sum(dim=1, dtype=torch.int32)                                      # (N,) exact
        return OneDNNState(
            spec=q.spec, packed=torch.ops.onednn.qlinear_prepack(w8.contiguous(), None),
            w_scale=w_scale, w_zeros=torch.zeros(n, dtype=torch.int64),
            c=(w_scale.double() * wsum.double()).float(),                             # s_w[n] * sum_k w[n, k]
            bias=None if bias is None else bias.float().contiguous(), a=a, act_qparams=act_qparams,
            pre=q.input_transform())

    def held_weight(self, state):
        spec, n = state.spec, state.w_scale.shape[0]
        zp = torch.full((n,), 0 if spec.signed else 1 << (spec.bits - 1), dtype=torch.int32)  # symmetric
        centred = state.packed.to_dense().t()                                        # (N, K) int8, zero point 0
        codes = (centred.to(torch.int16) + zp.reshape(-1, 1).to(torch.int16)).to(spec.storage_dtype)
        return state.quantized(codes, qparams_from_rows(state.w_scale, spec, n), qparams_from_rows(zp, spec, n), spec)

    def forward(self, state, x):
        x = state.prepare_input(x)
        xf = x.float().contiguous()
        acts = quantize_activations(xf, state.a, state.act_qparams)
        codes, a_scale, az = acts.codes, acts.scale, acts.zero_point
        if a_scale.dim() == 0:                                                       # per tensor
            y = self._qlinear(state, codes, float(a_scale), int(az), state.bias)
            return y.to(x.dtype)
        fast = native_reason() is None
        if state.a.symmetric:                                                        # one zero point for all rows
            z0, dz = int(az[0]), None
        elif fast:
            z0, dz = native.center_zero_points(az)                                   # z0 = round(mean), dz = az - z0
        else:
            z0 = int(torch.round(az.float().mean()))
            dz = (az - z0).float()
        y = self._qlinear(state, codes, 1.0, z0, None)                               # s_w[n] * acc[m, n]
        if fast:                                                                     # one fused pass
            return native.row_epilogue_(y, a_scale.reshape(-1), dz, state.c, state.bias).to(x.dtype)
        if dz is not None:
            y.addr_(dz, state.c, alpha=-1)
        if state.bias is None:
            return y.mul_(a_scale).to(x.dtype)
        return torch.addcmul(state.bias, y, a_scale, out=y).to(x.dtype)

    @staticmethod
    def _qlinear(state, codes, x_scale, x_zp, bias):
        return torch.ops.onednn.qlinear_pointwise(codes, x_scale, x_zp, state.packed, state.w_scale,
                                                  state.w_zeros, bias, 1.0, 0, torch.float32, "none", [], "")


KERNELS.add(Int8OneDNN.name, Int8OneDNN())
