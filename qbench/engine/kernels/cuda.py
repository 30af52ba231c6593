"""Kernels for CUDA GPUs behind qbench's own quantization.

int8_int_mm_cuda  W8A8: (M, K) int8 @ (K, N) int8 -> (M, N) int32 via torch._int_mm (cuBLASLt, integer
                  tensor cores), the same zero-point corrections and rescale as the CPU int8_int_mm.
fp8_e4m3_scaled_mm  FP8 e4m3 weights (per output channel) and activations (per token, dynamic) via
                  torch._scaled_mm, float32 accumulation; needs compute capability 8.9 or newer.

The Triton weight-only kernels for decode live in triton_wo.py. Importing this module touches no GPU:
supports() asks torch about CUDA only when it is called, and says why a kernel cannot run.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from qbench.engine.kernels.base import KERNELS, Kernel
from qbench.engine.kernels.codes import quantize_activations
from qbench.engine.kernels.cpu import Int8IntMM, correct_, rescale
from qbench.engine.kernels.state import KernelState
from qbench.errors import KernelUnavailable

INT_MM_MIN_ROWS = 17      # cuBLASLt int8 GEMM in torch._int_mm: M > 16
INT_MM_ALIGN = 8          # ... and K, N positive multiples of 8
FP8_ALIGN = 16            # torch._scaled_mm: K and N multiples of 16
FP8_MIN_CC = (8, 9)       # Ada (8.9), Hopper (9.0) and newer have FP8 tensor cores
E4M3_MAX = 448.0          # largest finite float8_e4m3fn
NOT_CODES = "holds FP8 e4m3 values it scales from a float weight (prepare), not integer codes"


def int_mm_shape_problem(m: int, k: int, n: int) -> Optional[str]:
    """Why torch._int_mm on CUDA rejects an (M, K) @ (K, N) product, or None when it accepts it.

    The rules are the checks of torch's _int_mm_out_cuda: M > 16, K and N positive multiples of 8.
    """
    bad = []
    if m < INT_MM_MIN_ROWS:
        bad.append(f"M={m} rows (needs more than 16)")
    if k <= 0 or k % INT_MM_ALIGN:
        bad.append(f"K={k} (needs a positive multiple of 8)")
    if n <= 0 or n % INT_MM_ALIGN:
        bad.append(f"N={n} (needs a positive multiple of 8)")
    return "torch._int_mm on CUDA cannot take " + ", ".join(bad) if bad else None


def int_mm_rows(m: int) -> int:
    """Rows actually sent to torch._int_mm: M, or 17 for M <= 16 (zero rows appended, results dropped)."""
    return max(m, INT_MM_MIN_ROWS)


def fp8_shape_problem(k: int, n: int) -> Optional[str]:
    """Why torch._scaled_mm rejects a (K, N) FP8 weight, or None."""
    bad = [f"{d}={v} (needs a positive multiple of {FP8_ALIGN})" for d, v in (("K", k), ("N", n))
           if v <= 0 or v % FP8_ALIGN]
    return "torch._scaled_mm cannot take " + ", ".join(bad) if bad else None


def cuda_reason(device: str) -> Optional[str]:
    """None when `device` is a CUDA device this torch can use, else why not."""
    if device.split(":")[0] != "cuda":
        return None  # the caller's device check speaks for other device types
    if not torch.backends.cuda.is_built():
        return f"this torch ({torch.__version__}) is built without CUDA"
    if not torch.cuda.is_available():
        return "no CUDA device is available to torch"
    return None


def capability(device: str) -> tuple[int, int]:
    return torch.cuda.get_device_capability(torch.device(device))


class Int8IntMMCuda(Int8IntMM):
    """W8A8 on the integer tensor cores; pack() is the CPU kernel's (same codes, sums and scales)."""

    name = "int8_int_mm_cuda"
    backend = ("torch._int_mm on CUDA (cuBLASLt int8 x int8 -> int32); K, N must be multiples of 8; "
               "M <= 16 is padded with zero rows to 17")
    devices = ("cuda",)

    def supports(self, w, a, device):
        return super().supports(w, a, device) or cuda_reason(device)

    def shape_reason(self, n, k):
        return int_mm_shape_problem(INT_MM_MIN_ROWS, k, n)  # M is padded at run time; K and N cannot be

    def pack(self, qweight, bias, a, act_qparams=None):
        problem = self.shape_reason(*qweight.shape)
        if problem:
            raise KernelUnavailable(f"{self.name}: {problem}; exclude this module or force kernel: reference")
        return super().pack(qweight, bias, a, act_qparams)

    def forward(self, state, x):
        x = state.prepare_input(x)
        acts = quantize_activations(x, state.a, state.act_qparams)       # primitives.quantize on CUDA tensors
        a8, az = acts.int8_()                                              # (M, K) int8
        m = a8.shape[0]
        rows = int_mm_rows(m)
        w8t = state.w8.t()                                                 # (K, N) column-major view
        problem = int_mm_shape_problem(rows, *w8t.shape)
        if problem:  # pack() checked K and N; this guards against any other caller
            raise ValueError(problem)
        # cuBLASLt takes a row-major (M, K) operand (a no-op copy unless x came in strided)
        a_run = a8.contiguous() if rows == m else torch.cat([a8, a8.new_zeros(rows - m, a8.shape[1])])
        acc = torch._int_mm(a_run, w8t)[:m]                               # (M, N) int32
        correct_(acc, a8, az, state)
        return rescale(acc, acts.scale, state.w_scale, state.bias).to(x.dtype)


