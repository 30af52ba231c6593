"""Non-uniform weight formats: a value table per format, codes are indices into it.

A format code c stands for scale * TABLE[c]; the scale of a block (tensor, row or group) maps the block's absmax
to the format's largest value. Quantizing is a nearest-value lookup in the table (ties go to the smaller value).

nf4       NormalFloat 4-bit (QLoRA), 16 values in [-1, 1] at quantiles of N(0, 1); the values are those of
          bitsandbytes (csrc/kernels.cu), code = index 0..15.
fp8_e4m3  OCP FP8 E4M3 ("fn": no infinities, one NaN pattern per sign), largest finite 448; code = the 8-bit
          pattern (sign, 4 exponent bits with bias 7, 3 mantissa bits), so codes are what an fp8 tensor stores.
fp4_e2m1  OCP MX FP4 E2M1, values +-{0, 0.5, 1, 1.5, 2, 3, 4, 6}; code = the 4-bit pattern.
"""
from __future__ import annotations

import math
from functools import lru_cache

import torch

NF4 = (-1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453, -0.28444138169288635,
       -0.18477343022823334, -0.09105003625154495, 0.0, 0.07958029955625534, 0.16093020141124725,
       0.24611230194568634, 0.33791524171829224, 0.44070982933044434, 0.5626170039176941, 0.7229568362236023, 1.0)

FORMAT_BITS = {"nf4": 4, "fp8_e4m3": 8, "fp4_e2m1": 4}
FORMATS = ("int",) + tuple(FORMAT_BITS)


def _minifloat(code: int, exp_bits: int, man_bits: int, bias: int) -> float:
    """Value of a sign/exponent/mantissa bit pattern (subnormals at exponent 0); no infinities."""
    sign = -1.0 if code >> (exp_bits + man_bits) else 1.0
    e = (code >> man_bits) & ((1 << exp_bits) - 1)
    m = code & ((1 << man_bits) - 1)
    if e == 0:
        return sign * m / (1 << man_bits) * 2.0 ** (1 - bias)
    return sign * (1 + m / (1 << man_bits)) * 2.0 ** (e - bias)


def _fp8_e4m3(code: int) -> float:
    return math.nan if code & 0x7F == 0x7F else _minifloat(code, 4, 3, 7)


@lru_cache(maxsize=None)
def table(fmt: str) -> tuple[float, ...]:
    """The value of every code of `fmt` (index = code); NaN for codes that are not numbers."""
    if fmt == "nf4":
        return NF4
    if fmt == "fp8_e4m3":
        return tuple(_fp8_e4m3(c) for c in range(256))
    if fmt == "fp4_e2m1":
        return tuple(_minifloat(c, 2, 1, 1) for c in range(16))
    raise ValueError(f"unknown weight format {fmt!r}; choose from {', '.join(FORMAT_BITS)}")


def max_value(fmt: str) -> float:
    """The largest finite value of the format (the block absmax maps to it)."""
    return max(v for v in table(fmt) if not math.isnan(v))


@lru_cache(maxsize=None)
def _sorted(fmt: str) -> tuple[tuple[float, ...], tuple[int, ...]]:
    """(distinct finite values ascending, the code of each); -0 folds onto +0 (code of +0 kept)."""
    best: dict[float, int] = {}
    for code, v in enumerate(table(fmt)):
        if not math.isnan(v) and (v + 0.0) not in best:
            best[v + 0.0] = code
    values = tuple(sorted(best))
    return values, tuple(best[v] for v in values)


def encode(x: torch.Tensor, fmt: str) -> torch.Tensor:
    """Codes (uint8) of the table values nearest to x (x already divided by its scale); ties to the smaller
    value, values beyond the table's ends to its ends."""
    values, codes = _sorted(fmt)
    v = torch.tensor(values, dtype=torch.float64, device=x.device)
    mid = (v[1:] + v[:-1]) / 2                                           # (T-1,) decision boundaries
    idx = torch.searchsorted(mid, x.detach().double().contiguous())       # boundary k < x <= k+1 -> k+1
    return torch.tensor(codes, dtype=torch.uint8, device=x.device)[idx]


def decode(codes: torch.Tensor, fmt: str, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Table values of codes (any integer dtype), in `dtype`."""
    t = torch.tensor(table(fmt), dtype=dtype, device=codes.device)
    return t[codes.long()]
