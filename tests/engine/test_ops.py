"""The ops around the linears (engine.ops, engine.kernels.attention): the integer attention matmuls against exact
integer arithmetic and a float64 oracle built from the primitives, the registry wiring against the model's own
attention, and the residual adds that get quantized (two per block, both inputs)."""
from __future__ import annotations

import copy

import pytest
import torch

from qbench.engine import ops
from qbench.engine.api import quantize_
from qbench.engine.kernels.attention import matmul_nt, prob_spec, quantize_rows, quantized_attention
from qbench.engine.primitives import QuantSpec, choose_qparams, dequantize, quantize, reduce_minmax
from qbench.errors import KernelUnavailable
from qbench.results.records import QuantEntry

SPECS = [QuantSpec(8, False, False, "per_token"), QuantSpec(8, True, True, "per_tensor"),
         QuantSpec(4, False, False, "per_tensor"), QuantSpec(6, True, False, "per_token")]


def _models():
    import transformers

    torch.manual_seed(0)
    llama = transformers.LlamaForCausalLM(transformers.LlamaConfig(
        hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        vocab_size=100, max_position_embeddings=64)).eval()
    bert = transformers.BertModel(transformers.BertConfig(
        hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128, vocab_size=100)).eval()
    gpt2 = transformers.GPT2LMHeadModel(transformers.GPT2Config(
        n_layer=3, n_embd=64, n_head=4, vocab_size=100, bos_token_id=2, eos_token_id=2)).eval()
    return {"llama": llama, "bert": bert, "gpt2": gpt2}


@pytest.fixture(scope="module")
def models():
    return _models()


def _inputs():
    torch.manual_seed(1)
    ids = torch.randint(3, 100, (2, 12))
    mask = torch.ones_like(ids)
    mask[1, 8:] = 0                   # a padded sequence
    return ids, mask


def _out(model, ids, mask) -> torch.Tensor:
    with torch.no_grad():
        o = model(input_ids=ids, attention_mask=mask)
    return (o.logits if getattr(o, "logits", None) is not None else o.last_hidden_state)[mask.bool()]


def _scheme(ops_, bits=8, **extra):
    return dict({"name": "s", "weights": {"bits": 8},
                 "activations": {"bits": bits, "granularity": "per_token"}, "ops": ops_}, **extra)


@pytest.mark.parametrize("a", SPECS, ids=lambda a: a.describe())
@pytest.mark.parametrize("m,k,n", [(1, 64, 9), (5, 7, 1), (17, 64, 33), (3, 1, 4)])
def test_integer_matmul_equals_exact_integer_arithmetic(a, m, k, n):
    """sum_k (a - za)(b - zb) from the codes in int64, scaled in float64: the int32 kernel with its row-sum zero-point
    corrections gives the same number (to float32 rounding), and the emulated kernel agrees."""
    torch.manual_seed(m * 100 + k)
    x, y = torch.randn(3, m, k) * 3, torch.randn(3, n, k) + 0.5
    qa, qb = quantize_rows(x, a), quantize_rows(y, a)
    exact = torch.einsum("gmk,gnk->gmn", qa[0].long() - qa[2][..., None].long(),
                         qb[0].long() - qb[2][..., None].long())
    oracle = exact.double() * qa[1].double()[:, :, None] * qb[1].double()[:, None, :]
    got = matmul_nt(qa, qb, "int8_attention")
    assert got.dtype == torch.float32
    torch.testing.assert_close(got.double(), oracle, rtol=1e-6, atol=1e-9)
    # float32 sums of dequantized values: rounding on the scale of the largest term
    torch.testing.assert_close(matmul_nt(qa, qb, "attention_qdq").double(), oracle, rtol=1e-5,
                               atol=1e-5 * oracle.abs().max().item())


def _qdq_rows(x: torch.Tensor, a: QuantSpec) -> torch.Tensor:
    """x (R, C) quantized per row (per_token) or per tensor with the primitives, in float64."""
    x = x.double()
    scale, zp = choose_qparams(*reduce_minmax(x, a), a)
    return dequantize(quantize(x, a, scale, zp), torch.float64)


@pytest.mark.parametrize("a", SPECS, ids=lambda a: a.describe())
def test_quantized_attention_against_a_float64_oracle(a):
    """Q and K per row (or tensor), P unsigned per query row, V per head-dim channel: the oracle quantizes each with
    primitives.quantize and runs the attention in float64, causal mask included."""
    torch.manual_seed(2)
    b, h, s, d = 2, 3, 6, 16
    q, k, v = torch.randn(b, h, s, d), torch.randn(b, h, s, d), torch.randn(b, h, s, d)
    mask = torch.full((s, s), float("-inf")).triu(1)[None, None]
    rows = lambda t: t.reshape(-1, t.shape[-1])     # noqa: E731
    sq = (_qdq_rows(rows(q), a).reshape(b * h, s, d) @ _qdq_rows(rows(k), a).reshape(b * h, s, d).transpose(1, 2))
    p = torch.softmax(sq.reshape(b, h, s, s) * d ** -0.5 + mask.double(), -1)
    pq = _qdq_rows(rows(p), prob_spec(a)).reshape(b * h, s, s)
    vq = _qdq_rows(rows(v.transpose(2, 3)), a).reshape(b * h, d, s).transpose(1, 2)
    oracle = (pq @ vq).reshape(b, h, s, d)
    for kernel in ("int8_attention", "attention_qdq"):
        got = quantized_attention(q, k, v, mask, d ** -0.5, a, kernel)
        torch.testing.assert_close(got.double(), oracle, rtol=1e-4, atol=2e-5)
    # and quantizing does something: 4-bit attention is far from float attention
    if a.bits == 4:
        exact = torch.softmax(q @ k.transpose(2, 3) * d ** -0.5 + mask, -1) @ v
        assert (got - exact).abs().max() > 1e-2


