"""Quantized modules: own the stored weight and the chosen kernel."""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from qbench.engine.kernels import Kernel
from qbench.engine.primitives import QTensor, QuantSpec, dequantize, quantize
from qbench.engine.tensors import PackedWeight


def _state_bytes(state: dict) -> int:
    total = 0
    for v in state.values():
        if isinstance(v, torch.Tensor):
            total += v.numel() * v.element_size()
        elif isinstance(v, PackedWeight):
            total += v.nbytes
    return total


class QuantLinear(nn.Module):
    """y = x @ W^T + b with W stored quantized and computed by `kernel`."""

    def __init__(self, weight: torch.Tensor, bias: Optional[torch.Tensor], kernel: Kernel,
                 w: QuantSpec, a: Optional[QuantSpec], act_qparams: Optional[tuple] = None):
        super().__init__()
        self.out_features, self.in_features = weight.shape
        self.kernel = kernel
        self.w_spec, self.a_spec = w, a
        b = bias.detach().float() if bias is not None else None
        self.state = kernel.prepare(weight.detach().float(), b, w, a, act_qparams)

    @classmethod
    def from_float(cls, mod: nn.Module, kernel: Kernel, w: QuantSpec, a: Optional[QuantSpec],
                   act_qparams: Optional[tuple] = None) -> "QuantLinear":
        weight, bias = linear_weight(mod)
        return cls(weight, bias, kernel, w, a, act_qparams)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lead = x.shape[:-1]
        y = self.kernel.forward(self.state, x.reshape(-1, self.in_features))  # (M, K) -> (M, N)
        return y.reshape(*lead, self.out_features)

    @property
    def weight_nbytes(self) -> int:
        """Bytes this layer keeps for its weight (codes, scales, zero points, bias and sums)."""
        opaque = self.kernel.state_nbytes(self.state)
        return _state_bytes(self.state) if opaque is None else opaque

    def extra_repr(self) -> str:
        act = self.a_spec.describe() if self.a_spec else "float"
        return (f"in={self.in_features}, out={self.out_features}, w={self.w_spec.describe()}, "
                f"a={act}, kernel={self.kernel.name}")


class QuantEmbedding(nn.Module):
    """Embedding table stored quantized per row (or per group within rows); rows dequantized on lookup."""

    def __init__(self, mod: nn.Embedding, w: QuantSpec):
        super().__init__()
        q = quantize(mod.weight.detach().float(), w)
        self.packed = PackedWeight.from_qtensor(q, pack4=False)
        self.w_spec = w
        self.padding_idx = mod.padding_idx
        self.out_dtype = mod.weight.dtype
        self.embedding_dim = mod.embedding_dim

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        pw, spec = self.packed, self.w_spec
        rows = pw.codes[ids.reshape(-1)]                                   # (T, D) codes
        if spec.granularity == "per_tensor":
            scale, zp = pw.scale, pw.zero_point
        else:
            scale, zp = pw.scale[ids.reshape(-1)], pw.zero_point[ids.reshape(-1)]
        out = dequantize(QTensor(rows, scale, zp, spec), self.out_dtype)
        return out.reshape(*ids.shape, self.embedding_dim)

    @property
    def weight_nbytes(self) -> int:
        return self.packed.nbytes


def linear_weight(mod: nn.Module) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
    """(N, K) weight and bias of nn.Linear or transformers' Conv1D (which stores (K, N))."""
    if isinstance(mod, nn.Linear):
        return mod.weight, mod.bias
    if type(mod).__name__ == "Conv1D" and hasattr(mod, "nf"):
        return mod.weight.t(), mod.bias
    raise TypeError(f"not a linear module: {type(mod).__name__}")
