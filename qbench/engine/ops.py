"""The ops around the linears that a scheme can quantize: the attention matmuls and the residual adds.

attention  Every module whose forward dispatches through transformers' attention-function registry
           (ALL_ATTENTION_FUNCTIONS, keyed by config._attn_implementation) runs qbench's attention function, so
           any model built that way is covered without editing its code. The function computes Q K^T and P V on
           quantized inputs (engine.kernels.attention: a real integer kernel on the CPU, emulated elsewhere) with
           the recipe's activation bits and granularity, dynamic ranges; softmax stays in float32. The masks are
           transformers' additive float masks (the "eager" mask function). A module kept in float (excluded, or
           skipped by an override) runs torch's scaled_dot_product_attention on the same inputs.
residual   Each transformer block (the items of the model's longest ModuleList of one class) runs under a torch
           function mode that quantize-dequantizes both operands of every add of two hidden-state tensors
           (float, 3-D, hidden_size wide, the same shape): the residual adds. Emulated, and labelled so: the add
           itself stays in float, so this measures what quantized residual inputs cost in quality, not in speed.

Both are decided per op instance from names, like modules (scheme.ops, exclude globs, overrides first match),
and reported in the quantization map with op "attention" or "residual" (no weights, no bytes).
"""
from __future__ import annotations

import fnmatch
import functools
import inspect
from dataclasses import dataclass
from typing import Optional

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from qbench.engine.kernels.attention import KERNELS as ATTENTION_KERNELS, attention_kernel, prob_spec, \
    quantized_attention
from qbench.engine.kernels.codes import quantize_activations
from qbench.engine.primitives import QuantSpec
from qbench.errors import KernelUnavailable

IMPLEMENTATION = "qbench_quantized"       # the name qbench's function is registered under
OP_KINDS = ("attention", "residual")
KERNELS = {**ATTENTION_KERNELS,
           "residual_qdq": ("quantize-dequantize of both inputs of each residual add, float add (emulated)", True)}


@dataclass(frozen=True)
class OpSpec:
    """What one attention module or block runs: the activation spec of its quantized inputs and the kernel."""

    a: QuantSpec
    kernel: str
    hidden: int = 0              # residual: the width of the hidden states whose adds it quantizes


@dataclass(frozen=True)
class PlannedOp:
    name: str
    op: str                      # attention | residual
    shape: tuple[int, ...]       # (heads, head_dim) for attention, (hidden,) for residual
    reason: str                  # why it is left in float, "" when quantized
    recipe: int = 0
    override: str = ""


def describe(op: str, a: QuantSpec) -> str:
    """The realized input format of an op, in words."""
    if op == "residual":
        return f"{a.describe()} dynamic (quantize-dequantize)"
    per = " per row" if a.granularity == "per_token" else ""
    v = ", V per channel" if a.granularity == "per_token" else ""
    return f"{a.describe()} dynamic (Q, K{v}; P {prob_spec(a).describe().split()[0]}{per})"


# ---------------------------------------------------------------------------------------------- which modules
@functools.lru_cache(maxsize=None)
def _dispatches(cls: type) -> bool:
    try:
        return "ALL_ATTENTION_FUNCTIONS" in inspect.getsource(cls.forward)
    except (OSError, TypeError):
        return False


def attention_modules(model: nn.Module) -> dict[str, tuple[int, int]]:
    """Name -> (heads, head_dim) of every module that dispatches through transformers' attention registry."""
    cfg = getattr(model, "config", None)
    out = {}
    for name, mod in model.named_modules():
        if name and _dispatches(type(mod)):
            heads = getattr(mod, "num_heads", None) or getattr(mod, "num_attention_heads", None) or \
                getattr(getattr(mod, "config", cfg), "num_attention_heads", 0)
            dim = getattr(mod, "head_dim", None) or getattr(mod, "attention_head_size", None) or 0
            out[name] = (int(heads), int(dim))
    return out


