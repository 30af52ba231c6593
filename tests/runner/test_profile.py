"""qbench bench model (runner.profile): module kinds, exclusive times on a fake clock, the summary by hand, and the
command end to end on the tiny local models."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from torch import nn

from qbench.engine.kernels.attention import attention_kernel
from qbench.engine.primitives import QuantSpec
from qbench.runner import profile
from qbench.runner.profile import _Profiler, categorize, summarize

ATTENTION = attention_kernel("cpu", QuantSpec(8, False, False, "per_token"))   # W8A8's attention kernel here


def tiny_llama():
    import transformers

    torch.manual_seed(0)
    return transformers.LlamaForCausalLM(transformers.LlamaConfig(
        hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        vocab_size=200, max_position_embeddings=64)).eval()


def test_module_kinds():
    from qbench.engine.api import quantize_

    model = tiny_llama()
    quantize_(model, {"name": "w8", "weights": {"bits": 8}})
    cats = {n: categorize(model).get(m) for n, m in model.named_modules()}
    assert cats["model.layers.0.self_attn.q_proj"] == cats["lm_head"] == "linear"   # QuantLinear and the head
    assert cats["model.layers.0.self_attn"] == "attention"
    assert cats["model.layers.1.input_layernorm"] == cats["model.norm"] == "norm"
    assert cats["model.layers.0.mlp.act_fn"] == "activation"
    assert cats["model.embed_tokens"] == "embedding"
    assert cats["model.layers.0"] is None and cats["model.layers.0.mlp"] is None        # their own time: other


class _Clock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t


class _Work(nn.Module):
    """Advances the fake clock by `own` seconds, then runs its children."""

    def __init__(self, clock, own, *children):
        super().__init__()
        self.clock, self.own, self.kids = clock, own, nn.ModuleList(children)

    def forward(self, x):
        self.clock.t += self.own
        for k in self.kids:
            x = k(x)
        return x


class Linearish(_Work):
    pass


class LayerNormish(_Work):
    pass


def test_exclusive_times_on_a_fake_clock(monkeypatch):
    """A tree whose modules each take a known own time: every kind gets the sum of its modules' own times, and a
    parent's children are not counted twice."""
    clock = _Clock()
    monkeypatch.setattr(profile.time, "perf_counter", clock)
    lin = [Linearish(clock, 0.010), Linearish(clock, 0.020)]
    model = _Work(clock, 0.001, _Work(clock, 0.002, lin[0], LayerNormish(clock, 0.004)), lin[1])
    monkeypatch.setattr(profile, "categorize", lambda m: {lin[0]: "linear", lin[1]: "linear",
                                                          model.kids[0].kids[1]: "norm"})
    with _Profiler(model, lambda: None) as p:
        model(torch.zeros(1))
    assert p.seconds["linear"] == pytest.approx(0.030) and p.seconds["norm"] == pytest.approx(0.004)
    assert p.seconds["attention"] == 0 and not p.stack
    assert not model._forward_hooks and not model._forward_pre_hooks      # hooks removed


def test_summary_by_hand():
    raw = {"prefill": {
        "baseline": {"plain": [1.0, 1.2, 0.9], "profiled": {"linear": 0.8, "attention": 0.1, "norm": 0.0,
                                                              "activation": 0.0, "embedding": 0.0, "other": 0.1},
                     "profiled_total": 1.0},
        "w8": {"plain": [0.5, 0.4, 0.45], "faults": [0, 7, 3], "profiled": {"linear": 0.25, "attention": 0.1,
                                                                             "norm": 0.0, "activation": 0.0,
                                                                             "embedding": 0.0, "other": 0.15},
               "profiled_total": 0.5}}}
    rows = {r["variant"]: r for r in summarize(raw)["prefill"]}
    w8 = rows["w8"]
    assert w8["page_faults"] == 3 and rows["baseline"]["page_faults"] is None    # a report from before faults
    assert w8["speedup"] == pytest.approx(2.0)                     # ratios 2.0, 3.0, 2.0: median 2.0
    assert w8["speedup_p10"] == pytest.approx(2.0) and w8["speedup_p90"] == pytest.approx(3.0)
    assert w8["ms"] == pytest.approx(450) and w8["share"]["linear"] == pytest.approx(0.5)
    assert w8["linears_free_ceiling"] == pytest.approx(0.5 / 0.25)
    assert w8["linears_free_vs_baseline"] == pytest.approx(1.0 / (0.45 * 0.5))   # baseline median 1.0
    assert rows["baseline"]["linears_free_ceiling"] == pytest.approx(5.0)


