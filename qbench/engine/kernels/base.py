"""The Kernel interface and its registry."""
from __future__ import annotations

import dataclasses
from typing import Literal, Optional

import torch

from qbench.engine.kernels.state import KernelState
from qbench.engine.methods import rtn
from qbench.engine.primitives import QuantSpec
from qbench.engine.tensors import QuantizedWeight
from qbench.errors import KernelUnavailable
from qbench.registry import Registry

# What a kernel multiplies in: "integer" (int8 x int8 -> int32, or uint8 x int8), "fp32" (float32 products of
# dequantized weights and float32 activations), "float" (products in the activations' own float dtype), "fp8"
# (e4m3 x e4m3 tensor cores). An emulated kernel (emulated = True) keeps the default and computes in float.
Arithmetic = Literal["integer", "fp32", "float", "fp8"]


class Kernel:
    """A linear-op implementation: pack() a QuantizedWeight once, then forward() per call.

    A kernel lays out the codes, scales and zero points it is given and never chooses them; held_weight() reads
    them back from what it keeps. Every kernel honours a QuantizedWeight's input scale and permutation by
    transforming x first (KernelState.prepare_input); pack_reason() is where a kernel that cannot hold a given
    QuantizedWeight says why. The exceptions are the kernels that re-derive their weight from a float one
    (rederives_weight): torch_ao_dynamic (torch.ao's own observer chooses its codes) and the FP8 kernel.
    """

    name = "?"
    backend = "?"          # what does the arithmetic, e.g. "torch._int_mm (oneDNN)"
    emulated = False       # True when integers are turned back into floats before the matmul
    arithmetic: Arithmetic = "integer"
    devices = ("cpu",)     # device types served
    rederives_weight = False  # True: quantizes a float weight itself (prepare); quantize_ hands it the float weight
    formats = ("int",)     # weight formats served (engine.formats): affine integers, or also value tables

    def format_reason(self, w: QuantSpec) -> Optional[str]:
        """None when this kernel runs weights of w's format, else why not (checked before supports())."""
        return None if w.format in self.formats else f"{self.name} runs {', '.join(self.formats)} weights, " \
            f"not {w.format}"

    def supports(self, w: QuantSpec, a: Optional[QuantSpec], device: str) -> Optional[str]:
        """None when this kernel can run the configuration, else the reason it cannot."""
        raise NotImplementedError

    def shape_reason(self, n: int, k: int) -> Optional[str]:
        """None when this kernel can hold an (N, K) weight, else why not; checked before any module is swapped."""
        return None

    def pack_reason(self, qweight: QuantizedWeight) -> Optional[str]:
        """None when this kernel can pack this particular QuantizedWeight (its spec being supported), else why
        not. Input scales and permutations are applied to x by every kernel here, so nothing declines today."""
        return None

    def pack(self, qweight: QuantizedWeight, bias: Optional[torch.Tensor], a: Optional[QuantSpec],
             act_qparams: Optional[tuple] = None) -> KernelState:
        """Lay out qweight's codes and qparams (and keep bias (N,) float32, the activation spec and static
        activation qparams) for forward()."""
        raise NotImplementedError

    def prepare(self, weight: torch.Tensor, bias: Optional[torch.Tensor], w: QuantSpec,
                a: Optional[QuantSpec] = None, act_qparams: Optional[tuple] = None) -> KernelState:
        """From a float (N, K) weight: pack(rtn(weight, w)), the round-to-nearest codes (kept for callers that
        hold float weights; kernels with rederives_weight quantize the float weight their own way)."""
        return self.pack(rtn(weight, w), bias, a, act_qparams)

    def held_weight(self, state: KernelState) -> QuantizedWeight:
        """The QuantizedWeight this state holds, read back from the kernel's own tensors (what runs)."""
        raise NotImplementedError

    def forward(self, state: KernelState, x: torch.Tensor) -> torch.Tensor:
        """x (M, K) float -> (M, N) float in x's dtype."""
        raise NotImplementedError

    def join(self, states: list[KernelState]) -> Optional[KernelState]:
        """One state whose forward computes the outputs of `states` side by side (their N concatenated), for
        sibling layers that read the same input (a layer's q, k and v projections); None where this kernel cannot
        (the default). The parts' weight codes become views of the joined state's, so the codes stay in memory
        once and each part still runs on its own, with the same results. The joined state's held_weight is the
        parts' rows one after another (per tensor specs become per channel: each part keeps its own scale)."""
        return None

    def bind(self, state: KernelState, x: torch.Tensor, y: torch.Tensor):
        """A function of no arguments that computes forward(state, x) into y, for buffers a loop fills and reads
        again and again with the same shapes (qbench's decoder forward's decode step): x (M, K) and y (M, N)
        contiguous float32, fixed for the function's life, as is the thread count (torch's at bind time). None
        where this kernel has no such path (the default); the caller then calls forward and copies."""
        return None

    def state_nbytes(self, state: KernelState) -> int:
        """Bytes the packed state keeps for the weight: its held tensors (an opaque library object overrides)."""
        return sum(t.numel() * t.element_size() for t in state.held_tensors().values())

    def _device_reason(self, device: str) -> Optional[str]:
        kind = device.split(":")[0]
        return None if kind in self.devices else f"{self.name} runs on {', '.join(self.devices)}, not {kind}"

    def _require(self, reason: Optional[str]) -> None:
        """Raise ValueError naming this kernel when pack() is handed what it cannot hold."""
        if reason:
            raise ValueError(f"{self.name}: {reason}")


