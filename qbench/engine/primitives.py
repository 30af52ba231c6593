"""Quantization primitives: choose qparams, quantize, dequantize.

Affine mapping: x ~= scale * (q - zero_point), q an integer in [qmin, qmax].
Granularity on a 2-D tensor (N, K), N = output channels / rows:
  per_tensor  scale shape ()          one scale for everything
  per_channel scale shape (N,)        one scale per row (per_token is the same for activations (M, K))
  per_group   scale shape (N, K // g) one scale per `g` consecutive columns within a row
Zero is always exactly representable: ranges are widened to include 0 and zero points are integers.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from qbench.engine import formats

GRANULARITIES = ("per_tensor", "per_channel", "per_group", "per_token")


@dataclass(frozen=True)
class QuantSpec:
    """What format a tensor is mapped to: integers (format "int"), or the codes of a value table (nf4, fp8_e4m3,
    fp4_e2m1; see engine.formats): then bits is the format's, codes are unsigned indices 0..2^bits-1, the spec is
    symmetric and unsigned and every zero point is 0 (x = scale * TABLE[q])."""

    bits: int
    signed: bool = True
    symmetric: bool = True
    granularity: str = "per_tensor"
    group_size: Optional[int] = None
    format: str = "int"

    def __post_init__(self):
        if self.format not in formats.FORMATS:
            raise ValueError(f"format must be one of {formats.FORMATS}, got {self.format!r}")
        if self.format != "int" and (self.bits != formats.FORMAT_BITS[self.format] or self.signed
                                     or not self.symmetric):
            raise ValueError(f"format {self.format} needs bits={formats.FORMAT_BITS[self.format]}, signed=False, "
                             "symmetric=True")
        if not isinstance(self.bits, int) or not 2 <= self.bits <= 8:
            raise ValueError(f"bits must be an integer from 2 to 8, got {self.bits!r}")
        if self.granularity not in GRANULARITIES:
            raise ValueError(f"granularity must be one of {GRANULARITIES}, got {self.granularity!r}")
        if (self.granularity == "per_group") != (self.group_size is not None):
            raise ValueError("group_size is required for per_group and only allowed there")
        if self.group_size is not None and self.group_size < 1:
            raise ValueError(f"group_size must be positive, got {self.group_size}")

    @property
    def qmin(self) -> int:
        return -(1 << (self.bits - 1)) if self.signed else 0

    @property
    def qmax(self) -> int:
        return (1 << (self.bits - 1)) - 1 if self.signed else (1 << self.bits) - 1

    @property
    def storage_dtype(self) -> torch.dtype:
        return torch.int8 if self.signed else torch.uint8

    @property
    def is_table(self) -> bool:
        """A value-table format (codes index a table) rather than affine integers."""
        return self.format != "int"

    @property
    def symmetric_zero_point(self) -> int:
        """The zero point every block of a symmetric spec has: 0 signed (and table formats), 2^(bits-1) unsigned."""
        return 0 if self.signed or self.is_table else 1 << (self.bits - 1)

    def for_blocks(self) -> "QuantSpec":
        """The same format with one block per row (per_channel): how methods quantize one column or group."""
        return QuantSpec(self.bits, self.signed, self.symmetric, "per_channel", None, self.format)

    def describe(self) -> str:
        if self.is_table:
            return f"{self.format} {f'per_group({self.group_size})' if self.group_size else self.granularity}"
        sign = "int" if self.signed else "uint"
        sym = "sym" if self.symmetric else "asym"
        gran = f"per_group({self.group_size})" if self.group_size else self.granularity
        return f"{sign}{self.bits} {sym} {gran}"


@dataclass
class QTensor:
    """Integer values with their qparams. `data` has the shape of the original tensor."""

    data: torch.Tensor        # int8 (signed) or uint8 (unsigned), values in [qmin, qmax]
    scale: torch.Tensor       # float32, shape per granularity (see module docstring)
    zero_point: torch.Tensor  # int32, same shape as scale
    spec: QuantSpec

    @property
    def shape(self) -> torch.Size:
        return self.data.shape


def reduce_minmax(x: torch.Tensor, spec: QuantSpec) -> tuple[torch.Tensor, torch.Tensor]:
    """Min and max over each quantization block of `x` (float32)."""
    x = x.detach().float()
    if spec.granularity == "per_tensor":
        return torch.aminmax(x)
    x2 = _as_rows(x)
    if spec.granularity in ("per_channel", "per_token"):
        return torch.aminmax(x2, dim=1)
    g = _groups(x2, spec.group_size)  # (N, G, g)
    return g.amin(dim=2), g.amax(dim=2)


def choose_qparams(min_val: torch.Tensor, max_val: torch.Tensor, spec: QuantSpec
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale and integer zero point covering [min_val, max_val] (widened to include 0); for a table format the
    scale maps max(|min|, |max|) to the format's largest value and the zero point is 0."""
    if spec.is_table:
        amax = torch.maximum(-min_val.float(), max_val.float())
        scale = amax / formats.max_value(spec.format)
        scale = torch.where(scale > 0, scale, torch.ones_like(scale))
        return scale.to(torch.float32), torch.zeros_like(scale, dtype=torch.int32)
    lo = torch.clamp(min_val.float(), max=0.0)
    hi = torch.clamp(max_val.float(), min=0.0)
    qmin, qmax = spec.qmin, spec.qmax
    if spec.symmetric:
        amax = torch.maximum(-lo, hi)
        # signed: [-qmax, qmax] around 0 (restricted range keeps the grid symmetric);
        # unsigned: zero point at the mid code, 2^(b-1), with qmax - mid steps on each side.
        zp_val = 0 if spec.signed else 1 << (spec.bits - 1)
        half_steps = qmax - zp_val
        scale = amax / half_steps
        zero_point = torch.full_like(scale, zp_val, dtype=torch.int32)
    else:
        scale = (hi - lo) / (qmax - qmin)
        safe = torch.where(scale > 0, scale, torch.ones_like(scale))
        zero_point = torch.clamp(torch.round(qmin - lo / safe), qmin, qmax).to(torch.int32)
    # An all-zero block: any positive scale represents it exactly (everything maps to the zero point).
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    return scale.to(torch.float32), zero_point


