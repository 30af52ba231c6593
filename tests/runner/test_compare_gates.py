"""Compare and gates end to end on two real runs of a small experiment (tiny local models)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.runner.support import SCHEMES, write_experiment

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]


def qbench(*args):
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.run([sys.executable, "-m", "qbench.cli", *map(str, args), "--no-progress"]
                          if args[0] == "run" else [sys.executable, "-m", "qbench.cli", *map(str, args)],
                          env=env, capture_output=True, text=True, timeout=300)


def with_gates(exp: Path, gates: str) -> Path:
    exp.write_text(exp.read_text() + gates)
    return exp


def test_two_runs_compare_and_gates(tiny_models, tmp_path):
    passing = """gates:
  - {metric: top1_agreement, workload: code, scheme: w8a8, min: 0.5}
  - {metric: weight_bytes, scheme: w4g16, max: 100000000}
"""
    failing = """gates:
  - {metric: kl_mean, workload: code, max: 0.0}
"""
    exp_a = with_gates(write_experiment(tmp_path, {"gpt2": tiny_models["gpt2"]}, SCHEMES, name="a"), passing)
    exp_b = with_gates(write_experiment(tmp_path, {"gpt2": tiny_models["gpt2"]}, SCHEMES, name="b"), failing)
    ra = qbench("run", exp_a, "--out", tmp_path / "ra")
    assert ra.returncode == 0, ra.stderr
    assert "PASS" in ra.stdout + ra.stderr
    rb = qbench("run", exp_b, "--out", tmp_path / "rb")
    assert rb.returncode == 3, rb.stderr
    assert "a gate failed" in rb.stderr
    run_a = next((tmp_path / "ra" / "a").iterdir())
    run_b = next((tmp_path / "rb" / "b").iterdir())
    card_b = json.loads((run_b / "card.json").read_text())
    assert [g["status"] for g in card_b["gates"]] == ["fail"]
    assert "Gates" in (run_b / "card.md").read_text()

    cmp = qbench("compare", run_a, run_b, "--out", tmp_path / "cmp")
    assert cmp.returncode == 0, cmp.stderr
    ctx = json.loads((tmp_path / "cmp" / "compare.json").read_text())
    assert not any("fingerprint" in w for w in ctx["warnings"])  # same machine
    md = (tmp_path / "cmp" / "compare.md").read_text()
    for scheme in ("w8a8", "w4g16"):
        assert scheme in md
    # the card schema holds for both real cards
    from qbench.report.card_schema import validate_card

    assert validate_card(json.loads((run_a / "card.json").read_text())) == []
    assert validate_card(card_b) == []
    missing = qbench("compare", run_a, tmp_path / "nope")
    assert missing.returncode == 2 and "Traceback" not in missing.stderr