@pytest.mark.parametrize("name", ["llama", "bert", "gpt2"])
def test_attention_in_float_through_the_registry_matches_the_model(models, name):
    """With every attention module excluded, qbench's registered function runs float attention: the model's
    outputs match its own implementation (masks, padding, grouped-query heads and the output layout all wired)."""
    model = models[name]
    ids, mask = _inputs()
    q = copy.deepcopy(model)
    records = quantize_(q, _scheme(["attention"], exclude=["*attn*", "*attention*"]))
    assert {r.op for r in records if r.op == "attention"} == {"attention"}
    assert not any(r.applied for r in records)
    assert q.config._attn_implementation == ops.IMPLEMENTATION
    torch.testing.assert_close(_out(q, ids, mask), _out(model, ids, mask), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", ["llama", "bert", "gpt2"])
def test_quantized_attention_runs_in_every_attention_module(models, name, monkeypatch):
    model = models[name]
    ids, mask = _inputs()
    q = copy.deepcopy(model)
    records = quantize_(q, _scheme(["attention"], bits=6))
    att = [r for r in records if r.op == "attention"]
    assert att and all(r.applied and r.kernel == "int8_attention" and r.bytes_after == 0 for r in att)
    assert att[0].activations.startswith("uint6 asym per_token dynamic")
    for r in att:
        QuantEntry.model_validate(r.to_dict())
    calls = []
    real = ops.quantized_attention
    monkeypatch.setattr(ops, "quantized_attention", lambda *a: calls.append(a[5]) or real(*a))
    got, ref = _out(q, ids, mask), _out(model, ids, mask)
    assert len(calls) == len(att) and all(c.bits == 6 for c in calls)
    cos = torch.nn.functional.cosine_similarity(got.flatten(), ref.flatten(), dim=0)
    assert 0.99 < cos < 1 and not torch.equal(got, ref)


def test_quantized_attention_in_generation_with_a_kv_cache(models):
    """Decoding with a cache (one query row against all the keys so far) gives the tokens a full re-forward of the
    quantized model would choose, step by step."""
    model = copy.deepcopy(models["llama"])
    quantize_(model, _scheme(["linear", "attention"]))
    ids = torch.randint(3, 100, (1, 6))
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=5, do_sample=False, pad_token_id=0)
        seq = ids
        for _ in range(5):
            seq = torch.cat([seq, model(seq).logits[:, -1:].argmax(-1)], 1)
    assert torch.equal(out, seq)


@pytest.mark.parametrize("name,per_block", [("llama", 2), ("bert", 2), ("gpt2", 2)])
def test_residual_quantizes_both_inputs_of_each_residual_add(models, name, per_block, monkeypatch):
    model = models[name]
    ids, mask = _inputs()
    q = copy.deepcopy(model)
    records = quantize_(q, _scheme(["residual"], exclude=["*.0"]))
    res = [r for r in records if r.op == "residual"]
    assert [r.applied for r in res] == [False] + [True] * (len(res) - 1)
    assert res[0].reason == "excluded by '*.0'" and res[1].kernel == "residual_qdq"
    seen = []
    real = ops.qdq
    monkeypatch.setattr(ops, "qdq", lambda x, a: seen.append(tuple(x.shape)) or real(x, a))
    got = _out(q, ids, mask)
    hidden = res[0].shape[0]
    assert len(seen) == 2 * per_block * (len(res) - 1)       # two adds per quantized block, two inputs each
    assert all(s == (2, 12, hidden) for s in seen)
    assert not torch.equal(got, _out(model, ids, mask))
    torch.testing.assert_close(_out(copy.deepcopy(q), ids, mask), got)    # a deep copy keeps it


def test_residual_qdq_is_the_activation_quantizer():
    a = QuantSpec(8, False, False, "per_token")
    x = torch.randn(2, 5, 16) * 4
    torch.testing.assert_close(ops.qdq(x, a).double(), _qdq_rows(x.reshape(-1, 16), a).reshape(2, 5, 16),
                               rtol=0, atol=1e-5)


def test_overrides_decide_ops_per_instance(models):
    q = copy.deepcopy(models["llama"])
    records = quantize_(q, _scheme(["linear", "attention", "residual"], overrides=[
        {"match": "model.layers.1.self_attn", "skip": True},
        {"match": "model.layers.0", "activations": {"bits": 6, "granularity": "per_tensor"}}]))
    by = {(r.name, r.op): r for r in records}
    assert not by["model.layers.1.self_attn", "attention"].applied
    assert by["model.layers.1.self_attn", "attention"].reason == "skipped by override 'model.layers.1.self_attn'"
    assert by["model.layers.0", "residual"].activations.startswith("uint6 asym per_tensor")
    assert by["model.layers.0.self_attn", "attention"].activations.startswith("uint8 asym per_token")


def test_a_model_without_the_op_is_refused_before_it_changes():
    model = torch.nn.Sequential(torch.nn.Linear(8, 8))
    before = copy.deepcopy(model.state_dict())
    for op in ("attention", "residual"):
        with pytest.raises(KernelUnavailable, match=f"op '{op}'"):
            quantize_(model, _scheme(["linear", op]))
    assert isinstance(model[0], torch.nn.Linear)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
