"""Quantization methods beyond round to nearest, each against a float64 oracle written here from its definition:
GPTQ (column-by-column update), SmoothQuant (scales, and the smoothed model's function), AWQ (grid 1 is RTN; the
search never loses to RTN on its own objective), and the value-table formats (nearest-value lookup)."""
from __future__ import annotations

import copy

import pytest
import torch

from qbench.engine import formats
from qbench.engine.api import quantize_
from qbench.engine.methods import METHODS, MethodContext, awq_scales, gptq, rtn, smoothquant_scales
from qbench.engine.methods.awq import output_error
from qbench.engine.methods.stats import InputStats
from qbench.engine.primitives import QuantSpec, choose_qparams, dequantize, quantize


def layer(n=24, k=64, tokens=256, seed=0):
    """A random (N, K) weight and (T, K) inputs whose channels differ in scale (some much larger), as in LLMs."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(n, k, generator=g, dtype=torch.float64)
    x = torch.randn(tokens, k, generator=g, dtype=torch.float64) * (0.2 + 2 * torch.rand(k, generator=g))
    x[:, :3] *= 8
    return w, x


def hessian(x):
    return 2 * x.T @ x / x.shape[0]


def oracle_gptq(w, h, spec, damp, act_order):
    """Column by column, in float64: every update applied to all later columns at once; a group's qparams from the
    fully updated weights when its first column is reached. Returns (codes, dequantized) in the processed order,
    the order, and the margin of each code from a rounding tie (0.5 - |t - round(t)|)."""
    w, h = w.clone(), h.clone()
    n, k = w.shape
    dead = torch.diagonal(h) == 0
    h[dead, dead] = 1
    w[:, dead] = 0
    order = torch.argsort(torch.diagonal(h), descending=True, stable=True) if act_order else torch.arange(k)
    w, h = w[:, order], h[order][:, order]
    h += damp * torch.diagonal(h).mean() * torch.eye(k, dtype=torch.float64)
    u = torch.linalg.cholesky(torch.linalg.inv(h), upper=True)
    codes, deq, margin = torch.zeros(n, k), torch.zeros(n, k, dtype=torch.float64), torch.zeros(n, k)
    g = spec.group_size
    for j in range(k):
        if j % g == 0:
            blk = w[:, j:j + g]
            s, z = choose_qparams(blk.amin(dim=1), blk.amax(dim=1), spec)
            s, z = s.double(), z.double()
        t = w[:, j] / s + z
        q = torch.clamp(torch.round(t), spec.qmin, spec.qmax)
        codes[:, j], deq[:, j] = q, (q - z) * s
        margin[:, j] = 0.5 - (t - torch.round(t)).abs()
        err = (w[:, j] - deq[:, j]) / u[j, j]
        w[:, j + 1:] -= torch.outer(err, u[j, j + 1:])
    return codes, deq, order, margin


def deq64(qw):
    """The effective weight of an integer QuantizedWeight, exactly in float64 (dequantize() multiplies in float32)."""
    g = qw.spec.group_size or qw.shape[1]
    s, z = qw.scale.double(), qw.zero_point.double()
    if qw.spec.granularity != "per_group":
        s, z = s.reshape(-1, 1).expand(qw.shape[0], 1), z.reshape(-1, 1).expand(qw.shape[0], 1)
    w = (qw.codes.double() - z.repeat_interleave(g, dim=1)) * s.repeat_interleave(g, dim=1)
    return w if qw.perm is None else w[:, torch.argsort(qw.perm)]


def recon_error(w, deq, x):
    return float(((x @ (w - deq).T) ** 2).sum())


@pytest.mark.parametrize("act_order", [False, True])
@pytest.mark.parametrize("block_size", [16, 7, 128])
def test_gptq_matches_the_column_by_column_float64_oracle(act_order, block_size):
    spec = QuantSpec(4, True, False, "per_group", 16)
    w, x = layer()
    h = hessian(x)
    codes, deq, order, margin = oracle_gptq(w, h, spec, 0.01, act_order)
    qw = gptq(w, h, spec, damp=0.01, block_size=block_size, act_order=act_order)
    got = qw.codes.double() if qw.perm is not None else qw.codes.double()[:, order]   # in the processed order
    if act_order:
        assert qw.perm is not None and torch.equal(qw.perm, order)
    differ = got != codes
    assert bool((margin[differ] < 1e-6).all()), "codes differ away from a rounding tie"
    assert differ.float().mean() < 0.01
    oracle_w = torch.empty_like(deq)
    oracle_w[:, order] = deq                                                             # back to input order
    mine, theirs = recon_error(w, deq64(qw), x), recon_error(w, oracle_w, x)
    assert abs(mine - theirs) <= 1e-9 * theirs


def test_gptq_keeps_dead_inputs_at_zero_and_static_groups_from_the_original_weights():
    spec = QuantSpec(4, True, False, "per_group", 16)
    w, x = layer(seed=1)
    x[:, 5] = 0                                                    # a channel no token uses
    qw = gptq(w, hessian(x), spec, act_order=True, static_groups=True)
    assert qw.perm is None                                         # static groups: codes back in column order
    deq = qw.dequantize(torch.float64)
    assert bool((deq[:, 5] == 0).all())
    w0 = w.clone()
    w0[:, 5] = 0
    ref = rtn(w0, spec)
    assert torch.equal(qw.scale, ref.scale) and torch.equal(qw.zero_point, ref.zero_point)


@pytest.mark.parametrize("spec", [QuantSpec(4, True, False, "per_group", 16), QuantSpec(3, True, True, "per_channel"),
                                  QuantSpec(8, False, False, "per_tensor"),
                                  QuantSpec(4, False, True, "per_group", 16, "nf4")])
def test_gptq_with_huge_damping_is_round_to_nearest(spec):
    w, x = layer(seed=2)
    qw, ref = gptq(w, hessian(x), spec, damp=1e12, act_order=False), rtn(w, spec)
    assert torch.equal(qw.codes, ref.codes)
    assert torch.allclose(qw.scale, ref.scale, rtol=1e-6) and torch.equal(qw.zero_point, ref.zero_point)


@pytest.mark.parametrize("spec", [QuantSpec(4, True, False, "per_group", 16), QuantSpec(4, True, True, "per_channel"),
                                  QuantSpec(4, False, True, "per_group", 16, "nf4")])
def test_gptq_reconstructs_calibration_outputs_better_than_rtn(spec):
    for seed in range(3):
        w, x = layer(seed=seed)
        for act_order in (False, True):
            qw = gptq(w, hessian(x), spec, act_order=act_order)
            assert recon_error(w, qw.dequantize(torch.float64), x) < recon_error(w, rtn(w, spec).dequantize(torch.float64), x)


def test_gptq_rejects_bad_parameters():
    w, x = layer()
    with pytest.raises(ValueError, match="damp"):
        gptq(w, hessian(x), QuantSpec(4), damp=0)
    with pytest.raises(ValueError, match="hessian"):
        gptq(w, hessian(x)[:10, :10], QuantSpec(4))


# ----------------------------------------------------------------------------- GPTQ on a real model


def reflm_batch(n=16, seq_len=64):
    from qbench.datasets import load_suite
    from qbench.models import load_model
    from qbench.runner.measure import tokenize
    from qbench.schema.experiment import ModelRef

    loaded = load_model(ModelRef(id="reflm"), "fp32", "cpu")
    suite = load_suite("builtin:text", calibration_size=n, evaluation_size=0, seed=0)
    return loaded.model, tokenize(loaded.tokenizer, [s.text for s in suite.calibration], seq_len, "cpu")


def test_gptq_beats_rtn_on_nearly_every_linear_of_the_reference_lm():
    """||W X - W_hat X||^2 on calibration inputs of each linear of reflm (a trained GPT-2): GPTQ below RTN in total
    and on at least 95% of the linears."""
    from qbench.engine.api import classify
    from qbench.engine.methods.stats import collect_input_stats
    from qbench.engine.modules import linear_weight

    model, batch = reflm_batch(n=8)
    names = [n for n, op in classify(model).items() if op == "linear"]
    stats = collect_input_stats(model, names, lambda m: m(**batch))
    spec = QuantSpec(4, True, False, "per_group", 64)
    wins, totals = 0, [0.0, 0.0]
    for name in names:
        w = linear_weight(model.get_submodule(name))[0].detach().double()
        xtx = stats[name]["xtx"]
        e_g = output_error(w, gptq(w, 2 * xtx, spec, act_order=True).dequantize(torch.float64), xtx)
        e_r = output_error(w, rtn(w, spec).dequantize(torch.float64), xtx)
        wins += e_g < e_r
        totals[0] += e_g
        totals[1] += e_r
    assert len(names) >= 8 and wins >= 0.95 * len(names) and totals[0] < totals[1]


# ----------------------------------------------------------------------------- SmoothQuant


def test_smoothquant_scales_follow_the_formula():
    g = torch.Generator().manual_seed(3)
    act = torch.rand(32, generator=g, dtype=torch.float64) * 10
    act[4] = 0                                                       # clamped away from 0
    ws = [torch.randn(8, 32, generator=g), torch.randn(16, 32, generator=g)]
    for alpha in (0.0, 0.5, 0.85, 1.0):
        s = smoothquant_scales(act, ws, alpha)
        wmax = torch.cat(ws).abs().amax(dim=0).double()
        want = (act.clamp(min=1e-5) ** alpha / wmax.clamp(min=1e-5) ** (1 - alpha)).clamp(min=1e-5)
        assert torch.allclose(s.double(), want, rtol=1e-6) and bool((s > 0).all())
    with pytest.raises(ValueError, match="alpha"):
        smoothquant_scales(act, ws, 1.5)


def tiny_llama():
    import transformers

    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                                   num_key_value_heads=2, vocab_size=200, max_position_embeddings=64)
    return transformers.LlamaForCausalLM(cfg).eval()


def test_smoothed_model_computes_the_same_function_unquantized():
    """Fold the SmoothQuant scales (into RMSNorms where possible, else as input scales) and keep every weight in
    float: the model's logits agree with the original's to 1e-5 relative."""
    from qbench.engine.calibrated import MethodRun
    from qbench.engine.modules import linear_weight
    from qbench.engine.tensors import InputTransform

    model = tiny_llama()
    ids, ev = torch.randint(0, 200, (4, 32)), torch.randint(0, 200, (2, 32))
    with torch.no_grad():
        ref = model(ev).logits
    smoothed = copy.deepcopy(model)
    names = [n for n, m in smoothed.named_modules() if isinstance(m, torch.nn.Linear) and n != "lm_head"]
    run = MethodRun(smoothed, names, METHODS.get("smoothquant"), {"alpha": 0.5}, QuantSpec(8), lambda m: m(ids))
    assert run.folded and set(run.smoothing) - run.folded                         # both routes are exercised
    for name in set(run.smoothing) - run.folded:                                  # unfolded: x / s, W * s
        mod, s = smoothed.get_submodule(name), run.smoothing[name]
        with torch.no_grad():
            linear_weight(mod)[0].mul_(s.reshape(1, -1))
        pre = InputTransform(input_scale=s)
        mod.register_forward_pre_hook(lambda _m, args, pre=pre: (pre.apply(args[0].reshape(-1, args[0].shape[-1]))
                                                                 .reshape(args[0].shape),))
    with torch.no_grad():
        out = smoothed(ev).logits
    assert not torch.equal(smoothed.model.layers[0].input_layernorm.weight, model.model.layers[0].input_layernorm.weight)
    assert float((out - ref).norm() / ref.norm()) < 1e-5


def test_smoothquant_helps_w8a8_with_outlier_channels():
    """A linear whose input has a few huge channels: per-tensor int8 activations lose the small channels; with
    SmoothQuant the output error is lower."""
    torch.manual_seed(0)
    lin = torch.nn.Sequential(torch.nn.Linear(64, 32))
    x = torch.randn(256, 64)
    x[:, :2] *= 60
    scheme = {"weights": {"bits": 8}, "activations": {"bits": 8, "dynamic": False}, "calibration": {"size": 8},
              "kernel": "reference"}
    errs = {}
    for method in ("rtn", "smoothquant"):
        q = copy.deepcopy(lin)
        quantize_(q, {**scheme, "name": method, "method": {"name": method}}, calibrate=lambda m: m(x))
        with torch.no_grad():
            errs[method] = float((q(x) - lin(x)).pow(2).mean())
    assert errs["smoothquant"] < errs["rtn"] / 2


# ----------------------------------------------------------------------------- AWQ


def test_awq_with_grid_1_is_round_to_nearest():
    w, x = layer(seed=4)
    st = InputStats()
    st.update(x)
    stats = st.stats()
    spec = QuantSpec(4, True, False, "per_group", 16)
    awq = METHODS.get("awq")
    s = awq.group_scales([w.float()], stats, {"grid": 1}, spec)
    assert torch.equal(s, torch.ones_like(s))
    qw, ref = awq.quantize(w.float(), spec, MethodContext("l", stats, {"grid": 1}, s)), rtn(w.float(), spec)
    assert torch.equal(qw.codes, ref.codes) and torch.equal(qw.scale, ref.scale)
    assert torch.equal(qw.dequantize(), ref.dequantize())


def test_awq_search_keeps_the_best_grid_point_and_beats_rtn_here():
    w, x = layer(seed=5)
    xtx = x.T @ x / x.shape[0]
    spec = QuantSpec(4, True, False, "per_group", 16)
    s, losses = awq_scales([w.float()], xtx, x.abs().mean(dim=0), spec, grid=10)
    assert losses[0] == pytest.approx(output_error(w, rtn(w.float(), spec).dequantize(torch.float64), xtx))
    stats = {"xtx": xtx, "absmean": x.abs().mean(dim=0)}
    for clip in (False, True):
        qw = METHODS.get("awq").quantize(w.float(), spec, MethodContext("l", stats, {"clip": clip}, s))
        err = output_error(w, qw.dequantize(torch.float64), xtx)
        assert err == pytest.approx(min(losses), rel=1e-6) if not clip else err <= min(losses) * (1 + 1e-9)
    assert min(losses) < losses[0]


# ----------------------------------------------------------------------------- value-table formats


@pytest.mark.parametrize("fmt", ["nf4", "fp8_e4m3", "fp4_e2m1"])
@pytest.mark.parametrize("gran", ["per_tensor", "per_channel", "per_group"])
def test_format_codes_are_the_nearest_table_value(fmt, gran):
    """Codes equal a float64 argmin over the format's table (scale = block absmax / format max)."""
    spec = QuantSpec(formats.FORMAT_BITS[fmt], False, True, gran, 8 if gran == "per_group" else None, fmt)
    x = torch.randn(6, 32, generator=torch.Generator().manual_seed(6)) * 3
    q = quantize(x, spec)
    tab = torch.tensor(formats.table(fmt), dtype=torch.float64)
    finite = ~torch.isnan(tab)
    xd = x.double()
    blocks = {"per_tensor": xd.abs().max().expand(6, 32), "per_channel": xd.abs().amax(1, keepdim=True).expand(6, 32),
              "per_group": xd.reshape(6, 4, 8).abs().amax(2, keepdim=True).expand(6, 4, 8).reshape(6, 32)}[gran]
    scale = (blocks / tab[finite].max()).float().double()
    dist = (xd.unsqueeze(-1) / scale.unsqueeze(-1) - tab.where(finite, torch.tensor(float("inf")))).abs()
    want_val = tab[dist.argmin(-1)]
    got_val = tab[q.data.long()]
    near_tie = (dist.sort(-1).values[..., 1] - dist.min(-1).values) < 1e-6
    assert bool(((got_val == want_val) | near_tie).all())
    assert torch.allclose(dequantize(q, torch.float64), got_val * scale, rtol=1e-6)


