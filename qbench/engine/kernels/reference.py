"""The emulated kernel and oracle: dequantize the stored integers, then a float matmul.

Serves every bit width, signedness, symmetry and granularity, and the value-table formats (nf4, fp8_e4m3,
fp4_e2m1: codes looked up in the format's table, then scaled); activations are fake-quantized
(quantize then dequantize) so the numbers match what an integer kernel would compute.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from qbench.engine.kernels.base import KERNELS, Kernel
from qbench.engine.kernels.state import KernelState
from qbench.engine.primitives import QuantSpec, dequantize, fake_quantize
from qbench.engine.tensors import PackedWeight, QuantizedWeight


@dataclass
class ReferenceState(KernelState):
    weight: PackedWeight             # codes, two per byte for <= 4-bit specs with an even K
    bias: Optional[torch.Tensor]     # (N,) float32
    a: Optional[QuantSpec]
    act_qparams: Optional[tuple]     # static (scale, zero point) of the activations, or None (dynamic)


class ReferenceKernel(Kernel):
    name = "reference"
    backend = "emulated: dequantize + float matmul (torch)"
    emulated = True
    devices = ("cpu", "cuda")
    formats = ("int", "nf4", "fp8_e4m3", "fp4_e2m1")

    def supports(self, w, a, device):
        return self._device_reason(device)

    def pack(self, qweight, bias, a, act_qparams=None):
        pack4 = qweight.spec.bits <= 4 and qweight.shape[1] % 2 == 0
        return ReferenceState(weight=PackedWeight.from_qtensor(qweight.qtensor(), pack4=pack4), bias=bias, a=a,
                              act_qparams=act_qparams, pre=qweight.input_transform())

    def held_weight(self, state):
        return QuantizedWeight.from_qtensor(state.weight.to_qtensor(), state.pre)

    def forward(self, state, x):
        x = state.prepare_input(x)
        w = dequantize(state.weight.to_qtensor(), x.dtype)  # (N, K) float
        a = state.a
        if a is not None:
            qp = state.act_qparams
            x = fake_quantize(x, a, *qp) if qp is not None else fake_quantize(x, a)
        b = state.bias  # kept float32; cast so fp16/bf16 inputs work
        return torch.nn.functional.linear(x, w, None if b is None else b.to(x.dtype))


KERNELS.add("reference", ReferenceKernel())
