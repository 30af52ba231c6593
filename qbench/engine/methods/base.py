"""The method seam: how the codes of a weight are chosen, before any kernel sees them.

A method turns a float (N, K) weight, its QuantSpec and what else it may know about the layer (a MethodContext:
the module's name, calibration statistics of its input) into a QuantizedWeight; a kernel then packs that object
and never chooses qparams itself. Today round to nearest (rtn) is the only method; GPTQ, AWQ and SmoothQuant
register here next, each under its own name.
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


class Method:
    """Chooses codes, scales and zero points (and optionally an input scale and a column permutation)."""

    name = "?"
    needs_calibration = False   # True when quantize() reads context.input_stats

    def quantize(self, weight: torch.Tensor, spec: QuantSpec,
                 context: Optional[MethodContext] = None) -> QuantizedWeight:
        """weight (N, K) float -> its QuantizedWeight under `spec`."""
        raise NotImplementedError


METHODS: Registry[Method] = Registry("quantization method")
