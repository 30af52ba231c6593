"""Integer code domains and the one activation quantizer of the integer kernels.

The 128 shift. A spec's codes are signed (int8 domain) or unsigned (uint8 domain); x = s * (q - z) stays exact
when q and z move together, so int8 kernels take unsigned codes minus 128 and uint8 kernels take signed codes
plus 128. int8_offset / uint8_offset say how far, and to_int8 / from_int8 move weight codes with their zero
point: the only places the shift is written.

The activation quantizer. quantize_activations(x, a, act_qparams) returns the codes of primitives.quantize in
the uint8 domain (what oneDNN and the fused C kernel take); ActivationCodes.int8_() gives them in the int8 domain
(torch._int_mm). It uses qbench's native C quantizer when it is built and x is on the CPU (same codes, one pass),
else primitives.quantize.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from qbench.engine.kernels import native
from qbench.engine.kernels.native_status import native_reason
from qbench.engine.primitives import QuantSpec, choose_qparams, quantize, reduce_minmax

SHIFT = 128


def int8_offset(spec: QuantSpec) -> int:
    """What a spec's codes lose to lie in int8: 128 for unsigned specs (0..255 -> -128..127), 0 for signed."""
    return 0 if spec.signed else SHIFT


def uint8_offset(spec: QuantSpec) -> int:
    """What a spec's codes gain to lie in uint8: 128 for signed specs (-128..127 -> 0..255), 0 for unsigned."""
    return SHIFT if spec.signed else 0


def to_int8(codes: torch.Tensor, zero_point: torch.Tensor, spec: QuantSpec) -> tuple[torch.Tensor, torch.Tensor]:
    """(int8 codes, int32 zero point): x = s * (q - z) = s * ((q - o) - (z - o)) with o = int8_offset(spec)."""
    o = int8_offset(spec)
    if o == 0:
        return codes.to(torch.int8), zero_point.to(torch.int32)
    return (codes.to(torch.int16) - o).to(torch.int8), zero_point.to(torch.int32) - o


def from_int8(codes: torch.Tensor, zero_point: torch.Tensor, spec: QuantSpec) -> tuple[torch.Tensor, torch.Tensor]:
    """Inverse of to_int8: codes in spec.storage_dtype and the int32 zero point of the spec's own domain."""
    o = int8_offset(spec)
    return (codes.to(torch.int16) + o).to(spec.storage_dtype), zero_point.to(torch.int32) + o


@dataclass
class ActivationCodes:
    """Quantized activations in the uint8 domain: x ~= scale * (codes - zero_point)."""

    codes: torch.Tensor        # (M, K) uint8
    scale: torch.Tensor        # float32: (M, 1) per token, () per tensor
    zero_point: torch.Tensor   # int32: (M,) per token, () per tensor

    @property
    def per_row(self) -> bool:
        return self.scale.dim() > 0

    def int8_(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(codes (M, K) int8, zero point int32) in the int8 domain: u - 128 on both. In place for the codes (a
        bit flip on the same memory, no copy of x's size): `codes` is not valid uint8 afterwards."""
        return self.codes.view(torch.int8).bitwise_xor_(-SHIFT), self.zero_point - SHIFT


def quantize_activations(x: torch.Tensor, a: QuantSpec, act_qparams: Optional[tuple]) -> ActivationCodes:
    """x (M, K) float -> its codes under `a`: per token (one scale per row) when a is per_token and no static
    qparams are given, else per tensor (static act_qparams = (scale, zero point) in the spec's own domain)."""
    per_row = a.granularity == "per_token" and act_qparams is None
    if x.device.type == "cpu" and native_reason() is None:
        codes, s, z = native.quant_u8(x.float().contiguous(), a.bits, a.signed, a.symmetric, per_row, act_qparams)
        return ActivationCodes(codes, s.reshape(-1, 1), z) if per_row else \
            ActivationCodes(codes, s.reshape(()), z.reshape(()))
    scale, zp = act_qparams if act_qparams is not None else choose_qparams(*reduce_minmax(x, a), a)
    q = quantize(x, a, scale, zp)
    codes = (q.data.to(torch.int16) + uint8_offset(a)).to(torch.uint8)
    zp = zp.to(torch.int32) + uint8_offset(a)
    if per_row:
        return ActivationCodes(codes, scale.float().reshape(-1, 1), zp.reshape(-1))
    return ActivationCodes(codes, scale.float().reshape(()), zp.reshape(()))
