"""Card renderer tests against tests/fixtures/run_small, a real run of tests/fixtures/run_small.yaml.

Tests that check how a number reads set it in a copy of the fixture first (support.set_rows), so they do
not depend on what the model measured. Golden file: tests/fixtures/run_small.card.md is the exact card.md
rendered from the fixture. After the runner's output changed, regenerate both with

    .venv/bin/python tests/fixtures/make_run_small.py

and after a deliberate change to the card alone, only the golden card with

    QBENCH_UPDATE_GOLDEN=1 .venv/bin/python -m pytest tests/report/test_render.py -q

(that run skips the golden test instead of passing it); review the diff before committing.
"""
from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import pytest

from tests.report.support import assert_no_heavy_imports, edit_json, get_row, replace_strings, set_rows

from qbench.report import build_context, render_card
from qbench.report.render import md_cell

ROOT = Path(__file__).resolve().parents[2]
FIXTURE = ROOT / "tests" / "fixtures" / "run_small"
GOLDEN = ROOT / "tests" / "fixtures" / "run_small.card.md"
EVIL = "<script>alert(1)</script>"


@pytest.fixture
def run(tmp_path) -> Path:
    dst = tmp_path / "run_small"
    shutil.copytree(FIXTURE, dst)
    return dst


@pytest.fixture
def card(run) -> dict:
    written = render_card(run)
    return {"run": run, "written": written, "md": (run / "card.md").read_text(encoding="utf-8"),
            "html": (run / "card.html").read_text(encoding="utf-8")}


def render(run: Path) -> str:
    render_card(run)
    return (run / "card.md").read_text(encoding="utf-8")


def _rename_model(run: Path, new: str) -> None:
    for p in [run / "meta.json", *sorted((run / "cells").glob("*.json"))]:
        edit_json(p, lambda d: replace_strings(d, "minilm", new))


def test_render_writes_all_outputs(card):
    run, written = card["run"], card["written"]
    assert {"card.md", "card.html", "card.json"} <= set(written)
    for name in ("pareto", "speedup", "text_vs_code", "sqnr", "weights"):
        png = run / "plots" / f"{name}.png"
        assert written[f"plots/{name}.png"] == png
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(run.glob(".*.tmp")) and not list((run / "plots").glob(".*.tmp"))


def test_md_speed_numbers_and_summary(run):
    enc = "minilm__w8a8-dyn__text"
    set_rows(run, enc, "latency_ms", "baseline", 8, value=60.2, ci_low=59.1, ci_high=61.0, p10=58.3, p90=63.5)
    set_rows(run, enc, "latency_ms", "quantized", 8, value=42.1, ci_low=41.5, ci_high=43.0, p10=40.8, p90=45.2)
    set_rows(run, enc, "throughput_tok_s", "baseline", 8, value=17010.3)
    set_rows(run, enc, "throughput_tok_s", "quantized", 8, value=24323.0)
    set_rows(run, enc, "speedup", "paired", 8, value=1.43, ci_low=1.38, ci_high=1.49)
    set_rows(run, enc, "weight_bytes", "baseline", value=6 * 2 ** 20)
    set_rows(run, enc, "weight_bytes", "quantized", value=2 * 2 ** 20)
    set_rows(run, "minilm__w4-g32__text", "speedup", "paired", 8, value=0.71, ci_low=0.68, ci_high=0.75)
    md = render(run)
    assert "w8a8-dyn on minilm: 1.43x faster at batch 8 on text (95% CI 1.38-1.49), weights 3.0x smaller" in md
    assert "| minilm | w8a8-dyn | text | 8 | 60.2 [59.1, 61.0] | 42.1 [41.5, 43.0] | 58.3–63.5 / 40.8–45.2 " \
           "| 1.43x [1.38, 1.49] | 17,010 / 24,323 |" in md
    assert "w4-g32 on minilm: 0.71x the baseline speed (slower) at batch 8 on text (95% CI 0.68-0.75)" in md
    assert "| minilm | w8a8-dyn | 6.00 MiB | 2.00 MiB | 3.00x | 32.0 / 20.9 | 512 MiB |" in md  # the fixture's normalised RSS


