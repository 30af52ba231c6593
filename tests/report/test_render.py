"""Card renderer tests against the hand-made run directory tests/fixtures/run_small.

Golden file: tests/fixtures/run_small.card.md is the exact card.md rendered from the fixture.
After a deliberate change to the card, regenerate it with

    QBENCH_UPDATE_GOLDEN=1 PYTHONPATH=. python -m pytest tests/report -q

and review the diff before committing.
"""
from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import pytest

from tests.report.support import assert_no_heavy_imports, edit_json, replace_strings

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






def _rename_model(run: Path, new: str) -> None:
    for p in [run / "meta.json", *sorted((run / "cells").glob("*.json"))]:
        edit_json(p, lambda d: replace_strings(d, "minilm", new))


def test_render_writes_all_outputs(card):
    run, written = card["run"], card["written"]
    assert {"card.md", "card.html", "card.json"} <= set(written)
    for name in ("speedup", "quality_speed", "sqnr", "weights"):
        png = run / "plots" / f"{name}.png"
        assert written[f"plots/{name}.png"] == png
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(run.glob(".*.tmp")) and not list((run / "plots").glob(".*.tmp"))


def test_md_speed_numbers_and_summary(card):
    md = card["md"]
    assert "w8a8-dyn on minilm: 1.43x faster at batch 8 on text (95% CI 1.38-1.49), weights 3.1x smaller" in md
    assert "| minilm | w8a8-dyn | text | 8 | 60.2 [59.1, 61.0] | 42.1 [41.5, 43.0] | 58.3–63.5 / 40.8–45.2 " \
           "| 1.43x [1.38, 1.49] | 17,010 / 24,323 |" in md
    assert "0.71x the baseline speed (slower) at batch 8 on text (95% CI 0.68-0.75)" in md
    assert "| minilm | w8a8-dyn | 5.62 MiB | 1.84 MiB | 3.06x | 413 MiB |" in md


def test_md_quality_side_by_side(card):
    md = card["md"]
    assert "| Model | Scheme | Metric | text | code |" in md
    assert "| minilm | w8a8-dyn | cosine_mean | 0.9981 [0.9976, 0.9985] | 0.9952 [0.9943, 0.9960] |" in md
    assert "text cosine 0.9981, code cosine 0.9952 — code degrades more (2.5x text)." in md
    # w4-g32: CIs overlap, so no workload is named as worse
    assert "code cosine 0.9838 — text vs code: not distinguishable at this sample size." in md


def test_md_quant_map_flags_mismatch(card):
    md = card["md"]
    assert "| 2 | encoder.layer.0.output.dense | linear | 384×1536 | ⚠ no | kernel ref_w4_dequant: " \
           "in_features 1536 exceeds its 1024-column tile | baseline | fp32 | n/a | — |" in md
    assert "⚠ 1 module(s) requested but not applied." in md
    assert "exclusion glob '\\*.classifier.\\*' matched no module" in md
    # the w8a8 map has no mismatch: the excluded pooler is not requested
    assert "| 3 | pooler.dense | linear | 384×384 | no | excluded by '\\*.pooler.\\*' |" in md
    assert md.count("⚠ no |") == 1


def test_md_caveats(card):
    caveats = card["md"].split("## Caveats", 1)[1].split("## Reproduce", 1)[0]
    assert "Kernel ref_w4_dequant is emulated" in caveats
    assert "int8_int_mm" not in caveats  # not emulated, so no caveat
    assert "The baseline ran in fp32 instead of the requested fp16" in caveats
    assert "Only 16 evaluation samples (fewer than 30)" in caveats
    assert "Noisy timings: 2 speed row(s)" in caveats and "w4-g32 / text, batch 1" in caveats
    assert "failed" not in caveats and "skipped" not in caveats


