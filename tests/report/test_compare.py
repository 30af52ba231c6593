"""Run comparison (qbench.report.compare) against copies of tests/fixtures/run_small."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.report.support import edit_json, get_row, replace_strings, set_rows

from qbench.report.compare import build_comparison, compare_runs, default_out_dir
from qbench.results.metrics import in_quality_table

ROOT = Path(__file__).resolve().parents[2]
FIXTURE = ROOT / "tests" / "fixtures" / "run_small"
EVIL = "<script>alert(1)</script>"
SPEED_KEY = ["minilm", "w8a8-dyn", "text", "8"]


def rows_of(run: Path, cell: str = "*") -> list:
    return [r for p in sorted((run / "cells").glob(f"{cell}.json"))
            for r in json.loads(p.read_text(encoding="utf-8"))["rows"]]


def counts(rows: list) -> tuple[int, int, int]:
    """(speed, latency, quality) rows as the comparison's tables count them."""
    return (sum(r["metric"] == "speedup" for r in rows), sum(r["metric"] == "latency_ms" for r in rows),
            sum(r["batch_size"] is None and in_quality_table(r["metric"]) for r in rows))


def meta_of(run: Path) -> dict:
    return json.loads((run / "meta.json").read_text(encoding="utf-8"))


def ci_text(r: dict, digits: int, suffix: str = "") -> str:
    return f"{r['value']:.{digits}f}{suffix} [{r['ci_low']:.{digits}f}, {r['ci_high']:.{digits}f}]"


@pytest.fixture
def runs(tmp_path) -> tuple[Path, Path]:
    a, b = tmp_path / "run_a", tmp_path / "run_b"
    shutil.copytree(FIXTURE, a)
    shutil.copytree(FIXTURE, b)
    return a, b


@pytest.fixture
def modified(runs) -> tuple[Path, Path]:
    """B: one speed-up (w8a8-dyn / text / batch 8) moved with its CI, another fingerprint, one cell dropped."""
    a, b = runs
    set_rows(a, "minilm__w8a8-dyn__text", "speedup", "paired", 8, value=1.43, ci_low=1.38, ci_high=1.49)
    set_rows(b, "minilm__w8a8-dyn__text", "speedup", "paired", 8, value=1.80, ci_low=1.74, ci_high=1.86)
    edit_json(b / "meta.json", lambda m: m.update(fingerprint="77aa00ff"))
    (b / "cells" / "minilm__w4-g32__code.json").unlink()
    return a, b


def _flagged(t: dict) -> list:
    return [r["cells"] for r in t["rows"] if r["flag"]]


def test_self_comparison_has_no_changes(runs):
    a, _ = runs
    written = compare_runs(a, a)
    out = a / "compare-run_a"
    assert written == {n: out / n for n in ("compare.md", "compare.html", "compare.json")}
    ctx = json.loads((out / "compare.json").read_text(encoding="utf-8"))
    assert ctx["warnings"] == []
    for name in ("speed", "latency", "quality"):
        assert ctx[name]["rows"] and not _flagged(ctx[name])
    assert {r["cells"][6] for r in ctx["speed"]["rows"]} == {"1.00x"}
    assert {r["cells"][6] for r in ctx["quality"]["rows"]} <= {"0.0000", "0"}  # every delta is zero
    assert ctx["only_in_one"]["rows"] == [] and ctx["kernels"]["rows"] == []
    c = ctx["counts"]
    assert (c["speed_rows"], c["latency_rows"], c["quality_rows"]) == counts(rows_of(a))
    assert c["speed_changed"] == c["latency_changed"] == c["quality_changed"] == 0
    assert c["only_in_a_rows"] == c["only_in_b_rows"] == 0 and c["matched_rows"] == len(rows_of(a))
    md = (out / "compare.md").read_text(encoding="utf-8")
    html = (out / "compare.html").read_text(encoding="utf-8")
    assert "WARNING" not in md and "WARNING" not in html and 'class="alert"' not in html
    assert "| changed |" not in md and '<td class="l">changed</td>' not in html and 'class="flag"' not in html
    sp = ci_text(get_row(a, "minilm__w8a8-dyn__text", "speedup", "paired", 8), 2, "x")
    assert f"| minilm | w8a8-dyn | text | 8 | {sp} | {sp} | 1.00x | overlap |" in md
    cos = ci_text(get_row(a, "minilm__w8a8-dyn__text", "cosine_mean"), 4)
    assert f"| minilm | w8a8-dyn | text | cosine_mean | {cos} | {cos} | 0.0000 | overlap |" in md
    assert not list(out.glob(".*.tmp"))