def test_md_quality_side_by_side(run):
    for scheme, text, code in (("w8a8-dyn", (0.9981, 0.9976, 0.9985), (0.9952, 0.9943, 0.9960)),
                               ("w4-g32", (0.9853, 0.9821, 0.9880), (0.9838, 0.9800, 0.9870))):
        for workload, (v, lo, hi) in (("text", text), ("code", code)):
            set_rows(run, f"minilm__{scheme}__{workload}", "cosine_mean", value=v, ci_low=lo, ci_high=hi)
    md = render(run)
    assert "| Model | Scheme | Metric | text | code |" in md
    assert "| minilm | w8a8-dyn | cosine_mean | 0.9981 [0.9976, 0.9985] | 0.9952 [0.9943, 0.9960] |" in md
    # 1 − cosine: 0.0048 vs 0.0019 with intervals apart
    assert "text cosine 0.9981, code cosine 0.9952 — code degrades more (2.5x text)." in md
    # w4-g32: CIs overlap, so no workload is named as worse
    assert "code cosine 0.9838 — text vs code: not distinguishable at this sample size." in md


def test_md_quant_map_flags_mismatch(run):
    cell = "minilm__w4-g32__text"
    qmap = json.loads((run / "cells" / f"{cell}.json").read_text(encoding="utf-8"))["quant_map"]
    i = next(i for i, q in enumerate(qmap) if q["name"] == "encoder.layer.0.output.dense")
    why = "kernel int4_packed: in_features 1536 exceeds its tile"

    def not_applied(c):
        c["quant_map"][i].update(applied=False, reason=why, kernel="baseline", weights="float32",
                                 activations="float", sqnr_db=None)
    edit_json(run / "cells" / f"{cell}.json", not_applied)
    md = render(run)
    assert f"| {i} | encoder.layer.0.output.dense | linear | 384×1536 | ⚠ no | {why} | baseline | float32 | " \
           "float | — |" in md
    assert "⚠ 1 module(s) requested but not applied." in md
    assert "exclusion glob '\\*.classifier.\\*' matched no module" in md
    # the w8a8 map has no mismatch: the scheme's own exclusion keeps the pooler at baseline precision
    j = next(i for i, q in enumerate(qmap) if q["name"] == "pooler.dense")
    assert f"| {j} | pooler.dense | linear | 384×384 | no | excluded by 'pooler.\\*' |" in md
    assert md.count("⚠ no |") == 1


def test_md_caveats(run):
    edit_json(run / "meta.json", lambda m: m["baseline"].update(requested="fp16", note="no fast fp16 on this CPU"))
    set_rows(run, "minilm__w4-g32__text", "latency_ms", "baseline", 1, value=10.0, p10=9.0, p90=13.0)  # 40%
    set_rows(run, "minilm__w4-g32__code", "latency_ms", "quantized", 8, value=10.0, p10=9.0, p90=12.0)  # 30%
    md = render(run)
    caveats = md.split("## Caveats", 1)[1].split("## Reproduce", 1)[0]
    assert "Kernel int4_packed is emulated" in caveats
    assert "int8_int_mm" not in caveats  # not emulated, so no caveat
    assert "The baseline ran in fp32 instead of the requested fp16: no fast fp16 on this CPU" in caveats
    assert "Only 16 evaluation samples (fewer than 30)" in caveats
    assert "Noisy timings: 2 speed row(s)" in caveats and "w4-g32 / text, batch 1, baseline latency_ms: 40%" in caveats
    assert "failed" not in caveats and "skipped" not in caveats


def test_auto_baseline_is_no_caveat(card):
    assert "**Baseline:** requested auto, ran in fp32 — auto: fp32 on CPU" in card["md"]
    assert "The baseline ran in" not in card["md"]


