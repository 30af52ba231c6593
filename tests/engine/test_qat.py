"""qat (engine.methods.qat): the straight-through gradient against its definition, the exported weights against
the fake-quantized forward, a loss that falls, and a resumed run that ends where an uninterrupted one does."""
from __future__ import annotations

import copy

import pytest
import torch

from qbench.engine.methods import METHODS, TrainingData
from qbench.engine.methods.qat import (FINAL, FakeQuantLinear, batch_indices, fake_quant_weight, lr_factor,
                                       step_loss)
from qbench.engine.primitives import QuantSpec, choose_qparams, reduce_minmax

PARAMS = {"steps": 8, "lr": 1e-3, "batch_size": 2, "learn_scales": True, "distill": True, "checkpoint_every": 3}


def tiny_llama(seed=0):
    import transformers

    torch.manual_seed(seed)
    cfg = transformers.LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                                   num_key_value_heads=2, vocab_size=200, max_position_embeddings=64,
                                   initializer_range=0.3)          # peaked outputs: quantization shows in the KL
    return transformers.LlamaForCausalLM(cfg).eval()


def pool(n=6, t=16, seed=1):
    g = torch.Generator().manual_seed(seed)
    mask = torch.ones(n, t, dtype=torch.long)
    mask[0, 12:] = 0                                       # one padded sample: padding never enters the loss
    return {"input_ids": torch.randint(0, 200, (n, t), generator=g), "attention_mask": mask}


def linears(model):
    return [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and n != "lm_head"]


@pytest.mark.parametrize("spec", [QuantSpec(4, True, False, "per_group", 8), QuantSpec(3, True, True, "per_channel"),
                                  QuantSpec(4, False, False, "per_tensor")], ids=lambda s: s.describe())
