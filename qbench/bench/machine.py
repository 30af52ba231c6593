"""What this machine can do, measured: the cache a repeated read finds, the int8 and fp32 GEMM rates and the
memory bandwidth."""
from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Callable

import torch


def l3_bytes() -> int:
    for idx in range(8):
        p = Path(f"/sys/devices/system/cpu/cpu0/cache/index{idx}")
        try:
            if (p / "level").read_text().strip() == "3":
                size = (p / "size").read_text().strip().upper()
                mult = {"K": 1 << 10, "M": 1 << 20}.get(size[-1], 1)
                return int(size.rstrip("KM")) * mult
        except OSError:
            continue
    return 32 << 20


def effective_cache_bytes(quick: bool) -> int:
    """The working set up to which repeated reads still run faster than memory: on a shared or virtual
    machine the cache a process really gets can be far below the L3 it reports."""
    if quick:
        return 4 << 20
    def gbs(nbytes):
        buf = torch.ones(nbytes // 4)
        return nbytes / best_time(lambda: buf.sum(), 4) / 1e9
    dram = gbs(1 << 30)
    cached = 8 << 20
    for mib in (16, 32, 64, 128, 256):
        if mib << 20 > 2 * l3_bytes():
            break
        if gbs(mib << 20) > 1.3 * dram:
            cached = mib << 20
    return cached


def best_time(fn: Callable, reps: int) -> float:
    fn()
    best = math.inf
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def measure_ceilings(quick: bool) -> dict:
    """Best rates this machine reaches: int8 GEMM (oneDNN uint8 x int8, VNNI where present), fp32 GEMM
    (torch/MKL) and memory read bandwidth (a float32 sum over a buffer far larger than the L3)."""
    m, k, n = (256, 512, 512) if quick else (1024, 4096, 4096)
    reps = 2 if quick else 4
    out = {}
    a = torch.randn(m, k)
    b = torch.randn(k, n)
    out["fp32_gflops"] = 2 * m * k * n / best_time(lambda: torch.mm(a, b), reps) / 1e9
    try:
        u8 = torch.randint(0, 256, (m, k), dtype=torch.uint8)
        w8 = torch.randint(-127, 128, (n, k), dtype=torch.int8)
        packed = torch.ops.onednn.qlinear_prepack(w8, None)
        ws, wz = torch.full((n,), 0.01), torch.zeros(n, dtype=torch.int64)
        t = best_time(lambda: torch.ops.onednn.qlinear_pointwise(u8, 0.02, 128, packed, ws, wz, None, 1.0, 0,
                                                                 torch.float32, "none", [], ""), reps)
        out["int8_gops"] = 2 * m * k * n / t / 1e9
        out["int8_source"] = f"oneDNN u8 x s8 GEMM {m}x{k}x{n}"
    except (RuntimeError, AttributeError) as e:
        a8 = torch.randint(-127, 128, (m, k), dtype=torch.int8)
        w8 = torch.randint(-127, 128, (n, k), dtype=torch.int8)
        out["int8_gops"] = 2 * m * k * n / best_time(lambda: torch._int_mm(a8, w8.t()), reps) / 1e9
        out["int8_source"] = f"torch._int_mm {m}x{k}x{n} (oneDNN qlinear unavailable: {str(e)[:60]})"
    nbytes = (64 << 20) if quick else max(4 * l3_bytes(), 256 << 20)
    buf = torch.ones(nbytes // 4)
    out["mem_gbs"] = nbytes / best_time(lambda: buf.sum(), reps) / 1e9
    out["mem_bytes"] = nbytes
    return out

