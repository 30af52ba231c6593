"""Per-module overrides (Scheme.overrides): first match wins, each recipe quantized with its own kernel, method
and activations, and the quantization map says which override decided."""
from __future__ import annotations

import torch

from qbench.engine.api import plan_modules, quantize_
from qbench.engine.methods import rtn
from qbench.engine.primitives import QuantSpec
from qbench.schema.experiment import Scheme


def tiny_llama():
    import transformers

    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                                   num_key_value_heads=2, vocab_size=200, max_position_embeddings=64)
    return transformers.LlamaForCausalLM(cfg).eval()


SCHEME = {
    "name": "mixed", "weights": {"bits": 4, "symmetric": False, "granularity": "per_group", "group_size": 16},
    "overrides": [
        {"match": "model.layers.0.mlp.*", "skip": True},
        {"match": "*.down_proj", "weights": {"bits": 8, "granularity": "per_channel"}},
        {"match": "*.q_proj", "activations": {"bits": 8, "granularity": "per_token"}},
        {"match": "*.o_proj", "method": {"name": "gptq", "act_order": True}},
        {"match": "*.no_such_module", "skip": True},
    ],
    "calibration": {"dataset": "text", "size": 4},
}


def test_first_matching_override_decides_each_module():
    model, ids = tiny_llama(), torch.randint(0, 200, (4, 16))
    with torch.no_grad():
        ref = model(ids).logits
    info: dict = {}
    records = {r.name: r for r in quantize_(model, SCHEME, calibrate=lambda m: m(ids), method_info=info)}
    # layer 0's MLP: skipped, before the down_proj override could match
    for n in ("gate_proj", "up_proj", "down_proj"):
        r = records[f"model.layers.0.mlp.{n}"]
        assert not r.applied and r.reason == "skipped by override 'model.layers.0.mlp.*'" and r.kernel == "baseline"
    down = records["model.layers.1.mlp.down_proj"]
    int8 = QuantSpec(8, True, True, "per_channel")
    assert down.applied and down.weights == int8.describe() and down.override == "*.down_proj"
    held = model.get_submodule(down.name).held_weight()
    assert held.spec == int8 and torch.equal(held.dequantize(), rtn(held.dequantize(), int8).dequantize())
    q = records["model.layers.1.self_attn.q_proj"]
    assert q.activations == "uint8 asym per_token dynamic" and q.override == "*.q_proj" and q.kernel != records[
        "model.layers.1.self_attn.k_proj"].kernel
    k = records["model.layers.1.self_attn.k_proj"]
    assert k.override == "" and k.activations == "float" and "per_group" in k.weights
    o = records["model.layers.0.self_attn.o_proj"]
    assert o.applied and o.override == "*.o_proj"
    assert info["name"] == "rtn" and [x["name"] for x in info["overrides"]] == ["gptq"]
    assert info["overrides"][0]["match"] == "*.o_proj" and info["overrides"][0]["params"]["act_order"] is True
    with torch.no_grad():
        out = model(ids).logits
    assert torch.isfinite(out).all() and float((out - ref).norm() / ref.norm()) < 0.5
    assert records["lm_head"].reason == "op 'lm_head' not in scheme ops"


def test_plan_and_map_entries_name_the_override():
    model = tiny_llama()
    scheme = Scheme.model_validate(SCHEME)
    plan = {p.name: p for p in plan_modules(model, scheme)}
    assert plan["model.layers.1.mlp.down_proj"].recipe == 2 and plan["model.layers.1.mlp.up_proj"].recipe == 0
    assert plan["model.layers.0.mlp.down_proj"].skip == "excluded"
    from qbench.engine.api import unmatched_overrides
    assert unmatched_overrides(model, scheme) == ["*.no_such_module"]
    rec = quantize_(tiny_llama(), {k: v for k, v in SCHEME.items() if k != "calibration"} | {
        "overrides": SCHEME["overrides"][:3]})
    d = {r.name: r.to_dict() for r in rec}
    assert d["model.layers.1.mlp.down_proj"]["override"] == "*.down_proj" and "override" not in d[
        "model.layers.1.mlp.up_proj"]


def test_a_module_a_group_size_cannot_hold_is_fine_when_an_override_gives_it_another_grid():
    model = tiny_llama()             # down_proj has 128 inputs, the others 64: groups of 128 only fit down_proj
    scheme = Scheme.model_validate({"name": "g", "weights": {"bits": 4, "granularity": "per_group", "group_size": 128},
                                    "overrides": [{"match": "*_proj", "weights": {"bits": 8}}]})
    plan = plan_modules(model, scheme)
    assert not any(p.skip == "group_size" for p in plan)