@pytest.mark.slow
def test_the_command_profiles_each_scheme(tiny_models, tmp_path):
    from tests.runner.support import write_experiment

    exp = write_experiment(tmp_path, {"gpt2": tiny_models["gpt2"], "bert": tiny_models["bert"]}, """\
  - name: w8a8
    weights: {bits: 8}
    activations: {bits: 8, granularity: per_token}
    ops: [linear, attention]
  - name: peer
    runtime: {name: llama.cpp, type: Q8_0}
""", name="prof")
    out = tmp_path / "prof"
    run = subprocess.run([sys.executable, "-m", "qbench.cli", "bench", "model", str(exp), "--out", str(out),
                          "--repeats", "3", "--warmup", "1", "--batch", "2", "--seq-len", "16", "--no-progress"],
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr
    for model, phases in (("gpt2", {"prefill", "decode"}), ("bert", {"prefill"})):
        rep = json.loads((out / model / "profile.json").read_text())
        assert set(rep["phases"]) == phases and rep["batch_size"] == 2 and rep["seq_len"] == 16
        assert ATTENTION in rep["kernels"]["w8a8"] and len(rep["kernels"]["w8a8"]) == 2
        assert "peer" in rep["skipped"]
        for rows in rep["phases"].values():
            assert [r["variant"] for r in rows] == ["baseline", "w8a8"]
            for r in rows:
                assert r["rounds"] == 3 and sum(r["share"].values()) == pytest.approx(1.0)
                assert r["ms_by_category"]["linear"] > 0 and r["ms_by_category"]["attention"] > 0
        assert "## prefill" in (out / model / "profile.md").read_text()
    bad = subprocess.run([sys.executable, "-m", "qbench.cli", "bench", "model", str(exp), "--scheme", "w8a9"],
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "--scheme" in bad.stderr and "did you mean 'w8a8'" in bad.stderr


@pytest.mark.slow
def test_a_run_with_measure_profile_shows_where_the_time_goes(tiny_models, tmp_path):
    from qbench import api
    from qbench.report.card_schema import validate_card
    from tests.runner.support import W8A8_AND_ATTENTION, write_experiment

    exp = write_experiment(tmp_path, {"gpt2": tiny_models["gpt2"], "bert": tiny_models["bert"]}, W8A8_AND_ATTENTION,
                           name="profiled")
    exp.write_text(exp.read_text().replace("eval_samples: 8}", "eval_samples: 8, profile: true}"))
    out = api.run(exp, out=tmp_path / "reports", progress=False, log=lambda s: None)
    assert out.status == "ok"
    c = json.loads((out.run_dir / "cells" / "gpt2__w8a8-attn__text.json").read_text())
    assert c["profile"]["batch_size"] == 1 and set(c["profile"]["phases"]) == {"prefill", "decode"}
    rows = {r["variant"]: r for r in c["profile"]["phases"]["prefill"]}
    assert set(rows) == {"baseline", "quantized"} and rows["quantized"]["ms_by_category"]["attention"] > 0
    assert ATTENTION in c["kernels"]
    card = json.loads((out.run_dir / "card.json").read_text())
    validate_card(card)
    table = card["profile"]["table"]
    assert [r["cells"][:3] for r in table["rows"]] == [
        ["gpt2", "prefill", "baseline"], ["gpt2", "prefill", "w8a8"], ["gpt2", "decode", "baseline"],
        ["gpt2", "decode", "w8a8"], ["gpt2", "prefill", "w8a8-attn"], ["gpt2", "decode", "w8a8-attn"],
        ["bert", "prefill", "baseline"], ["bert", "prefill", "w8a8"], ["bert", "prefill", "w8a8-attn"]]
    assert "## Where the time goes" in (out.run_dir / "card.md").read_text()


def test_page_faults_count_the_pages_a_forward_gets_fresh(monkeypatch):
    """A variant that maps 4 MiB anew and writes every page faults about 1024 times per forward; one that reuses
    its buffer does not (counted by the kernel, through getrusage)."""
    import mmap

    from torch import nn

    kept = bytearray(4 << 20)

    def fresh():
        buf = mmap.mmap(-1, 4 << 20)
        for off in range(0, 4 << 20, 4096):
            buf[off] = 1
        buf.close()

    def reused():
        for off in range(0, 4 << 20, 4096):
            kept[off] = 1
    m1, m2 = nn.Identity(), nn.Identity()
    runs = {id(m1): fresh, id(m2): reused}
    monkeypatch.setattr(profile, "phases", lambda model, task, batch: {"prefill": runs[id(model)]})
    raw = profile.measure({"baseline": m2, "fresh": m1}, "encoder", {}, repeats=3, warmup=1, device="cpu")
    rows = {r["variant"]: r for r in summarize(raw)["prefill"]}
    assert 1000 <= rows["fresh"]["page_faults"] <= 1100, rows["fresh"]["page_faults"]
    assert rows["baseline"]["page_faults"] <= 5


def test_a_graph_variant_is_profiled_call_by_call():
    """With measure.lm_forward: qbench, a causal LM's variants run as DecoderGraphs: each call timed into its kind
    (the kinds and the rest add up to the round's total), the timers off again for the plain rounds; a model the
    graph does not run keeps the module hooks, all variants alike, and says why."""
    import transformers

    from qbench.engine.api import quantize_
    from qbench.engine.graph import DecoderGraph

    base, quant = tiny_llama(), tiny_llama()
    quantize_(quant, {"name": "w8a8", "weights": {"bits": 8}, "activations": {"bits": 8, "granularity": "per_token"}})
    batch = {"input_ids": torch.randint(0, 200, (2, 12), generator=torch.Generator().manual_seed(0))}
    batch["attention_mask"] = torch.ones_like(batch["input_ids"])
    runs, how = profile.forwards({"baseline": base, "quantized": quant}, "causal_lm", batch, "qbench")
    assert all(isinstance(r, DecoderGraph) for r in runs.values()) and how.startswith("both sides: qbench's")
    assert profile.profiled_by(runs) == "calls"
    raw = profile.measure(runs, "causal_lm", batch, repeats=2, warmup=1, device="cpu")
    for phase in ("prefill", "decode"):
        for v in ("baseline", "quantized"):
            prof, total = raw[phase][v]["profiled"], raw[phase][v]["profiled_total"]
            assert sum(prof.values()) == pytest.approx(total)
            assert all(prof[k] > 0 for k in ("linear", "attention", "norm", "activation", "embedding"))
    assert all(r.seconds is None and r._plain is None for r in runs.values())        # plain again
    assert profile.forwards({"baseline": base}, "causal_lm", batch, "transformers")[0] == {"baseline": base}
    gpt2 = transformers.GPT2LMHeadModel(transformers.GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=200))
    runs, how = profile.forwards({"baseline": base, "gpt2": gpt2, "q": quant}, "causal_lm", batch, "qbench")
    assert runs == {"baseline": base, "gpt2": gpt2, "q": quant} and profile.profiled_by(runs) == "hooks"
    assert how.startswith("every variant: the model's own forward") and "does not run these variants" in how
