"""Triton weight-only kernels for decode: fused dequantize + dot, reading the stored codes once per tile.

triton_int8_wo  5- to 8-bit weights, one code per byte; per_tensor, per_channel or per_group scales.
triton_int4_wo  up to 4-bit weights, two codes per byte (qbench's int4 packing); any granularity.

Activations stay float (the x dtype: fp16/bf16 use the tensor cores; float32 is computed in IEEE float32,
not TF32). The programs are in triton_wo_jit.py, imported only when a kernel runs, so importing this
module needs neither triton nor a GPU. They run on CUDA tensors, or on CPU tensors in Triton's
interpreter (TRITON_INTERPRET=1), which the tests use; any other case raises, nothing falls back.
"""
from __future__ import annotations

import importlib
import importlib.util
import os
from dataclasses import dataclass
from typing import Optional

import torch

from qbench.engine.kernels.base import KERNELS, Kernel
from qbench.engine.kernels.cuda import cuda_reason
from qbench.engine.kernels.state import KernelState
from qbench.engine.primitives import QuantSpec
from qbench.engine.tensors import PackedWeight, QuantizedWeight, qparams_from_rows, unpack_int4
from qbench.errors import KernelUnavailable

# Tile sizes: BLOCK_M 16 covers decode (M <= 16) in one row block so each weight tile is read once;
# larger M uses 64-row blocks. Fixed, not autotuned: no GPU has timed them yet.
DECODE_ROWS = 16


def triton_reason() -> Optional[str]:
    """None when triton can be imported, else why not (checked without importing it)."""
    if importlib.util.find_spec("triton") is None:
        return "triton is not installed (pip install triton, or qbench-cards[nvidia])"
    return None


def interpreting() -> bool:
    """Whether Triton programs run in the CPU interpreter (TRITON_INTERPRET=1)."""
    return os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "on", "yes")


def jit_module():
    """The module holding the @triton.jit programs (imports triton on first use)."""
    reason = triton_reason()
    if reason:
        raise KernelUnavailable(reason)
    return importlib.import_module("qbench.engine.kernels.triton_wo_jit")


