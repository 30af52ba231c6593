"""Tests for qbench.hardware.detect."""
import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from qbench.hardware import (
    GpuInfo,
    HardwareInfo,
    detect,
    fingerprint,
    has_fast_bf16,
    has_fast_fp16,
    parse_cpuinfo,
)

REPO_ROOT = Path(__file__).resolve().parents[2]
GIB = 1 << 30

FAKE_CPUINFO = """\
processor\t: 0
vendor_id\t: GenuineIntel
cpu family\t: 6
model\t\t: 143
model name\t: Intel(R) Xeon(R) Platinum 8480+
flags\t\t: fpu vme sse sse2 avx avx2 fma avx512f avx512bw avx512_vnni amx_tile amx_int8 avx512vl
bogomips\t: 4000.00

processor\t: 1
model name\t: Some Other CPU
flags\t\t: fpu sse
"""

FAKE_ARM_CPUINFO = """\
processor\t: 0
BogoMIPS\t: 50.00
Features\t: fp asimd evtstrm aes sve
CPU implementer\t: 0x41
"""


def _info(**kw):
    base = dict(cpu_model="Test CPU", cpu_arch="x86_64", cpu_flags=("avx2", "fma"),
                physical_cores=4, logical_cores=8, ram_bytes=16 * GIB, os="Linux",
                python="3.11.0", packages={"torch": "2.0"}, torch_threads=4,
                torch_cpu_capability="AVX2", gpus=(), cpu_freq_mhz=(2000.0, 3000.0),
                cpu_governor="performance")
    base.update(kw)
    return HardwareInfo(**base)


@pytest.fixture(scope="module")
def info():
    return detect()


def test_detect_this_machine(info):
    import torch
    assert info.logical_cores >= 1
    assert info.physical_cores is None or info.physical_cores >= 1
    assert info.ram_bytes > GIB
    assert info.cpu_model.strip()
    assert info.cpu_arch
    assert info.packages.get("torch") == torch.__version__
    assert info.torch_threads == torch.get_num_threads()
    assert info.torch_cpu_capability == torch.backends.cpu.get_cpu_capability()
    assert isinstance(info.gpus, tuple) and isinstance(info.cpu_flags, tuple)


def test_detect_without_torch():
    info = detect(include_torch=False)
    assert info.torch_threads is None and info.torch_cpu_capability is None
    assert info.logical_cores >= 1


def test_fingerprint_stable_and_sensitive(info):
    fp = fingerprint(info)
    assert len(fp) == 8 and int(fp, 16) >= 0
    assert fingerprint(detect()) == fp
    assert fingerprint(dataclasses.replace(info, cpu_model=info.cpu_model + "X")) != fp
    # independent of package versions, clocks and governor
    same = dataclasses.replace(info, packages={}, cpu_freq_mhz=None, cpu_governor="x",
                               torch_threads=123)
    assert fingerprint(same) == fp


def test_fingerprint_depends_on_gpus():
    a = _info()
    b = _info(gpus=(GpuInfo(index=0, name="NVIDIA H100", memory_bytes=80 * GIB),))
    assert fingerprint(a) != fingerprint(b)


def test_dict_round_trip(info):
    d = info.to_dict()
    s = json.dumps(d)
    assert HardwareInfo.from_dict(json.loads(s)) == info
    assert HardwareInfo.from_dict(d) == info


def test_dict_round_trip_with_gpu():
    g = GpuInfo(index=0, name="NVIDIA L4", memory_bytes=24 * GIB, driver="550.1",
                cuda_runtime="12.4", compute_capability="8.9", power_limit_w=72.0,
                sm_clock_mhz=2040, mem_clock_mhz=6251)
    info = _info(gpus=(g,))
    d = json.loads(json.dumps(info.to_dict()))
    assert isinstance(d["gpus"][0], dict) and isinstance(d["cpu_flags"], list)
    back = HardwareInfo.from_dict(d)
    assert back == info
    assert isinstance(back.gpus[0], GpuInfo) and isinstance(back.cpu_flags, tuple)


def test_summary():
    s = _info(cpu_flags=("avx2", "avx512_vnni")).summary()
    assert "Test CPU" in s and "4 cores" in s and "16.0 GiB" in s
    assert "avx512_vnni" in s and "no GPU" in s
    s2 = _info(gpus=(GpuInfo(index=0, name="NVIDIA L4", memory_bytes=24 * GIB),)).summary()
    assert "NVIDIA L4" in s2 and "no GPU" not in s2


def test_parse_cpuinfo_x86():
    model, flags = parse_cpuinfo(FAKE_CPUINFO)
    assert model == "Intel(R) Xeon(R) Platinum 8480+"
    assert "avx512_vnni" in flags and "amx_tile" in flags and "amx_int8" in flags
    assert "avx2" in flags and "fma" in flags
    assert "sse" not in flags and "avx512vl" not in flags  # not interesting
    assert "avx512_fp16" not in flags


def test_parse_cpuinfo_arm_and_empty():
    model, flags = parse_cpuinfo(FAKE_ARM_CPUINFO)
    assert set(flags) == {"asimd", "sve"}
    assert parse_cpuinfo("") == ("", ())


def test_has_fast_fp16_cpu():
    ok, why = has_fast_fp16(_info(cpu_flags=("avx2", "avx512_vnni")), "cpu")
    assert not ok and "AVX512-FP16" in why
    assert has_fast_fp16(_info(cpu_flags=("avx512_fp16",)), "cpu")[0]
    assert has_fast_fp16(_info(cpu_flags=("amx_tile",)), "cpu")[0]