def blocks(model: nn.Module) -> dict[str, tuple[int]]:
    """Name -> (hidden,) of the transformer blocks: the items of the longest ModuleList whose items share a class."""
    hidden = _hidden_size(model)
    best: list[str] = []
    for name, mod in model.named_modules():
        if isinstance(mod, nn.ModuleList) and len(mod) > len(best) and len({type(m) for m in mod}) == 1:
            best = [f"{name}.{i}" if name else str(i) for i in range(len(mod))]
    return {n: (hidden,) for n in best}


def _hidden_size(model: nn.Module) -> int:
    cfg = getattr(model, "config", None)
    cfg = cfg.get_text_config() if hasattr(cfg, "get_text_config") else cfg
    return int(getattr(cfg, "hidden_size", 0) or 0)


# ---------------------------------------------------------------------------------------------------- planning
def plan_ops(model: nn.Module, scheme, recipes: Optional[list] = None) -> list[PlannedOp]:
    """The per-instance decisions for the scheme's ops around the linears, from names alone (works on the meta
    device). `recipes`: the scheme's and its overrides' (Scheme.recipe), when the caller has them. Raises
    KernelUnavailable when the model has no instance of a requested op."""
    recipes = recipes or [scheme, *(scheme.recipe(o) for o in scheme.overrides)]
    out = []
    for op in (o for o in OP_KINDS if o in scheme.ops):
        found = attention_modules(model) if op == "attention" else blocks(model)
        if not found:
            raise KernelUnavailable(
                f"scheme '{scheme.name}' quantizes op '{op}', but {type(model).__name__} has no "
                + ("module that dispatches through transformers' attention-function registry" if op == "attention"
                   else "list of transformer blocks") + "; remove it from ops")
        for name, shape in found.items():
            r = next((i + 1 for i, o in enumerate(scheme.overrides) if fnmatch.fnmatchcase(name, o.match)), 0)
            glob = scheme.overrides[r - 1].match if r else ""
            recipe = recipes[r]
            excluded = next((p for p in scheme.exclude if fnmatch.fnmatchcase(name, p)), None)
            reason = (f"skipped by override '{glob}'" if recipe is None else f"excluded by '{excluded}'"
                      if excluded else "no activation spec in its override" if recipe.activations is None else "")
            out.append(PlannedOp(name, op, shape, reason, r, glob))
    return out


def install(model: nn.Module, recipes: list, planned: list[PlannedOp], device: str, activation_spec) -> list[dict]:
    """Make the planned ops run quantized in `model` (in place), each with the activation spec of its recipe
    (`recipes`: as plan_ops took them); one quantization-map entry per instance."""
    records = []
    attention = [p for p in planned if p.op == "attention"]
    if attention:
        _register()
        try:
            model.set_attn_implementation(IMPLEMENTATION)
        except (ValueError, KeyError, AttributeError) as e:
            raise KernelUnavailable(f"{type(model).__name__} does not take a registered attention function: "
                                    f"{e}") from e
    for p in planned:
        mod = model.get_submodule(p.name)
        rec = dict(name=p.name, op=p.op, shape=p.shape, requested=True, applied=not p.reason, reason=p.reason,
                   weights="n/a", sqnr_db=None, bytes_before=0, bytes_after=0, override=p.override)
        if p.reason:
            records.append(dict(rec, kernel="baseline", activations="float"))
            continue
        a = activation_spec(recipes[p.recipe])
        kernel = attention_kernel(device, a) if p.op == "attention" else "residual_qdq"
        if p.op == "attention":
            mod.qbench_attention = OpSpec(a, kernel)
        else:
            mod.qbench_residual = OpSpec(a, kernel, p.shape[0])
            mod.__class__ = _residual_class(type(mod))
        records.append(dict(rec, kernel=kernel, activations=describe(p.op, a)))
    return records


# --------------------------------------------------------------------------------------------------- attention
@functools.lru_cache(maxsize=None)
def _register() -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, eager_mask

    AttentionInterface.register(IMPLEMENTATION, attention_forward)
    AttentionMaskInterface.register(IMPLEMENTATION, eager_mask)


