"""KernelState: what a kernel keeps after pack(), with declared fields instead of a dict.

Each kernel declares a dataclass subclass. Its tensor fields, and the tensors inside its PackedWeight and
InputTransform fields, are the layer's weight storage: held_tensors() names them (dotted,
like a state_dict), the layer's byte count sums them and the runner checks their devices. Other fields (specs,
sizes, flags, activation qparams) are configuration and are not counted.
"""
from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Optional

import torch

from qbench.engine.primitives import QuantSpec
from qbench.engine.tensors import InputTransform, PackedWeight, QuantizedWeight


@dataclass(kw_only=True)
class KernelState:
    pre: Optional[InputTransform] = None     # x -> (x / input_scale)[:, perm] before the kernel's own work

    def prepare_input(self, x: torch.Tensor) -> torch.Tensor:
        """(M, K) input -> the input the codes were quantized against (x itself without an input transform)."""
        return x if self.pre is None else self.pre.apply(x)

    def quantized(self, codes: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor,
                  spec: QuantSpec) -> QuantizedWeight:
        """A QuantizedWeight of these codes and qparams with this state's input transform (for held_weight)."""
        pre = self.pre or InputTransform()
        return QuantizedWeight(codes, scale, zero_point, spec, pre.input_scale, pre.perm)

    def same_input(self, other: "KernelState") -> bool:
        """Whether `other` transforms its input exactly as this state does (a joined state runs one transform)."""
        if (self.pre is None) != (other.pre is None):
            return False
        if self.pre is None:
            return True
        a, b = self.pre.tensors(), other.pre.tensors()
        return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)

    def held_tensors(self) -> dict[str, torch.Tensor]:
        """Every tensor of the weight storage, by dotted field name."""
        out = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, torch.Tensor):
                out[f.name] = value
            elif isinstance(value, InputTransform):
                out.update({f"{f.name}.{k}": t for k, t in value.tensors().items()})
            elif isinstance(value, PackedWeight):
                out.update({f"{f.name}.{k}": getattr(value, k) for k in ("codes", "scale", "zero_point")})
        return out
