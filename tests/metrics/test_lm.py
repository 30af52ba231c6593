"""Causal-LM statistics against hand-computed values and full-logit float64 oracles."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from qbench.metrics.lm import (cat_refs, load_or_compute, model_fingerprint, prefix_match, python_prefix_ok,
                               reference_topk, slice_ref, token_stats)
from qbench.runner.measure import generation_rows, lm_rows
from tests.metrics.test_quality import lm_token_stats


def _logits_from_probs(probs):
    """(B, T, V) logits whose softmax is probs (T positions predicting tokens 1..T-1; last is ignored)."""
    return torch.tensor(probs, dtype=torch.float64).log()


def test_kl_top1_and_rest_bucket_by_hand():
    # one sequence, two tokens: position 0 predicts token ids[1]; position 1 is the unused last one
    p = [[[0.5, 0.3, 0.2], [1 / 3, 1 / 3, 1 / 3]]]
    q = [[[0.45, 0.35, 0.2], [1 / 3, 1 / 3, 1 / 3]]]
    ids = torch.tensor([[0, 1]])
    mask = torch.ones_like(ids)
    full = token_stats(reference_topk(_logits_from_probs(p), ids, mask, k=3), _logits_from_probs(q), ids)
    exact = 0.5 * math.log(0.5 / 0.45) + 0.3 * math.log(0.3 / 0.35) + 0.2 * math.log(1.0)
    assert full["kl"][0, 0].item() == pytest.approx(exact, abs=1e-12)
    coarse = token_stats(reference_topk(_logits_from_probs(p), ids, mask, k=1), _logits_from_probs(q), ids)
    # top-1 token {0} and a bucket {1, 2}: 0.5 ln(0.5/0.45) + 0.5 ln(0.5/0.55)
    bucket = 0.5 * math.log(0.5 / 0.45) + 0.5 * math.log(0.5 / 0.55)
    assert coarse["kl"][0, 0].item() == pytest.approx(bucket, abs=1e-12)
    assert bucket <= exact
    assert full["nll_base"][0, 0].item() == pytest.approx(-math.log(0.3), abs=1e-12)
    assert full["nll_quant"][0, 0].item() == pytest.approx(-math.log(0.35), abs=1e-12)
    assert full["top1"][0, 0].item() == 1.0  # both put token 0 first
    assert full["dp_top"][0, 0].item() == pytest.approx(0.45 - 0.5, abs=1e-12)


def test_full_vocabulary_topk_matches_the_full_logit_oracle():
    g = torch.Generator().manual_seed(3)
    b, t, v = 3, 7, 11
    base = torch.randn(b, t, v, generator=g) * 2
    quant = base + 0.3 * torch.randn(b, t, v, generator=g)
    ids = torch.randint(0, v, (b, t), generator=g)
    mask = torch.ones_like(ids)
    mask[2, 5:] = 0
    oracle = lm_token_stats(base, quant, ids, mask)
    s = token_stats(reference_topk(base, ids, mask, k=v), quant, ids)
    rows = {r["metric"] + r["variant"]: r for r in lm_rows(s, v, v)}
    valid = s["valid"].double()
    n = valid.sum(1)
    assert torch.allclose((s["kl"] * valid).sum(1) / n, oracle["kl"], atol=1e-12)
    assert torch.allclose((s["nll_quant"] * valid).sum(1) / n, oracle["nll_quant"], atol=1e-12)
    assert torch.allclose((s["top1"] * valid).sum(1) / n, oracle["top1"], atol=1e-12)
    assert rows["kl_meanquantized"]["value"] == pytest.approx(oracle["kl"].mean().item(), abs=1e-12)
    # a smaller k never reports more KL than the full distribution (data-processing inequality)
    for k in (1, 3, 6):
        sk = token_stats(reference_topk(base, ids, mask, k=k), quant, ids)
        assert bool((sk["kl"] <= s["kl"] + 1e-12).all())


def test_noise_floor_baseline_against_itself():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(4, 9, 50, generator=g)
    ids = torch.randint(0, 50, (4, 9), generator=g)
    mask = torch.ones_like(ids)
    ref = reference_topk(logits, ids, mask, k=8)
    rows = {r["metric"] + r["variant"]: r for r in lm_rows(token_stats(ref, logits.clone(), ids), 8, 50)}
    assert rows["kl_meanquantized"]["value"] == 0.0
    assert rows["kl_maxquantized"]["value"] == 0.0
    assert rows["top1_agreementquantized"]["value"] == 1.0
    assert rows["log_ppl_ratiopaired"]["value"] == 0.0
    assert rows["p_top_changequantized"]["value"] == 0.0
    assert rows["pplbaseline"]["value"] == rows["pplquantized"]["value"]


def test_lm_rows_hand_computed():
    # two sequences of 3 and 1 scored tokens with chosen per-token values
    valid = torch.tensor([[True, True, True], [True, False, False]])
    s = {"valid": valid,
         "nll_base": torch.tensor([[1.0, 2.0, 3.0], [4.0, 9.0, 9.0]], dtype=torch.float64),
         "nll_quant": torch.tensor([[1.5, 2.0, 3.5], [4.0, 9.0, 9.0]], dtype=torch.float64),
         "kl": torch.tensor([[0.1, 0.2, 0.3], [0.6, 5.0, 5.0]], dtype=torch.float64),
         "top1": torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 1.0]], dtype=torch.float64),
         "dp_top": torch.tensor([[-0.1, 0.0, 0.1], [-0.2, 7.0, 7.0]], dtype=torch.float64)}
    r = {x["metric"] + x["variant"]: x for x in lm_rows(s, 5, 10)}
    assert r["pplbaseline"]["value"] == pytest.approx(math.exp((1 + 2 + 3 + 4) / 4))
    assert r["pplquantized"]["value"] == pytest.approx(math.exp((1.5 + 2 + 3.5 + 4) / 4))
    assert r["log_ppl_ratiopaired"]["value"] == pytest.approx((0.5 + 0 + 0.5 + 0) / 4)
    assert r["kl_meanquantized"]["value"] == pytest.approx((0.2 + 0.6) / 2)   # per sequence, then mean
    assert r["kl_medianquantized"]["value"] == pytest.approx(0.25)            # median of 0.1 0.2 0.3 0.6
    assert r["kl_maxquantized"]["value"] == pytest.approx(0.6)
    assert r["top1_agreementquantized"]["value"] == pytest.approx((2 / 3 + 0) / 2)
    se = np.std([2 / 3, 0.0], ddof=1) / math.sqrt(2)
    assert r["top1_agreement_sequantized"]["value"] == pytest.approx(se)
    assert r["p_top_changequantized"]["value"] == pytest.approx((0.0 + -0.2) / 2)
    assert r["kl_meanquantized"]["n"] == 2 and r["kl_p99quantized"]["n"] == 4


def test_prefix_match_and_generation_rows():
    a = torch.tensor([[1, 2, 3, 4], [1, 2, 3, 4], [5, 6, 7, 8]])
    b = torch.tensor([[1, 2, 3, 4], [1, 9, 3, 4], [0, 6, 7, 8]])
    assert prefix_match(a, b).tolist() == [4, 1, 0]

    class Tok:  # decodes every batch to two sound continuations and one broken one
        def batch_decode(self, ids, skip_special_tokens=True):
            return ["x = (1,\n", "def f(:\n", "y = 2\n"]

    prompts = torch.zeros(3, 2, dtype=torch.long)
    rows = {r["metric"] + r["variant"]: r for r in generation_rows(a, b, prompts, Tok(), python=True)}
    assert rows["gen_prefix_matchquantized"]["value"] == pytest.approx(5 / 3)
    assert rows["gen_exact_matchquantized"]["value"] == pytest.approx(1 / 3)
    assert rows["gen_parse_ratebaseline"]["value"] == pytest.approx(2 / 3)


@pytest.mark.parametrize("text,ok", [
    ("x = 1\ny = x + 2\n", True),
    ("def f(a):\n    return a\n", True),
    ("def f(a):\n", True),                        # an open block: the continuation just stops
    ("x = foo(1,\n    2,\n", True),               # an open bracket
    ('s = """doc\nmore\n', True),                 # an open triple-quoted string
    ("x = 1\ny = = 2\n", False),                  # a real error
    ("def f(:\n    pass\n", False),
    ("x = 1\nreturn_value = )\n", False),
    ("x = 1\ny = 2 +", True),                     # cut at the last line break: 'x = 1'
])
def test_python_prefix_ok(text, ok):
    assert python_prefix_ok(text) is ok


