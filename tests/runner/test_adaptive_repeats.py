"""measure.speedup_ci_width end to end on the tiny models: each timing asks the rule, stops when it says so, the
rows record the repeats they took, and the card's Setup says so. The rule itself (the paired interval's width) is
tested in tests/metrics/test_timing.py; here it is replaced by one that tracks what it is asked, since the tiny
models' millisecond timings on a shared machine give intervals of any width."""
from __future__ import annotations

import json

import pytest

from qbench import api
from tests.runner.support import write_experiment

pytestmark = pytest.mark.slow


def test_adaptive_repeats_stop_early_and_say_so(tiny_models, tmp_path, monkeypatch):
    from qbench.runner import measure

    asked = []

    def rule(width, pairs=None):
        assert width == 1.9
        def stop(a, b):                  # satisfied the second time it is asked: at 8 pairs
            asked.append(len(a))
            return len(a) >= 8
        return stop
    monkeypatch.setattr(measure, "narrow_enough", rule)
    exp = write_experiment(tmp_path, {"gpt2": tiny_models["gpt2"], "bert": tiny_models["bert"]}, """\
  - name: w8a8
    weights: {bits: 8}
    activations: {bits: 8, granularity: per_token}
""", name="adaptive")
    text = exp.read_text().replace("repeats: 3,", "repeats: 40,").replace("eval_samples: 8}",
                                                                          "eval_samples: 8, speedup_ci_width: 1.9}")
    exp.write_text(text)
    out = api.run(exp, out=tmp_path / "reports", progress=False, log=lambda s: None)
    assert out.status == "ok"
    for cell in ("gpt2__w8a8__text", "gpt2__w8a8__code", "bert__w8a8__text", "bert__w8a8__code"):
        rows = json.loads((out.run_dir / "cells" / f"{cell}.json").read_text())["rows"]
        for b in (1, 4):                 # one timing per batch size: its latency and speed-up rows agree on n
            ns = {r["n"] for r in rows if r["batch_size"] == b and r["metric"] in ("speedup", "decode_speedup",
                                                                                   "latency_ms")}
            assert len(ns) == 1
            n = ns.pop()
            assert n == 8                         # asked at 6 and 8 pairs, stopped there, far below the cap
        assert all("adaptive" in r["method"] for r in rows if r["metric"] == "latency_ms")
    setup = json.loads((out.run_dir / "card.json").read_text())["setup"]["measure"]["rows"]
    repeats = next(r["cells"][1] for r in setup if r["cells"][0] == "Timed repeats")
    assert repeats.startswith("adaptive: until the speed-up's 95% CI is narrower than 1.9 of it, at most 40")
    assert "taken: 8-8" in repeats and set(asked) == {6, 8}
