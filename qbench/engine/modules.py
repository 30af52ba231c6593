"""Quantized modules: own the stored weight and the chosen kernel."""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from qbench.engine.kernels import Kernel
from qbench.engine.kernels.state import KernelState
from qbench.engine.primitives import QTensor, QuantSpec, dequantize, quantize
from qbench.engine.tensors import PackedWeight, QuantizedWeight


class QuantModule(nn.Module):
    """A module that keeps a quantized weight outside parameters and buffers: held_tensors() names what it keeps
    (the runner checks their devices; weight_nbytes counts them)."""

    def held_tensors(self) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def held_weight(self) -> QuantizedWeight:
        """The quantized weight as the module holds it (read back from its storage)."""
        raise NotImplementedError

    @property
    def weight_nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.held_tensors().values())


class QuantLinear(QuantModule):
    """y = x @ W^T + b with W stored quantized and computed by `kernel`.

    QuantLinear(weight, bias, kernel, w, a) quantizes a float (N, K) weight with kernel.prepare (round to nearest,
    or the kernel's own quantizer where it re-derives its weight); from_quantized() packs a QuantizedWeight a
    method chose.
    """

    def __init__(self, weight: torch.Tensor, bias: Optional[torch.Tensor], kernel: Kernel,
                 w: QuantSpec, a: Optional[QuantSpec], act_qparams: Optional[tuple] = None):
        super().__init__()
        state = kernel.prepare(weight.detach().float(), _float(bias), w, a, act_qparams)
        self._hold(kernel, state, tuple(weight.shape), w, a)

    @classmethod
    def from_quantized(cls, qweight: QuantizedWeight, bias: Optional[torch.Tensor], kernel: Kernel,
                       a: Optional[QuantSpec], act_qparams: Optional[tuple] = None) -> "QuantLinear":
        """The layer that `kernel` runs on the codes, scales and zero points of `qweight`."""
        layer = cls.__new__(cls)
        QuantModule.__init__(layer)
        layer._hold(kernel, kernel.pack(qweight, _float(bias), a, act_qparams), qweight.shape, qweight.spec, a)
        return layer

    @classmethod
    def from_float(cls, mod: nn.Module, kernel: Kernel, w: QuantSpec, a: Optional[QuantSpec],
                   act_qparams: Optional[tuple] = None) -> "QuantLinear":
        weight, bias = linear_weight(mod)
        return cls(weight, bias, kernel, w, a, act_qparams)

    def _hold(self, kernel: Kernel, state: KernelState, shape: tuple[int, int], w: QuantSpec,
              a: Optional[QuantSpec]) -> None:
        self.out_features, self.in_features = shape
        self.kernel, self.state = kernel, state
        self.w_spec, self.a_spec = w, a

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lead = x.shape[:-1]
        y = self.kernel.forward(self.state, x.reshape(-1, self.in_features))  # (M, K) -> (M, N)
        return y.reshape(*lead, self.out_features)

    def held_tensors(self) -> dict[str, torch.Tensor]:
        return self.state.held_tensors()

    def held_weight(self) -> QuantizedWeight:
        return self.kernel.held_weight(self.state)

    @property
    def weight_nbytes(self) -> int:
        """Bytes this layer keeps for its weight (codes, scales, zero points, bias and sums)."""
        return self.kernel.state_nbytes(self.state)

    def extra_repr(self) -> str:
        act = self.a_spec.describe() if self.a_spec else "float"
        return (f"in={self.in_features}, out={self.out_features}, w={self.w_spec.describe()}, "
                f"a={act}, kernel={self.kernel.name}")


class QuantEmbedding(QuantModule):
    """Embedding table stored quantized per row (or per group within rows); rows dequantized on lookup."""

    def __init__(self, mod: nn.Embedding, w: QuantSpec, qweight: Optional[QuantizedWeight] = None):
        super().__init__()
        q = quantize(mod.weight.detach().float(), w) if qweight is None else qweight.qtensor()
        if qweight is not None and qweight.input_transform() is not None:
            raise ValueError("an embedding table has no input channels to scale or permute")
        self.packed = PackedWeight.from_qtensor(q, pack4=False)
        self.w_spec = q.spec
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

    def held_tensors(self) -> dict[str, torch.Tensor]:
        pw = self.packed
        return {"packed.codes": pw.codes, "packed.scale": pw.scale, "packed.zero_point": pw.zero_point}

    def held_weight(self) -> QuantizedWeight:
        return QuantizedWeight.from_qtensor(self.packed.to_qtensor())


def _float(bias: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
    return bias.detach().float() if bias is not None else None


def is_linear(mod: nn.Module) -> bool:
    """nn.Linear, or transformers' Conv1D (GPT-2 style: a linear layer that stores its weight (K, N))."""
    return isinstance(mod, nn.Linear) or (type(mod).__name__ == "Conv1D" and hasattr(mod, "nf"))


def set_submodule(model: nn.Module, name: str, new: nn.Module) -> None:
    """Put `new` where the submodule `name` (a dotted path) is."""
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, new)


def linear_weight(mod: nn.Module) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
    """(N, K) weight and bias of nn.Linear or transformers' Conv1D (which stores (K, N))."""
    if not is_linear(mod):
        raise TypeError(f"not a linear module: {type(mod).__name__}")
    return (mod.weight, mod.bias) if isinstance(mod, nn.Linear) else (mod.weight.t(), mod.bias)