def quantize(x: torch.Tensor, spec: QuantSpec, scale: torch.Tensor | None = None,
             zero_point: torch.Tensor | None = None) -> QTensor:
    """Quantize `x` with `spec`; qparams from its own min/max unless given."""
    if spec.granularity != "per_tensor" and x.dim() < 2:
        raise ValueError(f"{spec.granularity} needs a tensor of at least 2 dims, got shape {tuple(x.shape)}")
    if scale is None or zero_point is None:
        scale, zero_point = choose_qparams(*reduce_minmax(x, spec), spec)
    xf = x.detach().float()
    s, z = broadcast_qparams(scale, x, spec), broadcast_qparams(zero_point, x, spec)
    if spec.is_table:
        return QTensor(formats.encode(xf.double() / s.double(), spec.format), scale, zero_point, spec)
    q = torch.clamp(torch.round(xf / s) + z, spec.qmin, spec.qmax)
    return QTensor(q.to(spec.storage_dtype), scale, zero_point, spec)


def dequantize(q: QTensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Floats from integers: scale * (q - zero_point), or scale * TABLE[q] for a table format."""
    s = broadcast_qparams(q.scale, q.data, q.spec)
    if q.spec.is_table:
        return (formats.decode(q.data, q.spec.format) * s).to(dtype)
    z = broadcast_qparams(q.zero_point, q.data, q.spec)
    return ((q.data.to(torch.int32) - z).float() * s).to(dtype)


def fake_quantize(x: torch.Tensor, spec: QuantSpec, scale=None, zero_point=None) -> torch.Tensor:
    """Quantize then dequantize, keeping x's dtype (the emulated activation path)."""
    return dequantize(quantize(x, spec, scale, zero_point), x.dtype)


def _as_rows(x: torch.Tensor) -> torch.Tensor:
    return x.reshape(-1, x.shape[-1]) if x.dim() != 2 else x


def _groups(x2: torch.Tensor, group_size: int) -> torch.Tensor:
    n, k = x2.shape
    if k % group_size:
        raise ValueError(f"group_size {group_size} does not divide the row length {k}")
    return x2.reshape(n, k // group_size, group_size)


def broadcast_qparams(p: torch.Tensor, x: torch.Tensor, spec: QuantSpec) -> torch.Tensor:
    """Expand a qparam tensor to x's shape."""
    if spec.granularity == "per_tensor":
        return p
    rows = _as_rows(x).shape
    if spec.granularity in ("per_channel", "per_token"):
        return p.reshape(-1, 1).expand(rows).reshape(x.shape)
    g = spec.group_size
    return p.reshape(rows[0], rows[1] // g, 1).expand(rows[0], rows[1] // g, g).reshape(x.shape)
