"""Hardware / software environment detection for benchmark provenance.

Nothing heavy (torch, psutil, pynvml) is imported at module import time; all
probes live inside :func:`detect` and each one degrades to ``None`` on failure.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import platform
import sys
from dataclasses import dataclass, field
from typing import Optional

from qbench.hardware.probe import probe
from qbench.hardware.telemetry import NVML_CLOCK_MEM, NVML_CLOCK_SM, Nvml

GIB = 1 << 30

#: ISA flags worth recording (order is the order they appear in ``cpu_flags``).
INTERESTING_FLAGS = (
    "avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni",
    "avx512_bf16", "avx512_fp16", "amx_tile", "amx_int8", "amx_bf16",
    "neon", "asimd", "sve",
)

#: Distributions whose versions are recorded (read via importlib.metadata only).
TRACKED_PACKAGES = (
    "torch", "transformers", "numpy", "pandas", "safetensors", "tokenizers",
    "qbench", "nvidia-ml-py", "pynvml",
)

_GOVERNOR_PATH = "/sys/devices/system/cpu/cpu0/cpufreq/scaling_governor"


@dataclass(frozen=True)
class GpuInfo:
    """One CUDA device. Fields that could not be probed are ``None``."""

    index: int
    name: str
    memory_bytes: Optional[int] = None
    driver: Optional[str] = None
    cuda_runtime: Optional[str] = None
    compute_capability: Optional[str] = None  # e.g. "8.9"
    power_limit_w: Optional[float] = None
    sm_clock_mhz: Optional[int] = None
    mem_clock_mhz: Optional[int] = None


@dataclass(frozen=True)
class HardwareInfo:
    """Snapshot of the machine and software stack a benchmark ran on."""

    cpu_model: str
    cpu_arch: str
    cpu_flags: tuple = ()
    physical_cores: Optional[int] = None
    logical_cores: int = 1
    ram_bytes: int = 0
    os: str = ""
    python: str = ""
    packages: dict = field(default_factory=dict, hash=False)
    torch_threads: Optional[int] = None
    torch_cpu_capability: Optional[str] = None
    gpus: tuple = ()
    cpu_freq_mhz: Optional[tuple] = None  # (current, max); either may be None
    cpu_governor: Optional[str] = None
    allocator: Optional[str] = None       # the C allocator as this process uses it (hardware.allocator)

    def to_dict(self) -> dict:
        """Return a JSON-serialisable dict (tuples become lists)."""
        d = dataclasses.asdict(self)
        d["cpu_flags"] = list(self.cpu_flags)
        d["gpus"] = [dataclasses.asdict(g) for g in self.gpus]
        d["packages"] = dict(self.packages)
        d["cpu_freq_mhz"] = None if self.cpu_freq_mhz is None else list(self.cpu_freq_mhz)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "HardwareInfo":
        """Inverse of :meth:`to_dict`; unknown keys are ignored."""
        names = {f.name for f in dataclasses.fields(cls)}
        kw = {k: v for k, v in d.items() if k in names}
        kw["cpu_flags"] = tuple(kw.get("cpu_flags") or ())
        gpu_names = {f.name for f in dataclasses.fields(GpuInfo)}
        kw["gpus"] = tuple(
            g if isinstance(g, GpuInfo)
            else GpuInfo(**{k: v for k, v in g.items() if k in gpu_names})
            for g in kw.get("gpus") or ()
        )
        kw["packages"] = dict(kw.get("packages") or {})
        if kw.get("cpu_freq_mhz") is not None:
            kw["cpu_freq_mhz"] = tuple(kw["cpu_freq_mhz"])
        return cls(**kw)

    def summary(self) -> str:
        """One-line human-readable description of the machine."""
        cores = self.physical_cores or self.logical_cores
        isa = [f for f in ("amx_tile", "avx512_fp16", "avx512_bf16", "avx512_vnni",
                           "avx_vnni", "avx512f", "avx2", "sve", "asimd", "neon")
               if f in self.cpu_flags][:1]
        gpu = ", ".join(g.name + (f" {g.memory_bytes / GIB:.0f} GiB" if g.memory_bytes else "")
                        for g in self.gpus) or "no GPU"
        parts = [self.cpu_model or "unknown CPU", f"{cores} cores",
                 f"{self.ram_bytes / GIB:.1f} GiB", isa[0] if isa else "baseline ISA", gpu]
        return " | ".join(parts)


def parse_cpuinfo(text: str) -> tuple:
    """Parse ``/proc/cpuinfo`` text into ``(model, flags)``.

    ``model`` is the first "model name" (x86) / "Model"/"Hardware" (ARM) value or
    ``""``; ``flags`` is a tuple of the :data:`INTERESTING_FLAGS` present in the
    first "flags" (x86) or "Features" (ARM) line, in canonical order.
    """
    model, flag_set = "", None
    fallback_model = ""
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if not sep:
            continue
        key, value = key.strip().lower(), value.strip()
        if key == "model name" and not model:
            model = value
        elif key in ("hardware", "model") and not fallback_model and not value.isdigit():
            fallback_model = value
        elif key in ("flags", "features") and flag_set is None:
            flag_set = set(value.split())
    flag_set = flag_set or set()
    return (model or fallback_model,
            tuple(f for f in INTERESTING_FLAGS if f in flag_set))


def _read(path: str) -> str:
    with open(path, encoding="utf-8", errors="replace") as fh:
        return fh.read()


def _packages() -> dict:
    from importlib import metadata
    out = {}
    for name in TRACKED_PACKAGES:
        ver = probe(lambda n=name: metadata.version(n))
        if ver:
            out[name] = ver
    return out


def _cpu_freq() -> Optional[tuple]:
    import psutil
    f = psutil.cpu_freq()
    if f is None:
        return None
    cur = float(f.current) if f.current else None
    mx = float(f.max) if f.max else None
    return None if cur is None and mx is None else (cur, mx)


def _ram_bytes() -> int:
    r = probe(lambda: int(__import__("psutil").virtual_memory().total))
    if r is None:
        r = probe(lambda: os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"), 0)
    return int(r or 0)


def _nvml_gpus(gpus: list, enumerate_all: bool) -> list:
    """`gpus` with driver, power limit and max clocks from NVML; with `enumerate_all` and no GPUs from torch,
    NVML lists the devices itself. Without pynvml or a driver, `gpus` as given."""
    with Nvml() as nvml:
        if not nvml.ok:
            return gpus
        nv, text = nvml.nv, nvml.text
        driver = probe(lambda: text(nv.nvmlSystemGetDriverVersion()))
        if enumerate_all and not gpus:
            gpus = [_nvml_device(nvml, i) for i in range(probe(nv.nvmlDeviceGetCount, 0))]
        out = []
        for g in gpus:
            h = probe(lambda g=g: nvml.handle(g.index))
            clock = lambda kind, h=h: int(nv.nvmlDeviceGetMaxClockInfo(h, kind))  # noqa: E731
            out.append(dataclasses.replace(
                g, driver=driver,
                power_limit_w=probe(lambda: nv.nvmlDeviceGetPowerManagementLimit(h) / 1000.0),  # mW -> W
                sm_clock_mhz=probe(lambda: clock(NVML_CLOCK_SM)),
                mem_clock_mhz=probe(lambda: clock(NVML_CLOCK_MEM)),
            ))
        return out


def _nvml_device(nvml: Nvml, index: int) -> GpuInfo:
    """Name, memory and compute capability of NVML device `index` (when torch is not asked)."""
    nv, h = nvml.nv, nvml.handle(index)
    return GpuInfo(
        index=index, name=probe(lambda: nvml.text(nv.nvmlDeviceGetName(h)), "unknown"),
        memory_bytes=probe(lambda: int(nv.nvmlDeviceGetMemoryInfo(h).total)),
        compute_capability=probe(lambda: "%d.%d" % tuple(nv.nvmlDeviceGetCudaComputeCapability(h))))


def _torch_gpus(torch) -> list:
    if not torch.cuda.is_available():
        return []
    out = []
    for i in range(torch.cuda.device_count()):
        p = probe(lambda i=i: torch.cuda.get_device_properties(i))
        if p is None:
            continue
        out.append(GpuInfo(index=i, name=str(p.name), memory_bytes=int(p.total_memory),
                           cuda_runtime=torch.version.cuda,
                           compute_capability=f"{p.major}.{p.minor}"))
    return out


def detect(include_torch: bool = True) -> HardwareInfo:
    """Probe the current machine. Never raises; unreadable fields become ``None``.

    With ``include_torch=False`` torch is not imported (torch_threads /
    torch_cpu_capability are ``None``; GPUs are listed via pynvml if available).
    """
    text = probe(lambda: _read("/proc/cpuinfo"), "")
    model, flags = parse_cpuinfo(text)
    if not model:
        model = probe(platform.processor, "") or platform.machine() or "unknown"

    torch = probe(lambda: __import__("torch")) if include_torch else None
    gpus = probe(lambda: _torch_gpus(torch), []) if torch is not None else []
    gpus = probe(lambda: _nvml_gpus(list(gpus), enumerate_all=torch is None), gpus)

    governor = probe(lambda: _read(_GOVERNOR_PATH).strip() or None)
    return HardwareInfo(
        cpu_model=model,
        cpu_arch=probe(platform.machine, "") or "",
        cpu_flags=flags,
        physical_cores=probe(lambda: __import__("psutil").cpu_count(logical=False)),
        logical_cores=probe(os.cpu_count) or 1,
        ram_bytes=_ram_bytes(),
        os=probe(platform.platform, "") or "",
        python=platform.python_version() or sys.version.split()[0],
        packages=probe(_packages, {}),
        torch_threads=probe(torch.get_num_threads) if torch is not None else None,
        torch_cpu_capability=(probe(lambda: str(torch.backends.cpu.get_cpu_capability()))
                              if torch is not None else None),
        gpus=tuple(gpus),
        cpu_freq_mhz=probe(_cpu_freq),
        cpu_governor=governor,
        allocator=probe(_allocator),
    )


def _allocator() -> str:
    from qbench.hardware.allocator import describe

    return describe()


def fingerprint(info: HardwareInfo) -> str:
    """Stable 8-hex-char machine id (ignores package versions, clocks, governor)."""
    gpus = sorted((g.name, round((g.memory_bytes or 0) / GIB)) for g in info.gpus)
    key = [info.cpu_model, info.cpu_arch, info.logical_cores,
           round(info.ram_bytes / GIB), gpus]
    return hashlib.sha256(json.dumps(key).encode()).hexdigest()[:8]


def _gpu_for(info: HardwareInfo, device: str) -> Optional[GpuInfo]:
    idx = probe(lambda: int(device.split(":", 1)[1]), 0) if ":" in device else 0
    for g in info.gpus:
        if g.index == idx:
            return g
    return None


def has_fast_fp16(info: HardwareInfo, device: str) -> tuple:
    """``(fast, reason)``: whether fp16 matmul is hardware-accelerated on ``device``."""
    if device.startswith("cuda"):
        return True, "tensor cores"
    if device == "cpu":
        if "avx512_fp16" in info.cpu_flags:
            return True, "CPU has AVX512-FP16"
        if "amx_tile" in info.cpu_flags:
            return True, "CPU has AMX"
        return False, "CPU lacks AVX512-FP16/AMX: fp16 matmul is emulated and slow"
    return False, f"unknown device {device!r}: assuming fp16 is not accelerated"


def has_fast_bf16(info: HardwareInfo, device: str) -> tuple:
    """``(fast, reason)``: whether bf16 matmul is hardware-accelerated on ``device``."""
    if device.startswith("cuda"):
        g = _gpu_for(info, device)
        cc = probe(lambda: tuple(int(x) for x in g.compute_capability.split(".")))
        if cc is None:
            return False, f"compute capability of {device} unknown"
        if cc >= (8, 0):
            return True, f"compute capability {g.compute_capability} >= 8.0 (bf16 tensor cores)"
        return False, f"compute capability {g.compute_capability} < 8.0: no bf16 tensor cores"
    if device == "cpu":
        if "avx512_bf16" in info.cpu_flags:
            return True, "CPU has AVX512-BF16"
        if "amx_bf16" in info.cpu_flags:
            return True, "CPU has AMX-BF16"
        return False, "CPU lacks AVX512-BF16/AMX-BF16: bf16 matmul is emulated and slow"
    return False, f"unknown device {device!r}: assuming bf16 is not accelerated"