def test_md_setup_hardware_reproduce(card):
    md = card["md"]
    assert "| w4-g32 | 4 | signed | sym | per_group (32) | weight-only | linear | \\*.classifier.\\* | " \
           "none (weight-only) | ref_w4_dequant | yes (ref_w4_dequant) |" in md
    assert "| w8a8-dyn | 8 | signed | sym | per_channel | 8-bit unsigned asym per_tensor dynamic | linear | " \
           "\\*.pooler.\\* | none (dynamic) | int8_int_mm | no |" in md
    assert "**Baseline:** requested fp16, ran in fp32" in md
    assert "| RAM | 125.6 GiB |" in md and "| GPU(s) | none |" in md
    assert "```yaml\nschema_version: 1\nname: small\n" in md
    assert "  - Method: Baseline median / quantized median over interleaved runs; 95% CI by paired bootstrap." in md


def test_card_json_roundtrip(card):
    text = (card["run"] / "card.json").read_text(encoding="utf-8")
    data = json.loads(text, parse_constant=lambda c: pytest.fail(f"non-standard JSON constant {c}"))
    assert data["card_schema_version"] == 1
    assert data == json.loads(json.dumps(build_context(card["run"])))
    assert [p["name"] for p in data["plots"]] == ["speedup", "quality_speed", "sqnr", "weights"]


def test_html_self_contained(card):
    html = card["html"]
    assert not re.search(r"""(?:src|href)\s*=\s*["']?\s*(?:https?:)?//""", html, re.I)
    assert "<script" not in html.lower()
    assert html.count('src="data:image/png;base64,') == 4
    assert "@media print" in html
    assert "0.9981 [0.9976, 0.9985]" in html


def test_escaping(run):
    _rename_model(run, EVIL + "|x")
    render_card(run)
    html = (run / "card.html").read_text(encoding="utf-8")
    md = (run / "card.md").read_text(encoding="utf-8")
    assert EVIL not in html and "<script" not in html.lower()
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
    assert "| minilm | w4-g32 | cosine_mean | 0.9853 [0.9821, 0.9880] | — |" in md
    assert "plots/speedup.png" not in written and "plots/quality_speed.png" not in written
    assert "plots/sqnr.png" in written
    assert "x faster" not in md


def test_calibration_shown(run):
    cal = {"dataset": "text", "size": 32, "method": "minmax", "percentile": 99.99}
    edit_json(run / "meta.json", lambda m: m["experiment"]["schemes"][0].update(
        calibration=cal, activations=dict(m["experiment"]["schemes"][0]["activations"], dynamic=False)))
    for p in (run / "cells").glob("minilm__w8a8-dyn__*.json"):
        edit_json(p, lambda c: c.update(calibration={"dataset": "builtin:text", "size": 32, "method": "minmax",
                                                       "hash": "abcdef1234567890", "overlap_with_eval": 2}))
    render_card(run)
    md = (run / "card.md").read_text(encoding="utf-8")
    assert "| text, 32 samples, minmax, hash abcdef12, ⚠ 2 samples overlap eval |" in md
    assert "8-bit unsigned asym per_tensor static" in md
    assert "- Cell minilm__w8a8-dyn__text: 2 calibration samples also appear in the evaluation set." in md


def test_causal_lm_higher_log_ppl_ratio_degrades_more(run):
    def to_causal(d):
        d = replace_strings(d, "encoder", "causal_lm")
        for r in d.get("rows", []):
            if r["metric"] == "cosine_mean":
                r["metric"], r["variant"] = "log_ppl_ratio", "paired"
        return d
    for p in [run / "meta.json", *(run / "cells").glob("*.json")]:
        edit_json(p, to_causal)
    render_card(run)
    md = (run / "card.md").read_text(encoding="utf-8")
    assert "text log-PPL ratio 0.998, code log-PPL ratio 0.995 — text degrades more (1.0x code)." in md


def test_no_torch_import(run):
    assert_no_heavy_imports("import qbench.report; qbench.report.render_card(sys.argv[1])", run)


def test_golden_card_md(card):
    if os.environ.get("QBENCH_UPDATE_GOLDEN") == "1":
        GOLDEN.write_text(card["md"], encoding="utf-8")
    assert GOLDEN.is_file(), "golden card missing; run with QBENCH_UPDATE_GOLDEN=1 to create it"
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
