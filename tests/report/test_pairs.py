"""Scheme vs scheme on the same sequences (qbench.report.pairs), against scipy's Student-t and plain numpy."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from scipy import stats as sps

from tests.report.support import edit_json

from qbench.report import build_context
from qbench.report.pairs import only_method_or_format, only_ops

ROOT = Path(__file__).resolve().parents[2]
FIXTURE = ROOT / "tests" / "fixtures" / "run_small"


@pytest.fixture
def run(tmp_path):
    dst = tmp_path / "run_small"
    shutil.copytree(FIXTURE, dst)
    return dst


def _cell(run, name):
    return json.loads((run / "cells" / f"{name}.json").read_text(encoding="utf-8"))


def test_a_named_pair_is_compared_per_sequence_with_a_paired_t_interval(run):
    edit_json(run / "meta.json", lambda m: m["experiment"].update(pairs=[["w8a8-dyn", "w4-g32"]]))
    ctx = build_context(run)
    rows = {(r["cells"][0], r["cells"][3]): r for r in ctx["pairs"]["table"]["rows"]}
    assert set(rows) == {("minilm", "1 − cosine"), ("reflm", "KL mean"), ("reflm", "log-PPL ratio"),
                         ("reflm", "top-1 agreement")}
    for w, col in (("text", 4), ("code", 5)):
        a, b = (_cell(run, f"reflm__{s}__{w}")["sequences"] for s in ("w8a8-dyn", "w4-g32"))
        d = np.asarray(b["kl"], dtype=np.float64) - np.asarray(a["kl"], dtype=np.float64)
        half = sps.t.ppf(0.975, len(d) - 1) * d.std(ddof=1) / np.sqrt(len(d))
        text = rows[("reflm", "KL mean")]["cells"][col]
        got = [float(x) for x in text.split(" (n=")[0].replace("[", "").replace("]", "").replace(",", "").split()]
        assert got == pytest.approx([d.mean(), d.mean() - half, d.mean() + half], rel=5e-3)
        assert f"(n={len(d)})" in text
        assert text.endswith("w8a8-dyn better")         # 4-bit weights lose more than int8 W8A8 on every text
    cos = rows[("minilm", "1 − cosine")]["cells"][4]
    assert cos.endswith("w8a8-dyn better")
    md = (run / "card.md")
    from qbench.report import render_card

    render_card(run)
    assert "## Scheme vs scheme" in md.read_text(encoding="utf-8")


def test_no_pairs_no_section_and_other_sequences_are_not_paired(run):
    assert build_context(run)["pairs"] is None        # the fixture's two schemes differ in more than method
    edit_json(run / "meta.json", lambda m: m["experiment"].update(pairs=[["w8a8-dyn", "w4-g32"]]))
    for w in ("text", "code"):
        edit_json(run / "cells" / f"minilm__w4-g32__{w}.json", lambda c: c["evaluation"].update(hash="other"))
    rows = build_context(run)["pairs"]["table"]["rows"]
    minilm = [r for r in rows if r["cells"][0] == "minilm"]
    assert minilm == []                                # different evaluation samples: nothing to pair


def test_which_schemes_pair_by_themselves():
    w4 = {"bits": 4, "symmetric": False, "granularity": "per_group", "group_size": 64}
    rtn = {"name": "a", "weights": w4}
    gptq = {"name": "b", "weights": w4, "method": {"name": "gptq", "damp": 0.01}, "calibration": {"size": 8}}
    nf4 = {"name": "c", "weights": {"format": "nf4", "granularity": "per_group", "group_size": 64}}
    w3 = {"name": "d", "weights": dict(w4, bits=3)}
    peer = {"name": "e", "runtime": {"name": "llama.cpp", "type": "Q4_0"}}
    assert only_method_or_format(rtn, gptq) and only_method_or_format(rtn, nf4)
    assert not only_method_or_format(rtn, w3) and not only_method_or_format(rtn, dict(rtn, name="x"))
    assert not only_method_or_format(rtn, peer)


def test_schemes_that_differ_only_in_ops_pair():
    a8 = {"bits": 8, "granularity": "per_token"}
    base = {"name": "a", "weights": {"bits": 8}, "activations": a8, "ops": ["linear"]}
    attn = dict(base, name="b", ops=["linear", "attention"])
    assert only_ops(base, attn) and only_ops(attn, dict(attn, name="c", ops=["attention", "linear", "residual"]))
    assert only_ops({"name": "x", "weights": {"bits": 8}, "activations": a8}, attn)   # ops left out: [linear]
    assert not only_ops(base, dict(base, name="d")) and not only_ops(attn, dict(attn, ops=["attention", "linear"]))
    assert not only_ops(base, dict(attn, activations=dict(a8, bits=6)))
