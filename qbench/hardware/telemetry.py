"""GPU telemetry through NVML (pynvml): per-GPU snapshots, clock-throttle reasons, the energy counter.

Nothing is imported at module import. Every probe is separate and degrades to None (a GPU or driver that
lacks a counter, e.g. the energy counter before Volta, leaves that field None and the rest intact).
Snapshots are plain JSON-ready dicts so a cell record can carry them as they are.
"""
from __future__ import annotations

import time
from typing import Optional

from qbench.hardware.probe import probe
from qbench.sampling import PeriodicSampler

# NVML clock event ("throttle") reasons: bit -> name (nvmlClocksEventReason* / nvmlClocksThrottleReason*)
THROTTLE_REASONS = (
    (0x1, "gpu_idle"),
    (0x2, "applications_clocks_setting"),
    (0x4, "sw_power_cap"),
    (0x8, "hw_slowdown"),
    (0x10, "sync_boost"),
    (0x20, "sw_thermal_slowdown"),
    (0x40, "hw_thermal_slowdown"),
    (0x80, "hw_power_brake_slowdown"),
    (0x100, "display_clock_setting"),
)
# Reasons that mean the clocks were pulled below what the load asked for (idle, user settings and
# sync boost do not)
SLOWDOWNS = ("sw_power_cap", "hw_slowdown", "sw_thermal_slowdown", "hw_thermal_slowdown",
             "hw_power_brake_slowdown")
NVML_CLOCK_SM, NVML_CLOCK_MEM, NVML_TEMPERATURE_GPU = 1, 2, 0  # NVML enum values


def decode_throttle(mask: Optional[int]) -> Optional[list[str]]:
    """NVML reason bits -> names, in bit order; bits NVML may add later appear as 'unknown_0x...'."""
    if mask is None:
        return None
    names, known = [], 0
    for bit, name in THROTTLE_REASONS:
        known |= bit
        if mask & bit:
            names.append(name)
    rest = int(mask) & ~known
    bit = 1
    while rest:
        if rest & bit:
            names.append(f"unknown_{bit:#x}")
            rest &= ~bit
        bit <<= 1
    return names


def slowdowns(names: Optional[list[str]]) -> list[str]:
    """The reasons in `names` that slowed the GPU down (see SLOWDOWNS)."""
    return [n for n in names or [] if n in SLOWDOWNS or n.startswith("unknown_")]


def energy_delta_j(before: Optional[dict], after: Optional[dict]) -> Optional[float]:
    """Joules between two snapshots from NVML's total energy counter (mJ); None when either lacks it.

    A counter that went backwards (driver reload between the snapshots) gives None, not a negative energy.
    """
    e0, e1 = (s.get("energy_mj") if s else None for s in (before, after))
    if e0 is None or e1 is None or e1 < e0:
        return None
    return (e1 - e0) / 1000.0