def test_reference_cache_hit_miss_and_corruption(tmp_path, monkeypatch):
    monkeypatch.setenv("QBENCH_CACHE_DIR", str(tmp_path))
    calls = []

    def compute():
        calls.append(1)
        return {"x": torch.arange(3)}

    ref, status = load_or_compute("k1", {}, compute)
    assert status == "miss" and ref["x"].tolist() == [0, 1, 2]
    ref, status = load_or_compute("k1", {}, compute)
    assert status == "hit" and len(calls) == 1
    path = tmp_path / "lm_reference" / "k1.pt"
    path.write_bytes(b"torn")
    logs = []
    ref, status = load_or_compute("k1", {}, compute, log=logs.append)
    assert status == "miss" and len(calls) == 2 and "unreadable" in logs[0]
    assert load_or_compute("k2", {}, compute)[1] == "miss"


def test_slices_concatenate_back():
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(5, 6, 20, generator=g)
    ids = torch.randint(0, 20, (5, 6), generator=g)
    ref = reference_topk(logits, ids, torch.ones_like(ids), k=4)
    again = cat_refs([slice_ref(ref, 0, 2), slice_ref(ref, 2, 5)])
    assert all(torch.equal(ref[k], again[k]) for k in ("logp", "idx", "target_logp", "valid"))


def test_greedy_with_cache_equals_full_recompute(tiny_models):
    from transformers import AutoModelForCausalLM

    from qbench.metrics.lm import greedy

    model = AutoModelForCausalLM.from_pretrained(tiny_models["gpt2"]).eval()
    prompt = torch.randint(3, 40, (3, 6), generator=torch.Generator().manual_seed(2))
    fast = greedy(model, prompt, 7)
    ids = prompt
    with torch.no_grad():
        for _ in range(7):
            nxt = model(input_ids=ids).logits[:, -1].argmax(-1)
            ids = torch.cat([ids, nxt[:, None]], dim=1)
    assert torch.equal(fast, ids[:, 6:])


def test_fingerprint_follows_weights_and_vocab(tiny_models):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_models["gpt2"])
    tok = AutoTokenizer.from_pretrained(tiny_models["gpt2"])
    a = model_fingerprint(model, tok)
    assert a == model_fingerprint(model, tok)
    with torch.no_grad():
        model.transformer.h[0].mlp.c_fc.weight[0, 0] += 1e-3
    assert model_fingerprint(model, tok) != a
