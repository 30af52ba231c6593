"""GPTQ (Frantar et al. 2022, as in IST-DASLab/gptq): round columns one at a time and push each column's rounding
error onto the columns not yet rounded, weighted by the inverse Hessian of the layer's reconstruction loss.

    H = 2/n sum_t x_t x_t^T              (K, K), over the n calibration tokens of the layer's input
    dead inputs (H_jj = 0): H_jj = 1 and weight column j = 0
    H += damp * mean(diag H) * I
    act_order: columns in order of descending diag H
    U = chol(H^-1)^T (upper)            column j's error (w_j - q_j) / U_jj, times U_j,j+1:, is subtracted from the
                                        columns after j
Columns go in blocks of `block_size`: within a block every update is applied at once ("lazy batch"), the rest of the
matrix gets the block's accumulated update when the block ends; the result equals the column-by-column update.
Groups: a group's qparams are computed when its first column is reached, from the weights as updated so far (every
earlier column's update applied, including those of the current block; the reference reads the columns of the
current block as they were at the block's start), or, with static_groups, from the weights before any update.
"""
from __future__ import annotations

from typing import Optional

import torch

from qbench.engine.methods.base import METHODS, Method, MethodContext
from qbench.engine.methods.blocks import block_qparams, round_columns
from qbench.engine.primitives import QuantSpec
from qbench.engine.tensors import QuantizedWeight


def gptq(weight: torch.Tensor, hessian: torch.Tensor, spec: QuantSpec, *, damp: float = 0.01, block_size: int = 128,
         act_order: bool = False, static_groups: bool = False) -> QuantizedWeight:
    """The GPTQ QuantizedWeight of a float (N, K) weight given the (K, K) Hessian 2/n X^T X of its input.

    Dequantizing the result gives the weight in its original column order: codes are un-permuted after act order,
    except with act order and dynamic groups, where groups are consecutive columns of the permuted order and the
    QuantizedWeight carries the permutation (perm) instead.
    """
    if damp <= 0 or block_size < 1:
        raise ValueError(f"gptq needs damp > 0 and block_size >= 1, got damp={damp}, block_size={block_size}")
    w = weight.detach().to(torch.float64).clone()                          # (N, K)
    h = hessian.detach().to(device=w.device, dtype=torch.float64).clone()  # (K, K)
    n, k = w.shape
    if tuple(h.shape) != (k, k):
        raise ValueError(f"hessian must be ({k}, {k}) for a weight with {k} columns, got {tuple(h.shape)}")
    g = spec.group_size if spec.granularity == "per_group" else None
    if g and k % g:
        raise ValueError(f"group_size {g} does not divide {k} columns")
    row_spec = spec.for_blocks()
    whole = _whole_qparams(w, spec, row_spec, n)          # per_tensor / per_channel: from the weight as given
    dead = torch.diagonal(h) == 0
    h[dead, dead] = 1
    w[:, dead] = 0
    static = [block_qparams(w[:, i:i + g], row_spec) for i in range(0, k, g)] if g and static_groups else None
    perm = torch.argsort(torch.diagonal(h), descending=True, stable=True) if act_order else None
    if perm is not None:
        w, h = w[:, perm], h[perm][:, perm]
    h += damp * torch.diagonal(h).mean() * torch.eye(k, dtype=h.dtype, device=h.device)
    u = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(h)), upper=True)  # (K, K) upper
    order = perm if perm is not None else torch.arange(k, device=w.device)

    codes = torch.empty(n, k, dtype=torch.long, device=w.device)
    scales, zps = [], []                                  # dynamic groups: one (N,) pair per group, permuted order
    for i1 in range(0, k, block_size):
        i2 = min(i1 + block_size, k)
        w1, err1 = w[:, i1:i2].clone(), torch.zeros(n, i2 - i1, dtype=w.dtype, device=w.device)
        u1 = u[i1:i2, i1:i2]
        for i in range(i2 - i1):
            j = i1 + i
            if whole is not None:
                s, z = whole
            elif static is not None:
                s, z = static[int(order[j]) // g]
            else:
                if j % g == 0:
                    scales_zp = block_qparams(_current(w, w1, err1, u, i1, i, j, j + g), row_spec)
                    scales.append(scales_zp[0])
                    zps.append(scales_zp[1])
                s, z = scales[-1], zps[-1]
            q, deq = round_columns(w1[:, i:i + 1], s, z, row_spec)
            codes[:, j] = q[:, 0]
            e = (w1[:, i] - deq[:, 0]) / u1[i, i]                              # (N,)
            w1[:, i:] -= e.unsqueeze(1) * u1[i, i:].unsqueeze(0)
            err1[:, i] = e
        w[:, i2:] -= err1 @ u[i1:i2, i2:]                                      # (N, B) @ (B, K - i2)
    return _assemble(codes, spec, whole, static, scales, zps, perm)


def _whole_qparams(w: torch.Tensor, spec: QuantSpec, row_spec: QuantSpec, n: int):
    if spec.granularity == "per_channel":
        return block_qparams(w, row_spec)
    if spec.granularity == "per_tensor":
        s, z = block_qparams(w.reshape(1, -1), row_spec)
        return s.expand(n), z.expand(n)
    return None


def _current(w, w1, err1, u, i1: int, i: int, start: int, stop: int) -> torch.Tensor:
    """Columns start..stop (permuted order) as updated by every column before i1 + i: columns of the current block
    from w1; later ones from w minus the current block's updates so far (not yet applied to w)."""
    i2 = i1 + w1.shape[1]
    inside = w1[:, start - i1:min(stop, i2) - i1]
    if stop <= i2:
        return inside
    beyond = w[:, i2:stop] - err1[:, :i] @ u[i1:i1 + i, i2:stop]
    return torch.cat([inside, beyond], dim=1)


def _assemble(codes, spec: QuantSpec, whole, static, scales, zps, perm) -> QuantizedWeight:
    n, k = codes.shape
    keep_perm = perm is not None and whole is None and static is None       # act order with dynamic groups
    if perm is not None and not keep_perm:
        codes = codes[:, torch.argsort(perm)]                               # back to the original column order
    if whole is not None:
        s, z = whole
        scale, zp = (s[0], z[0]) if spec.granularity == "per_tensor" else (s, z)
    else:
        pairs = static if static is not None else list(zip(scales, zps))
        scale = torch.stack([p[0] for p in pairs], dim=1)                   # (N, K // g)
        zp = torch.stack([p[1] for p in pairs], dim=1)
    return QuantizedWeight(codes.to(spec.storage_dtype), scale.float().contiguous(), zp.to(torch.int32).contiguous(),
                           spec, perm=perm.to(torch.int64) if keep_perm else None)


def hessian_from_stats(stats) -> torch.Tensor:
    """H = 2/n X^T X from a layer's input statistics (MethodContext.input_stats: 'xtx' = X^T X / n)."""
    return 2 * stats["xtx"]


class GPTQ(Method):
    name = "gptq"
    needs_calibration = True
    sequential = True

    def quantize(self, weight, spec, context: Optional[MethodContext] = None):
        if context is None or "xtx" not in context.input_stats:
            raise ValueError("gptq needs calibration statistics of the layer's input (X^T X)")
        p = context.params
        return gptq(weight, hessian_from_stats(context.input_stats), spec, damp=p.get("damp", 0.01),
                    block_size=p.get("block_size", 128), act_order=p.get("act_order", False),
                    static_groups=p.get("static_groups", False))


METHODS.add(GPTQ.name, GPTQ())