def _repeat_heads(x: torch.Tensor, groups: int) -> torch.Tensor:
    """(B, KV, T, D) -> (B, KV * groups, T, D): grouped-query heads, each key/value head serving `groups` queries."""
    if groups == 1:
        return x
    b, kv, t, d = x.shape
    return x[:, :, None].expand(b, kv, groups, t, d).reshape(b, kv * groups, t, d)


def attention_forward(module: nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                      attention_mask: Optional[torch.Tensor], scaling: Optional[float] = None, dropout: float = 0.0,
                      **kwargs):
    """transformers' attention-function signature: query (B, H, S, D), key/value (B, KV, T, D), an additive mask
    (B, 1, S, T) or None -> (output (B, S, H, D), None)."""
    if dropout and module.training:
        raise NotImplementedError("qbench's quantized attention runs inference only (attention dropout > 0)")
    if kwargs.get("s_aux") is not None:
        raise NotImplementedError("qbench's quantized attention does not take attention sinks (s_aux)")
    groups = int(getattr(module, "num_key_value_groups", 1) or 1)
    key, value = _repeat_heads(key, groups), _repeat_heads(value, groups)
    scaling = query.shape[-1] ** -0.5 if scaling is None else scaling
    spec: Optional[OpSpec] = getattr(module, "qbench_attention", None)
    if spec is None:                          # kept in float
        out = torch.nn.functional.scaled_dot_product_attention(
            query, key, value, attn_mask=None if attention_mask is None else attention_mask.to(query.dtype),
            scale=scaling)
    else:
        out = quantized_attention(query, key, value, attention_mask, scaling, spec.a, spec.kernel)
    return out.transpose(1, 2).contiguous(), None


# ---------------------------------------------------------------------------------------------------- residual
_ADDS = {torch.Tensor.__add__, torch.Tensor.__radd__, torch.Tensor.add, torch.add}
_IN_PLACE = {torch.Tensor.__iadd__, torch.Tensor.add_}


def qdq(x: torch.Tensor, a: QuantSpec) -> torch.Tensor:
    """x (..., H) quantized with `a` (per token: one scale per row of H) and dequantized, in x's dtype."""
    flat = x.reshape(-1, x.shape[-1])
    c = quantize_activations(flat, a, None)
    zp = c.zero_point.reshape(-1, 1) if c.per_row else c.zero_point
    return ((c.codes.float() - zp.float()) * c.scale).reshape(x.shape).to(x.dtype)


class _ResidualMode(TorchFunctionMode):
    """Quantize-dequantize both operands of every add of two same-shaped hidden-state tensors."""

    def __init__(self, spec: OpSpec):
        super().__init__()
        self.spec, self.hidden = spec, spec.hidden

    def _hidden(self, x) -> bool:
        return isinstance(x, torch.Tensor) and x.is_floating_point() and x.dim() == 3 and x.shape[-1] == self.hidden

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if (func in _ADDS or func in _IN_PLACE) and len(args) == 2 and not kwargs and self._hidden(args[0]) \
                and self._hidden(args[1]) and args[0].shape == args[1].shape:
            a = self.spec.a
            if func in _IN_PLACE:
                args[0].copy_(qdq(args[0], a))
                return func(args[0], qdq(args[1], a))
            return func(qdq(args[0], a), qdq(args[1], a))
        return func(*args, **kwargs)


@functools.lru_cache(maxsize=None)
def _residual_class(cls: type) -> type:
    """A subclass of a block class whose forward runs under _ResidualMode (a class, not a per-instance patch: a
    deep copy of the model keeps it)."""
    def forward(self, *args, **kwargs):
        with _ResidualMode(self.qbench_residual):
            return cls.forward(self, *args, **kwargs)
    return type(cls.__name__, (cls,), {"forward": forward, "__module__": cls.__module__,
                                       "__qualname__": cls.__qualname__})

