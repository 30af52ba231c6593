"""The Kernel interface and its registry."""
from __future__ import annotations

from typing import Any, Optional

import torch

from qbench.engine.primitives import QuantSpec
from qbench.errors import KernelUnavailable
from qbench.registry import Registry


class Kernel:
    """A linear-op implementation: prepare() once from a float weight, then forward() per call."""

    name = "?"
    backend = "?"          # what does the arithmetic, e.g. "torch._int_mm (oneDNN)"
    emulated = False       # True when integers are turned back into floats before the matmul
    arithmetic = "integer"  # what a non-emulated kernel multiplies in: "integer", or "fp32" for weight-only
    devices = ("cpu",)     # device types served

    def supports(self, w: QuantSpec, a: Optional[QuantSpec], device: str) -> Optional[str]:
        """None when this kernel can run the configuration, else the reason it cannot."""
        raise NotImplementedError

    def shape_reason(self, n: int, k: int) -> Optional[str]:
        """None when this kernel can hold an (N, K) weight, else why not; checked before any module is swapped."""
        return None

    def prepare(self, weight: torch.Tensor, bias: Optional[torch.Tensor], w: QuantSpec,
                a: Optional[QuantSpec], act_qparams: Optional[tuple] = None) -> dict[str, Any]:
        raise NotImplementedError

    def forward(self, state: dict[str, Any], x: torch.Tensor) -> torch.Tensor:
        """x (M, K) float -> (M, N) float in x's dtype."""
        raise NotImplementedError

    def state_nbytes(self, state: dict[str, Any]) -> Optional[int]:
        """Bytes the prepared state keeps, where its tensors cannot be summed (an opaque library object);
        None: count the state's tensors."""
        return None

    def _device_reason(self, device: str) -> Optional[str]:
        kind = device.split(":")[0]
        return None if kind in self.devices else f"{self.name} runs on {', '.join(self.devices)}, not {kind}"


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
PREFERENCE = CUDA_PREFERENCE + ("int8_native", "int8_onednn", "int8_int_mm", "int4_wo_native", "int8_wo_native",
                                "int4_packed", "int8_weight_only", "reference")


def select_kernel(w: QuantSpec, a: Optional[QuantSpec], device: str, forced: str = "auto",
                  shapes: tuple = ()) -> Kernel:
    """The kernel that runs this configuration; raises KernelUnavailable for an impossible force.
    With `shapes` ((N, K) of the linear weights it will hold), `auto` also passes over a kernel that cannot
    hold one of them (a forced kernel is held to them by the caller, which names the misfit)."""
    if forced != "auto":
        k = KERNELS.get(forced)
        reason = k.supports(w, a, device)
        if reason:
            raise KernelUnavailable(f"kernel '{forced}' cannot run {w.describe()} weights"
                                    f"{' / ' + a.describe() + ' activations' if a else ''}: {reason}")
        return k
    reasons = []
    for name in PREFERENCE:
        k = KERNELS.get(name)
        reason = k.supports(w, a, device) or next(filter(None, (k.shape_reason(*nk) for nk in shapes)), None)
        if reason is None:
            return k
        reasons.append(f"{name}: {reason}")
    raise KernelUnavailable("no kernel supports this configuration; " + "; ".join(reasons))