def test_straight_through_gradients_follow_their_definition(spec):
    """d/dW: the upstream gradient where the code is inside [qmin, qmax], else 0; d/ds per block: the sum of
    upstream * (round(W/s) - W/s) inside and upstream * (q - z) outside (LSQ), computed here in float64 by hand."""
    g = torch.Generator().manual_seed(0)
    w = (torch.randn(6, 16, generator=g, dtype=torch.float64) * 2)
    scale, zero = choose_qparams(*reduce_minmax(w, spec), spec)
    s = (scale.double() * 0.7).requires_grad_(True)          # a smaller step: some codes clamp
    w_ = w.clone().requires_grad_(True)
    up = torch.randn(6, 16, generator=g, dtype=torch.float64)
    (fake_quant_weight(w_, s, zero, spec) * up).sum().backward()

    def expand(p):
        if spec.granularity == "per_tensor":
            return p.expand(6, 16)
        if spec.granularity == "per_channel":
            return p.reshape(6, 1).expand(6, 16)
        return p.reshape(6, -1, 1).expand(6, 16 // spec.group_size, spec.group_size).reshape(6, 16)
    se, ze = expand(s.detach()), expand(zero.double())
    u = w / se
    code = torch.round(u) + ze
    inside = (code >= spec.qmin) & (code <= spec.qmax)
    clamped = code.clamp(spec.qmin, spec.qmax)
    want_w = torch.where(inside, up, torch.zeros_like(up))
    per_elem = up * torch.where(inside, torch.round(u) - u, clamped - ze)
    if spec.granularity == "per_tensor":
        want_s = per_elem.sum()
    elif spec.granularity == "per_channel":
        want_s = per_elem.sum(1)
    else:
        want_s = per_elem.reshape(6, -1, spec.group_size).sum(2)
    assert (~inside).any() and inside.any()
    assert torch.allclose(w_.grad, want_w, rtol=0, atol=1e-12)
    assert torch.allclose(s.grad, want_s, rtol=1e-10, atol=1e-10)


def test_fake_quant_forward_at_the_start_is_round_to_nearest():
    from qbench.engine.methods import rtn

    lin = torch.nn.Linear(32, 8)
    spec = QuantSpec(4, True, False, "per_group", 16)
    fq = FakeQuantLinear(lin, spec, None, learn_scale=True)
    assert torch.equal(fq.weight_fq().detach(), rtn(lin.weight, spec).dequantize())


def test_data_order_and_schedule_are_functions_of_their_arguments():
    rows = torch.cat([batch_indices(s, 4, 10, seed=3) for s in range(5)])       # two passes over 10 rows
    assert sorted(rows[:10].tolist()) == list(range(10)) and sorted(rows[10:20].tolist()) == list(range(10))
    assert torch.equal(batch_indices(3, 4, 10, seed=3), rows[12:16])
    assert not torch.equal(batch_indices(0, 4, 10, seed=4), rows[:4])
    assert lr_factor(0, 100) == pytest.approx(0.1) and lr_factor(9, 100) == pytest.approx(1.0)
    assert lr_factor(99, 100) == pytest.approx(0.1, abs=1e-3)


def train(model, names, spec, params, data, act=None):
    return METHODS.get("qat").train(model, names, spec, act, params, data)


def test_training_lowers_the_distillation_loss():
    teacher = tiny_llama()
    student = copy.deepcopy(teacher)
    spec = QuantSpec(3, True, False, "per_channel")
    names, batch = linears(student), pool()
    fixed = {k: v[:4] for k, v in batch.items()}
    wrapped = copy.deepcopy(student)
    from qbench.engine.methods.qat import _wrap
    _wrap(wrapped, names, spec, None, True)
    with torch.no_grad():
        before = float(step_loss(wrapped, teacher, fixed, "causal_lm", True))
    out = train(student, names, spec, dict(PARAMS, steps=30, lr=3e-3), TrainingData(batch, "causal_lm", teacher))
    after_model = copy.deepcopy(student)
    _wrap(after_model, names, spec, None, True)
    for name, (s, _z) in out.qparams.items():
        after_model.get_submodule(name).scale.data.copy_(s)
    with torch.no_grad():
        after = float(step_loss(after_model, teacher, fixed, "causal_lm", True))
    assert before > 0 and after < 0.7 * before, (before, after)
    assert len(out.losses) == 30 and out.tokens == sum(int(batch["attention_mask"][batch_indices(i, 2, 6, 0)].sum())
                                                        for i in range(30))
    assert all(p.requires_grad for p in student.parameters())          # as they were before training


@pytest.mark.parametrize("weights,activations", [
    ({"bits": 4, "symmetric": False, "granularity": "per_group", "group_size": 16}, None),
    ({"bits": 8, "granularity": "per_channel"}, {"bits": 8, "granularity": "per_token"}),
], ids=["w4-g16", "w8a8"])
def test_exported_weights_compute_what_the_fake_quantized_model_computed(tmp_path, weights, activations):
    """quantize_ with method qat: every QuantLinear holds exactly the fake-quantized weight of the trained model
    (trained weight, learned scale), and the model's logits (the kernel chosen for the scheme, integer activations
    included for W8A8) equal the fake-quantized forward within the kernel's float error."""
    from qbench.engine.api import activation_spec, quantize_, weight_spec
    from qbench.engine.methods.qat import _load, _restore, _trainables, _wrap
    from qbench.schema.experiment import Scheme

    teacher = tiny_llama()
    quant = copy.deepcopy(teacher)
    scheme = Scheme.model_validate({"name": "qat", "weights": weights, "activations": activations,
                                    "method": {"name": "qat", **PARAMS},
                                    "calibration": {"dataset": "text", "size": 6}})
    info: dict = {}
    records = quantize_(quant, scheme, calibrate=lambda m: None, method_info=info,
                        training=TrainingData(pool(), "causal_lm", teacher, checkpoint_dir=tmp_path))
    assert info["training"]["steps"] == 8 and not info["training"]["reused"]
    assert all(r.applied for r in records if r.op == "linear")
    spec, act = weight_spec(scheme), activation_spec(scheme)
    fq = copy.deepcopy(teacher)
    wrappers = _wrap(fq, linears(fq), spec, act, True)
    _restore(_trainables(wrappers), _load(tmp_path / FINAL)["tensors"])
    for name, w in wrappers.items():
        held = quant.get_submodule(name).held_weight().dequantize()
        assert torch.equal(held, w.weight_fq().detach()), name
    ev = torch.randint(0, 200, (2, 16))
    with torch.no_grad():
        a, b = quant(ev).logits, fq(ev).logits
        assert not torch.allclose(b, teacher(ev).logits)                   # it did change the model
    assert float((a - b).norm() / b.norm()) < 1e-5, (records[2].kernel, float((a - b).norm() / b.norm()))


def test_an_interrupted_run_resumes_to_the_same_weights(tmp_path):
    teacher = tiny_llama()
    spec = QuantSpec(4, True, False, "per_channel")
    names = linears(teacher)

    def run(ckdir, stop_at=None):
        student = copy.deepcopy(teacher)

        def progress(step, steps, loss):
            if step == stop_at:
                raise KeyboardInterrupt
        out = train(student, names, spec, PARAMS, TrainingData(pool(), "causal_lm", teacher, checkpoint_dir=ckdir,
                                                               progress=progress))
        return student, out

    whole, w_out = run(tmp_path / "a")
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path / "b", stop_at=5)                         # checkpoint at step 3, killed after step 5
    assert (tmp_path / "b" / "checkpoint.pt").is_file() and not (tmp_path / "b" / FINAL).exists()
    resumed, r_out = run(tmp_path / "b")
    assert r_out.resumed_from == 3 and r_out.losses == w_out.losses
    for (ka, a), (kb, b) in zip(whole.state_dict().items(), resumed.state_dict().items()):
        assert ka == kb and torch.equal(a, b), ka
    for name in names:
        assert torch.equal(w_out.qparams[name][0], r_out.qparams[name][0])
    again, a_out = run(tmp_path / "b")                         # the final state is reused, not retrained
    assert a_out.loaded and a_out.losses == w_out.losses
    assert all(torch.equal(a, b) for a, b in zip(whole.state_dict().values(), again.state_dict().values()))


def test_qat_refuses_what_it_cannot_train():
    teacher = tiny_llama()
    with pytest.raises(ValueError, match="value table"):
        train(copy.deepcopy(teacher), linears(teacher), QuantSpec(4, False, True, "per_channel", None, "nf4"),
              PARAMS, TrainingData(pool(), "causal_lm", teacher))
    with pytest.raises(ValueError, match="distill"):
        train(copy.deepcopy(teacher), linears(teacher), QuantSpec(4), dict(PARAMS, distill=False),
              TrainingData(pool(), "encoder", teacher))
