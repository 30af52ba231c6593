"""Kernel registry: each kernel says which (weight spec, activation spec, device) it serves.

Selection never falls back silently: `auto` picks the first kernel in preference order that
supports the configuration and records its name; a forced kernel that cannot run raises.
"""
from __future__ import annotations

from qbench.engine.kernels.base import Kernel, KERNELS, select_kernel
from qbench.engine.kernels import cpu, cuda, decode, fused, onednn, reference, torch_ao, triton_wo  # noqa: F401  (importing registers them)

__all__ = ["Kernel", "KERNELS", "select_kernel"]
