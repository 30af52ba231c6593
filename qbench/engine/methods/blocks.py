"""Quantizing one block of columns with given qparams, in float64: the step GPTQ and AWQ repeat.

A "block" is what shares a scale and zero point within a row: the row (per_channel), a group of columns
(per_group) or the whole tensor (per_tensor, whose qparams the caller broadcasts to every row). Scales are the
float32 values a QuantizedWeight stores, so the float64 dequantized values here are exactly what it dequantizes to.
"""
from __future__ import annotations

import torch

from qbench.engine import formats
from qbench.engine.primitives import QuantSpec, choose_qparams


def block_qparams(w: torch.Tensor, spec: QuantSpec, lo_hi=None) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, g) float columns -> (scale (N,) float32, zero point (N,) int32), one per row, from each row's min and
    max over the block (or from `lo_hi`, a given (min (N,), max (N,)) pair, e.g. a clipped range)."""
    lo, hi = lo_hi if lo_hi is not None else (w.amin(dim=1), w.amax(dim=1))
    return choose_qparams(lo, hi, spec)


def round_columns(w: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor, spec: QuantSpec
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, c) float columns and per-row qparams ((N,) or ()) -> (codes (N, c) int64, dequantized (N, c) float64)."""
    s = scale.double().reshape(-1, 1)
    w = w.double()
    if spec.is_table:
        codes = formats.encode(w / s, spec.format).long()
        return codes, formats.decode(codes, spec.format, torch.float64) * s
    z = zero_point.double().reshape(-1, 1)
    codes = torch.clamp(torch.round(w / s) + z, spec.qmin, spec.qmax)
    return codes.long(), (codes - z) * s