def test_has_fast_bf16_cpu():
    assert not has_fast_bf16(_info(cpu_flags=("avx512_vnni",)), "cpu")[0]
    assert has_fast_bf16(_info(cpu_flags=("avx512_bf16",)), "cpu")[0]
    assert has_fast_bf16(_info(cpu_flags=("amx_bf16",)), "cpu")[0]


def test_has_fast_cuda():
    turing = GpuInfo(index=0, name="T4", compute_capability="7.5")
    ada = GpuInfo(index=1, name="L4", compute_capability="8.9")
    info = _info(gpus=(turing, ada))
    assert has_fast_fp16(info, "cuda") == (True, "tensor cores")
    assert not has_fast_bf16(info, "cuda")[0]
    assert not has_fast_bf16(info, "cuda:0")[0]
    assert has_fast_bf16(info, "cuda:1")[0]
    assert not has_fast_bf16(_info(), "cuda")[0]  # no GPU info -> not fast


def test_import_does_not_load_torch():
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO_ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    code = ("import qbench.hardware, sys; "
            "bad = [m for m in ('torch', 'pynvml', 'psutil') if m in sys.modules]; "
            "assert not bad, bad")
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                       text=True, cwd=str(REPO_ROOT))
    assert r.returncode == 0, r.stderr


def test_detect_with_fake_pynvml(monkeypatch):
    """pynvml path: devices enumerated/enriched and nvmlShutdown always called."""
    import types
    calls = []
    fake = types.SimpleNamespace(
        NVML_CLOCK_SM=1, NVML_CLOCK_MEM=2,
        nvmlInit=lambda: calls.append("init"),
        nvmlShutdown=lambda: calls.append("shutdown"),
        nvmlSystemGetDriverVersion=lambda: b"550.54",
        nvmlDeviceGetCount=lambda: 1,
        nvmlDeviceGetHandleByIndex=lambda i: ("h", i),
        nvmlDeviceGetName=lambda h: "NVIDIA H100",
        nvmlDeviceGetMemoryInfo=lambda h: types.SimpleNamespace(total=80 * GIB),
        nvmlDeviceGetCudaComputeCapability=lambda h: (9, 0),
        nvmlDeviceGetPowerManagementLimit=lambda h: 700000,
        nvmlDeviceGetMaxClockInfo=lambda h, kind: {1: 1980, 2: 2619}[kind],
    )
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    info = detect(include_torch=False)
    assert calls == ["init", "shutdown"]
    (g,) = info.gpus
    assert (g.name, g.memory_bytes, g.compute_capability) == ("NVIDIA H100", 80 * GIB, "9.0")
    assert (g.driver, g.power_limit_w, g.sm_clock_mhz, g.mem_clock_mhz) == ("550.54", 700.0, 1980, 2619)
    assert has_fast_bf16(info, "cuda:0")[0]

    def boom():
        raise RuntimeError("no driver")
    monkeypatch.setattr(fake, "nvmlInit", boom)
    assert detect(include_torch=False).gpus == ()  # failing NVML -> no error


def test_nvml_enriches_the_gpus_torch_found(monkeypatch):
    """With torch's GPU list, NVML adds driver, power limit and clocks to each by index and lists no others."""
    import types
    from qbench.hardware.detect import _nvml_gpus
    calls = []
    fake = types.SimpleNamespace(
        nvmlInit=lambda: calls.append("init"),
        nvmlShutdown=lambda: calls.append("shutdown"),
        nvmlSystemGetDriverVersion=lambda: "560.1",
        nvmlDeviceGetCount=lambda: 3,
        nvmlDeviceGetHandleByIndex=lambda i: ("h", i),
        nvmlDeviceGetPowerManagementLimit=lambda h: {0: 300000, 1: 72000}[h[1]],
        nvmlDeviceGetMaxClockInfo=lambda h, kind: (1000 + h[1]) * kind,
    )
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    torch_gpus = [GpuInfo(index=1, name="L4", cuda_runtime="12.4"), GpuInfo(index=0, name="A100")]
    l4, a100 = _nvml_gpus(list(torch_gpus), enumerate_all=False)
    assert calls == ["init", "shutdown"]
    assert (l4.name, l4.cuda_runtime, l4.driver, l4.power_limit_w) == ("L4", "12.4", "560.1", 72.0)
    assert (l4.sm_clock_mhz, l4.mem_clock_mhz) == (1001, 2002)
    assert (a100.power_limit_w, a100.sm_clock_mhz) == (300.0, 1000)


def test_nvml_failure_mid_enumeration_still_shuts_down(monkeypatch):
    import types
    calls = []

    def no_handle(i):
        raise RuntimeError("GPU is lost")

    fake = types.SimpleNamespace(
        nvmlInit=lambda: calls.append("init"), nvmlShutdown=lambda: calls.append("shutdown"),
        nvmlSystemGetDriverVersion=lambda: "560.1", nvmlDeviceGetCount=lambda: 1,
        nvmlDeviceGetHandleByIndex=no_handle)
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    assert detect(include_torch=False).gpus == ()
    assert calls == ["init", "shutdown"]


def test_hardware_imports_no_sibling_layer():
    """hardware sits beside engine, models, datasets and metrics: importing all of it loads none of them."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO_ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    code = ("import sys, qbench.hardware, qbench.hardware.telemetry, qbench.hardware.provenance; "
            "bad = [m for m in sys.modules if m.split('.')[:2] in (['qbench', 'metrics'], ['qbench', 'engine'], "
            "['qbench', 'models'], ['qbench', 'datasets'], ['qbench', 'api'], ['qbench', 'runner'])]; "
            "assert not bad, bad")
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, cwd=str(REPO_ROOT))
    assert r.returncode == 0, r.stderr
