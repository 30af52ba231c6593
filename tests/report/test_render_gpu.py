"""The card's GPU parts, from hand-made cell records of a CUDA run (tests/fixtures/run_small plus telemetry)."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from qbench.report import build_context, render_card
from qbench.report.card_schema import validate_card

ROOT = Path(__file__).resolve().parents[2]
FIXTURE = ROOT / "tests" / "fixtures" / "run_small"
CELL = "minilm__w8a8-dyn__text"


def snap(temp, clock, power, reasons, energy_mj):
    return {"time": 0.0, "name": "NVIDIA H100 80GB HBM3", "memory_used_bytes": 3 << 30,
            "memory_total_bytes": 80 << 30, "driver": "550.54.15", "cuda_driver": "12.4",
            "compute_capability": "9.0", "power_limit_w": 700.0, "power_draw_w": power, "sm_clock_mhz": clock,
            "mem_clock_mhz": 2619, "temperature_c": temp, "throttle_mask": 0, "throttle_reasons": reasons,
            "energy_mj": energy_mj}


def gpu_record(throttled=True, on_gpu=True, nvml="ok"):
    return {
        "device": "cuda:0", "nvml": nvml,
        "before": snap(45, 1980, 80.0, ["gpu_idle"], 1_000_000),
        "after": snap(83, 1410, 690.5, ["sw_power_cap"] if throttled else [], 1_250_000),
        "while_timed": {"samples": 40, "interval_s": 0.05,
                        "throttle_reasons": ["gpu_idle", "sw_power_cap", "hw_thermal_slowdown"] if throttled else [],
                        "slowdowns": ["sw_power_cap", "hw_thermal_slowdown"] if throttled else [],
                        "max_temperature_c": 87, "min_sm_clock_mhz": 1245},
        "throttled": ["sw_power_cap", "hw_thermal_slowdown"] if throttled else [],
        "cell_energy_j": 250.0, "max_allocated_bytes": 512 << 20, "max_reserved_bytes": 768 << 20,
        "fit": {"on_gpu": on_gpu, "off_gpu": [] if on_gpu else ["baseline:encoder.layer.5.weight (cpu)"],
                "off_gpu_count": 0 if on_gpu else 12},
    }


def gpu_rows(cell: dict) -> list[dict]:
    base = {k: cell[k] for k in ("cell", "model", "task", "scheme", "workload")}
    base.update(kernel="int8_int_mm_cuda", status="ok", reason="", ci_low=None, ci_high=None, p10=None, p90=None)
    return [dict(base, metric="cuda_max_allocated_bytes", value=float(512 << 20), unit="bytes", method="m",
                 variant="paired", batch_size=None, n=None),
            dict(base, metric="energy_mj_per_token", value=1.25, unit="mJ/token", method="m", variant="baseline",
                 batch_size=8, n=100),
            dict(base, metric="energy_mj_per_token", value=0.75, unit="mJ/token", method="m", variant="quantized",
                 batch_size=8, n=160)]


@pytest.fixture
def make_run(tmp_path):
    def make(**kw) -> Path:
        dst = tmp_path / "run"
        if dst.exists():
            shutil.rmtree(dst)
        shutil.copytree(FIXTURE, dst)
        p = dst / "cells" / f"{CELL}.json"
        cell = json.loads(p.read_text(encoding="utf-8"))
        cell["gpu"] = gpu_record(**kw)
        cell["rows"] += gpu_rows(cell)
        p.write_text(json.dumps(cell), encoding="utf-8")
        return dst
    return make


def test_throttled_cell_is_flagged_in_caveats_and_gpu_table(make_run):
    run = make_run(throttled=True)
    ctx = build_context(run)
    cav = [c for c in ctx["caveats"] if c.startswith("GPU throttled")]
    assert cav == [f"GPU throttled while {CELL} ran (sw_power_cap, hw_thermal_slowdown; max 87 °C; SM clock down "
                   "to 1245 MHz): its timings and energy reflect reduced clocks."]
    t = ctx["results"]["gpu"]
    assert len(t["rows"]) == 1
    row = dict(zip(t["columns"], t["rows"][0]["cells"]))
    assert t["rows"][0]["flag"]
    assert row["GPU"] == "NVIDIA H100 80GB HBM3"
    assert row["Peak allocated"] == "512 MiB" and row["Peak reserved"] == "768 MiB"
    assert row["Model on GPU"] == "yes"
    assert row["Energy mJ/token (baseline / quantized)"] == "1.25 / 0.750 (batch 8)"
    assert row["Temperature before → after"] == "45 → 83 °C"
    assert row["Slowdowns while timed"] == "sw_power_cap, hw_thermal_slowdown"
    assert validate_card(json.loads(json.dumps(ctx)), use_jsonschema=False) == []


def test_gpu_section_rendered_in_md_and_html(make_run):
    run = make_run(throttled=True)
    written = render_card(run)
    md = written["card.md"].read_text(encoding="utf-8")
    html = written["card.html"].read_text(encoding="utf-8")
    assert "### GPU" in md and "GPU throttled while" in md and "NVIDIA H100 80GB HBM3" in md
    assert "<h3>GPU</h3>" in html and "GPU throttled while" in html
    # the new size metrics stay out of the quality table and the summary
    quality = md.split("### Quality", 1)[1].split("##", 1)[0]
    assert "cuda_max_allocated_bytes" not in quality


def test_quiet_gpu_cell_has_no_throttle_caveat(make_run):
    ctx = build_context(make_run(throttled=False))
    assert not any("throttled" in c for c in ctx["caveats"])
    row = dict(zip(ctx["results"]["gpu"]["columns"], ctx["results"]["gpu"]["rows"][0]["cells"]))
    assert row["Slowdowns while timed"] == "none" and not ctx["results"]["gpu"]["rows"][0]["flag"]


def test_offloaded_model_and_missing_nvml_are_caveats(make_run):
    ctx = build_context(make_run(throttled=False, on_gpu=False, nvml="pynvml is not installed"))
    assert any("12 model tensor(s) were not on the GPU" in c and "fitting versus spilling" in c
               for c in ctx["caveats"])
    assert any("without NVML telemetry (pynvml is not installed)" in c for c in ctx["caveats"])
    row = dict(zip(ctx["results"]["gpu"]["columns"], ctx["results"]["gpu"]["rows"][0]["cells"]))
    assert row["Model on GPU"].startswith("⚠ no (12")


def test_cpu_run_has_no_gpu_section():
    ctx = build_context(FIXTURE)
    assert "gpu" not in ctx["results"]
    assert not any("GPU" in c for c in ctx["caveats"])
