"""A QAT scheme end to end on the tiny local models: its `if_fails` twin decides whether it trains, the trained
state is shared by the scheme's workloads, and the card reports the run and the recovery of the PTQ gap."""
from __future__ import annotations

import json
import re

import numpy as np
import pytest

from qbench import api
from tests.runner.support import write_experiment

pytestmark = pytest.mark.slow

SCHEMES = """\
  - name: w4t
    weights: {bits: 4, symmetric: true, granularity: per_tensor}
  - name: w4t-qat
    weights: {bits: 4, symmetric: true, granularity: per_tensor}
    method: {name: qat, steps: 6, lr: 1.0e-2, batch_size: 4, checkpoint_every: 2}
    calibration: {dataset: text, size: 16}
    if_fails: w4t
  - name: w8
    weights: {bits: 8, granularity: per_channel}
  - name: w8-qat
    weights: {bits: 8, granularity: per_channel}
    method: {name: qat, steps: 2}
    calibration: {dataset: text, size: 8}
    if_fails: w8
"""
GATES = """\
gates:
  - {name: "w4t KL tiny", metric: kl_mean, max: 1.0e-9, scheme: w4t, model: gpt2}
  - {name: "w8 KL bounded", metric: kl_mean, max: 100, scheme: w8, model: gpt2}
"""


@pytest.fixture(scope="module")
def qat_run(tiny_models, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("qat")
    exp = write_experiment(tmp, {"gpt2": tiny_models["gpt2"], "bert": tiny_models["bert"]}, SCHEMES, name="qat")
    exp.write_text(exp.read_text() + GATES)
    logs = []
    outcome = api.run(exp, out=tmp / "reports", progress=False, log=logs.append)
    return outcome, logs


def cell(outcome, cid):
    return json.loads((outcome.run_dir / "cells" / f"{cid}.json").read_text())


def test_the_twin_s_gates_decide_which_qat_cells_run(qat_run):
    outcome, logs = qat_run
    s = outcome.statuses
    assert s["gpt2__w4t-qat__text"] == s["gpt2__w4t-qat__code"] == "ok"
    for cid in ("bert__w4t-qat__text", "gpt2__w8-qat__code", "bert__w8-qat__text"):
        assert s[cid] == "skipped", cid
    assert "passed its gates" in cell(outcome, "gpt2__w8-qat__text")["reason"]
    assert "no gate judges 'w4t' on bert" in cell(outcome, "bert__w4t-qat__code")["reason"]
    trig = cell(outcome, "gpt2__w4t-qat__text")["triggered_by"]
    assert trig == {"scheme": "w4t", "gates": ["w4t KL tiny"]}
    assert any("runs because 'w4t' failed w4t KL tiny" in line for line in logs)
    assert any(v["status"] == "fail" for v in outcome.gates)          # the PTQ scheme did fail


def test_the_scheme_trains_once_for_both_workloads(qat_run):
    outcome, _ = qat_run
    runs = [cell(outcome, f"gpt2__w4t-qat__{w}")["method"]["training"] for w in ("text", "code")]
    assert sorted(r["reused"] for r in runs) == [False, True]
    assert runs[0]["loss"] == runs[1]["loss"] and len(runs[0]["loss"]) == 6 and runs[0]["tokens"] > 0
    a, b = (cell(outcome, f"gpt2__w4t-qat__{w}")["quant_map"] for w in ("text", "code"))
    assert [r["sqnr_db"] for r in a] == [r["sqnr_db"] for r in b]           # the same trained weights
    ptq = cell(outcome, "gpt2__w4t__text")["quant_map"]
    assert [r["sqnr_db"] for r in a] != [r["sqnr_db"] for r in ptq]        # and not the PTQ ones


def test_the_card_reports_the_training_and_the_recovered_gap(qat_run):
    outcome, _ = qat_run
    card = json.loads((outcome.run_dir / "card.json").read_text())
    t = card["training"]
    runs = {tuple(r["cells"][:2]): r["cells"] for r in t["runs"]["rows"]}
    assert runs[("gpt2", "w4t-qat")][3] == "6" and "ran because w4t failed: w4t KL tiny" in runs[("gpt2", "w4t-qat")][-1]
    assert "passed its gates" in runs[("gpt2", "w8-qat")][-1]
    rec = [r["cells"] for r in t["recovery"]["rows"]]
    assert [r[:4] for r in rec] == [["gpt2", "w4t-qat", "w4t", "KL mean"]]
    for w, shown in zip(("text", "code"), rec[0][4:]):
        a = np.asarray(cell(outcome, f"gpt2__w4t__{w}")["sequences"]["kl"])
        b = np.asarray(cell(outcome, f"gpt2__w4t-qat__{w}")["sequences"]["kl"])
        want = 100 * (a.mean() - b.mean()) / a.mean()
        got = float(re.match(r"(-?[\d.,]+(?:e-?\d+)?)%", shown).group(1).replace(",", ""))
        assert got == pytest.approx(want, rel=5e-3, abs=0.05), (shown, want)
    assert any(p["name"] == "loss" and p["data"]["facets"][0]["series"][0]["label"] == "w4t-qat"
               for p in card["plots"])
    md = (outcome.run_dir / "card.md").read_text()
    assert "## Quantization-aware training" in md and "### Recovery of the PTQ gap" in md
    assert (outcome.run_dir / "plots" / "loss.png").is_file()
