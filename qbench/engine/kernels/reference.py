"""The emulated kernel and oracle: dequantize the stored integers, then a float matmul.

Serves every bit width, signedness, symmetry and granularity; activations are fake-quantized
(quantize then dequantize) so the numbers match what an integer kernel would compute.
"""
from __future__ import annotations

from typing import Optional

import torch

from qbench.engine.kernels.base import KERNELS, Kernel
from qbench.engine.primitives import QuantSpec, dequantize, fake_quantize, quantize
from qbench.engine.tensors import PackedWeight


def quantize_activation(x: torch.Tensor, a: QuantSpec, act_qparams: Optional[tuple]):
    """Integer activations: static qparams when calibrated, else computed from x (dynamic)."""
    if act_qparams is not None:
        return quantize(x, a, *act_qparams)
    return quantize(x, a)


class ReferenceKernel(Kernel):
    name = "reference"
    backend = "emulated: dequantize + float matmul (torch)"
    emulated = True
    devices = ("cpu", "cuda")

    def supports(self, w, a, device):
        return self._device_reason(device)

    def prepare(self, weight, bias, w, a, act_qparams=None):
        q = quantize(weight, w)
        pw = PackedWeight.from_qtensor(q, pack4=w.bits <= 4 and weight.shape[1] % 2 == 0)
        return {"weight": pw, "bias": bias, "a": a, "act_qparams": act_qparams}

    def forward(self, state, x):
        w = dequantize(state["weight"].to_qtensor(), x.dtype)  # (N, K) float
        a = state["a"]
        if a is not None:
            qp = state["act_qparams"]
            x = fake_quantize(x, a, *qp) if qp is not None else fake_quantize(x, a)
        b = state["bias"]  # kept float32; cast so fp16/bf16 inputs work
        return torch.nn.functional.linear(x, w, None if b is None else b.to(x.dtype))


KERNELS.add("reference", ReferenceKernel())
