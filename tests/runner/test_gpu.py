"""The runner's GPU record (runner.gpu) on CPU: torch.cuda's memory calls and pynvml replaced by fakes."""
from __future__ import annotations

import sys

import pytest
import torch

from qbench.runner import gpu as rgpu
from tests.hardware.test_telemetry import fake_pynvml


@pytest.fixture
def fake_cuda(monkeypatch):
    calls = []
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: calls.append("sync"))
    monkeypatch.setattr(torch.cuda, "reset_peak_memory_stats", lambda device=None: calls.append("reset"))
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda device=None: 300 << 20)
    monkeypatch.setattr(torch.cuda, "max_memory_reserved", lambda device=None: 400 << 20)
    monkeypatch.setattr(rgpu, "torch_uuid", lambda index: None)
    return calls


def test_gpu_cell_record(monkeypatch, fake_cuda):
    nv = fake_pynvml(mask=0x1)
    monkeypatch.setitem(sys.modules, "pynvml", nv)
    cell = rgpu.GpuCell("cuda:0")
    cell.begin()
    assert fake_cuda[:2] == ["sync", "reset"]
    with cell.timing():
        nv.mask[0] = 0x1 | 0x40        # thermal slowdown while timed
        nv.energy[0] += 250_000
    nv.mask[0] = 0x1
    model = torch.nn.Linear(4, 4)
    rows, rec = cell.end(model, model)
    assert nv.calls == ["init", "shutdown"]
    assert rec["nvml"] == "ok" and rec["throttled"] == ["hw_thermal_slowdown"]
    assert rec["cell_energy_j"] == 250.0
    assert rec["before"]["name"] == "NVIDIA H100 80GB HBM3"
    assert rec["max_allocated_bytes"] == 300 << 20 and rec["max_reserved_bytes"] == 400 << 20
    # the Linear lives on the CPU here: the record says the model was not on the GPU, naming tensors
    assert rec["fit"]["on_gpu"] is False and rec["fit"]["off_gpu_count"] == 4
    assert rec["fit"]["off_gpu"][0] == "baseline:weight (cpu)"
    assert {r["metric"]: r["value"] for r in rows} == {"cuda_max_allocated_bytes": float(300 << 20),
                                                      "cuda_max_reserved_bytes": float(400 << 20)}
    cell.close()  # idempotent
    assert nv.calls == ["init", "shutdown"]


def test_gpu_cell_without_nvml(monkeypatch, fake_cuda):
    monkeypatch.setitem(sys.modules, "pynvml", None)
    cell = rgpu.GpuCell("cuda:1")
    cell.begin()
    with cell.timing():
        pass
    assert cell.energy(lambda: None, lambda: None) is None
    rows, rec = cell.end(torch.nn.Linear(2, 2), torch.nn.Linear(2, 2))
    assert "pynvml is not installed" in rec["nvml"]
    assert rec["before"] is None and rec["after"] is None and rec["throttled"] == [] and rec["cell_energy_j"] is None
    assert len(rows) == 2


def test_gpu_cell_without_energy_counter(monkeypatch, fake_cuda):
    monkeypatch.setitem(sys.modules, "pynvml", fake_pynvml(energy=False))
    cell = rgpu.GpuCell("cuda")
    cell.begin()
    assert cell.energy(lambda: None, lambda: None) is None
    cell.close()


def test_energy_rows():
    e = {"a_mj": 600.0, "b_mj": 200.0, "a_calls": 100, "b_calls": 300, "a_s": 0.5, "b_s": 0.5}
    rows = rgpu.energy_rows(e, tokens_per_call=100, what="one forward pass", batch_size=4)
    by = {(r["metric"], r["variant"]): r for r in rows}
    assert by[("energy_mj_per_token", "baseline")]["value"] == 6.0
    assert by[("energy_mj_per_token", "quantized")]["value"] == 2.0
    assert by[("energy_ratio", "paired")]["value"] == 3.0
    assert all(r["batch_size"] == 4 for r in rows)
    assert rgpu.energy_rows(None, 100, "x", 4) == []


def test_off_gpu_sees_quantized_state():
    from qbench.engine.modules import QuantLinear
    from qbench.engine.kernels import KERNELS
    from qbench.engine.primitives import QuantSpec

    q = torch.nn.Sequential(QuantLinear(torch.randn(8, 16), None, KERNELS.get("reference"),
                                        QuantSpec(8, True, True, "per_channel"), None))
    assert rgpu.off_gpu(torch.nn.Sequential(), q) == ["quantized:0.weight (cpu)"]  # a PackedWeight
    q2 = torch.nn.Sequential(QuantLinear(torch.randn(8, 16), None, KERNELS.get("int8_weight_only"),
                                         QuantSpec(8, True, True, "per_channel"), None))
    assert "quantized:0.w8 (cpu)" in rgpu.off_gpu(torch.nn.Sequential(), q2)


def test_device_index():
    assert rgpu.device_index("cuda") == 0 and rgpu.device_index("cuda:3") == 3


@pytest.mark.cuda
@pytest.mark.slow
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_run_on_gpu_records_kernels_telemetry_and_card(tiny_models, tmp_path):
    import json

    from qbench import api
    from tests.runner.support import SCHEMES, write_experiment

    path = write_experiment(tmp_path, {"gpt2": tiny_models["gpt2"], "bert": tiny_models["bert"]}, SCHEMES)
    path.write_text(path.read_text().replace("device: cpu", "device: cuda").replace("dtype: fp32", "dtype: fp16"))
    outcome = api.run(path, out=tmp_path / "reports", progress=False, log=lambda s: None)
    assert outcome.status == "ok"
    for p in (outcome.run_dir / "cells").glob("*.json"):
        rec = json.loads(p.read_text())
        assert rec["status"] == "ok", rec["reason"]
        assert set(rec["kernels"]) <= {"int8_int_mm_cuda", "triton_int4_wo"}, rec["kernels"]
        assert rec["gpu"]["fit"]["on_gpu"] is True and rec["gpu"]["max_allocated_bytes"] > 0
        metrics = {r["metric"] for r in rec["rows"]}
        assert {"cuda_max_allocated_bytes", "cuda_max_reserved_bytes"} <= metrics
        if rec["gpu"]["nvml"] == "ok":
            assert rec["gpu"]["before"]["name"] and rec["gpu"]["while_timed"]["samples"] >= 1
    md = (outcome.run_dir / "card.md").read_text()
    assert "### GPU" in md
