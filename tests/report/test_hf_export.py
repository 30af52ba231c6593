"""Hugging Face model-card snippet (qbench.report.hf_export) against tests/fixtures/run_small."""
from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

import yaml

from tests.report.support import assert_no_heavy_imports, edit_json, get_row, set_rows

from qbench.report import render_card
from qbench.report.hf_export import BUNDLED_HUB_IDS, hf_snippet, hub_id, snippet_name, write_hf_snippet

ROOT = Path(__file__).resolve().parents[2]
FIXTURE = ROOT / "tests" / "fixtures" / "run_small"


@pytest.fixture
def run(tmp_path) -> Path:
    dst = tmp_path / "run_small"
    shutil.copytree(FIXTURE, dst)
    return dst


def meta_of(run: Path) -> dict:
    return json.loads((run / "meta.json").read_text(encoding="utf-8"))


def split_front(text: str) -> tuple[str, dict, str]:
    """(front matter text, parsed front matter, body); fails unless the text opens with a --- block."""
    m = re.match(r"---\n(.*?\n)---\n(.*)\Z", text, re.S)
    assert m, "no YAML front matter block at the top"
    data = yaml.safe_load(m.group(1))
    assert isinstance(data, dict)
    return m.group(1), data, m.group(2)


def md_table(md: str, heading: str) -> list[list[str]]:
    """Body rows of the first Markdown table under `heading` (cells split on unescaped pipes)."""
    part = md.split(heading + "\n", 1)[1]
    rows = []
    for line in part.splitlines():
        if line.startswith("|"):
            rows.append([c.strip() for c in re.split(r"(?<!\\)\|", line.strip())[1:-1]])
        elif rows:
            break
    return rows[2:]  # header and alignment rows


def _set_model_id(run: Path, model_id: str, origin: str | None) -> None:
    def edit(m):
        m["experiment"]["models"][0].update(id=model_id, name="minilm")
        m["models"]["minilm"]["id"] = model_id
        m["models"]["minilm"]["source_origin"] = origin or ""  # None: nothing said about where it came from
    edit_json(run / "meta.json", edit)


def test_front_matter_fields(run):
    text = hf_snippet(run, model="minilm", scheme="w8a8-dyn")
    _, front, body = split_front(text)
    index = front.pop("model-index")
    assert front == {"base_model": "sentence-transformers/all-MiniLM-L6-v2", "base_model_relation": "quantized",
                     "tags": ["quantized", "qbench"], "library_name": "transformers"}
    # evaluation results as Hugging Face reads them: per workload, quality and speed-up with their intervals
    cos = get_row(run, "minilm__w8a8-dyn__text", "cosine_mean")
    sp = get_row(run, "minilm__w8a8-dyn__text", "speedup", "paired", 8)
    assert [i["name"] for i in index] == ["minilm-w8a8-dyn"]
    text_res, code_res = index[0]["results"]
    assert text_res["task"] == {"type": "feature-extraction"}
    assert text_res["dataset"] == {"name": "text (builtin:text)", "type": "qbench/text"}
    got = {m["type"]: m for m in text_res["metrics"]}
    assert got["cosine_mean"]["value"] == round(cos["value"], 6)
    assert got["cosine_mean"]["name"].endswith(f"(95% CI {cos['ci_low']:.4g} to {cos['ci_high']:.4g})")
    assert got["speedup"]["value"] == round(sp["value"], 6) and "at batch 8" in got["speedup"]["name"]
    assert all(m["verified"] is False for m in got.values()) and code_res["dataset"]["type"] == "qbench/code"
    assert body.lstrip().startswith("## Quantization: w8a8-dyn")
    meta = meta_of(run)
    assert text.rstrip("\n").endswith(f"Measured with qbench {meta['qbench_version']} on {meta['created'][:10]}; "
                                       "full card: card.md")


