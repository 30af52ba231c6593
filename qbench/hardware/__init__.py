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
from qbench.hardware.provenance import git_commit

__all__ = ["GpuInfo", "HardwareInfo", "detect", "fingerprint", "git_commit", "has_fast_bf16",
           "has_fast_fp16", "parse_cpuinfo"]
