"""Hardware detection (no heavy imports at package import time)."""
from qbench.hardware.detect import (
    GpuInfo,
    HardwareInfo,
    detect,
    fingerprint,
    has_fast_bf16,
    has_fast_fp16,
    parse_cpuinfo,
)

__all__ = ["GpuInfo", "HardwareInfo", "detect", "fingerprint", "has_fast_bf16",
           "has_fast_fp16", "parse_cpuinfo"]