def test_md_setup_hardware_reproduce(card):
    md = card["md"]
    assert "| w4-g32 | 4 | signed | sym | per_group (32) | weight-only | linear | \\*.classifier.\\* | " \
           "none (weight-only) | rtn | int4_packed | yes (int4_packed) |" in md
    assert "| w8a8-dyn | 8 | signed | sym | per_channel | 8-bit unsigned asym per_tensor dynamic | linear | " \
           "pooler.\\* | none (dynamic) | rtn | int8_int_mm | no |" in md
    assert "| RAM | 64.0 GiB |" in md and "| GPU(s) | none |" in md  # the fixture's normalised hardware
    import yaml

    stored = json.loads((card["run"] / "meta.json").read_text(encoding="utf-8"))["experiment"]
    assert yaml.safe_load(md.split("```yaml\n", 1)[1].split("\n```", 1)[0]) == stored
    assert "  - Method: median baseline latency / median quantized latency; 95% CI by paired bootstrap over " \
           "interleaved repeat pairs" in md


def test_card_json_roundtrip(card):
    text = (card["run"] / "card.json").read_text(encoding="utf-8")
    data = json.loads(text, parse_constant=lambda c: pytest.fail(f"non-standard JSON constant {c}"))
    assert data["card_schema_version"] == 2
    assert data == json.loads(json.dumps(build_context(card["run"])))
    assert [p["name"] for p in data["plots"]] == ["pareto", "speedup", "text_vs_code", "sqnr", "weights"]


def test_html_self_contained(card):
    html = card["html"]
    assert not re.search(r"""(?:src|href)\s*=\s*["']?\s*(?:https?:)?//""", html, re.I)
    # one inline script (opening a linked or printed section), nothing loaded
    scripts = re.findall(r"<script[^>]*>", html, re.I)
    assert scripts == ["<script>"]
    assert html.count('src="data:image/png;base64,') == 5        # the headline plot once, in the overview
    assert "@media print" in html
    r = get_row(card["run"], "minilm__w8a8-dyn__text", "cosine_mean")
    assert f"{r['value']:.4f} [{r['ci_low']:.4f}, {r['ci_high']:.4f}]" in html


def test_escaping(run):
    _rename_model(run, EVIL + "|x")
    render_card(run)
    html = (run / "card.html").read_text(encoding="utf-8")
    md = (run / "card.md").read_text(encoding="utf-8")
    assert EVIL not in html and "<script>alert" not in html.lower() and html.lower().count("<script") == 1
    assert "&lt;script&gt;alert(1)&lt;/script&gt;|x" in html
    assert "| &lt;script>alert(1)&lt;/script>\\|x | w8a8-dyn | cosine_mean |" in md
    assert "<script" not in md.split("```yaml")[0]


def test_md_cell_escapes_pipes():
    assert md_cell("a|b\nc") == "a\\|b c"


def test_failed_cell_and_missing_data(run):
    def fail(cell):
        cell.update(status="failed", reason="out of memory", rows=[], quant_map=[], kernels=[], kernel_info={})
    edit_json(run / "cells" / "minilm__w4-g32__code.json", fail)
    edit_json(run / "meta.json", lambda m: m.update(status="partial"))
    for p in (run / "cells").glob("*.json"):  # no speedup rows anywhere: that plot is skipped
        edit_json(p, lambda c: c.update(rows=[r for r in c["rows"] if r["metric"] != "speedup"]))
    written = render_card(run)
    md = (run / "card.md").read_text(encoding="utf-8")
    assert "- Cell minilm__w4-g32__code failed: out of memory." in md
    r = get_row(run, "minilm__w4-g32__text", "cosine_mean")
    assert f"| minilm | w4-g32 | cosine_mean | {r['value']:.4f} [{r['ci_low']:.4f}, {r['ci_high']:.4f}] | — |" in md
    assert "plots/speedup.png" not in written and "plots/pareto.png" not in written
    assert "plots/sqnr.png" in written
    assert "x faster" not in md


