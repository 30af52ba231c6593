"""NVML telemetry against a fake pynvml module, and the energy-per-call arithmetic against a fake counter."""
from __future__ import annotations

import sys
import types

import pytest

from qbench.hardware.telemetry import (Nvml, ThrottleSampler, decode_throttle, energy_delta_j, slowdowns)
from qbench.metrics.energy import energy_per_call


class NVMLError(Exception):
    pass


def fake_pynvml(energy=True, throttle_api="new", mask=0x4 | 0x40):
    """A stand-in for pynvml with one H100-like GPU; `calls` records init/shutdown."""
    nv = types.ModuleType("pynvml")
    nv.calls = []
    nv.energy = [1_000_000]
    nv.mask = [mask]
    nv.nvmlInit = lambda: nv.calls.append("init")
    nv.nvmlShutdown = lambda: nv.calls.append("shutdown")
    nv.nvmlDeviceGetHandleByIndex = lambda i: f"h{i}"
    nv.nvmlDeviceGetHandleByUUID = lambda u: "h-uuid" if u == "GPU-abc" else (_ for _ in ()).throw(NVMLError("no"))
    nv.nvmlDeviceGetName = lambda h: b"NVIDIA H100 80GB HBM3"
    nv.nvmlDeviceGetMemoryInfo = lambda h: types.SimpleNamespace(used=3 << 30, total=80 << 30, free=77 << 30)
    nv.nvmlSystemGetDriverVersion = lambda: "550.54.15"
    nv.nvmlSystemGetCudaDriverVersion = lambda: 12040
    nv.nvmlDeviceGetCudaComputeCapability = lambda h: (9, 0)
    nv.nvmlDeviceGetEnforcedPowerLimit = lambda h: 700_000
    nv.nvmlDeviceGetPowerUsage = lambda h: 312_500
    nv.nvmlDeviceGetClockInfo = lambda h, kind: {1: 1980, 2: 2619}[kind]
    nv.nvmlDeviceGetTemperature = lambda h, kind: 61

    def total_energy(h):
        if not energy:
            raise NVMLError("Not Supported")
        return nv.energy[0]

    nv.nvmlDeviceGetTotalEnergyConsumption = total_energy
    if throttle_api == "new":
        nv.nvmlDeviceGetCurrentClocksEventReasons = lambda h: nv.mask[0]
    elif throttle_api == "old":
        nv.nvmlDeviceGetCurrentClocksThrottleReasons = lambda h: nv.mask[0]
    return nv


@pytest.mark.parametrize("mask,names", [
    (0, []),
    (0x1, ["gpu_idle"]),
    (0x4 | 0x40, ["sw_power_cap", "hw_thermal_slowdown"]),
    (0x2 | 0x10 | 0x100, ["applications_clocks_setting", "sync_boost", "display_clock_setting"]),
    (0x8 | 0x20 | 0x80, ["hw_slowdown", "sw_thermal_slowdown", "hw_power_brake_slowdown"]),
    (0x1000 | 0x4, ["sw_power_cap", "unknown_0x1000"]),
    (None, None),
])
def test_decode_throttle(mask, names):
    assert decode_throttle(mask) == names


def test_slowdowns_ignore_idle_and_settings():
    assert slowdowns(["gpu_idle", "applications_clocks_setting", "sync_boost", "display_clock_setting"]) == []
    assert slowdowns(["gpu_idle", "sw_power_cap", "hw_thermal_slowdown", "unknown_0x1000"]) == [
        "sw_power_cap", "hw_thermal_slowdown", "unknown_0x1000"]
    assert slowdowns(None) == []


def test_energy_delta():
    assert energy_delta_j({"energy_mj": 1_000}, {"energy_mj": 3_500}) == 2.5
    assert energy_delta_j({"energy_mj": None}, {"energy_mj": 3_500}) is None
    assert energy_delta_j({"energy_mj": 5_000}, {"energy_mj": 3_500}) is None  # counter reset
    assert energy_delta_j(None, {"energy_mj": 1}) is None


def test_snapshot_decodes_everything(monkeypatch):
    nv = fake_pynvml()
    monkeypatch.setitem(sys.modules, "pynvml", nv)
    with Nvml() as n:
        assert n.ok
        h = n.handle(0, "GPU-abc")
        assert h == "h-uuid"
        assert n.handle(1, "GPU-unknown") == "h1"  # UUID not found: by index
        snap = n.snapshot(h)
    assert nv.calls == ["init", "shutdown"]
    assert snap["name"] == "NVIDIA H100 80GB HBM3"
    assert snap["memory_used_bytes"] == 3 << 30 and snap["memory_total_bytes"] == 80 << 30
    assert snap["driver"] == "550.54.15" and snap["cuda_driver"] == "12.4"
    assert snap["compute_capability"] == "9.0"
    assert snap["power_limit_w"] == 700.0 and snap["power_draw_w"] == 312.5
    assert snap["sm_clock_mhz"] == 1980 and snap["mem_clock_mhz"] == 2619 and snap["temperature_c"] == 61
    assert snap["throttle_mask"] == 0x44 and snap["throttle_reasons"] == ["sw_power_cap", "hw_thermal_slowdown"]
    assert snap["energy_mj"] == 1_000_000


