"""qbench sensitivity: decision units, the per-unit measurements against a hand-built quantized copy, bits per
weight by hand, and the command end to end on the tiny local models."""
from __future__ import annotations

import copy
import json
import math
import subprocess
import sys

import pytest
import torch
from torch.nn import functional as F

from qbench.engine.methods import rtn
from qbench.engine.primitives import QuantSpec
from qbench.runner.sensitivity import decision_units, measure, unit_bits
from qbench.schema.experiment import Scheme


def tiny_llama():
    import transformers

    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                                   num_key_value_heads=2, vocab_size=200, max_position_embeddings=64,
                                   initializer_range=0.2)
    return transformers.LlamaForCausalLM(cfg).eval()


def batch():
    g = torch.Generator().manual_seed(2)
    mask = torch.ones(3, 12, dtype=torch.long)
    mask[2, 8:] = 0
    return {"input_ids": torch.randint(0, 200, (3, 12), generator=g), "attention_mask": mask}


def names(model):
    return [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and n != "lm_head"]


def test_units_are_the_linears_that_share_an_input():
    model = tiny_llama()
    units = decision_units(model, names(model), lambda m: m(**batch()))
    a = "model.layers.0.self_attn."
    assert units[:4] == [[a + "q_proj", a + "k_proj", a + "v_proj"], [a + "o_proj"],
                         ["model.layers.0.mlp.gate_proj", "model.layers.0.mlp.up_proj"], ["model.layers.0.mlp.down_proj"]]
    assert len(units) == 8 and sorted(sum(units, [])) == sorted(names(model))


def test_bits_per_weight_by_hand():
    assert unit_bits([(8, 32)], QuantSpec(4, True, False, "per_group", 16)) == (8 * 32 * 4 + 16 * 64) / 256
    assert unit_bits([(8, 32), (4, 32)], QuantSpec(8, True, True, "per_channel")) == (384 * 8 + 12 * 32) / 384
    assert unit_bits([(8, 32)], QuantSpec(4, False, True, "per_tensor", None, "nf4")) == (256 * 4 + 32) / 256


def test_each_measurement_equals_a_hand_quantized_copy():
    """Unit q/k/v of block 1 under W4 g16 and under W8A8: the score is the KL of a copy whose three weights were
    replaced by their round-to-nearest dequantization (and inputs quantized), the SQNR that of the three outputs,
    and the model is left exactly as it was."""
    model, b = tiny_llama(), batch()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    unit = [f"model.layers.1.self_attn.{p}_proj" for p in "qkv"]
    cands = [("w4", Scheme.model_validate({"name": "w4", "weights": {"bits": 4, "symmetric": False,
                                                                      "granularity": "per_group", "group_size": 16}})),
             ("w8a8", Scheme.model_validate({"name": "w8a8", "weights": {"bits": 8},
                                             "activations": {"bits": 8, "granularity": "per_token"}}))]
    (entry,) = measure(model, "causal_lm", b, [unit], cands)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    from qbench.engine.api import activation_spec, weight_spec
    from qbench.engine.primitives import fake_quantize

    for label, scheme in cands:
        w, a = weight_spec(scheme), activation_spec(scheme)
        ref = copy.deepcopy(model)
        sig = err = 0.0
        outs = {}
        for n in unit:
            mod = ref.get_submodule(n)
            wf = mod.weight.detach().clone()
            with torch.no_grad():
                mod.weight.copy_(rtn(wf, w).dequantize())

            def pre(_m, args, a=a):
                _m.x = args[0]
                return (fake_quantize(args[0], a),) if a is not None else None

            def post(m, _args, y, wf=wf, n=n):
                outs[n] = (F.linear(m.x, wf), y)
            mod.register_forward_pre_hook(pre)
            mod.register_forward_hook(post)
        with torch.no_grad():
            lq = ref(**b).logits.double()
            lp = model(**b).logits.double()
        for yf, yq in outs.values():
            sig += float(yf.double().pow(2).sum())
            err += float((yf - yq).double().pow(2).sum())
        p, q = F.log_softmax(lp, -1), F.log_softmax(lq, -1)
        kl = float((p.exp() * (p - q)).sum(-1)[b["attention_mask"].bool()].mean())
        got = entry["results"][label]
        assert got["score"] == pytest.approx(kl, rel=1e-4, abs=1e-9)
        assert got["sqnr_db"] == pytest.approx(10 * math.log10(sig / err), abs=1e-3)
        assert got["bits"] == unit_bits([(64, 64), (32, 64), (32, 64)], w)
    assert entry["results"]["w4"]["score"] > entry["results"]["w8a8"]["score"] > 0


@pytest.mark.slow
def test_the_command_writes_the_report_and_ranks_units(tiny_models, tmp_path):
    from tests.runner.support import write_experiment

    exp = write_experiment(tmp_path, {"gpt2": tiny_models["gpt2"], "bert": tiny_models["bert"]}, """\
  - name: w4g16
    weights: {bits: 4, symmetric: false, granularity: per_group, group_size: 16}
  - name: w8
    weights: {bits: 8}
""", name="sens")
    out = tmp_path / "sens"
    run = subprocess.run([sys.executable, "-m", "qbench.cli", "sensitivity", str(exp), "--out", str(out),
                          "--samples", "3", "--seq-len", "16", "--no-progress"], capture_output=True, text=True,
                         timeout=600)
    assert run.returncode == 0, run.stderr
    for model in ("gpt2", "bert"):
        files = {p.name for p in (out / model).iterdir()}
        assert files == {"sensitivity.json", "sensitivity.md", "sensitivity.html", "sensitivity.png"}
        rep = json.loads((out / model / "sensitivity.json").read_text())
        assert rep["calibration"]["size"] == 3 and len(rep["units"]) >= 4
        scores = [u["results"]["w4g16"]["score"] for u in rep["units"]]
        md = (out / model / "sensitivity.md").read_text()
        top = max(rep["units"], key=lambda u: u["results"]["w4g16"]["score"])
        assert f"w4g16: most sensitive {top['names'][0].rsplit('.', 1)[0]}" in md
        assert all(s >= -1e-12 for s in scores)
    assert rep["score"] == "one_minus_cosine"
    bad = subprocess.run([sys.executable, "-m", "qbench.cli", "sensitivity", str(exp), "--model", "gtp2"],
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "--model" in bad.stderr and "did you mean 'gpt2'" in bad.stderr
