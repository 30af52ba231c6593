"""The GEMM benchmark (qbench bench gemm, benchmarks/gemm.py) in --quick mode: it runs, prints a table and
writes the JSON it promises; the command and the script are the same program."""
from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from qbench.bench import gemm
from qbench.cli import app

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "gemm.py"
# Relative error against the float64 layer each kind's rounding implies: (at least, below). Measured on the
# quick shapes (seeded weights and inputs, so the same on every run), then given a margin of about 1.5x:
# fp32 2.5e-7; bf16 2.7e-3-2.8e-3; W8A8 dynamic 8.5e-3-1.2e-2, static per-tensor (a scale calibrated on
# other inputs) and torch.ao (7-bit activations) up to 2.9e-2; int8 weight-only 6.0e-3-6.7e-3; int4 g128
# 9.2e-2; W4A8 9.3e-2 (g128) to 1.2e-1 (per channel). The floor catches a contender that silently skipped its
# quantization.
REL_ERR = {"fp32": (0.0, 1e-5), "bf16": (1e-3, 5e-3), "w8a8": (3e-3, 4.5e-2), "wo8": (2e-3, 1e-2),
           "wo4": (5e-2, 0.14), "w4a8": (5e-2, 0.19)}


def rel_err_bounds(row: dict) -> tuple[float, float]:
    if row["kind"] == "baseline":
        return REL_ERR["bf16" if "bf16" in row["contender"] else "fp32"]
    return REL_ERR[row["kind"]]


def test_quick_run_writes_table_and_json(tmp_path, capsys):
    out = tmp_path / "gemm.json"
    from qbench.bench import peers
    peers._say_ort_bf16.cache_clear()                               # said once per process
    result = gemm.main(["--quick", "--json", str(out)])                 # shapes 1x256x320, 24x200x136
    captured = capsys.readouterr()
    printed = captured.out
    data = json.loads(out.read_text())
    assert data["rows"] == json.loads(json.dumps(result["rows"]))
    assert {"int8_gops", "fp32_gflops", "mem_gbs"} <= set(data["ceilings"])
    from qbench.hardware.detect import detect
    assert data["machine"]["cpu"] == detect(include_torch=False).cpu_model        # the model, not just "x86_64"
    assert data["machine"]["cpu"] in printed.splitlines()[0]
    from qbench.hardware.provenance import git_commit
    assert data["machine"]["git_commit"] == git_commit() and data["machine"]["qbench"]
    rows = {r["contender"]: r for r in data["rows"]}
    assert {"fp32 (torch linear)", "bf16 (torch linear)", "qbench w8a8 dyn per-token asym",
            "qbench int8 weight-only", "qbench int4 g128 weight-only"} <= set(rows)
    assert any(r["peer"] for r in data["rows"])
    if importlib.util.find_spec("onnxruntime") and importlib.util.find_spec("onnx"):   # a test dependency
        assert {r["kind"] for r in data["rows"] if r["contender"].startswith("onnxruntime")} == {"baseline", "w8a8"}
        assert captured.err.count("bf16 baseline:") == 1           # why no onnxruntime bf16, said once per run
    for shape in {r["shape"] for r in data["rows"]}:                # ratios are to the faster fp32 baseline
        fp32 = [r["vs_fp32"] for r in data["rows"] if r["shape"] == shape and "fp32" in r["contender"]
                and r["kind"] == "baseline"]
        assert max(fp32) == 1.0
    for r in data["rows"]:
        assert r["median_ms"] > 0 and r["p10_ms"] <= r["median_ms"] <= r["p90_ms"]
        lo, hi = rel_err_bounds(r)                                  # every contender computes the layer
        assert lo <= r["rel_err_vs_fp64"] < hi, (r["contender"], r["shape"], r["rel_err_vs_fp64"])
    assert {o["granularity"] for o in data["asym_overhead"]} == {"per-tensor", "per-token"}
    assert {t["target"] for t in data["targets"]} >= {"int8 weight-only >= 2.5x fp32 at M = 1",
                                                      "W8A8 >= 3x fp32 at M >= 16"}
    assert "(M, K, N) = (24, 200, 136)" in printed and "asymmetric vs symmetric" in printed
    assert "targets (ratios from this run" in printed