def test_changed_row_warning_and_missing_cell(modified):
    a, b = modified
    written = compare_runs(a, b)
    assert set(written.values()) == {b / "compare-run_a" / n for n in ("compare.md", "compare.html",
                                                                      "compare.json")}
    ctx = json.loads(written["compare.json"].read_text(encoding="utf-8"))
    assert _flagged(ctx["speed"]) == [SPEED_KEY + ["1.43x [1.38, 1.49]", "1.80x [1.74, 1.86]", "1.26x", "changed",
                                          "quiet"]]
    assert [r["cells"][7] for r in ctx["speed"]["rows"]].count("changed") == 1
    assert not _flagged(ctx["latency"]) and not _flagged(ctx["quality"])
    fp = meta_of(a)["fingerprint"]
    assert len(ctx["warnings"]) == 1
    assert ctx["warnings"][0].startswith(f"Hardware fingerprints differ (A {fp}, B 77aa00ff)")
    assert ctx["only_in_one"]["rows"] == [{"cells": ["minilm", "w4-g32", "code", "A", "whole cell"],
                                          "flag": False}]
    c, dropped = ctx["counts"], rows_of(a, "minilm__w4-g32__code")
    assert c["speed_rows"] == counts(rows_of(a))[0] - counts(dropped)[0] and c["speed_changed"] == 1
    assert c["only_in_a_rows"] == len(dropped) and c["only_in_b_rows"] == 0
    md = written["compare.md"].read_text(encoding="utf-8")
    html = written["compare.html"].read_text(encoding="utf-8")
    assert f"> **⚠ WARNING:** Hardware fingerprints differ (A {fp}, B 77aa00ff)" in md
    assert md.index("WARNING") < md.index("## Runs")  # prominent: before everything else
    assert "| minilm | w8a8-dyn | text | 8 | 1.43x [1.38, 1.49] | 1.80x [1.74, 1.86] | 1.26x | changed |" in md
    assert "| minilm | w4-g32 | code | A | whole cell |" in md
    assert '<div class="alert" role="alert"><strong>⚠ WARNING:</strong> Hardware fingerprints differ' in html
    assert '<tr class="flag"><td class="l">minilm</td><td class="l">w8a8-dyn</td><td class="l">text</td>' \
           '<td class="r">8</td>' in html
    assert html.count("<td class=\"l\">changed</td>") == 1


def test_only_rows_failed_cell_kernels_and_torch(runs):
    a, b = runs

    def fail(cell):
        cell.update(status="failed", reason="out of memory", rows=[], kernels=[])
    edit_json(b / "cells" / "minilm__w4-g32__code.json", fail)
    edit_json(b / "cells" / "minilm__w8a8-dyn__text.json",  # B measured one more batch size
               lambda c: c["rows"].append(dict(next(r for r in c["rows"] if r["metric"] == "speedup"),
                                               batch_size=32)))
    for p in (b / "cells").glob("minilm__w8a8-dyn__*.json"):
        edit_json(p, lambda c: c.update(kernels=["reference"]))
    edit_json(b / "meta.json", lambda m: m["hardware"]["packages"].update(torch="2.6.0"))
    ctx = build_comparison(a, b)
    rows = ctx["only_in_one"]["rows"]
    assert len(rows) == 2 and not any(r["flag"] for r in rows)
    assert rows[0]["cells"] == ["minilm", "w8a8-dyn", "text", "B", "speedup (paired, batch 32)"]
    assert rows[1]["cells"][:4] == ["minilm", "w4-g32", "code", "A"]
    what = rows[1]["cells"][4]
    assert what == f"all {len(rows_of(a, 'minilm__w4-g32__code'))} rows (B cell failed: out of memory)"
    assert ctx["kernels"]["rows"] == [{"cells": ["minilm", "w8a8-dyn", "int8_int_mm", "reference"],
                                       "flag": False}]
    assert ctx["counts"]["kernel_changes"] == 1
    torch_a = meta_of(a)["hardware"]["packages"]["torch"]
    assert ctx["warnings"] == [f"The torch versions differ (A {torch_a}, B 2.6.0): results may not be comparable."]
    torch_row = next(r for r in ctx["header"]["rows"] if r["cells"][0] == "torch")
    assert torch_row == {"cells": ["torch", torch_a, "2.6.0"], "flag": True}


