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
    methods = [cell(outcome, f"gpt2__w4t-qat__{w}")["method"] for w in ("text", "code")]
    assert "shared_from" not in methods[0] and methods[1]["shared_from"] == "gpt2__w4t-qat__text"
    runs = [m["training"] for m in methods]
    assert not runs[0]["reused"] and runs[0] == runs[1] and len(runs[0]["loss"]) == 6 and runs[0]["tokens"] > 0
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
    paired = [r["cells"][:4] for r in card["pairs"]["table"]["rows"]]
    assert ["gpt2", "w4t", "w4t-qat", "KL mean"] in paired                  # twins differ only in method
    md = (outcome.run_dir / "card.md").read_text()
    assert "## Quantization-aware training" in md and "### Recovery of the PTQ gap" in md
    assert (outcome.run_dir / "plots" / "loss.png").is_file()


def test_a_qat_cell_killed_mid_training_resumes_to_the_same_weights(tiny_models, tmp_path):
    """kill -9 of `qbench run` once a checkpoint is on disk, then `--resume`: the training continues from the
    checkpoint and ends with exactly the weights, losses and quality of an uninterrupted run (one thread)."""
    import os
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    import torch

    schemes = """\
  - name: w4-qat
    weights: {bits: 4, symmetric: false, granularity: per_group, group_size: 16}
    method: {name: qat, steps: 300, lr: 1.0e-3, batch_size: 4, checkpoint_every: 5}
    calibration: {dataset: text, size: 16}
"""
    exp = write_experiment(tmp_path, {"gpt2": tiny_models["gpt2"]}, schemes, name="qatkill")
    exp.write_text(exp.read_text().replace("eval_samples: 8}", "eval_samples: 8, threads: 1}"))
    root = str(Path(__file__).resolve().parents[2])

    def env(cache):
        return dict(os.environ, PYTHONPATH=root, QBENCH_CACHE_DIR=str(tmp_path / cache))

    def qbench(*args, cache):
        return [sys.executable, "-m", "qbench.cli", "run", *args, "--no-progress"], env(cache)

    cmd, e = qbench(str(exp), "--out", str(tmp_path / "whole"), cache="cache-a")
    assert subprocess.run(cmd, env=e, capture_output=True, timeout=600).returncode == 0

    cmd, e = qbench(str(exp), "--out", str(tmp_path / "killed"), cache="cache-b")
    proc = subprocess.Popen(cmd, env=e, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None and not list((tmp_path / "cache-b").glob("qat/*/checkpoint.pt")):
        time.sleep(0.01)
    assert proc.poll() is None, "the run ended before a checkpoint could be interrupted"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    (ckpt,) = (tmp_path / "cache-b").glob("qat/*/checkpoint.pt")
    assert not (ckpt.parent / "final.pt").exists()
    (run_dir,) = (tmp_path / "killed" / "qatkill").iterdir()
    cmd, e = qbench("--resume", str(run_dir), cache="cache-b")
    done = subprocess.run(cmd, env=e, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr

    (a,) = (tmp_path / "cache-a").glob("qat/*/final.pt")
    (b,) = (tmp_path / "cache-b").glob("qat/*/final.pt")
    assert a.parent.name == b.parent.name                                # the same key: same inputs
    fa, fb = torch.load(a, weights_only=False), torch.load(b, weights_only=False)
    assert fa["losses"] == fb["losses"] and len(fa["losses"]) == 300
    assert fa["tensors"].keys() == fb["tensors"].keys()
    assert all(torch.equal(fa["tensors"][k], fb["tensors"][k]) for k in fa["tensors"])
    (whole_dir,) = (tmp_path / "whole" / "qatkill").iterdir()
    first = json.loads((run_dir / "cells" / "gpt2__w4-qat__text.json").read_text())["method"]["training"]
    assert first["resumed_from"] > 0 and first["resumed_from"] % 5 == 0 and not first["reused"]
    for w in ("text", "code"):
        ka, kb = (json.loads((d / "cells" / f"gpt2__w4-qat__{w}.json").read_text()) for d in (whole_dir, run_dir))
        assert ka["sequences"] == kb["sequences"] and ka["quant_map"] == kb["quant_map"]