def to_e4m3(t: torch.Tensor, dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Scaled float8_e4m3fn codes and float32 scales, one scale per slice along `dim`: t ~= codes * scale."""
    amax = t.detach().float().abs().amax(dim=dim, keepdim=True)
    scale = torch.where(amax > 0, amax / E4M3_MAX, torch.ones_like(amax))
    codes = (t.float() / scale).clamp_(-E4M3_MAX, E4M3_MAX).to(torch.float8_e4m3fn)
    return codes, scale


@dataclass
class Fp8State(KernelState):
    w8: torch.Tensor                 # (N, K) float8_e4m3fn
    w_scale: torch.Tensor            # (1, N) float32
    bias: Optional[torch.Tensor]


class Fp8ScaledMM(Kernel):
    """y = (x8 * sx) @ (w8 * sw)^T + b with e4m3 weights per output channel and e4m3 activations per token.

    Integer schemes cannot ask for it (their weights are integer codes); use it from Python through
    prepare()/forward() or in benchmarks/gemm_cuda.py. It re-derives its weight: prepare() takes a float weight
    and scales it to e4m3 itself; it cannot pack integer codes.
    """

    name = "fp8_e4m3_scaled_mm"
    arithmetic = "fp8"
    rederives_weight = True
    backend = ("torch._scaled_mm (FP8 e4m3 x e4m3 tensor cores, float32 accumulation; per-channel weight and "
               "per-token activation scales applied after the GEMM)")
    devices = ("cuda",)

    def supports(self, w, a, device):
        reason = self._device_reason(device) or cuda_reason(device)
        if reason:
            return reason
        cc = capability(device)
        if cc < FP8_MIN_CC:
            return f"FP8 tensor cores need compute capability 8.9 or newer; {device} has {cc[0]}.{cc[1]}"
        return (f"serves FP8 e4m3 formats only; scheme asks for integer {w.describe()} weights "
                "(schemes cannot express FP8 yet)")

    def shape_reason(self, n, k):
        return fp8_shape_problem(k, n)

    def prepare(self, weight, bias, w=None, a=None, act_qparams=None):
        n, k = weight.shape
        problem = self.shape_reason(n, k)
        if problem:
            raise KernelUnavailable(f"{self.name}: {problem}")
        w8, w_scale = to_e4m3(weight, dim=1)                               # (N, K) e4m3, (N, 1)
        return Fp8State(w8=w8.contiguous(), w_scale=w_scale.reshape(1, n).contiguous(), bias=bias)

    def pack_reason(self, qweight):
        return NOT_CODES

    def pack(self, qweight, bias, a, act_qparams=None):
        raise KernelUnavailable(f"{self.name}: {NOT_CODES}")

    def held_weight(self, state):
        raise KernelUnavailable(f"{self.name}: {NOT_CODES}; its weight is no QuantizedWeight")

    def forward(self, state, x):
        x8, x_scale = to_e4m3(x.contiguous(), dim=1)                       # (M, K) e4m3 row-major, (M, 1)
        one = torch.ones((), device=x.device, dtype=torch.float32)
        # (M, K) row-major @ (K, N) column-major -> (M, N) float32; scales as an epilogue
        acc = torch._scaled_mm(x8, state.w8.t(), scale_a=one, scale_b=one, out_dtype=torch.float32)
        y = acc.mul_(x_scale).mul_(state.w_scale)
        if state.bias is not None:
            y.add_(state.bias)
        return y.to(x.dtype)


for _k in (Int8IntMMCuda(), Fp8ScaledMM()):
    KERNELS.add(_k.name, _k)
