"""AWQ (Lin et al. 2023, as in mit-han-lab/llm-awq): activation-aware scaling of weight columns, then rounding.

Per group of linears sharing one input: s = mean|x|^alpha normalized by sqrt(max(s) * min(s)) (each s_j >= 1e-4
before normalizing), alpha searched over the `grid` points 0, 1/grid, ..., (grid-1)/grid; the alpha kept
minimizes the group's output error on calibration data,
    sum_l || X W_l^T - (X / s) Q(W_l * s)^T ||^2 / n = sum_l trace(D_l (X^T X / n) D_l^T),
D_l the effective weight error (computed exactly from X^T X, never from the tokens themselves). With grid 1 the
only point is alpha = 0, s = 1: round to nearest. Optional clip search (`clip`): per output row and quantization
block, the block's range is shrunk by 1, 0.95, ..., 0.55 and the factor with the least output error of that block
(its diagonal block of X^T X) kept. The input is divided by s upstream (folded) or by the layer (input_scale).
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch

from qbench.engine.methods.base import METHODS, Method, MethodContext
from qbench.engine.methods.smoothquant import scaled_weight
from qbench.engine.primitives import QuantSpec, quantize
from qbench.engine.tensors import QuantizedWeight

SHRINKS = tuple(1 - i / 20 for i in range(10))            # 1, 0.95, ..., 0.55 (llm-awq: n_grid 20, max_shrink 0.5)


def output_error(weight: torch.Tensor, approx: torch.Tensor, xtx: torch.Tensor) -> float:
    """trace(D xtx D^T) with D = weight - approx: the mean squared output error per token (float64)."""
    d = weight.double() - approx.double()
    return float(((d @ xtx.double()) * d).sum())


def awq_scales(weights: Sequence[torch.Tensor], xtx: torch.Tensor, absmean: torch.Tensor, spec: QuantSpec,
               grid: int = 20) -> tuple[torch.Tensor, list[float]]:
    """(K,) scales s of the best alpha for the (N_l, K) weights sharing an input, and the error of every grid point."""
    if grid < 1:
        raise ValueError(f"grid must be >= 1, got {grid}")
    best, losses = None, []
    for i in range(grid):
        s = absmean.double().pow(i / grid).clamp(min=1e-4)
        s = (s / (s.max() * s.min()).sqrt()).float()
        loss = sum(output_error(w, _rtn_scaled(w, s, spec), xtx) for w in weights)
        losses.append(loss)
        if best is None or loss < best[0]:
            best = (loss, s)
    return best[1], losses


def _rtn_scaled(weight: torch.Tensor, s: torch.Tensor, spec: QuantSpec) -> torch.Tensor:
    """Effective weight of round-to-nearest on W * s with the input divided by s: Q(W s) / s."""
    q = quantize(weight.detach().float() * s.reshape(1, -1), spec)
    return QuantizedWeight.from_qtensor(q).dequantize(torch.float64) / s.double().reshape(1, -1)


def clipped(weight: torch.Tensor, spec: QuantSpec, xtx: torch.Tensor) -> QuantizedWeight:
    """Round to nearest with each (row, block) range shrunk by the factor of SHRINKS with least output error."""
    w = weight.detach().double()
    n, k = w.shape
    g = spec.group_size if spec.granularity == "per_group" else k
    blocks = w.reshape(n, k // g, g)                                     # (N, G, g)
    lo, hi = blocks.amin(dim=2), blocks.amax(dim=2)                      # (N, G)
    if spec.granularity == "per_tensor":
        lo, hi = lo.min().expand(n, 1), hi.max().expand(n, 1)
    diag = torch.stack([xtx[i:i + g, i:i + g] for i in range(0, k, g)]).double()  # (G, g, g)
    best_err, best = None, None
    for r in SHRINKS:
        deq = _dequant_with_range(w, lo * r, hi * r, spec).reshape(n, k // g, g)
        d = blocks - deq
        err = torch.einsum("ngi,gij,ngj->ng", d, diag, d)                # (N, G) output error per block
        if spec.granularity == "per_tensor":
            err = err.sum().expand_as(err)
        if best is None:
            best_err, best = err, torch.full_like(err, r)
        else:
            better = err < best_err
            best_err, best = torch.where(better, err, best_err), torch.where(better, r, best)
    scale, zp = _range_qparams(lo * best, hi * best, spec)
    return QuantizedWeight.from_qtensor(quantize(w.float(), spec, scale, zp))


def _range_qparams(lo: torch.Tensor, hi: torch.Tensor, spec: QuantSpec):
    from qbench.engine.primitives import choose_qparams

    scale, zp = choose_qparams(lo, hi, spec)                            # (N, G) or (N, 1)
    if spec.granularity == "per_tensor":
        return scale[0, 0], zp[0, 0]
    if spec.granularity == "per_channel":
        return scale[:, 0].contiguous(), zp[:, 0].contiguous()
    return scale.contiguous(), zp.contiguous()


def _dequant_with_range(w: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor, spec: QuantSpec) -> torch.Tensor:
    scale, zp = _range_qparams(lo, hi, spec)
    return QuantizedWeight.from_qtensor(quantize(w.float(), spec, scale, zp)).dequantize(torch.float64)


class AWQ(Method):
    name = "awq"
    needs_calibration = True
    smooths = True

    def group_scales(self, weights, stats, params, spec) -> torch.Tensor:
        return awq_scales(weights, stats["xtx"], stats["absmean"], spec, params.get("grid", 20))[0]

    def quantize(self, weight, spec, context: Optional[MethodContext] = None):
        context = context or MethodContext()
        s = context.smoothing
        if s is None:
            raise ValueError(f"no AWQ scale was chosen for '{context.module}'")
        scaled = scaled_weight(weight, context)
        if context.params.get("clip", False):
            xtx = context.input_stats["xtx"] / torch.outer(s.double(), s.double())   # statistics of x / s
            qw = clipped(scaled, spec, xtx)
        else:
            qw = QuantizedWeight.from_qtensor(quantize(scaled, spec))
        if context.folded:
            return qw
        return QuantizedWeight(qw.codes, qw.scale, qw.zero_point, spec, input_scale=s.float())


METHODS.add(AWQ.name, AWQ())
