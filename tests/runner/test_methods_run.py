"""A run with calibrated methods and a value-table format: each cell records its method, parameters and time; the
calibration pool is run even though activations are dynamic or absent; the card's setup shows the method."""
from __future__ import annotations

import json

import pytest

from qbench import api
from tests.runner.support import write_experiment

pytestmark = pytest.mark.slow

SCHEMES = """\
  - name: w4-gptq
    weights: {bits: 4, symmetric: false, granularity: per_group, group_size: 16}
    method: {name: gptq, act_order: true, block_size: 32}
    calibration: {dataset: text, size: 4, seq_len: 16}
  - name: w8a8-sq
    weights: {bits: 8, granularity: per_channel}
    activations: {bits: 8, granularity: per_token, dynamic: true}
    method: {name: smoothquant, alpha: 0.6}
    calibration: {dataset: text, size: 4}
  - name: nf4-g16
    weights: {format: nf4, granularity: per_group, group_size: 16}
"""


def test_methods_are_recorded_and_shown(tiny_models, tmp_path):
    exp = write_experiment(tmp_path, {"gpt2": tiny_models["gpt2"]}, SCHEMES, name="methods")
    outcome = api.run(exp, out=tmp_path / "r", progress=False, log=lambda s: None)
    assert outcome.status == "ok"
    cells = {p.stem: json.loads(p.read_text()) for p in (outcome.run_dir / "cells").glob("*.json")}
    g = cells["gpt2__w4-gptq__text"]
    assert g["status"] == "ok" and g["method"]["name"] == "gptq"
    assert g["method"]["params"] == {"damp": 0.01, "block_size": 32, "act_order": True, "static_groups": False,
                                     "sequential": True}
    assert g["method"]["seconds"] > 0 and g["method"]["calibration_passes"] == 2    # one per transformer block
    assert g["calibration"]["used"] and g["calibration"]["seq_len"] == 16 and g["calibration"]["overlap_with_eval"] == 0
    sq = cells["gpt2__w8a8-sq__code"]
    assert sq["method"]["params"] == {"alpha": 0.6} and sq["calibration"]["used"]
    # GPT-2's LayerNorms are not folded (post-norm models feed them to a residual too): input scales instead
    assert sq["method"]["folded_into"] == [] and sq["method"]["input_scale_layers"]
    nf4 = cells["gpt2__nf4-g16__text"]
    assert nf4["method"]["name"] == "rtn" and nf4["kernels"] == ["reference"]
    assert nf4["kernel_info"]["reference"]["emulated"] is True
    assert {e["weights"] for e in nf4["quant_map"] if e["applied"]} == {"nf4 per_group(16)"}
    md = (outcome.run_dir / "card.md").read_text(encoding="utf-8")
    assert "gptq: act_order true, block_size 32, damp 0.01, sequential true, static_groups false;" in md
    assert "| nf4-g16 | nf4 | — | — | per_group (16) |" in md