def group_params(scale: torch.Tensor, zero_point: torch.Tensor, spec: QuantSpec, n: int, k: int,
                 offset: int = 0) -> tuple[torch.Tensor, torch.Tensor, int, int]:
    """Scales and zero points as float32 (N, G) tensors with GS columns per group: (s, z - offset, G, GS)."""
    if spec.granularity == "per_group":
        g = spec.group_size
        s, z = scale.reshape(n, k // g), zero_point.reshape(n, k // g)
    else:  # per_tensor: one value broadcast to every row; per_channel: one per row
        s, z, g = scale.reshape(-1, 1).expand(n, 1), zero_point.reshape(-1, 1).expand(n, 1), k
    return s.float().contiguous(), (z.float() - offset).contiguous(), s.shape[1], g


@dataclass
class TritonState(KernelState):
    spec: QuantSpec
    codes: torch.Tensor              # (N, K) int8/uint8 codes, or (N, ceil(K/2)) uint8 two per byte (pack_int4)
    scale: torch.Tensor              # (N, G) float32
    zero: torch.Tensor               # (N, G) float32 zero point (minus qmin for packed nibbles)
    groups: int                      # G
    group_cols: int                  # GS, columns per group
    shape: tuple[int, int]           # (N, K)
    bias: Optional[torch.Tensor]     # (N,) float32 contiguous


class _TritonWeightOnly(Kernel):
    devices = ("cuda",)
    arithmetic = "float"  # dot products in the activations' dtype (fp16/bf16 tensor cores, or IEEE fp32)
    packed = False

    def supports(self, w, a, device):
        if a is not None:
            return "weight-only kernel; activations are quantized in this scheme"
        return self._bits_reason(w) or self._device_reason(device) or cuda_reason(device) or triton_reason()

    def _bits_reason(self, w: QuantSpec) -> Optional[str]:
        raise NotImplementedError

    def forward(self, state, x):
        x = state.prepare_input(x).contiguous()
        if x.device.type != "cuda" and not interpreting():
            raise KernelUnavailable(f"{self.name} runs on CUDA tensors (or on CPU under TRITON_INTERPRET=1), "
                                    f"got a {x.device.type} tensor")
        n, k = state.shape
        m = x.shape[0]
        y = torch.empty(m, n, dtype=x.dtype, device=x.device)
        bias = state.bias
        block_m = DECODE_ROWS if m <= DECODE_ROWS else 64
        block_n = 32 if m <= DECODE_ROWS else 64
        grid = (triton_cdiv(m, block_m), triton_cdiv(n, block_n))
        args = (x, state.codes, state.scale, state.zero, state.scale if bias is None else bias, y,
                m, n, k, state.groups, state.group_cols, x.stride(0), y.stride(0))
        flags = dict(PER_ROW=state.groups == 1, HAS_BIAS=bias is not None, IEEE=x.dtype == torch.float32,
                     BLOCK_M=block_m, BLOCK_N=block_n)
        jit = jit_module()
        if self.packed:
            jit.wo_int4_kernel[grid](*args, **flags, BLOCK_KB=32)
        else:
            jit.wo_int8_kernel[grid](*args, **flags, BLOCK_K=64)
        return y

    def _state(self, qweight: QuantizedWeight, codes: torch.Tensor, bias, offset: int = 0) -> TritonState:
        self._require(self._bits_reason(qweight.spec))
        n, k = qweight.shape
        s, z, groups, gs = group_params(qweight.scale, qweight.zero_point, qweight.spec, n, k, offset)
        return TritonState(spec=qweight.spec, codes=codes, scale=s, zero=z, groups=groups, group_cols=gs,
                           shape=(n, k), bias=None if bias is None else bias.float().contiguous(),
                           pre=qweight.input_transform())

    @staticmethod
    def _qparams(state, offset: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """(scale, zero point) in the spec's own shape from the (N, G) float32 tensors the kernel reads."""
        n = state.shape[0]
        zp = torch.round(state.zero + offset).to(torch.int32)
        return qparams_from_rows(state.scale, state.spec, n), qparams_from_rows(zp, state.spec, n)


def triton_cdiv(a: int, b: int) -> int:
    return -(-a // b)


class TritonInt8WeightOnly(_TritonWeightOnly):
    name = "triton_int8_wo"
    backend = "Triton: int8 codes (one per byte) dequantized in registers, fused with the dot (fp32 accumulate)"

    def _bits_reason(self, w):
        return None if w.bits > 4 else f"{w.bits}-bit weights are packed two per byte: use triton_int4_wo"

    def pack(self, qweight, bias, a=None, act_qparams=None):
        return self._state(qweight, qweight.codes.contiguous(), bias)

    def held_weight(self, state):
        return state.quantized(state.codes, *self._qparams(state), state.spec)


class TritonInt4WeightOnly(_TritonWeightOnly):
    name = "triton_int4_wo"
    backend = ("Triton: two 4-bit codes per byte unpacked and dequantized in registers, fused with the dot "
               "(fp32 accumulate)")
    packed = True

    def _bits_reason(self, w):
        return None if w.bits <= 4 else f"holds at most 4-bit weights, scheme has {w.bits}"

    def pack(self, qweight, bias, a=None, act_qparams=None):
        packed = PackedWeight.from_qtensor(qweight.qtensor(), pack4=True)  # (N, ceil(K/2)) uint8
        return self._state(qweight, packed.codes, bias, offset=qweight.spec.qmin)

    def held_weight(self, state):
        spec = state.spec
        codes = unpack_int4(state.codes, state.shape[1], spec).to(spec.storage_dtype)
        return state.quantized(codes, *self._qparams(state, spec.qmin), spec)


for _k in (TritonInt8WeightOnly(), TritonInt4WeightOnly()):
    KERNELS.add(_k.name, _k)
