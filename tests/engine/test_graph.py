"""engine.graph.DecoderGraph: qbench's decoder forward against transformers' own, on float and quantized Llama,
Mistral and Qwen2 models, with the refusals; runner.measure.lm_runs, which picks it for a pair."""
from __future__ import annotations

import pytest
import torch

from qbench.engine.api import quantize_
from qbench.engine.kernels import native
from qbench.engine.graph import DecoderGraph, GraphUnsupported, unsupported_reason
from qbench.metrics.lm import ModelRun, greedy, prefill_decode
from qbench.runner.measure import GRAPH_FORWARD, OWN_FORWARD, lm_runs

NATIVE = native.unavailable() is None        # the float work in qbench's C kernels where its library is built
SMALL = dict(hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, vocab_size=120, max_position_embeddings=128)
W8A8 = {"name": "w8a8", "weights": {"bits": 8, "granularity": "per_channel"},
        "activations": {"bits": 8, "granularity": "per_token"}}
W4G16 = {"name": "w4g16", "weights": {"bits": 4, "symmetric": False, "granularity": "per_group", "group_size": 16}}


def _model(kind: str = "llama", seed: int = 0, **extra):
    import transformers

    torch.manual_seed(seed)
    cfg = getattr(transformers, {"llama": "LlamaConfig", "mistral": "MistralConfig", "qwen2": "Qwen2Config"}[kind])
    cls = getattr(transformers, {"llama": "LlamaForCausalLM", "mistral": "MistralForCausalLM",
                                 "qwen2": "Qwen2ForCausalLM"}[kind])
    return cls(cfg(**{**SMALL, **extra})).eval()


def _agree(model, ids: torch.Tensor, steps: int = 6, atol: float = 2e-5, native=None) -> None:
    """The graph's prefill and `steps` decode steps give transformers' logits, fed the same (graph's) tokens: bit
    for bit with PyTorch's ops (the same ops in the same order), to float32 rounding with qbench's C kernels."""
    graph, own = DecoderGraph(model, ids.shape[0], ids.shape[1] + steps, native=native), ModelRun(model)
    same = torch.equal if not graph.native else (lambda a, b: torch.testing.assert_close(a, b, atol=atol, rtol=1e-5)
                                                 or True)
    with torch.no_grad():
        a, b = graph.prefill(ids), own.prefill(ids)
        assert a.shape == (ids.shape[0], model.config.vocab_size)
        assert same(a, b)
        for _ in range(steps):
            nxt = a.argmax(-1)
            a, b = graph.step(nxt), own.step(nxt)
            assert same(a, b)