def test_absent_counters_become_none(monkeypatch):
    nv = fake_pynvml(energy=False, throttle_api="none")
    del nv.nvmlDeviceGetPowerUsage
    monkeypatch.setitem(sys.modules, "pynvml", nv)
    with Nvml() as n:
        snap = n.snapshot(n.handle(0))
    assert snap["energy_mj"] is None and snap["throttle_mask"] is None and snap["throttle_reasons"] is None
    assert snap["power_draw_w"] is None
    assert snap["temperature_c"] == 61  # the rest is intact


def test_old_throttle_api_name(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", fake_pynvml(throttle_api="old", mask=0x20))
    with Nvml() as n:
        assert n.snapshot(n.handle(0))["throttle_reasons"] == ["sw_thermal_slowdown"]


def test_nvml_unavailable(monkeypatch):
    nv = fake_pynvml()

    def boom():
        raise NVMLError("Driver Not Loaded")

    nv.nvmlInit = boom
    monkeypatch.setitem(sys.modules, "pynvml", nv)
    with Nvml() as n:
        assert not n.ok and "Driver Not Loaded" in n.reason
    monkeypatch.setitem(sys.modules, "pynvml", None)  # import fails
    with Nvml() as n:
        assert not n.ok and "pynvml is not installed" in n.reason


def test_throttle_sampler_unions_reasons(monkeypatch):
    nv = fake_pynvml(mask=0x1)
    monkeypatch.setitem(sys.modules, "pynvml", nv)
    temps = iter([55, 70, 64, 64, 64, 64, 64, 64])
    nv.nvmlDeviceGetTemperature = lambda h, kind: next(temps, 64)
    with Nvml() as n:
        s = ThrottleSampler(n, n.handle(0), interval=1e9)  # one sample when it starts, one when it stops
        with s:
            nv.mask[0] = 0x20
        s.sample()
    out = s.summary()
    assert out["samples"] == 3
    assert out["throttle_reasons"] == ["gpu_idle", "sw_thermal_slowdown"]
    assert out["slowdowns"] == ["sw_thermal_slowdown"]
    assert out["max_temperature_c"] == 70 and out["min_sm_clock_mhz"] == 1980


class FakeGpu:
    """A counter in mJ driven by a fake clock: variant A draws 300 W for 2 ms a call, B 200 W for 1 ms."""

    def __init__(self):
        self.t, self.mj, self.syncs = 0.0, 0.0, 0

    def call(self, watts, seconds):
        self.t += seconds
        self.mj += watts * seconds * 1000

    def read(self):
        return int(self.mj)


def test_energy_per_call_from_a_counter():
    g = FakeGpu()
    e = energy_per_call(lambda: g.call(300, 0.002), lambda: g.call(200, 0.001), g.read,
                        sync=lambda: None, block_s=0.1, clock=lambda: g.t)
    assert e["a_mj"] == pytest.approx(600, rel=0.02)   # 300 W x 2 ms = 0.6 J
    assert e["b_mj"] == pytest.approx(200, rel=0.02)   # 200 W x 1 ms = 0.2 J
    assert e["a_calls"] >= 100 and e["b_calls"] >= 200
    assert e["a_s"] >= 0.2 and e["b_s"] >= 0.2


def test_energy_per_call_without_a_working_counter():
    g = FakeGpu()
    assert energy_per_call(lambda: g.call(300, 0.01), lambda: g.call(300, 0.01), lambda: None,
                           sync=lambda: None, block_s=0.05, clock=lambda: g.t) is None
    frozen = energy_per_call(lambda: g.call(300, 0.01), lambda: g.call(300, 0.01), lambda: 5,
                             sync=lambda: None, block_s=0.05, clock=lambda: g.t)
    assert frozen is None  # the counter never moved: too coarse, nothing is reported


def test_cpu_runs_never_touch_nvml():
    import subprocess

    code = ("import sys; import qbench.runner.execute, qbench.hardware.telemetry, qbench.metrics.energy; "
            "assert 'pynvml' not in sys.modules and 'qbench.runner.gpu' not in sys.modules; print('ok')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr
