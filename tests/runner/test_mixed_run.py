"""Mixed schemes end to end on the tiny local models: a plan per budget from the model's sensitivity, realized
as per-module overrides and measured like every other scheme."""
from __future__ import annotations

import json

import pytest

from qbench import api
from qbench.errors import ConfigError
from tests.runner.support import write_experiment

pytestmark = pytest.mark.slow

SCHEMES = """\
  - name: w3
    weights: {bits: 3, symmetric: false, granularity: per_group, group_size: 32}
  - name: w8
    weights: {bits: 8, granularity: per_channel}
  - name: mix
    weights: {bits: 8}
    mixed: {budget_bits: [5.5, 7], choices: [w3, w8], samples: 4, seq_len: 16}
  - name: mix-random
    weights: {bits: 8}
    mixed: {budget_bits: 5.5, choices: [w3, w8], strategy: random, seed: 1, samples: 4, seq_len: 16}
"""


@pytest.fixture(scope="module")
def mixed_run(tiny_models, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("mixed")
    exp = write_experiment(tmp, {"gpt2": tiny_models["gpt2"], "bert": tiny_models["bert"]}, SCHEMES, name="mixed")
    return api.run(exp, out=tmp / "reports", progress=False, log=lambda s: None)


def cell(outcome, cid):
    return json.loads((outcome.run_dir / "cells" / f"{cid}.json").read_text())


def test_each_budget_is_a_scheme_planned_per_unit(mixed_run):
    assert mixed_run.status == "ok"
    for model in ("gpt2", "bert"):
        plans = {s: cell(mixed_run, f"{model}__{s}__text")["mixed"] for s in ("mix-5.5b", "mix-7b", "mix-random")}
        for s, p in plans.items():       # the scheme's other workload measured the same plan, and says so
            other = cell(mixed_run, f"{model}__{s}__code")
            assert other["mixed"] == p and other["method"]["shared_from"] == f"{model}__{s}__text"
        for s, p in plans.items():
            assert p["planned_bits"] <= p["budget_bits"] + 1e-9 and p["held_bits"] > 0
            qmap = {q["name"]: q for q in cell(mixed_run, f"{model}__{s}__text")["quant_map"]}
            for u in p["units"]:
                for n in u["names"]:
                    assert qmap[n]["override"] == n and qmap[n]["weights"].startswith(
                        "int3" if u["choice"] == "w3" else "int8"), (s, n)
        choices = lambda p: [u["choice"] for u in p["units"]]
        assert choices(plans["mix-7b"]).count("w8") > choices(plans["mix-5.5b"]).count("w8")
        assert plans["mix-5.5b"]["strategy"] == "optimal" and plans["mix-random"]["strategy"] == "random"
        # the optimal plan predicts no more damage than the random one at the same budget
        assert plans["mix-5.5b"]["predicted"] <= plans["mix-random"]["predicted"]


def test_the_card_shows_the_plans(mixed_run):
    card = json.loads((mixed_run.run_dir / "card.json").read_text())
    rows = {tuple(r["cells"][:2]): r["cells"] for r in card["mixed"]["plans"]["rows"]}
    assert set(rows) == {(m, s) for m in ("gpt2", "bert") for s in ("mix-5.5b", "mix-7b", "mix-random")}
    assert any(p["name"] == "frontier" for p in card["plots"])
    md = (mixed_run.run_dir / "card.md").read_text()
    assert "## Mixed precision" in md


def test_impossible_budgets_are_refused_before_the_run(tiny_models, tmp_path):
    exp = write_experiment(tmp_path, {"gpt2": tiny_models["gpt2"]}, SCHEMES.replace("[5.5, 7]", "3.2"), name="low")
    with pytest.raises(ConfigError) as e:
        api.run(exp, out=tmp_path / "r", progress=False, log=lambda s: None)
    assert "schemes[2].mixed.budget_bits" in str(e.value) and "below the cheapest plan" in str(e.value)
