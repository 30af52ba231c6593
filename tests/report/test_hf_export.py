"""Hugging Face model-card snippet (qbench.report.hf_export) against tests/fixtures/run_small."""
from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

from tests.report.support import assert_no_heavy_imports
import yaml

from qbench.report import render_card
from qbench.report.hf_export import BUNDLED_HUB_IDS, hf_snippet, hub_id, snippet_name, write_hf_snippet

ROOT = Path(__file__).resolve().parents[2]
FIXTURE = ROOT / "tests" / "fixtures" / "run_small"


@pytest.fixture
def run(tmp_path) -> Path:
    dst = tmp_path / "run_small"
    shutil.copytree(FIXTURE, dst)
    return dst


def _edit_json(path: Path, fn) -> None:
    data = json.loads(path.read_text(encoding="utf-8"))
    data = fn(data) or data
    path.write_text(json.dumps(data), encoding="utf-8")


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
        if origin is None:
            m["models"]["minilm"].pop("source_origin", None)
        else:
            m["models"]["minilm"]["source_origin"] = origin
    _edit_json(run / "meta.json", edit)


def test_front_matter_fields(run):
    text = hf_snippet(run, scheme="w8a8-dyn")
    _, front, body = split_front(text)
    assert front == {"base_model": "sentence-transformers/all-MiniLM-L6-v2", "base_model_relation": "quantized",
                     "tags": ["quantized", "qbench"], "library_name": "transformers"}
    assert body.lstrip().startswith("## Quantization: w8a8-dyn")
    assert text.rstrip("\n").endswith("Measured with qbench 0.1.0 on 2025-01-15; full card: card.md")


def test_numbers_exactly_as_in_card(run):
    render_card(run)
    card = (run / "card.md").read_text(encoding="utf-8")
    all_speed = md_table(card, "### Speed")
    for scheme, other in (("w8a8-dyn", "w4-g32"), ("w4-g32", "w8a8-dyn")):
        text = hf_snippet(run, model="minilm", scheme=scheme)
        speed = [r for r in all_speed if r[1] == scheme]
        assert len(speed) == 4  # 2 workloads x 2 batch sizes
        for m, s, w, bs, lb, lq, _pp, sp, _tp in speed:
            assert re.fullmatch(r"\d\.\d\dx \[\d\.\d\d, \d\.\d\d\]", sp)
            assert f"| {w} | {bs} | {sp} | {lb} | {lq} |" in text
        mem = [r for r in md_table(card, "### Memory") if r[1] == scheme]
        assert len(mem) == 1 and f"| {' | '.join(mem[0][2:])} |" in text
        qual = [r for r in md_table(card, "### Quality") if r[1] == scheme]
        assert len(qual) == 3
        for r in qual:
            assert f"| {' | '.join(r[2:])} |" in text
        summary = next(line for line in card.splitlines() if line.startswith(f"- {scheme} on minilm: "))
        assert summary in text.splitlines()
        # only this scheme's numbers
        assert f"- {other} on minilm: " not in text
        mine = {r[7] for r in speed}
        assert not [r[7] for r in all_speed if r[1] == other and r[7] not in mine and f"| {r[7]} |" in text]
    text = hf_snippet(run, scheme="w8a8-dyn")
    assert "| text | 8 | 1.43x [1.38, 1.49] | 60.2 [59.1, 61.0] | 42.1 [41.5, 43.0] |" in text
    assert "(95% CI 1.38-1.49)" in text
    assert "| 5.62 MiB | 1.84 MiB | 3.06x | 413 MiB |" in text
    assert "| cosine_mean | 0.9981 [0.9976, 0.9985] | 0.9952 [0.9943, 0.9960] |" in text