def bindable(x: torch.Tensor, y: torch.Tensor, k: int, n: int) -> bool:
    """x (M, k) and y (M, n) are contiguous float32 CPU tensors: buffers Kernel.bind can fix a C call to."""
    return all(t.dtype == torch.float32 and t.is_cpu and t.is_contiguous() and t.dim() == 2 for t in (x, y)) \
        and tuple(x.shape) == (x.shape[0], k) and tuple(y.shape) == (x.shape[0], n)


def joined_spec(spec: QuantSpec) -> QuantSpec:
    """The weight spec of joined parts (Kernel.join): per channel where each part had one scale, else spec."""
    return dataclasses.replace(spec, granularity="per_channel") if spec.granularity == "per_tensor" else spec


def integer_matmul_reason(w: QuantSpec, a: Optional[QuantSpec]) -> Optional[str]:
    """Why a W8A8 kernel that factors the scales out of one integer matmul (per-tensor or per-token
    activations, per-tensor or per-channel weights) cannot run this configuration; None when it can."""
    if a is None:
        return "needs quantized activations (weight-only schemes use other kernels)"
    if a.granularity not in ("per_tensor", "per_token"):
        return f"activations must be per_tensor or per_token, not {a.granularity}"
    if w.granularity not in ("per_tensor", "per_channel"):
        return "per_group weight scales do not factor out of an integer matmul"
    return None


KERNELS: Registry[Kernel] = Registry("kernel")

# Preference order for `kernel: auto`: CUDA-only kernels first (on CPU they decline, so the CPU order below is
# unchanged); then exact integer CPU kernels (fastest first, as measured by benchmarks/gemm.py), the native
# weight-only kernels, the emulated ones last; reference serves everything.
CUDA_PREFERENCE = ("int8_int_mm_cuda", "triton_int4_wo", "triton_int8_wo")
PREFERENCE = CUDA_PREFERENCE + ("w4a8_native", "int8_native", "int8_onednn", "int8_int_mm", "int4_wo_native",
                                "int8_wo_native", "int4_packed", "int8_weight_only", "reference")


def select_kernel(w: QuantSpec, a: Optional[QuantSpec], device: str, forced: str = "auto",
                  shapes: tuple = ()) -> Kernel:
    """The kernel that runs this configuration; raises KernelUnavailable for an impossible force.
    With `shapes` ((N, K) of the linear weights it will hold), `auto` also passes over a kernel that cannot
    hold one of them (a forced kernel is held to them by the caller, which names the misfit)."""
    if forced != "auto":
        k = KERNELS.get(forced)
        reason = k.format_reason(w) or k.supports(w, a, device)
        if reason:
            raise KernelUnavailable(f"kernel '{forced}' cannot run {w.describe()} weights"
                                    f"{' / ' + a.describe() + ' activations' if a else ''}: {reason}")
        return k
    reasons = []
    for name in PREFERENCE:
        k = KERNELS.get(name)
        reason = (k.format_reason(w) or k.supports(w, a, device)
                  or next(filter(None, (k.shape_reason(*nk) for nk in shapes)), None))
        if reason is None:
            return k
        reasons.append(f"{name}: {reason}")
    raise KernelUnavailable("no kernel supports this configuration; " + "; ".join(reasons))
