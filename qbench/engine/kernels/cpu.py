"""Integer kernels backed by PyTorch's CPU primitives, on the codes they are handed.

int8_int_mm      W8A8: (M, K) int8 @ (K, N) int8 -> (M, N) int32 via torch._int_mm (oneDNN,
                 VNNI on this CPU class), zero-point corrections from precomputed sums, rescale.
int8_weight_only int8 weights with float activations: dequantize + float matmul; the zero point
                 is corrected by x.sum(-1).
int4_packed      two 4-bit codes per byte, unpacked and dequantized per call, float matmul.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from qbench.engine.kernels.base import KERNELS, Kernel
from qbench.engine.kernels.codes import from_int8, quantize_activations, to_int8
from qbench.engine.kernels.state import KernelState
from qbench.engine.primitives import QuantSpec, dequantize
from qbench.engine.tensors import PackedWeight, QuantizedWeight, qparams_from_rows


@dataclass
class IntMMState(KernelState):
    spec: QuantSpec                  # the weight's
    w8: torch.Tensor                 # (N, K) int8 codes (to_int8)
    w_scale: torch.Tensor            # (N,) float32
    w_zp: torch.Tensor               # (N,) int32, in the codes' int8 domain
    w_rowsum: torch.Tensor           # (N,) int32 sum_k w8, for the activation zero point
    asym_w: bool                     # some weight zero point is not 0
    bias: Optional[torch.Tensor]     # (N,) float32
    a: QuantSpec
    act_qparams: Optional[tuple]     # static (scale, zero point), or None (dynamic)
    k: int


class Int8IntMM(Kernel):
    name = "int8_int_mm"
    backend = "torch._int_mm (int8 x int8 -> int32)"
    devices = ("cpu",)

    def supports(self, w, a, device):
        return self._config_reason(w, a) or self._device_reason(device)

    @staticmethod
    def _config_reason(w, a) -> Optional[str]:
        if a is None:
            return "needs quantized activations (weight-only schemes use other kernels)"
        if w.granularity == "per_group":
            return "per_group weight scales do not factor out of an integer matmul"
        return None

    def pack(self, qweight, bias, a, act_qparams=None):
        self._require(self._config_reason(qweight.spec, a))
        w8, wz = to_int8(qweight.codes, qweight.zero_point, qweight.spec)  # (N, K) int8
        n, k = qweight.shape
        return IntMMState(
            spec=qweight.spec, w8=w8.contiguous(),
            w_scale=qweight.scale.reshape(-1).expand(n).float().contiguous(),
            w_zp=wz.reshape(-1).expand(n).contiguous(),
            w_rowsum=w8.sum(dim=1, dtype=torch.int32),
            asym_w=bool((wz != 0).any()), bias=bias, a=a, act_qparams=act_qparams, k=k,
            pre=qweight.input_transform())

    def held_weight(self, state):
        codes, zp = from_int8(state.w8, state.w_zp, state.spec)
        n = codes.shape[0]
        return state.quantized(codes, qparams_from_rows(state.w_scale, state.spec, n),
                               qparams_from_rows(zp, state.spec, n), state.spec)

    def forward(self, state, x):
        x = state.prepare_input(x)
        acts = quantize_activations(x, state.a, state.act_qparams)
        a8, az = acts.int8_()                                            # (M, K) int8
        acc = int_mm(a8, state.w8)                                       # (M, K)@(K, N) -> (M, N) int32
        correct_(acc, a8, az, state)
        return rescale(acc, acts.scale, state.w_scale, state.bias).to(x.dtype)


def int_mm(a8: torch.Tensor, w8: torch.Tensor) -> torch.Tensor:
    """a8 (M, K) int8 @ w8 (N, K)^T int8 -> (M, N) int32 by torch._int_mm, whose CPU path returns wrong sums when
    K = 1 (torch 2.13): there a zero column, which changes no sum, makes K = 2."""
    if a8.shape[1] == 1:
        a8, w8 = (torch.nn.functional.pad(t, (0, 1)) for t in (a8, w8))
    return torch._int_mm(a8, w8.t())


def rescale(acc: torch.Tensor, a_scale: torch.Tensor, w_scale: torch.Tensor,
            bias: Optional[torch.Tensor]) -> torch.Tensor:
    """acc (M, N) int32 -> acc * a_scale * w_scale (+ bias), float32; a_scale () or (M, 1), w_scale (N,)."""
    y = acc.to(torch.float32)                                            # one conversion pass
    if a_scale.numel() == 1:
        w_scale = w_scale * a_scale.reshape(())                          # (N,) combined scale
    else:
        y.mul_(a_scale)                                                  # per-token scales (M, 1)
    if bias is None:
        return y.mul_(w_scale)
    return torch.addcmul(bias, y, w_scale, out=y)                        # rescale + bias in one pass


def correct_(acc: torch.Tensor, a8: torch.Tensor, az: torch.Tensor, state: IntMMState) -> torch.Tensor:
    """In place: acc -> sum_k (a - za)(w - zw) = acc - za*sum_k w - zw*(sum_k a - K*za), exact int32.

    Only O(M + N) vectors and rank-1 updates; nothing is widened to the operands' size.
    """
    m = acc.shape[0]
    za = az.reshape(-1).to(torch.int32).expand(m)                         # (M,)
    if bool((za != 0).any()):
        acc.addr_(za, state.w_rowsum, alpha=-1)
    if state.asym_w:
        a_rowsum = a8.sum(dim=1, dtype=torch.int32)                       # (M,)
        acc.addr_(a_rowsum - state.k * za, state.w_zp, alpha=-1)
    return acc



@dataclass
class WeightOnlyState(KernelState):
    spec: QuantSpec
    w8: torch.Tensor                 # (N, K) int8 codes (to_int8)
    scale: torch.Tensor              # (N,) float32
    szp: torch.Tensor                # (N,) float32 scale * zero point (int8 domain)
    asym: bool
    bias: Optional[torch.Tensor]


class Int8WeightOnly(Kernel):
    name = "int8_weight_only"
    # torch._weight_int8pack_mm was measured slower than dequantize + matmul at every M from 1 to 1024
    # on the 2-core AVX-512 CPU (e.g. 0.22 vs 0.15 ms at M=1, 314 vs 3.9 ms at M=1024, 384x1536).
    backend = "int8 codes held in memory; dequantized per call + float matmul (torch)"
    emulated = True  # the matmul runs in float: storage is real, the arithmetic is not integer
    devices = ("cpu",)

    def supports(self, w, a, device):
        return self._config_reason(w, a) or self._device_reason(device)

    @staticmethod
    def _config_reason(w, a) -> Optional[str]:
        if a is not None:
            return "weight-only kernel; activations are quantized in this scheme"
        if w.granularity == "per_group":
            return "holds one scale per output channel; per_group weights run on int4_packed or reference"
        return None

    def pack(self, qweight, bias, a, act_qparams=None):
        self._require(self._config_reason(qweight.spec, a))
        w8, wz = to_int8(qweight.codes, qweight.zero_point, qweight.spec)
        n = qweight.shape[0]
        scale = qweight.scale.reshape(-1).expand(n).float().contiguous()
        zp = wz.reshape(-1).expand(n)
        return WeightOnlyState(spec=qweight.spec, w8=w8.contiguous(), scale=scale, szp=scale * zp.float(),
                               asym=bool((zp != 0).any()), bias=bias, pre=qweight.input_transform())

    def held_weight(self, state):
        zp8 = torch.round(state.szp / state.scale).to(torch.int32)       # the products of small integers: exact
        codes, zp = from_int8(state.w8, zp8, state.spec)
        n = codes.shape[0]
        return state.quantized(codes, qparams_from_rows(state.scale, state.spec, n),
                               qparams_from_rows(zp, state.spec, n), state.spec)

    def forward(self, state, x):
        x = state.prepare_input(x)
        xf = x.float()
        y = torch.nn.functional.linear(xf, state.w8.float() * state.scale[:, None])  # x @ (w8 s)^T
        if state.asym:
            y = y - xf.sum(dim=1, keepdim=True) * state.szp              # remove s * zw * sum_k x
        if state.bias is not None:
            y = y + state.bias.float()
        return y.to(x.dtype)


@dataclass
class PackedState(KernelState):
    weight: PackedWeight             # (N, ceil(K/2)) uint8, two codes per byte
    bias: Optional[torch.Tensor]


class Int4Packed(Kernel):
    name = "int4_packed"
    backend = "qbench int4 two-per-byte, unpack + dequantize per call, float matmul (torch)"
    emulated = True  # packed storage is real; the matmul runs in float
    devices = ("cpu", "cuda")

    def supports(self, w, a, device):
        return self._config_reason(w, a) or self._device_reason(device)

    @staticmethod
    def _config_reason(w, a) -> Optional[str]:
        if w.bits > 4:
            return f"holds at most 4-bit weights, scheme has {w.bits}"
        if a is not None:
            return "weight-only kernel; activations are quantized in this scheme"
        return None

    def pack(self, qweight, bias, a, act_qparams=None):
        self._require(self._config_reason(qweight.spec, a))
        return PackedState(weight=PackedWeight.from_qtensor(qweight.qtensor(), pack4=True), bias=bias,
                           pre=qweight.input_transform())

    def held_weight(self, state):
        return QuantizedWeight.from_qtensor(state.weight.to_qtensor(), state.pre)

    def forward(self, state, x):
        x = state.prepare_input(x)
        w = dequantize(state.weight.to_qtensor(), x.dtype)               # (N, K)
        b = state.bias  # kept float32; cast so fp16/bf16 inputs work
        return torch.nn.functional.linear(x, w, None if b is None else b.to(x.dtype))


for _k in (Int8IntMM(), Int8WeightOnly(), Int4Packed()):
    KERNELS.add(_k.name, _k)