def test_numbers_exactly_as_in_card(run):
    enc = "minilm__w8a8-dyn__text"
    set_rows(run, enc, "latency_ms", "baseline", 8, value=60.2, ci_low=59.1, ci_high=61.0)
    set_rows(run, enc, "latency_ms", "quantized", 8, value=42.1, ci_low=41.5, ci_high=43.0)
    set_rows(run, enc, "speedup", "paired", 8, value=1.43, ci_low=1.38, ci_high=1.49)
    set_rows(run, enc, "weight_bytes", "baseline", value=6 * 2 ** 20)
    set_rows(run, enc, "weight_bytes", "quantized", value=2 * 2 ** 20)
    set_rows(run, enc, "cosine_mean", value=0.9981, ci_low=0.9976, ci_high=0.9985)
    set_rows(run, "minilm__w8a8-dyn__code", "cosine_mean", value=0.9952, ci_low=0.9943, ci_high=0.9960)
    render_card(run)
    card = (run / "card.md").read_text(encoding="utf-8")
    all_speed = md_table(card, "### Speed")
    for scheme, other in (("w8a8-dyn", "w4-g32"), ("w4-g32", "w8a8-dyn")):
        text = hf_snippet(run, model="minilm", scheme=scheme)
        speed = [r for r in all_speed if r[:2] == ["minilm", scheme]]
        assert len(speed) == 4  # 2 workloads x 2 batch sizes
        for m, s, w, bs, lb, lq, _pp, sp, _tp in speed:
            assert re.fullmatch(r"\d\.\d\dx \[\d\.\d\d, \d\.\d\d\]", sp)
            assert f"| {w} | {bs} | {sp} | {lb} | {lq} |" in text
        mem = [r for r in md_table(card, "### Memory") if r[:2] == ["minilm", scheme]]
        assert len(mem) == 1 and f"| {' | '.join(mem[0][2:])} |" in text
        qual = [r for r in md_table(card, "### Quality") if r[:2] == ["minilm", scheme]]
        assert len(qual) == 3
        for r in qual:
            assert f"| {' | '.join(r[2:])} |" in text
        summary = next(line for line in card.splitlines() if line.startswith(f"- {scheme} on minilm: "))
        assert summary in text.splitlines()
        # only this scheme's numbers
        assert f"- {other} on minilm: " not in text
        mine = {r[7] for r in speed}
        assert not [r[7] for r in all_speed if r[:2] == ["minilm", other] and r[7] not in mine
                    and f"| {r[7]} |" in text]
    text = hf_snippet(run, model="minilm", scheme="w8a8-dyn")
    assert "| text | 8 | 1.43x [1.38, 1.49] | 60.2 [59.1, 61.0] | 42.1 [41.5, 43.0] |" in text
    assert "(95% CI 1.38-1.49)" in text
    assert "| 6.00 MiB | 2.00 MiB | 3.00x | 32.0 / 20.9 | 512 MiB |" in text
    assert "| cosine_mean | 0.9981 [0.9976, 0.9985] | 0.9952 [0.9943, 0.9960] |" in text


def test_scheme_configuration_kernel_hardware(run):
    text = hf_snippet(run, model="minilm", scheme="w4-g32")
    for row in ("| Weight bits | 4 |", "| Signedness | signed |", "| Symmetry | sym |",
                "| Granularity | per_group (32) |", "| Group size | 32 |", "| Activations | weight-only |",
                "| Quantized ops | linear |", "| Excluded modules (kept at baseline precision) | \\*.classifier.\\* |",
                "| Calibration | none (weight-only) |", "| Kernel(s) that ran | int4_packed |",
                "| Emulated kernel | yes (int4_packed) |"):
        assert row in text
    exact = re.search(r"```yaml\n(.*?)```", text, re.S).group(1)
    meta = json.loads((run / "meta.json").read_text(encoding="utf-8"))
    assert yaml.safe_load(exact) == meta["experiment"]["schemes"][1]
    assert f"- **Hardware:** {meta['hardware_summary']}" in text
    assert "- **Baseline:** requested auto, ran in fp32" in text
    assert "Kernel int4_packed is emulated" in text
    w8 = hf_snippet(run, model="minilm", scheme="w8a8-dyn")
    assert "| Kernel(s) that ran | int8_int_mm |" in w8 and "| Group size | — |" in w8
    assert "| Activations | 8-bit unsigned asym per_tensor dynamic |" in w8
    assert "int4_packed" not in w8  # the other scheme's kernel caveat is not carried over


def test_ambiguous_or_unknown_choice_raises(run):
    with pytest.raises(ValueError) as e:
        hf_snippet(run)
    assert "2 models; choose one of: minilm, reflm" in str(e.value)
    assert "2 schemes; choose one of: w8a8-dyn, w4-g32" in str(e.value)
    with pytest.raises(ValueError, match="2 models"):
        hf_snippet(run, scheme="w4-g32")
    with pytest.raises(ValueError, match=r"2 schemes; choose one of: w8a8-dyn, w4-g32"):
        hf_snippet(run, model="minilm")
    with pytest.raises(ValueError, match=r"no scheme 'w9'.*w8a8-dyn, w4-g32"):
        hf_snippet(run, model="minilm", scheme="w9")
    with pytest.raises(ValueError, match=r"no model 'bert'.*minilm, reflm"):
        hf_snippet(run, model="bert", scheme="w4-g32")
    _, front, _ = split_front(hf_snippet(run, model="reflm", scheme="w4-g32"))
    assert "base_model" not in front  # reflm is qbench's own model, on no hub
    # one model and one scheme left: nothing to choose
    for p in {*(run / "cells").glob("reflm__*.json"), *(run / "cells").glob("*__w4-g32__*.json")}:
        p.unlink()
    edit_json(run / "meta.json", lambda m: m["experiment"].update(models=m["experiment"]["models"][:1],
                                                                  schemes=m["experiment"]["schemes"][:1]))
    assert split_front(hf_snippet(run))[2].lstrip().startswith("## Quantization: w8a8-dyn")