def test_bad_shape_is_rejected():
    try:
        gemm.parse_shapes("3x256")
    except SystemExit as e:
        assert "MxKxN" in str(e)
    else:
        raise AssertionError("a bad shape was accepted")
    assert gemm.parse_shapes("minilm") == [(1024, 384, 384), (1024, 384, 1536), (1024, 1536, 384)]
    assert gemm.parse_shapes("reflm") == [(1024, 256, 768), (1024, 256, 256), (1024, 256, 1024), (1024, 1024, 256)]


def test_cli_command_runs_the_benchmark(tmp_path):
    out = tmp_path / "cli.json"
    res = CliRunner().invoke(app, ["bench", "gemm", "--quick", "--shapes", "3x64x40", "--json", str(out)])
    assert res.exit_code == 0, res.output
    assert "(M, K, N) = (3, 64, 40)" in res.output
    assert {r["shape"] for r in json.loads(out.read_text())["rows"]} == {"3x64x40"}
    bad = CliRunner().invoke(app, ["bench", "gemm", "--shapes", "3x64"])
    assert bad.exit_code == 2 and "MxKxN" in bad.output


def test_script_is_the_same_program():
    proc = subprocess.run([sys.executable, str(SCRIPT), "--help"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "--rotate-mib" in proc.stdout and "benchmarks/gemm.py" in proc.stdout


def test_asym_and_sym_twins_run_back_to_back_and_are_compared_per_round():
    from qbench.bench.peers import Contender

    labels = ["fp32 (torch linear)", "qbench w8a8 dyn per-tensor asym", "qbench w8a8 dyn per-tensor sym",
              "qbench w8a8 dyn per-token asym", "qbench w8a8 dyn per-token sym", "qbench int8 weight-only"]
    units = gemm.twin_units([Contender(lab, "w8a8", False, [], 1.0) for lab in labels])
    assert [[c.label for c in u] for u in units] == [[labels[0]], labels[1:3], labels[3:5], [labels[5]]]
    rows = [{"contender": "qbench w8a8 dyn per-token asym", "shape": "8x8x8", "m": 8, "times_ms": [1.1, 2.4, 3.0]},
            {"contender": "qbench w8a8 dyn per-token sym", "shape": "8x8x8", "m": 8, "times_ms": [1.0, 2.0, 3.0]}]
    (o,) = gemm.asym_overheads(rows)                  # per-round ratios 1.1, 1.2, 1.0: median 1.1
    assert o["granularity"] == "per-token" and abs(o["overhead_pct"] - 10.0) < 1e-9


def test_row_percentiles_interpolate_between_order_statistics():
    """p10/p90 keep the definition the printed tables always had (statistics.quantiles, 'inclusive')."""
    import statistics

    from qbench.bench.peers import Contender

    times = [7.0, 1.0, 4.0, 10.0, 2.0, 9.0, 3.0, 8.0, 5.0, 6.0]
    row = gemm._row(2, 8, 4, Contender("x", "w8a8", False, [], 32.0, times=times), 0.01)
    assert (row["median_ms"], row["p10_ms"], row["p90_ms"]) == pytest.approx((5.5, 1.9, 9.1), rel=1e-12)
    q = statistics.quantiles(times, n=10, method="inclusive")
    assert (row["p10_ms"], row["p90_ms"]) == pytest.approx((q[0], q[-1]), rel=1e-12)
    one = gemm._row(2, 8, 4, Contender("x", "w8a8", False, [], 32.0, times=[3.0]), 0.01)
    assert one["median_ms"] == one["p10_ms"] == one["p90_ms"] == 3.0
