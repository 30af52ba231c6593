"""The method seam: how the codes of a weight are chosen, before any kernel sees them.

A method turns a float (N, K) weight, its QuantSpec and what else it may know about the layer (a MethodContext:
the module's name, calibration statistics of its input, the method's parameters, a smoothing scale chosen for
the group of linears sharing its input) into a QuantizedWeight; a kernel then packs that object and never chooses
qparams itself. Methods: rtn, gptq, smoothquant, awq, qat, each in its own module.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping, Optional

import torch

from qbench.engine.primitives import QuantSpec
from qbench.engine.tensors import QuantizedWeight
from qbench.registry import Registry


@dataclass(frozen=True)
class MethodContext:
    """What a method may use beyond the weight. Methods that need no calibration ignore it."""

    module: str = ""                                   # the module's name in the model ("" outside a model)
    input_stats: Mapping[str, torch.Tensor] = field(default_factory=dict)  # calibration statistics of the input
    #   (engine.methods.stats: "n" tokens, "xtx" (K, K) X^T X / n, "absmax" (K,) max |x|, "absmean" (K,) mean |x|)
    params: Mapping[str, object] = field(default_factory=dict)             # the method's parameters (scheme.method)
    smoothing: Optional[torch.Tensor] = None           # (K,) s > 0 chosen for the group (SmoothQuant, AWQ): the
    #   weight's columns are multiplied by s and the input divided by s
    folded: bool = False                               # the input already arrives divided by s (s folded upstream)
    learned: Optional[tuple] = None                    # (scale, zero_point) a training method learned (qat)


class Method:
    """Chooses codes, scales and zero points (and optionally an input scale and a column permutation)."""

    name = "?"
    needs_calibration = False   # True when quantize() reads context.input_stats
    smooths = False             # True: group_scales() chooses one input scale per group of linears sharing an input
    sequential = False          # True: a block's statistics come from the outputs of the already-quantized blocks
    trains = False              # True: train() fine-tunes the model first and quantize() uses what it learned

    def group_scales(self, weights: list[torch.Tensor], stats: Mapping[str, torch.Tensor],
                     params: Mapping[str, object], spec: QuantSpec) -> torch.Tensor:
        """(K,) input scales s > 0 for the (N_l, K) weights sharing one input with statistics `stats`."""
        raise NotImplementedError

    def quantize(self, weight: torch.Tensor, spec: QuantSpec,
                 context: Optional[MethodContext] = None) -> QuantizedWeight:
        """weight (N, K) float -> its QuantizedWeight under `spec`."""
        raise NotImplementedError


METHODS: Registry[Method] = Registry("quantization method")
