"""Packed weight containers: what a quantized layer actually keeps in memory."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from qbench.engine.primitives import QTensor, QuantSpec


def pack_int4(q: torch.Tensor, spec: QuantSpec) -> torch.Tensor:
    """(N, K) integer codes in [qmin, qmax] of a <=4-bit spec -> (N, ceil(K/2)) uint8, two per byte.

    Codes are offset to unsigned nibbles (signed 4-bit: +8) so both signs pack the same way;
    column 2j goes to the low nibble, column 2j+1 to the high nibble.
    """
    if spec.bits > 4:
        raise ValueError(f"int4 packing holds at most 4 bits, spec has {spec.bits}")
    u = (q.to(torch.int16) - spec.qmin).to(torch.uint8)  # 0..15
    if u.shape[-1] % 2:
        u = torch.nn.functional.pad(u, (0, 1))
    return (u[..., 0::2] | (u[..., 1::2] << 4)).contiguous()


def unpack_int4(packed: torch.Tensor, k: int, spec: QuantSpec) -> torch.Tensor:
    """Inverse of pack_int4: (N, ceil(K/2)) uint8 -> (N, K) int16 codes in [qmin, qmax]."""
    lo = (packed & 0x0F).to(torch.int16)
    hi = (packed >> 4).to(torch.int16)
    out = torch.stack((lo, hi), dim=-1).reshape(*packed.shape[:-1], -1)[..., :k]
    return out + spec.qmin


@dataclass
class PackedWeight:
    """A quantized 2-D weight as stored: int8/uint8 codes, or two 4-bit codes per byte."""

    codes: torch.Tensor       # (N, K) int8/uint8, or (N, ceil(K/2)) uint8 when packed4
    scale: torch.Tensor
    zero_point: torch.Tensor
    spec: QuantSpec
    shape: tuple[int, int]
    packed4: bool

    @classmethod
    def from_qtensor(cls, q: QTensor, pack4: bool) -> "PackedWeight":
        codes = pack_int4(q.data, q.spec) if pack4 else q.data.contiguous()
        return cls(codes, q.scale, q.zero_point, q.spec, tuple(q.data.shape), pack4)

    def to_qtensor(self) -> QTensor:
        data = unpack_int4(self.codes, self.shape[1], self.spec) if self.packed4 else self.codes
        return QTensor(data.to(self.spec.storage_dtype), self.scale, self.zero_point, self.spec)

    @property
    def nbytes(self) -> int:
        """Bytes held: codes plus scales and zero points."""
        return sum(t.numel() * t.element_size() for t in (self.codes, self.scale, self.zero_point))