@pytest.mark.parametrize("kind,extra", [
    ("llama", {}),
    ("llama", {"num_key_value_heads": 4}),                                    # no grouped queries
    ("llama", {"rope_parameters": {"rope_type": "llama3", "rope_theta": 10000.0, "factor": 8.0,
                                   "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                   "original_max_position_embeddings": 32}}),  # rescaled rotary frequencies
    ("mistral", {"sliding_window": None}),
    ("qwen2", {}),                                                            # q/k/v projections with a bias
])
@pytest.mark.parametrize("native", [False, NATIVE])
def test_float_models_match_their_own_forward(kind, extra, native):
    """Both ways of the float work: PyTorch ops in transformers' order, and qbench's C kernels (where built)."""
    model = _model(kind, **extra)
    ids = torch.randint(0, SMALL["vocab_size"], (2, 11), generator=torch.Generator().manual_seed(1))
    _agree(model, ids, native=native)
    _agree(model, ids[:1, :1], steps=3, native=native)                       # one-token prompt, one sequence
    graph = DecoderGraph(model, 1, 4, native=native)
    assert graph.native is native and ("C kernels" in graph.float_ops) is native


@pytest.mark.parametrize("scheme", [W8A8, W4G16])
@pytest.mark.parametrize("native", [False, NATIVE])
def test_quantized_models_match_their_own_forward(scheme, native):
    """With int8 activations, a float32 rounding difference before a linear can move an activation code by one
    step, so the C kernels' outputs are held to a looser bound there (PyTorch's ops: still bit for bit)."""
    model = _model()
    quantize_(model, scheme)
    ids = torch.randint(0, SMALL["vocab_size"], (3, 9), generator=torch.Generator().manual_seed(2))
    _agree(model, ids, atol=1e-4 if "activations" not in scheme else 5e-3, native=native)


def test_greedy_tokens_and_the_timed_loop_follow_the_models_own():
    model = _model(seed=3)
    ids = torch.randint(0, SMALL["vocab_size"], (2, 7), generator=torch.Generator().manual_seed(3))
    graph = DecoderGraph(model, 2, 7 + 8)
    toks = [graph.prefill(ids).argmax(-1)]
    for _ in range(7):
        toks.append(graph.step(toks[-1]).argmax(-1))
    assert torch.equal(torch.stack(toks, 1), greedy(model, ids, 8))
    prefill_ms, decode_ms = prefill_decode(graph, ids, 8, sync=lambda: None)
    assert prefill_ms > 0 and decode_ms > 0
    # a second prefill restarts the cache: the same logits as the first time
    with torch.no_grad():
        torch.testing.assert_close(graph.prefill(ids), ModelRun(model).prefill(ids), atol=2e-5, rtol=1e-5)


def test_what_it_does_not_run_is_refused_with_the_reason():
    import transformers

    gpt2 = transformers.GPT2LMHeadModel(transformers.GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=50))
    assert "gpt2" in unsupported_reason(gpt2)
    with pytest.raises(GraphUnsupported, match="covers llama, mistral, qwen2"):
        DecoderGraph(gpt2, 1, 8)
    windowed = _model("mistral", sliding_window=16)
    assert unsupported_reason(windowed, 8) is None
    assert "sliding-window" in unsupported_reason(windowed, 32)
    attn = _model()
    quantize_(attn, {**W8A8, "ops": ["linear", "attention"]})
    assert "attention or residual ops" in unsupported_reason(attn)
    with pytest.raises(GraphUnsupported, match="C kernels .* cannot run here: the model computes in torch.bfloat16"):
        DecoderGraph(_model().to(torch.bfloat16), 1, 8, native=True)
    assert not DecoderGraph(_model().to(torch.bfloat16), 1, 8).native            # picked: PyTorch ops, and why
    assert "bfloat16" in DecoderGraph(_model().to(torch.bfloat16), 1, 8).float_ops
    graph = DecoderGraph(_model(), 1, 8)
    with pytest.raises(ValueError, match="1 sequences of up to 8 tokens; got 1 x 9"):
        graph.prefill(torch.zeros(1, 9, dtype=torch.long))
    graph.prefill(torch.zeros(1, 8, dtype=torch.long))
    with pytest.raises(ValueError, match="got 1 x 9"):
        graph.step(torch.zeros(1, dtype=torch.long))


def test_lm_runs_run_both_sides_the_same_way():
    base = _model()
    quant = _model()
    quantize_(quant, W8A8)
    runs, how = lm_runs(base, quant, "qbench", 2, 40)
    assert all(isinstance(r, DecoderGraph) for r in runs) and how.startswith(f"both sides: {GRAPH_FORWARD}")
    assert runs[0].native == runs[1].native and runs[0].float_ops in how
    assert f"sibling projections run as one call: {runs[0].joins}" in how and "in 2 of 2 layers" in runs[0].joins
    assert lm_runs(base, quant, "transformers", 2, 40) == ([base, quant], f"both sides: {OWN_FORWARD}")
    attn = _model()
    quantize_(attn, {**W8A8, "ops": ["linear", "attention"]})
    runs, how = lm_runs(base, attn, "qbench", 2, 40)
    assert runs == [base, attn] and how.startswith(f"both sides: {OWN_FORWARD}") and "attention or residual" in how

    class Peer(torch.nn.Module):                       # a peer runtime's model: runs in its own runtime
        peer = object()

    peer = Peer()
    runs, how = lm_runs(base, peer, "qbench", 2, 40)
    assert isinstance(runs[0], DecoderGraph) and runs[1] is peer and "quantized: the peer runtime's own" in how


def test_the_profile_puts_each_call_s_time_in_its_kind():
    import time

    model = _model(seed=5)
    ids = torch.randint(0, SMALL["vocab_size"], (1, 6), generator=torch.Generator().manual_seed(5))
    plain, profiled = DecoderGraph(model, 1, 12), DecoderGraph(model, 1, 12, profile=True)
    assert torch.equal(plain.prefill(ids), profiled.prefill(ids))            # timing changes no number
    tok = torch.tensor([3])
    with pytest.raises(ValueError, match="profile=True"):
        plain.profile_step(tok, 6)
    got = profiled.profile_step(tok, 6)
    assert set(got) == {*DecoderGraph.KINDS, "other", "total"}
    assert all(got[k] > 0 for k in DecoderGraph.KINDS)
    assert sum(got[k] for k in (*DecoderGraph.KINDS, "other")) == pytest.approx(got["total"])
    profiled.pos = plain.pos = 6
    assert torch.equal(profiled.step(tok), plain.step(tok))

    class Slow(torch.nn.Linear):                          # one linear 20 ms slower: the time lands in "linear"
        def forward(self, x):
            time.sleep(0.02)
            return super().forward(x)

    model.model.layers[1].mlp.down_proj.__class__ = Slow
    slow = DecoderGraph(model, 1, 12, profile=True)
    slow.prefill(ids)
    again = slow.profile_step(tok, 6)
    assert again["linear"] >= 0.02 and again["other"] < 0.01 and again["attention"] < 0.01


WIDE = dict(hidden_size=128, intermediate_size=192, num_attention_heads=4, num_key_value_heads=2)  # 64-col panels


@pytest.mark.parametrize("scheme", [None, W8A8, W4G16])
def test_joined_siblings_change_no_logit(scheme):
    """q/k/v and gate/up as one call at decode sizes: the same logits, bit for bit, as one call each (the graph
    made with join=False on a copy), for the float model and quantized ones; the modules' weights become views
    of the joined weight, and the model's own forward gives what it gave before."""
    import copy

    model = _model(seed=7, **WIDE)
    if scheme:
        quantize_(model, scheme)
    ids = torch.randint(0, SMALL["vocab_size"], (2, 20), generator=torch.Generator().manual_seed(7))
    own_before = ModelRun(model).prefill(ids)
    apart = DecoderGraph(copy.deepcopy(model), 2, 26, join=False)
    graph = DecoderGraph(model, 2, 26)
    assert apart.joins == "none (join=False)"
    assert graph.joins == "q/k/v in 2 of 2 layers and gate/up in 2 of 2 layers (inputs of up to 16 rows)"
    assert all({"qkv", "gate_up"} <= set(lin) for lin in graph.linears)
    with torch.no_grad():
        a, b = apart.prefill(ids), graph.prefill(ids)                      # 40 rows: each part alone
        assert torch.equal(a, b)
        for _ in range(5):                                                 # 2 rows: joined
            nxt = a.argmax(-1)
            a, b = apart.step(nxt), graph.step(nxt)
            assert torch.equal(a, b)
    assert torch.equal(ModelRun(model).prefill(ids), own_before)
    attn = model.model.layers[0].self_attn
    if scheme is None:
        base = attn.q_proj.weight.untyped_storage().data_ptr()
        assert attn.k_proj.weight.untyped_storage().data_ptr() == base == \
            attn.v_proj.weight.untyped_storage().data_ptr()


def test_siblings_that_cannot_join_run_apart():
    """Projections of 32 columns do not fill the W8A8 kernel's 64-column panels: q, k and v run one call each,
    and the graph says so; gate and up (128 columns each) still join."""
    model = _model(seed=8, intermediate_size=128)
    quantize_(model, W8A8)
    graph = DecoderGraph(model, 1, 8)
    assert graph.joins.startswith("q/k/v in 0 of 2 layers and gate/up in 2 of 2 layers")
    ids = torch.randint(0, SMALL["vocab_size"], (1, 5), generator=torch.Generator().manual_seed(8))
    _agree(model, ids, steps=2, native=False)


@pytest.mark.skipif(not NATIVE, reason="the static decode step runs on qbench's C kernels")
@pytest.mark.parametrize("scheme", [None, W8A8, W4G16])
@pytest.mark.parametrize("kind,extra", [("llama", WIDE), ("llama", {}), ("qwen2", WIDE)])
def test_the_static_decode_step_gives_the_same_logits(scheme, kind, extra):
    """A decode step as a fixed list of bound calls on buffers allocated once gives, bit for bit, what the same
    graph computes call by call (static_step=False on a copy), for one and for all of its sequences, joined
    siblings or not, biases (Qwen2) or not; the logits it returns are new tensors each step."""
    import copy

    model = _model(kind, seed=9, **extra)
    if scheme:
        quantize_(model, scheme)
    ids = torch.randint(0, SMALL["vocab_size"], (3, 10), generator=torch.Generator().manual_seed(9))
    calls = DecoderGraph(copy.deepcopy(model), 3, 20, static_step=False)
    graph = DecoderGraph(model, 3, 20)
    assert graph.static_step and not calls.static_step and "fixed list of calls" in graph.float_ops
    for rows in (ids, ids[:1]):
        with torch.no_grad():
            a, b = calls.prefill(rows), graph.prefill(rows)
            assert torch.equal(a, b)
            before = None
            for _ in range(4):
                nxt = a.argmax(-1)
                a, b = calls.step(nxt), graph.step(nxt)
                assert torch.equal(a, b)
                assert before is None or before.data_ptr() != b.data_ptr()
                before = b
    assert set(graph._plans) == {1, 3}
    with pytest.raises(ValueError, match="got 4 x"):
        graph.step(torch.zeros(4, dtype=torch.long))


@pytest.mark.skipif(not NATIVE, reason="the static decode step runs on qbench's C kernels")
def test_the_static_step_with_input_transforms_and_static_activations():
    """SmoothQuant with static activation ranges: q/k/v (their smoothing folded into the norm before them) share
    their static qparams and join; o and down keep an input transform, so they have no bound call (Kernel.bind)
    and the static step calls their forward and copies the output into its buffer; the logits stay those of the
    op-by-op path, bit for bit."""
    import copy

    model = _model(seed=10, **WIDE)
    ids = torch.randint(0, SMALL["vocab_size"], (2, 12), generator=torch.Generator().manual_seed(10))
    quantize_(model, {"name": "sq", "weights": {"bits": 8, "granularity": "per_channel"},
                      "activations": {"bits": 8, "signed": False, "symmetric": False, "granularity": "per_tensor",
                                      "dynamic": False},
                      "method": {"name": "smoothquant", "alpha": 0.5}, "calibration": {"dataset": "text", "size": 4}},
              calibrate=lambda m: m(ids))
    attn = model.model.layers[0].self_attn
    assert attn.o_proj.state.pre is not None and attn.q_proj.state.static is not None
    assert attn.o_proj.kernel.bind(attn.o_proj.state, torch.empty(2, 128), torch.empty(2, 128)) is None
    calls = DecoderGraph(copy.deepcopy(model), 2, 20, static_step=False)
    graph = DecoderGraph(model, 2, 20)
    assert "q/k/v in 2 of 2 layers" in graph.joins
    with torch.no_grad():
        a, b = calls.prefill(ids), graph.prefill(ids)
        assert torch.equal(a, b)
        for _ in range(3):
            nxt = a.argmax(-1)
            a, b = calls.step(nxt), graph.step(nxt)
            assert torch.equal(a, b)