def test_scheme_configuration_kernel_hardware(run):
    text = hf_snippet(run, scheme="w4-g32")
    for row in ("| Weight bits | 4 |", "| Signedness | signed |", "| Symmetry | sym |",
                "| Granularity | per_group (32) |", "| Group size | 32 |", "| Activations | weight-only |",
                "| Quantized ops | linear |", "| Excluded modules (kept at baseline precision) | \\*.classifier.\\* |",
                "| Calibration | none (weight-only) |", "| Kernel(s) that ran | ref_w4_dequant |",
                "| Emulated kernel | yes (ref_w4_dequant) |"):
        assert row in text
    exact = re.search(r"```yaml\n(.*?)```", text, re.S).group(1)
    meta = json.loads((run / "meta.json").read_text(encoding="utf-8"))
    assert yaml.safe_load(exact) == meta["experiment"]["schemes"][1]
    assert ("- **Hardware:** Intel(R) Xeon(R) Gold 6338 CPU @ 2.00GHz | 16 cores | 125.6 GiB | avx512_vnni | no GPU"
            in text)
    assert "- **Baseline:** requested fp16, ran in fp32" in text
    assert "Kernel ref_w4_dequant is emulated" in text
    w8 = hf_snippet(run, scheme="w8a8-dyn")
    assert "| Kernel(s) that ran | int8_int_mm |" in w8 and "| Group size | — |" in w8
    assert "| Activations | 8-bit unsigned asym per_tensor dynamic |" in w8
    assert "ref_w4_dequant" not in w8  # the other scheme's kernel caveat is not carried over


def test_ambiguous_or_unknown_choice_raises(run):
    with pytest.raises(ValueError, match=r"2 schemes; choose one of: w8a8-dyn, w4-g32"):
        hf_snippet(run)
    with pytest.raises(ValueError, match=r"no scheme 'w9'.*w8a8-dyn, w4-g32"):
        hf_snippet(run, scheme="w9")
    with pytest.raises(ValueError, match=r"no model 'bert'.*minilm"):
        hf_snippet(run, model="bert", scheme="w4-g32")
    # a second model: both choices are listed when neither is given
    _edit_json(run / "meta.json", lambda m: m["experiment"]["models"].append({"id": "hf:org/tiny", "name": None}))
    for p in sorted((run / "cells").glob("minilm__*.json")):
        (run / "cells" / p.name.replace("minilm", "hf:org_tiny")).write_text(
            p.read_text(encoding="utf-8").replace('"minilm', '"hf:org/tiny'), encoding="utf-8")
    with pytest.raises(ValueError) as e:
        hf_snippet(run)
    assert "2 models; choose one of: minilm, hf:org/tiny" in str(e.value)
    assert "2 schemes; choose one of: w8a8-dyn, w4-g32" in str(e.value)
    with pytest.raises(ValueError, match="2 models"):
        hf_snippet(run, scheme="w4-g32")
    _, front, _ = split_front(hf_snippet(run, model="hf:org/tiny", scheme="w4-g32"))
    assert front["base_model"] == "org/tiny"


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
    text = hf_snippet(run, scheme="w8a8-dyn")
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
    assert "base_model" not in split_front(hf_snippet(run, scheme="w4-g32"))[1]


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

    assert BUNDLED_HUB_IDS == {k: v[2] for k, v in BUNDLED.items() if v[2]}


def test_write_hf_snippet_atomic(run):
    path = write_hf_snippet(run, scheme="w8a8-dyn")
    assert path == run / "hf-minilm-w8a8-dyn.md"
    assert path.read_text(encoding="utf-8") == hf_snippet(run, scheme="w8a8-dyn")
    assert oct(path.stat().st_mode & 0o777) == "0o644"
    assert not list(run.glob(".*.tmp"))
    assert snippet_name("hf:../../etc", "a/b") == "hf-hf_.._.._etc-a_b.md"
    assert "/" not in snippet_name("x/../y", "..")


def test_user_text_escaped(run):
    evil = "<script>alert(1)</script>"
    for p in [run / "meta.json", *(run / "cells").glob("*.json")]:
        p.write_text(p.read_text(encoding="utf-8").replace("w8a8-dyn", evil), encoding="utf-8")
    text = hf_snippet(run, scheme=evil)
    prose = re.sub(r"```yaml\n.*?```", "", text, flags=re.S)  # a code block shows HTML as text, like card.md
    assert "<script" not in prose and "&lt;script>alert(1)&lt;/script>" in prose
    assert f"name: {evil}" in text
    head, front, _ = split_front(text)
    assert front["tags"] == ["quantized", "qbench"]


def test_no_torch_import(run):
    assert_no_heavy_imports("from qbench.report.hf_export import hf_snippet; hf_snippet(sys.argv[1], scheme='w4-g32')", run)