"""PyTorch's own answer, run as a peer in the same cells: torch.ao dynamic int8 Linear.

torch_ao_dynamic  torch.ao.nn.quantized.dynamic.Linear, built exactly as
                  torch.ao.quantization.quantize_dynamic(model, {nn.Linear}, dtype=torch.qint8) builds it:
                  torch's own weight observer (MinMaxObserver, per-tensor symmetric qint8: scale = absmax / 127.5;
                  or PerChannelMinMaxObserver for per_channel), and per call torch's own dynamic quantization of
                  the activations to quint8 per tensor with reduce_range, i.e. codes 0..127 (7 bits), then
                  quantized::linear_dynamic on the engine torch.backends.quantized.engine names.

It is not qbench's quantizer and the kernel's name and backend say so. A scheme selects it with
`kernel: torch_ao_dynamic` and must declare the formats torch.ao really uses, so the card states them:
weights {bits: 8, signed: true, symmetric: true, granularity: per_tensor or per_channel} and activations
{bits: 7, signed: false, symmetric: false, granularity: per_tensor, dynamic: true}. Anything else declines
with the reason. It is never chosen by `kernel: auto`.

The module is applied to every linear op the scheme covers (transformers' Conv1D too, through its (N, K)
weight), where quantize_dynamic itself swaps nn.Linear only; on models made of nn.Linear (BERT, MiniLM)
the two are the same, which tests/engine/test_torch_ao_kernel.py checks output for output.
"""
from __future__ import annotations

import warnings

import torch

from qbench.engine.kernels.base import KERNELS, Kernel
from qbench.engine.primitives import QuantSpec

ACTIVATIONS = QuantSpec(7, False, False, "per_tensor")       # quint8 with reduce_range: codes 0..127
WEIGHTS = {g: QuantSpec(8, True, True, g) for g in ("per_tensor", "per_channel")}   # int8 symmetric (qint8)


class TorchAODynamic(Kernel):
    name = "torch_ao_dynamic"
    devices = ("cpu",)

    @property
    def backend(self) -> str:
        return ("PyTorch torch.ao.nn.quantized.dynamic.Linear as quantize_dynamic builds it (torch's weight "
                "observer, torch's per-call quint8 activation quantization with reduce_range), "
                f"quantized::linear_dynamic on the '{torch.backends.quantized.engine}' engine")

    def supports(self, w, a, device):
        if a is None or a != ACTIVATIONS:
            return ("torch.ao's dynamic Linear quantizes activations per tensor to quint8 with reduce_range; declare "
                    "activations {bits: 7, signed: false, symmetric: false, granularity: per_tensor, dynamic: true}")
        if WEIGHTS.get(w.granularity) != w:
            return ("torch.ao's dynamic Linear stores int8 symmetric weights per tensor or per channel; declare "
                    "weights {bits: 8, signed: true, symmetric: true, granularity: per_tensor or per_channel}")
        if torch.backends.quantized.engine == "none":
            return "this torch build has no quantized engine"
        return self._device_reason(device)

    def prepare(self, weight, bias, w, a, act_qparams=None):
        reason = self.supports(w, a, "cpu")
        if reason:
            raise ValueError(f"{self.name}: {reason}")
        if act_qparams is not None:
            raise ValueError(f"{self.name}: torch.ao's dynamic Linear has no static activations; use dynamic: true")
        from torch.ao.nn.quantized.dynamic import Linear as DynamicLinear
        from torch.ao.quantization import default_dynamic_qconfig, per_channel_dynamic_qconfig

        n, k = weight.shape
        lin = torch.nn.Linear(k, n, bias=bias is not None)
        with torch.no_grad():
            lin.weight.copy_(weight.float())
            if bias is not None:
                lin.bias.copy_(bias.float())
        lin.qconfig = default_dynamic_qconfig if w.granularity == "per_tensor" else per_channel_dynamic_qconfig
        with warnings.catch_warnings():       # torch.ao announces its deprecation on every module it builds
            warnings.simplefilter("ignore", DeprecationWarning)
            warnings.simplefilter("ignore", UserWarning)
            return {"module": DynamicLinear.from_float(lin)}

    def state_nbytes(self, state):
        """The int8 weight, its scales and zero points, and the bias, as torch hands them back from its packed
        params (the engine's own packing may keep a little more, e.g. column offsets, which torch does not expose)."""
        qweight, bias = state["module"]._weight_bias()
        total = qweight.numel() * qweight.element_size()
        if qweight.qscheme() in (torch.per_channel_affine, torch.per_channel_symmetric):
            total += qweight.q_per_channel_scales().numel() * 8 + qweight.q_per_channel_zero_points().numel() * 8
        else:
            total += 8 + 8                                    # one double scale, one int64 zero point
        return total + (0 if bias is None else bias.numel() * bias.element_size())

    def forward(self, state, x):
        return state["module"](x.float().contiguous()).to(x.dtype)


KERNELS.add(TorchAODynamic.name, TorchAODynamic())
