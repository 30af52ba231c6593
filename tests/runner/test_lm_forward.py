"""measure.lm_forward end to end: a run on the tiny local Llama times and profiles a W8A8 pair through qbench's
decoder forward and an attention-quantized pair through the model's own, each row and profile saying how; the
setting's serialization."""
from __future__ import annotations

import json

import pytest

from qbench.schema.experiment import Measure


def test_the_setting_is_stored_only_when_it_is_not_the_default():
    assert "lm_forward" not in Measure().model_dump()
    assert Measure(lm_forward="qbench").model_dump()["lm_forward"] == "qbench"
    with pytest.raises(ValueError, match="lm_forward"):
        Measure(lm_forward="compiled")


@pytest.mark.slow
def test_a_run_says_how_each_pair_was_timed(tiny_models, tmp_path):
    from qbench import api
    from qbench.runner.measure import GRAPH_FORWARD, OWN_FORWARD
    from tests.runner.support import W8A8_AND_ATTENTION, write_experiment

    exp = write_experiment(tmp_path, {"llama": tiny_models["llama"]}, W8A8_AND_ATTENTION, name="graph")
    exp.write_text(exp.read_text().replace("eval_samples: 8}", "eval_samples: 8, lm_forward: qbench, profile: true}")
                   .replace("  - {name: code, dataset: \"builtin:code\"}\n", ""))
    out = api.run(exp, out=tmp_path / "reports", progress=False, log=lambda s: None)
    assert out.status == "ok"
    for scheme, how in (("w8a8", f"both sides: {GRAPH_FORWARD}, the float work around the linears in "),
                        ("w8a8-attn", f"both sides: {OWN_FORWARD}")):
        rows = json.loads((out.run_dir / "cells" / f"llama__{scheme}__text.json").read_text())["rows"]
        timed = [r for r in rows if r["metric"] in ("latency_ms", "decode_ms_per_token")]
        assert len(timed) == 8 and all(how in r["method"] for r in timed)
        assert all(r["value"] > 0 for r in timed)
    assert "attention or residual ops" in next(
        r["method"] for r in json.loads((out.run_dir / "cells" / "llama__w8a8-attn__text.json").read_text())["rows"]
        if r["metric"] == "decode_ms_per_token")
    assert GRAPH_FORWARD in (out.run_dir / "card.md").read_text()
    # the profile goes through the forward the speed-ups were timed with, and says so
    for scheme, by, forward in (("w8a8", "calls", GRAPH_FORWARD), ("w8a8-attn", "hooks", OWN_FORWARD)):
        prof = json.loads((out.run_dir / "cells" / f"llama__{scheme}__text.json").read_text())["profile"]
        assert prof["profiled_by"] == by and forward in prof["forward"]
        for rows in prof["phases"].values():
            assert all(r["ms_by_category"]["linear"] > 0 and r["ms_by_category"]["norm"] > 0 for r in rows)
    note = json.loads((out.run_dir / "card.json").read_text())["profile"]["note"]
    assert "through qbench's decoder forward" in note and "through the model's own forward, with a hook" in note
    setup = json.loads((out.run_dir / "card.json").read_text())["setup"]["measure"]["rows"]
    row = next(r["cells"][1] for r in setup if r["cells"][0] == "Causal LM prefill and decode")
    assert row.startswith("qbench's decoder forward") and "2 of 4 timings through the model's own forward" in row


def test_the_setup_row_counts_the_pairs_timed_the_other_way():
    from qbench.report.setup import _lm_forward

    def cell(*methods):
        return {"rows": [{"metric": "decode_ms_per_token", "variant": "quantized", "method": m} for m in methods]
                + [{"metric": "latency_ms", "variant": "quantized", "method": "does not run this pair"}]}

    graph, own = "both sides: qbench's decoder forward", "both sides: ... does not run this pair: ..."
    assert _lm_forward({}, [{"rows": []}]) == ""                                   # no causal LM
    assert _lm_forward({}, [cell(graph)]).startswith("the model's own forward")
    assert _lm_forward({"lm_forward": "qbench"}, [cell(graph, graph)]).endswith("as each timing row says)")
    assert _lm_forward({"lm_forward": "qbench"}, [cell(graph), cell(own, own)]).endswith(
        "; 2 of 3 timings through the model's own forward instead (their rows say why)")