def test_calibration_shown(run):
    cal = {"dataset": "text", "size": 32, "method": "minmax", "percentile": 99.99}
    edit_json(run / "meta.json", lambda m: m["experiment"]["schemes"][0].update(
        calibration=cal, activations=dict(m["experiment"]["schemes"][0]["activations"], dynamic=False)))
    for p in (run / "cells").glob("minilm__w8a8-dyn__*.json"):
        edit_json(p, lambda c: c.update(calibration={"dataset": "builtin:text", "size": 32, "method": "minmax",
                                                       "hash": "abcdef1234567890", "overlap_with_eval": 2,
                                                       "seq_len": 32, "used": True}))
    render_card(run)
    md = (run / "card.md").read_text(encoding="utf-8")
    assert "| text, 32 samples, minmax, hash abcdef12, ⚠ 2 samples overlap eval, 32 tokens each | rtn |" in md
    assert "8-bit unsigned asym per_tensor static" in md
    assert "- Cell minilm__w8a8-dyn__text: 2 calibration samples also appear in the evaluation set." in md


def test_causal_lm_higher_log_ppl_ratio_degrades_more(run):
    set_rows(run, "reflm__w8a8-dyn__text", "log_ppl_ratio", value=0.05, ci_low=0.04, ci_high=0.06)
    set_rows(run, "reflm__w8a8-dyn__code", "log_ppl_ratio", value=0.01, ci_low=0.005, ci_high=0.015)
    md = render(run)
    assert "text log-PPL ratio 0.0500, code log-PPL ratio 0.0100 — text degrades more (5.0x code)." in md
    assert "| reflm | w8a8-dyn | log-PPL ratio | 0.0500 [0.0400, 0.0600] | 0.0100 [0.00500, 0.0150] |" in md


def test_no_torch_import(run):
    assert_no_heavy_imports("import qbench.report; qbench.report.render_card(sys.argv[1])", run)


def test_golden_card_md(card):
    if os.environ.get("QBENCH_UPDATE_GOLDEN") == "1":
        GOLDEN.write_text(card["md"], encoding="utf-8")
        pytest.skip(f"wrote {GOLDEN.name}; review its diff (this run checks nothing against it)")
    assert GOLDEN.is_file(), "golden card missing: python tests/fixtures/make_run_small.py"
    assert card["md"] == GOLDEN.read_text(encoding="utf-8")


def test_bare_run_dir_renders(tmp_path):
    (tmp_path / "meta.json").write_text("{}", encoding="utf-8")
    written = render_card(tmp_path)
    assert set(written) == {"card.md", "card.html", "card.json"}
    md = (tmp_path / "card.md").read_text(encoding="utf-8")
    assert "- No results." in md and "No data." in md
    with pytest.raises(FileNotFoundError):
        render_card(tmp_path / "missing")


def test_summary_does_not_call_a_speedup_whose_interval_spans_one_slower(run):
    def widen(cell):
        for r in cell["rows"]:
            if r["metric"] == "speedup":
                r["value"], r["ci_low"], r["ci_high"] = 0.97, 0.93, 1.04
    for p in (run / "cells").glob("*.json"):
        edit_json(p, widen)
    text = json.dumps(build_context(run)["summary"])
    assert "no clear speed change (0.97x" in text and "slower" not in text


def test_no_two_series_of_a_plot_look_alike_and_a_scheme_looks_the_same_everywhere(card):
    """From the plot data: within each plot, distinct series never share both colour and marker; across the
    plots of the card, one scheme keeps its colour; every plot says in words what it shows."""
    from tests.report.support import plot_style_problems

    data = json.loads((card["run"] / "card.json").read_text(encoding="utf-8"))
    assert plot_style_problems(data) == []
    bad = json.loads(json.dumps(data))          # and the check can fail: give two schemes one look
    series = bad["plots"][0]["data"]["facets"][0]["series"]
    series[1].update(color=series[0]["color"], marker=series[0]["marker"])
    assert any("share colour and marker" in p for p in plot_style_problems(bad))


def test_plot_styles_stay_unique_for_a_hundred_schemes():
    from qbench.report.plots import styles

    looks = styles([f"s{i}" for i in range(100)])
    assert len({(v["color"], v["marker"]) for v in looks.values()}) == 100