def test_fp8_codes_are_the_bit_patterns_torch_stores():
    x = torch.randn(64, 64) * 100
    spec = QuantSpec(8, False, True, "per_tensor", None, "fp8_e4m3")
    q = quantize(x, spec)
    assert torch.equal(q.data.view(torch.float8_e4m3fn).float(), formats.decode(q.data, "fp8_e4m3"))
    assert formats.max_value("fp8_e4m3") == 448 and formats.max_value("fp4_e2m1") == 6 and formats.max_value("nf4") == 1


def test_table_formats_run_on_the_emulated_kernel_only():
    from qbench.engine.kernels import select_kernel
    from qbench.errors import KernelUnavailable

    spec = QuantSpec(4, False, True, "per_group", 16, "nf4")
    assert select_kernel(spec, None, "cpu").name == "reference"
    with pytest.raises(KernelUnavailable, match="not nf4"):
        select_kernel(spec, None, "cpu", "int4_packed")
    torch.manual_seed(0)
    lin = torch.nn.Sequential(torch.nn.Linear(32, 8))
    w, b = lin[0].weight.detach().clone(), lin[0].bias.detach().clone()
    recs = quantize_(lin, {"name": "nf4", "weights": {"format": "nf4", "granularity": "per_group", "group_size": 16}})
    assert recs[0].kernel == "reference" and recs[0].weights == "nf4 per_group(16)"
    x = torch.randn(4, 32)
    with torch.no_grad():
        assert torch.allclose(lin(x), x @ rtn(w, spec).dequantize().t() + b, atol=1e-5)


def test_calibration_statistics_leave_padding_out():
    """A padded calibration batch gives the statistics of its real tokens only: equal to those of the same
    sequences run one at a time without padding."""
    from qbench.engine.methods.stats import collect_input_stats

    model = tiny_llama()
    g = torch.Generator().manual_seed(5)
    ids = torch.randint(1, 200, (3, 12), generator=g)
    lengths = (12, 7, 4)
    mask = torch.zeros(3, 12, dtype=torch.long)
    for i, n in enumerate(lengths):
        mask[i, :n] = 1
    names = ["model.layers.0.self_attn.q_proj", "model.layers.1.mlp.down_proj"]
    padded = collect_input_stats(model, names, lambda m: m(input_ids=ids, attention_mask=mask))
    one_by_one = collect_input_stats(model, names, lambda m: [m(input_ids=ids[i:i + 1, :n]) for i, n in
                                                               enumerate(lengths)])
    for name in names:
        assert int(padded[name]["n"]) == sum(lengths)
        for key in ("xtx", "absmax", "absmean"):
            assert torch.allclose(padded[name][key], one_by_one[name][key], rtol=1e-5, atol=1e-7), (name, key)