class Nvml:
    """`with Nvml() as nv:` NVML initialized (nv.ok) or the reason it is not (nv.reason); shut down on exit.

    The one NVML session in qbench: hardware detection (`detect._nvml_gpus`) and the per-cell GPU telemetry
    (`runner.gpu`) both open it, so init, handle lookup and shutdown are written once.
    """

    def __init__(self):
        self.nv = None
        self.reason = ""

    def __enter__(self) -> "Nvml":
        try:
            import pynvml
        except Exception as e:  # noqa: BLE001 - pynvml is optional
            self.reason = f"pynvml is not installed ({type(e).__name__}); pip install nvidia-ml-py"
            return self
        try:
            pynvml.nvmlInit()
        except Exception as e:  # noqa: BLE001
            self.reason = f"NVML could not start: {e}"
            return self
        self.nv = pynvml
        return self

    def __exit__(self, *exc) -> None:
        if self.nv is not None:
            probe(self.nv.nvmlShutdown)
            self.nv = None

    @property
    def ok(self) -> bool:
        return self.nv is not None

    @staticmethod
    def text(x) -> str:
        """NVML strings: bytes from older pynvml releases, str from newer ones."""
        return x.decode() if isinstance(x, bytes) else str(x)

    def handle(self, index: int, uuid: Optional[str] = None):
        """The NVML device: by UUID when torch gave one (CUDA and NVML may order GPUs differently), else by index."""
        if uuid:
            h = probe(lambda: self.nv.nvmlDeviceGetHandleByUUID(uuid))
            if h is not None:
                return h
        return self.nv.nvmlDeviceGetHandleByIndex(index)

    def throttle_mask(self, h) -> Optional[int]:
        fn = (getattr(self.nv, "nvmlDeviceGetCurrentClocksEventReasons", None)
              or getattr(self.nv, "nvmlDeviceGetCurrentClocksThrottleReasons", None))
        return None if fn is None else probe(lambda: int(fn(h)))

    def energy_mj(self, h) -> Optional[int]:
        """Total energy since the driver loaded, in mJ (Volta and newer); None where unsupported."""
        return probe(lambda: int(self.nv.nvmlDeviceGetTotalEnergyConsumption(h)))

    def snapshot(self, h) -> dict:
        nv = self.nv
        mem = probe(lambda: nv.nvmlDeviceGetMemoryInfo(h))
        cuda = probe(lambda: int(nv.nvmlSystemGetCudaDriverVersion()))
        cc = probe(lambda: tuple(nv.nvmlDeviceGetCudaComputeCapability(h)))
        mask = self.throttle_mask(h)
        milli = lambda fn: probe(lambda: getattr(nv, fn)(h) / 1000.0)  # noqa: E731  mW -> W
        return {
            "time": time.time(),
            "name": probe(lambda: self.text(nv.nvmlDeviceGetName(h))),
            "memory_used_bytes": None if mem is None else int(mem.used),
            "memory_total_bytes": None if mem is None else int(mem.total),
            "driver": probe(lambda: self.text(nv.nvmlSystemGetDriverVersion())),
            "cuda_driver": None if cuda is None else f"{cuda // 1000}.{cuda % 1000 // 10}",
            "compute_capability": None if cc is None else f"{cc[0]}.{cc[1]}",
            "power_limit_w": milli("nvmlDeviceGetEnforcedPowerLimit"),
            "power_draw_w": milli("nvmlDeviceGetPowerUsage"),
            "sm_clock_mhz": probe(lambda: int(nv.nvmlDeviceGetClockInfo(h, NVML_CLOCK_SM))),
            "mem_clock_mhz": probe(lambda: int(nv.nvmlDeviceGetClockInfo(h, NVML_CLOCK_MEM))),
            "temperature_c": probe(lambda: int(nv.nvmlDeviceGetTemperature(h, NVML_TEMPERATURE_GPU))),
            "throttle_mask": mask,
            "throttle_reasons": decode_throttle(mask),
            "energy_mj": self.energy_mj(h),
        }


class ThrottleSampler(PeriodicSampler):
    """Polls one GPU's throttle reasons, temperature and SM clock every `interval` s while a block runs.

    Reasons are instantaneous in NVML, so a before/after snapshot alone misses throttling in between.
    """

    def __init__(self, nvml: Nvml, handle, interval: float = 0.05):
        self.nvml, self.handle = nvml, handle
        self.mask, self.samples = 0, 0
        self.max_temperature_c: Optional[int] = None
        self.min_sm_clock_mhz: Optional[int] = None
        super().__init__(interval)

    def sample(self) -> None:
        nv, h = self.nvml.nv, self.handle
        mask = self.nvml.throttle_mask(h)
        temp = probe(lambda: int(nv.nvmlDeviceGetTemperature(h, NVML_TEMPERATURE_GPU)))
        clock = probe(lambda: int(nv.nvmlDeviceGetClockInfo(h, NVML_CLOCK_SM)))
        self.samples += 1
        if mask is not None:
            self.mask |= mask
        if temp is not None:
            self.max_temperature_c = max(temp, self.max_temperature_c or temp)
        if clock is not None:
            self.min_sm_clock_mhz = min(clock, self.min_sm_clock_mhz or clock)

    def summary(self) -> dict:
        reasons = decode_throttle(self.mask)
        return {"samples": self.samples, "interval_s": self.interval, "throttle_reasons": reasons,
                "slowdowns": slowdowns(reasons), "max_temperature_c": self.max_temperature_c,
                "min_sm_clock_mhz": self.min_sm_clock_mhz}
