"""Quantized weights: QuantizedWeight, what a method hands a kernel (codes, qparams, optional input scale and
column permutation), and the packed containers a quantized layer keeps in memory."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from qbench.engine.primitives import QTensor, QuantSpec, dequantize


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


@dataclass(frozen=True, eq=False)
class InputTransform:
    """What a layer does to its input before the quantized matmul: x -> (x / input_scale)[:, perm].

    input_scale (K,) float32 > 0, in the layer's original input-channel order; perm (K,) int64, a permutation:
    column j of the transformed input is input channel perm[j]. Either may be None (not both: then there is no
    transform). Computed in x's dtype, so fp16/bf16 inputs stay fp16/bf16.
    """

    input_scale: Optional[torch.Tensor] = None
    perm: Optional[torch.Tensor] = None

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        """(M, K) -> (M, K): the input the codes were quantized against."""
        if self.input_scale is not None:
            x = x / self.input_scale.to(x.dtype)
        if self.perm is not None:
            x = x.index_select(1, self.perm)
        return x

    def tensors(self) -> dict[str, torch.Tensor]:
        return {k: t for k, t in (("input_scale", self.input_scale), ("perm", self.perm)) if t is not None}


@dataclass(frozen=True, eq=False)
class QuantizedWeight:
    """A quantized (N, K) linear weight, as a method chose it: what a kernel is handed to pack.

    codes        (N, K) spec.storage_dtype (int8 signed, uint8 unsigned), values in [qmin, qmax]
    scale        float32 > 0: () per_tensor, (N,) per_channel, (N, K // g) per_group
    zero_point   int32, shaped like scale, in [qmin, qmax]; symmetric specs have the symmetric zero point
                 (spec.symmetric_zero_point; 0 for table formats such as nf4, whose codes index a value table)
                 (0 signed, 2^(bits-1) unsigned)
    input_scale  optional (K,) float32 > 0, per input channel in the layer's original order (SmoothQuant /
                 AWQ smoothing): the codes quantize W * input_scale (column k times input_scale[k]) and the layer
                 computes y = (x / input_scale) @ dequant(codes)^T + b, which is x @ W^T + b up to rounding.
    perm         optional (K,) int64 permutation of the input channels (e.g. GPTQ's act order): column j of the
                 codes belongs to input channel perm[j], and the layer computes y = x'[:, perm] @ dequant(codes)^T
                 + b with x' = x / input_scale (the scale first, in the original order). The groups of a
                 per_group spec are consecutive columns of the codes, i.e. of the permuted order.

    The effective float weight in the original input-channel space (dequantize()) is therefore
        W[:, perm[j]] = dequant(codes)[:, j] / input_scale[perm[j]].
    """

    codes: torch.Tensor
    scale: torch.Tensor
    zero_point: torch.Tensor
    spec: QuantSpec
    input_scale: Optional[torch.Tensor] = None
    perm: Optional[torch.Tensor] = None

    def __post_init__(self):
        reason = _qweight_problem(self)
        if reason:
            raise ValueError(f"invalid quantized weight: {reason}")

    @classmethod
    def from_qtensor(cls, q: QTensor, pre: Optional[InputTransform] = None) -> "QuantizedWeight":
        pre = pre or InputTransform()
        return cls(q.data, q.scale, q.zero_point, q.spec, pre.input_scale, pre.perm)

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.codes.shape)

    def qtensor(self) -> QTensor:
        """The codes and qparams alone, in the codes' own column order."""
        return QTensor(self.codes, self.scale, self.zero_point, self.spec)

    def input_transform(self) -> Optional[InputTransform]:
        """The transform the layer applies to x before the quantized matmul, or None."""
        if self.input_scale is None and self.perm is None:
            return None
        return InputTransform(self.input_scale, self.perm)

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """(N, K) effective float weight in the original input-channel space (see the class docstring)."""
        w = dequantize(self.qtensor(), dtype)                             # (N, K) in the codes' column order
        if self.perm is not None:
            w = w.index_select(1, torch.argsort(self.perm))                # column perm[j] <- column j
        if self.input_scale is not None:
            w = w / self.input_scale.to(dtype)
        return w

    @property
    def nbytes(self) -> int:
        """Bytes of codes, scales, zero points, input scale and permutation, as given (one code per byte)."""
        held = (self.codes, self.scale, self.zero_point, self.input_scale, self.perm)
        return sum(t.numel() * t.element_size() for t in held if t is not None)


def qparams_from_rows(t: torch.Tensor, spec: QuantSpec, n: int) -> torch.Tensor:
    """A kernel's per-row qparams ((N,), (N, 1) or (N, G)) back in the shape `spec` gives them (QuantizedWeight's
    scale / zero_point): per_tensor rows hold copies of one value, per_channel one per row, per_group G per row."""
    rows = t.reshape(n, -1)
    if spec.granularity == "per_tensor":
        return rows[0, 0].clone()
    if spec.granularity == "per_channel":
        return rows[:, 0].contiguous()
    return rows.contiguous()


def _qweight_problem(q: QuantizedWeight) -> Optional[str]:
    """Why q does not follow its own definition (shapes, dtypes, ranges), or None."""
    spec, codes = q.spec, q.codes
    if codes.dim() != 2 or codes.dtype != spec.storage_dtype:
        return f"codes must be 2-D {spec.storage_dtype}, got {tuple(codes.shape)} {codes.dtype}"
    n, k = codes.shape
    want = _qparam_shape(spec, n, k)
    if want is None:
        return f"granularity {spec.granularity} (group size {spec.group_size}) does not fit {k} columns"
    if tuple(q.scale.shape) != want or tuple(q.zero_point.shape) != want:
        return f"{spec.describe()} needs scale and zero point of shape {want}, got {tuple(q.scale.shape)}, " \
               f"{tuple(q.zero_point.shape)}"
    if not q.scale.is_floating_point() or q.zero_point.dtype != torch.int32:
        return "scale must be floating point and zero_point int32"
    if codes.numel() and not (spec.qmin <= int(codes.min()) and int(codes.max()) <= spec.qmax):
        return f"codes outside [{spec.qmin}, {spec.qmax}]"
    if q.scale.numel() and not bool((q.scale > 0).all()):
        return "scales must be positive"
    return _zero_point_problem(q) or _transform_problem(q, k)


def _qparam_shape(spec: QuantSpec, n: int, k: int) -> Optional[tuple]:
    if spec.granularity == "per_tensor":
        return ()
    if spec.granularity == "per_channel":
        return (n,)
    if spec.granularity == "per_group" and k % spec.group_size == 0:
        return (n, k // spec.group_size)
    return None


def _zero_point_problem(q: QuantizedWeight) -> Optional[str]:
    spec, zp = q.spec, q.zero_point
    if spec.symmetric:
        sym = spec.symmetric_zero_point
        return None if bool((zp == sym).all()) else f"a symmetric spec has zero point {sym}"
    if zp.numel() and not (spec.qmin <= int(zp.min()) and int(zp.max()) <= spec.qmax):
        return f"zero points outside [{spec.qmin}, {spec.qmax}]"
    return None


def _transform_problem(q: QuantizedWeight, k: int) -> Optional[str]:
    s, p = q.input_scale, q.perm
    if s is not None and (tuple(s.shape) != (k,) or not s.is_floating_point() or not bool((s > 0).all())):
        return f"input_scale must be ({k},) positive floats"
    if p is not None and (tuple(p.shape) != (k,) or p.dtype != torch.int64
                          or not torch.equal(torch.sort(p).values, torch.arange(k, device=p.device))):
        return f"perm must be a permutation of range({k}) as int64"
    return None