def test_quality_delta_and_latency_change(runs):
    a, b = runs
    set_rows(a, "minilm__w8a8-dyn__code", "cosine_mean", value=0.9952, ci_low=0.9943, ci_high=0.9960)
    set_rows(a, "minilm__w8a8-dyn__code", "latency_ms", "quantized", 1, value=9.6, ci_low=9.4, ci_high=9.9)

    def worse(cell):
        for r in cell["rows"]:
            if r["metric"] == "cosine_mean":
                r.update(value=0.9900, ci_low=0.9880, ci_high=0.9920)
            if r["metric"] == "latency_ms" and r["variant"] == "quantized" and r["batch_size"] == 1:
                r.update(value=9.6, ci_low=9.2, ci_high=10.0)  # moved, but the intervals overlap
    edit_json(b / "cells" / "minilm__w8a8-dyn__code.json", worse)
    ctx = build_comparison(a, b)
    assert _flagged(ctx["quality"]) == [["minilm", "w8a8-dyn", "code", "cosine_mean", "0.9952 [0.9943, 0.9960]",
                                         "0.9900 [0.9880, 0.9920]", "-0.0052", "changed"]]
    row = next(r for r in ctx["latency"]["rows"] if r["cells"][:5] == ["minilm", "w8a8-dyn", "code", "1",
                                                                        "quantized"])
    assert row == {"cells": ["minilm", "w8a8-dyn", "code", "1", "quantized", "9.60 [9.40, 9.90]",
                             "9.60 [9.20, 10.0]", "1.00x", "overlap", "quiet"], "flag": False}


def test_html_escapes_model_names(runs, tmp_path):
    for run in runs:
        for p in [run / "meta.json", *(run / "cells").glob("*.json")]:
            edit_json(p, lambda d: replace_strings(d, "minilm", EVIL))
    out = tmp_path / "cmp"
    written = compare_runs(*runs, out_dir=out)
    assert written["compare.html"] == out / "compare.html"
    html = (out / "compare.html").read_text(encoding="utf-8")
    md = (out / "compare.md").read_text(encoding="utf-8")
    assert "<script" not in html.lower() and "<script" not in md
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "| &lt;script>alert(1)&lt;/script> | w8a8-dyn | text | 8 |" in md
    assert json.loads((out / "compare.json").read_text(encoding="utf-8"))["speed"]["rows"][0]["cells"][0] == EVIL


def test_html_self_contained(runs):
    html = compare_runs(*runs)["compare.html"].read_text(encoding="utf-8")
    assert not re.search(r"""(?:src|href|url)\s*[=(]\s*["']?\s*(?:https?:)?//""", html, re.I)
    assert "<script" not in html.lower() and "<link" not in html.lower() and "@import" not in html
    assert html.startswith("<!DOCTYPE html>") and "<style>" in html


def test_default_out_dir_and_errors(runs, tmp_path):
    a, b = runs
    assert default_out_dir(a, b) == b / "compare-run_a"
    assert default_out_dir(tmp_path / "x y&z", b) == b / "compare-x_y_z"
    with pytest.raises(FileNotFoundError):
        compare_runs(a, tmp_path / "missing")
    assert not (a / "compare-missing").exists()


def test_no_torch_import(runs):
    code = ("import sys, qbench.report.compare as c; c.compare_runs(sys.argv[1], sys.argv[2]); "
            "bad = [m for m in sys.modules if m.split('.')[0] == 'torch' or m.startswith(('qbench.engine', "
            "'qbench.runner', 'qbench.models'))]; assert not bad, bad; print('clean')")
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    out = subprocess.run([sys.executable, "-c", code, *map(str, runs)], capture_output=True, text=True, env=env)
    assert out.returncode == 0, out.stderr
    assert "clean" in out.stdout


