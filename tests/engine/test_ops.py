"""The ops around the linears (engine.ops, engine.kernels.attention): the integer attention matmuls against exact
integer arithmetic and a float64 oracle built from the primitives, the registry wiring against the model's own
attention, and the residual adds that get quantized (two per block, both inputs)."""
from __future__ import annotations

import copy

import pytest
import torch

from qbench.engine import ops
from qbench.engine.api import quantize_
from qbench.engine.kernels import native
from qbench.engine.kernels.attention import attention_kernel, matmul_nt, native_attention_reason, prob_spec, \
    quantize_rows, quantized_attention
from qbench.engine.kernels.native_status import native_reason
from qbench.engine.primitives import QuantSpec, choose_qparams, dequantize, quantize, reduce_minmax
from qbench.errors import KernelUnavailable
from qbench.results.records import QuantEntry
from tests.engine.support import torch_threads

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


def _native(a: QuantSpec) -> bool:
    """Whether qbench's C attention kernel can run a here (per-token specs; its portable C path is exact too)."""
    return a.granularity == "per_token" and native_reason() is None


@pytest.mark.skipif(native_reason() is not None, reason="qbench's native library is not built here")
@pytest.mark.parametrize("a", [QuantSpec(8, False, False, "per_token"), QuantSpec(8, True, True, "per_token"),
                               QuantSpec(6, True, False, "per_token"), QuantSpec(4, False, True, "per_token")],
                         ids=lambda a: a.describe())
@pytest.mark.parametrize("b,h,s,t,d", [(2, 3, 17, 17, 32), (1, 4, 1, 33, 64), (2, 2, 5, 9, 6), (1, 2, 3, 1, 8),
                                       (1, 2, 70, 130, 80), (3, 1, 16, 16, 16)])
def test_the_c_kernel_gives_int8_attention_s_numbers(a, b, h, s, t, d):
    """qb_attention against torch._int_mm's int8_attention, whose integer sums are exact: the same integer sums and
    float steps, so equal up to the softmax's rounding; tile remainders (T past 64 and 16, D = 6, 80, T = 1, one
    query row), masks per head or broadcast over heads, and one thread or two give the same bits."""
    torch.manual_seed(3)
    q, k, v = torch.randn(b, h, s, d) * 2, torch.randn(b, h, t, d), torch.randn(b, h, t, d) * 3
    masks = [None, torch.zeros(b, 1, s, t).masked_fill(torch.rand(b, 1, s, t) < 0.3, -1e9),
             torch.randn(b, h, s, t)]
    for mask in masks:
        if mask is not None:
            mask[..., 0] = 0                                    # every row keeps a key
        ref = quantized_attention(q, k, v, mask, d ** -0.5, a, "int8_attention")
        got = quantized_attention(q, k, v, mask, d ** -0.5, a, "int8_attention_native")
        torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5 * ref.abs().max().item())
    with torch_threads(1):
        one = quantized_attention(q, k, v, masks[1], d ** -0.5, a, "int8_attention_native")
    assert torch.equal(one, quantized_attention(q, k, v, masks[1], d ** -0.5, a, "int8_attention_native"))


@pytest.mark.skipif(native_reason() is not None, reason="qbench's native library is not built here")
def test_the_c_kernel_s_portable_loops_give_the_same_numbers(monkeypatch, tmp_path):
    """Built without AVX-512 (CPUs that lack it), qb_attention runs plain C loops: the same integer sums, the
    libm exp, so equal to int8_attention up to the softmax's rounding."""
    from tests.engine.test_fast_kernels import _portable_library

    lib = _portable_library(tmp_path)
    if lib is None:
        pytest.skip("this compiler cannot build without AVX-512 (-mno-avx512f)")
    assert lib.qb_w8a8_isa().decode() == "portable-c"
    torch.manual_seed(4)
    a = QuantSpec(8, False, False, "per_token")
    q, k, v = torch.randn(2, 3, 7, 20), torch.randn(2, 3, 19, 20), torch.randn(2, 3, 19, 20)
    mask = torch.zeros(2, 1, 7, 19).masked_fill(torch.rand(2, 1, 7, 19) < 0.3, -1e9)
    mask[..., 0] = 0
    ref = quantized_attention(q, k, v, mask, 20 ** -0.5, a, "int8_attention")
    monkeypatch.setattr(native, "_load", lambda: (lib, ""))
    got = quantized_attention(q, k, v, mask, 20 ** -0.5, a, "int8_attention_native")
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5 * ref.abs().max().item())


@pytest.mark.skipif(native_reason() is not None, reason="qbench's native library is not built here")
def test_the_c_kernel_refuses_what_it_cannot_take():
    q = torch.randn(4, 3, 8)
    with pytest.raises(ValueError, match="inconsistent shapes"):
        native.attention(q, torch.randn(4, 5, 8), torch.randn(4, 6, 8), None, 2, 1.0, 8, False, False)
    with pytest.raises(ValueError, match="mask"):
        native.attention(q, q, q, torch.zeros(2, 2, 3, 4), 2, 1.0, 8, False, False)
    with pytest.raises(ValueError, match="per-token"):
        quantized_attention(q[None], q[None], q[None], None, 1.0, QuantSpec(8, True, True, "per_tensor"),
                            "int8_attention_native")
    assert attention_kernel("cpu", QuantSpec(8, True, True, "per_tensor")) == "int8_attention"
    assert attention_kernel("cuda", QuantSpec(8, False, False, "per_token")) == "attention_qdq"
    expected = "int8_attention_native" if native_attention_reason() is None else "int8_attention"
    assert attention_kernel("cpu", QuantSpec(8, False, False, "per_token")) == expected


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
    kernels = ["int8_attention", "attention_qdq"] + (["int8_attention_native"] if _native(a) else [])
    for kernel in kernels:
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
    kernel = attention_kernel("cpu", QuantSpec(6, False, False, "per_token"))
    assert att and all(r.applied and r.kernel == kernel and r.bytes_after == 0 for r in att)
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
