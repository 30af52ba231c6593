"""PyTorch's own answer, run as a peer in the same cells: torch.ao dynamic int8 Linear.

torch_ao_dynamic  torch.ao.nn.quantized.dynamic.Linear, built exactly as
                  torch.ao.quantization.quantize_dynamic(model, {nn.Linear}, dtype=torch.qint8) builds it:
                  torch's own weight observer (MinMaxObserver, per-tensor symmetric qint8: scale = absmax / 127.5;
                  or PerChannelMinMaxObserver for per_channel), and per call torch's own dynamic quantization of
                  the activations to quint8 per tensor with reduce_range, i.e. codes 0..127 (7 bits), then
                  quantized::linear_dynamic on the engine torch.backends.quantized.engine names.

It is not qbench's quantizer and the kernel's name and backend say so. It is the one kernel that re-derives its
weight (rederives_weight): quantize_ hands it the float weight and torch.ao's observer chooses the codes, as
quantize_dynamic would; pack() of a QuantizedWeight hands torch.ao the float weight that object defines (in the
codes' column space, x transformed to match), which torch.ao quantizes again. held_weight() reports what torch.ao
really holds: its int8 codes (int_repr) and its scales, as float32 (the precision its kernel computes with).

A scheme selects it with `kernel: torch_ao_dynamic` and must declare the formats torch.ao really uses, so the card
states them: weights {bits: 8, signed: true, symmetric: true, granularity: per_tensor or per_channel} and
activations {bits: 7, signed: false, symmetric: false, granularity: per_tensor, dynamic: true}. Anything else
declines with the reason. It is never chosen by `kernel: auto`.

The module is applied to every linear op the scheme covers (transformers' Conv1D too, through its (N, K)
weight), where quantize_dynamic itself swaps nn.Linear only; on models made of nn.Linear (BERT, MiniLM)
the two are the same, which tests/engine/test_torch_ao_kernel.py checks output for output.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Optional

import torch

from qbench.engine.kernels.base import KERNELS, Kernel
from qbench.engine.kernels.state import KernelState
from qbench.engine.primitives import QuantSpec, dequantize
from qbench.engine.tensors import InputTransform

ACTIVATIONS = QuantSpec(7, False, False, "per_tensor")       # quint8 with reduce_range: codes 0..127
WEIGHTS = {g: QuantSpec(8, True, True, g) for g in ("per_tensor", "per_channel")}   # int8 symmetric (qint8)
PER_CHANNEL = (torch.per_channel_affine, torch.per_channel_symmetric)


@dataclass
class TorchAOState(KernelState):
    spec: QuantSpec
    module: torch.nn.Module          # torch.ao.nn.quantized.dynamic.Linear (its packed params are opaque)

    def held_tensors(self):
        """The quantized weight and the bias, as torch hands them back from its packed params."""
        qweight, bias = self.module._weight_bias()
        held = {"module.weight": qweight, **({} if bias is None else {"module.bias": bias})}
        return {**held, **({} if self.pre is None else {f"pre.{k}": t for k, t in self.pre.tensors().items()})}


class TorchAODynamic(Kernel):
    name = "torch_ao_dynamic"
    devices = ("cpu",)
    rederives_weight = True

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

    def prepare(self, weight, bias, w, a=None, act_qparams=None):
        """torch.ao's module from the float (N, K) weight, its observer choosing the codes (quantize_dynamic)."""
        return self._build(weight, bias, w, a, act_qparams, None)

    def pack(self, qweight, bias, a, act_qparams=None):
        """torch.ao's module from the float weight qweight defines in its codes' column space (x is transformed
        to that space first); torch.ao re-quantizes it with its own observer."""
        weight = dequantize(qweight.qtensor())                      # (N, K) float32 in the codes' column order
        return self._build(weight, bias, qweight.spec, a, act_qparams, qweight.input_transform())

    def _build(self, weight, bias, w, a, act_qparams, pre: Optional[InputTransform]) -> TorchAOState:
        self._require(self.supports(w, a, "cpu"))
        if act_qparams is not None:
            self._require("torch.ao's dynamic Linear has no static activations; use dynamic: true")
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
            return TorchAOState(spec=w, module=DynamicLinear.from_float(lin), pre=pre)

    def held_weight(self, state):
        """torch.ao's int8 codes (int_repr) with its scales (float32) and zero points (int32)."""
        qweight, _ = state.module._weight_bias()
        if qweight.qscheme() in PER_CHANNEL:
            scale, zp = qweight.q_per_channel_scales(), qweight.q_per_channel_zero_points()
        else:
            scale, zp = torch.tensor(qweight.q_scale()), torch.tensor(qweight.q_zero_point())
        return state.quantized(qweight.int_repr(), scale.float(), zp.to(torch.int32), state.spec)

    def state_nbytes(self, state):
        """The int8 weight, its scales and zero points, and the bias, as torch hands them back from its packed
        params (the engine's own packing may keep a little more, e.g. column offsets, which torch does not expose)."""
        qweight, bias = state.module._weight_bias()
        total = qweight.numel() * qweight.element_size()
        if qweight.qscheme() in PER_CHANNEL:
            total += qweight.q_per_channel_scales().numel() * 8 + qweight.q_per_channel_zero_points().numel() * 8
        else:
            total += 8 + 8                                    # one double scale, one int64 zero point
        pre = [] if state.pre is None else state.pre.tensors().values()
        return total + sum(t.numel() * t.element_size() for t in (*pre, *([] if bias is None else [bias])))

    def forward(self, state, x):
        return state.module(state.prepare_input(x).float().contiguous()).to(x.dtype)


KERNELS.add(TorchAODynamic.name, TorchAODynamic())