@pytest.mark.parametrize("model_id, origin", [
    ("hf:/data/models/tiny", "local directory /data/models/tiny"),
    ("hf:/data/models/tiny", None),
    ("hf:./checkpoints/tiny", None),
    ("hf:~/models/tiny", None),
    ("hf:org/tiny", "local directory org/tiny"),  # a relative directory that looks like a hub id
    ("hf:C:\\models\\tiny", None),
])
def test_local_path_is_not_a_base_model(run, model_id, origin):
    _set_model_id(run, model_id, origin)
    text = hf_snippet(run, model="minilm", scheme="w8a8-dyn")
    head, front, body = split_front(text)
    assert "base_model" not in front
    assert front["base_model_relation"] == "quantized" and front["tags"] == ["quantized", "qbench"]
    comment = [line for line in head.splitlines() if line.startswith("#")]
    assert comment == ["# base_model omitted: the model was loaded from a local directory, not from a Hugging "
                       "Face hub repository."]
    assert model_id[3:] not in text  # the local path does not leak into the card
    assert "This model is minilm quantized with the scheme" in body


def test_existing_local_directory_without_origin(run, tmp_path, monkeypatch):
    (tmp_path / "org" / "tiny").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    _set_model_id(run, "hf:org/tiny", None)
    assert "base_model" not in split_front(hf_snippet(run, model="minilm", scheme="w4-g32"))[1]


@pytest.mark.parametrize("model_id, origin, expected", [
    ("minilm", None, "sentence-transformers/all-MiniLM-L6-v2"),
    ("hf:gpt2", "Hugging Face hub gpt2", "gpt2"),
    ("hf:Qwen/Qwen2.5-0.5B", "Hugging Face hub Qwen/Qwen2.5-0.5B@main", "Qwen/Qwen2.5-0.5B"),
    ("hf:org/name_1.v2", None, "org/name_1.v2"),
    ("hf:org/a b", None, None),
    ("hf:org/x..y", None, None),
    ("weird", None, None),
])
def test_hub_id(model_id, origin, expected):
    got, why = hub_id(model_id, origin)
    assert got == expected
    assert bool(why) == (expected is None)


def test_bundled_hub_ids_match_loaders():
    from qbench.models.loaders import BUNDLED

    assert BUNDLED_HUB_IDS == {k: v.hub_id for k, v in BUNDLED.items() if v.hub_id}


def test_write_hf_snippet_atomic(run):
    path = write_hf_snippet(run, model="minilm", scheme="w8a8-dyn")
    assert path == run / "hf-minilm-w8a8-dyn.md"
    assert path.read_text(encoding="utf-8") == hf_snippet(run, model="minilm", scheme="w8a8-dyn")
    assert oct(path.stat().st_mode & 0o777) == "0o644"
    assert not list(run.glob(".*.tmp"))
    assert snippet_name("hf:../../etc", "a/b") == "hf-hf_.._.._etc-a_b.md"
    assert "/" not in snippet_name("x/../y", "..")


def test_user_text_escaped(run):
    evil = "<script>alert(1)</script>"
    for p in [run / "meta.json", *(run / "cells").glob("*.json")]:
        p.write_text(p.read_text(encoding="utf-8").replace("w8a8-dyn", evil), encoding="utf-8")
    text = hf_snippet(run, model="minilm", scheme=evil)
    prose = re.sub(r"```yaml\n.*?```", "", text, flags=re.S)  # a code block shows HTML as text, like card.md
    assert "<script" not in prose and "&lt;script>alert(1)&lt;/script>" in prose
    assert f"name: {evil}" in text
    head, front, _ = split_front(text)
    assert front["tags"] == ["quantized", "qbench"]


def test_no_torch_import(run):
    assert_no_heavy_imports("from qbench.report.hf_export import hf_snippet; hf_snippet(sys.argv[1], model='minilm', scheme='w4-g32')", run)