def test_cells_on_different_hardware_are_flagged_in_the_card_and_the_comparison(runs):
    """A cluster run whose cells ran on two fingerprints: a caveat in its card, a warning in compare (both
    ways), while a run on one fingerprint gets neither."""
    from qbench.report.context import build_context

    a, b = runs
    for cell in ("reflm__w4-g32__code", "reflm__w4-g32__text"):
        edit_json(b / "cells" / f"{cell}.json", lambda c: c.update(fingerprint="77aa00ff", node="n2"))
    caveats = build_context(b)["caveats"]
    mixed = [c for c in caveats if c.startswith("Mixed hardware")]
    assert mixed == ["Mixed hardware: the cells ran on 2 different hardware fingerprints (0a1b2c3d: 6 cell(s); "
                     "77aa00ff: 2 cell(s)); speed numbers of cells on different fingerprints are not comparable "
                     "with each other."]
    rows = {r["cells"][0]: r["cells"][1] for r in build_context(b)["hardware"]["rows"]}
    assert rows["Cells ran on"] == "2 node(s); hardware fingerprint(s) 0a1b2c3d, 77aa00ff"
    assert rows["Executor"] == "inprocess"
    assert not [c for c in build_context(a)["caveats"] if c.startswith("Mixed hardware")]
    for x, y in ((a, b), (b, a)):
        warnings = build_comparison(x, y)["warnings"]
        assert any("cells ran on different hardware (fingerprints 0a1b2c3d, 77aa00ff)" in w for w in warnings)
    assert not any("different hardware" in w for w in build_comparison(a, a)["warnings"])


def test_contended_changes_are_counted_apart_and_never_called_regressions(runs):
    """A quiet run A and a run B whose every speed-up moved, six of its eight cells timed while other processes
    kept 1.2 cores busy: all changes are counted, the contended ones apart, and only the quiet cells' rows read
    as plain changes."""
    a, b = runs
    cells = sorted(p.stem for p in (a / "cells").glob("*.json"))
    busy = cells[:6]
    for run in (a, b):
        for c in cells:      # steady repeats everywhere: contention is the only doubt
            set_rows(run, c, "latency_ms", p10=10.0, p90=10.5, value=10.2)
    for c in cells:
        set_rows(a, c, "speedup", "paired", value=1.5, ci_low=1.45, ci_high=1.55)
        set_rows(b, c, "speedup", "paired", value=1.1, ci_low=1.05, ci_high=1.15)
        set_rows(a, c, "foreign_cpu_cores", value=0.02)
        set_rows(b, c, "foreign_cpu_cores", value=1.2 if c in busy else 0.05)
    ctx = build_comparison(a, b)
    n_speed = sum(r["metric"] == "speedup" for r in rows_of(a))
    per_cell = n_speed // len(cells)
    n = ctx["counts"]
    assert n["speed_changed"] == n_speed == 16
    assert n["speed_changed_not_attributable"] == per_cell * len(busy) == 12
    assert n["contended_cells_a"] == 0 and n["contended_cells_b"] == 6
    assert ctx["summary"][0].startswith("16 of 16 speed-ups changed; 12 of them in cells timed on a contended "
                                        "machine") and "4 attributable" in ctx["summary"][0]
    for r in ctx["speed"]["rows"]:
        cell = "__".join(r["cells"][:3])
        if cell in busy:
            assert r["cells"][7] == "changed, not attributable" and not r["flag"]
            assert r["cells"][8] == "B contended (1.20 cores busy)"
        else:
            assert r["cells"][7] == "changed" and r["flag"] and r["cells"][8] == "quiet"
    md = (compare_runs(a, b, a.parent / "cmp")["compare.md"]).read_text(encoding="utf-8")
    assert "12 of them in cells timed on a contended machine" in md and "changed, not attributable" in md


def test_noisy_repeats_make_a_latency_change_not_attributable(runs):
    a, b = runs
    cell = "minilm__w8a8-dyn__text"
    set_rows(a, cell, "latency_ms", "quantized", 8, value=10.0, ci_low=9.9, ci_high=10.1, p10=9.9, p90=10.1)
    set_rows(b, cell, "latency_ms", "quantized", 8, value=14.0, ci_low=13.0, ci_high=15.0, p10=9.0, p90=19.0)
    row = next(r for r in build_comparison(a, b)["latency"]["rows"]
               if r["cells"][:5] == ["minilm", "w8a8-dyn", "text", "8", "quantized"])
    assert row["cells"][8] == "changed, not attributable" and not row["flag"]
    assert row["cells"][9] == "B noisy (p10–p90 71%)"
