"""SmoothQuant (Xiao et al. 2022, as in mit-han-lab/smoothquant): move activation outliers into the weights.

Per input channel j of a group of linears sharing one input,
    s_j = max|X_j|^alpha / max_i,l |W^l_ij|^(1 - alpha)          (both maxima clamped to >= 1e-5, s_j too)
the input is divided by s (folded into the preceding LayerNorm/RMSNorm where one exists, else applied by the
layer as its QuantizedWeight.input_scale) and every weight's column j multiplied by s_j, so the unquantized
function is unchanged; the weights are then rounded to nearest.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch

from qbench.engine.methods.base import METHODS, Method, MethodContext
from qbench.engine.primitives import quantize
from qbench.engine.tensors import InputTransform, QuantizedWeight

CLAMP = 1e-5


def smoothquant_scales(act_absmax: torch.Tensor, weights: Sequence[torch.Tensor], alpha: float) -> torch.Tensor:
    """(K,) smoothing scales s > 0 from the (K,) per-channel max |X| and the (N_l, K) weights sharing that input."""
    if not 0 <= alpha <= 1:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    if not weights:
        raise ValueError("smoothquant_scales needs at least one weight")
    w_absmax = torch.stack([w.detach().abs().amax(dim=0).to(torch.float64) for w in weights]).amax(dim=0)
    a = act_absmax.detach().to(torch.float64).clamp(min=CLAMP)
    s = a.pow(alpha) / w_absmax.clamp(min=CLAMP).pow(1 - alpha)
    return s.clamp(min=CLAMP).float()


def smoothed(weight: torch.Tensor, spec, context: MethodContext) -> QuantizedWeight:
    """Round to nearest of W * s (columns scaled) with the layer dividing its input by s, or, when s is folded
    (the weight handed over already is W * s and the input arrives divided by s), of the weight as given."""
    s = context.smoothing
    if s is None:
        raise ValueError(f"no smoothing scale was chosen for '{context.module}'")
    q = quantize(scaled_weight(weight, context), spec)
    return QuantizedWeight.from_qtensor(q, None if context.folded else InputTransform(input_scale=s.float()))


def scaled_weight(weight: torch.Tensor, context: MethodContext) -> torch.Tensor:
    """W * s as float32: the weight itself when the smoothing is folded (it already carries s)."""
    w = weight.detach().float()
    return w if context.folded else w * context.smoothing.float().reshape(1, -1)


class SmoothQuant(Method):
    name = "smoothquant"
    needs_calibration = True
    smooths = True               # chooses one input scale per group of linears sharing an input (group_scales)

    def group_scales(self, weights, stats, params, spec) -> torch.Tensor:
        return smoothquant_scales(stats["absmax"], weights, params.get("alpha", 0.5))

    def quantize(self, weight, spec, context: Optional[MethodContext] = None):
        return smoothed(weight, spec, context or MethodContext())


METHODS.add(SmoothQuant.name, SmoothQuant())
