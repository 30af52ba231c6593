"""quantize_ on tiny, locally built transformers models (GPT-2 with Conv1D, BERT with nn.Linear)."""
from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

from qbench.engine.api import ModuleRecord, activation_spec, classify, quantize_, unmatched_excludes, weight_spec
from qbench.engine.modules import QuantEmbedding, QuantLinear
from qbench.errors import KernelUnavailable
from qbench.schema.experiment import Scheme
from tests.engine.support import first_available, require_kernel

import transformers  # noqa: E402  (a hard dependency: never skip)

# ----------------------------------------------------------------------------- float64 reference


def ref_dequant(w: torch.Tensor, bits: int, signed: bool = True, symmetric: bool = True,
                granularity: str = "per_channel", group_size: int | None = None, slack: bool = False):
    """float64 quantize -> dequantize of a 2-D weight from the affine-mapping definitions.

    With slack=True also returns, per element, one step where w / scale sits within 1e-4 of a
    rounding tie (there the engine's float32 division may legitimately round the other way), else 0.
    """
    w = w.detach().double()
    n, k = w.shape
    if granularity == "per_tensor":
        blocks = w.reshape(1, 1, -1)
    elif granularity == "per_channel":
        blocks = w.reshape(n, 1, k)
    else:
        blocks = w.reshape(n, k // group_size, group_size)
    qmin, qmax = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2 ** bits - 1)
    lo = blocks.min(dim=2, keepdim=True).values.clamp(max=0)
    hi = blocks.max(dim=2, keepdim=True).values.clamp(min=0)
    if symmetric:
        zp = torch.full_like(lo, 0 if signed else 2 ** (bits - 1))
        scale = torch.maximum(-lo, hi) / (qmax - zp)
    else:
        scale = (hi - lo) / (qmax - qmin)
        zp = torch.clamp(torch.round(qmin - lo / scale), qmin, qmax)
    t = blocks / scale
    q = torch.clamp(torch.round(t) + zp, qmin, qmax)
    deq = ((q - zp) * scale).reshape(n, k)
    if not slack:
        return deq
    near_tie = ((t - torch.floor(t)) - 0.5).abs() < 1e-4
    return deq, (near_tie * scale).reshape(n, k)


def ref_sqnr_db(w: torch.Tensor, **spec) -> float:
    w64 = w.detach().double()
    err = (ref_dequant(w64, **spec) - w64).pow(2).sum()
    return 10 * math.log10(float(w64.pow(2).sum() / err))


# ----------------------------------------------------------------------------- models


@pytest.fixture(scope="module")
def gpt2_float():
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(n_layer=2, n_embd=64, n_head=4, vocab_size=300, n_positions=64,
                                  bos_token_id=0, eos_token_id=0)
    model = transformers.GPT2LMHeadModel(cfg).eval()
    with torch.no_grad():   # non-zero biases so that bias handling is exercised
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.normal_(0, 0.02)
    return model


@pytest.fixture
def gpt2(gpt2_float):
    return copy.deepcopy(gpt2_float)


@pytest.fixture
def bert(bert_float):
    return copy.deepcopy(bert_float)


IDS = torch.randint(0, 300, (2, 16), generator=torch.Generator().manual_seed(1))
CALIB_IDS = torch.randint(0, 300, (4, 24), generator=torch.Generator().manual_seed(2))


def logits(model, ids=IDS) -> torch.Tensor:
    with torch.no_grad():
        return model(ids).logits


def hidden(model, ids=IDS) -> torch.Tensor:
    with torch.no_grad():
        return model(ids).last_hidden_state


W8 = {"name": "w8", "weights": {"bits": 8, "granularity": "per_channel"}}
W8A8 = {"name": "w8a8", "weights": {"bits": 8}, "activations": {"bits": 8}}
W4G16 = {"name": "w4g16", "weights": {"bits": 4, "granularity": "per_group", "group_size": 16}}
CONV1D_SHAPES = {"attn.c_attn": (192, 64), "attn.c_proj": (64, 64), "mlp.c_fc": (256, 64), "mlp.c_proj": (64, 256)}


def auto_kernel(sch: dict) -> str:
    """The kernel `auto` should pick for a scheme here: the fastest of its candidates this host can run (the
    native ones need a C compiler, int8_native and int8_onednn AVX-512 VNNI)."""
    s = Scheme.model_validate({"name": "s", **sch})
    w, a = weight_spec(s), activation_spec(s)
    if a is not None:
        return first_available(w, a, "int8_native", "int8_onednn", "int8_int_mm")
    if w.bits <= 4:
        return first_available(w, a, "int4_wo_native", "int4_packed")
    return first_available(w, a, "int8_wo_native", "int8_weight_only")


def by_name(records) -> dict[str, ModuleRecord]:
    return {r.name: r for r in records}


def scheme(base: dict, **changes) -> dict:
    return {**copy.deepcopy(base), **changes}


# ----------------------------------------------------------------------------- GPT-2 / Conv1D


def test_classify_gpt2_and_bert(gpt2, bert):
    kinds = classify(gpt2)
    assert kinds["lm_head"] == "lm_head"
    assert kinds["transformer.wte"] == kinds["transformer.wpe"] == "embedding"
    assert [n for n, k in kinds.items() if k == "linear"] == [
        f"transformer.h.{i}.{s}" for i in range(2) for s in CONV1D_SHAPES]
    kinds = classify(bert)
    assert "lm_head" not in kinds.values()                     # an encoder has no output head
    assert sum(k == "linear" for k in kinds.values()) == 2 * 6 + 1   # 6 per layer + pooler
    assert sum(k == "embedding" for k in kinds.values()) == 3


def test_conv1d_modules_are_swapped(gpt2):
    float_mods = {n: m for n, m in gpt2.named_modules() if type(m).__name__ == "Conv1D"}
    assert len(float_mods) == 8
    x = torch.randn(3, 5, 256, generator=torch.Generator().manual_seed(3))
    float_out = {n: m(x[..., :m.weight.shape[0]]).detach() for n, m in float_mods.items()}

    records = by_name(quantize_(gpt2, W8))
    for name, conv in float_mods.items():
        r = records[name]
        out_in = CONV1D_SHAPES[name.split(".", 3)[3]]
        assert (r.op, r.requested, r.applied, r.reason) == ("linear", True, True, "")
        assert r.kernel == auto_kernel(W8)
        assert r.weights == "int8 sym per_channel" and r.activations == "float"
        # Conv1D stores (in, out); the record and the module report (out, in)
        assert conv.weight.shape == out_in[::-1]
        assert r.shape == out_in and r.to_dict()["shape"] == list(out_in)
        q = gpt2.get_submodule(name)
        assert isinstance(q, QuantLinear)
        assert (q.out_features, q.in_features) == out_in
        # same function as the Conv1D (x @ W + b) up to 8-bit weight error; float64 oracle of the
        # quantized layer: x @ deq(W^T)^T + b
        xi = x[..., :out_in[1]]
        y = q(xi)
        assert y.shape == (3, 5, out_in[0])
        deq, tie = ref_dequant(conv.weight.detach().t(), 8, slack=True)
        y64 = xi.double() @ deq.t() + conv.bias.detach().double()
        tol = 1e-5 * float(y64.abs().max()) + xi.double().abs() @ tie.t()
        assert ((y.detach().double() - y64).abs() <= tol).all()
        assert (y - float_out[name]).abs().max() <= 0.02 * float(float_out[name].abs().max())


def test_lm_head_left_alone_unless_requested(gpt2_float):
    model = copy.deepcopy(gpt2_float)
    head = model.lm_head
    r = by_name(quantize_(model, W8))["lm_head"]
    assert (r.op, r.requested, r.applied, r.kernel) == ("lm_head", False, False, "baseline")
    assert "lm_head" in r.reason and "not in scheme ops" in r.reason
    assert r.shape == (300, 64) and r.sqnr_db is None and r.bytes_after == r.bytes_before
    assert model.lm_head is head and type(head) is nn.Linear

    model = copy.deepcopy(gpt2_float)
    recs = by_name(quantize_(model, scheme(W8, ops=["linear", "lm_head"])))
    r = recs["lm_head"]
    assert (r.op, r.requested, r.applied, r.reason) == ("lm_head", True, True, "")
    assert isinstance(model.lm_head, QuantLinear) and model.lm_head.out_features == 300
    assert all(recs[n].applied for n in recs if recs[n].op == "linear")
    assert not recs["transformer.wte"].applied                  # embedding not requested
    out, ref = logits(model), logits(gpt2_float)
    assert (out - ref).abs().max() <= 0.05 * float(ref.std())


def test_exclusion_globs(gpt2_float):
    model = copy.deepcopy(gpt2_float)
    patterns = ["transformer.h.0.*", "*.mlp.c_proj", "*.nomatch.*", "h.1.*"]
    before = {n: m for n, m in model.named_modules()}
    recs = by_name(quantize_(model, scheme(W8, exclude=patterns)))
    for name in CONV1D_SHAPES:
        r0, r1 = recs[f"transformer.h.0.{name}"], recs[f"transformer.h.1.{name}"]
        # first matching glob is reported
        assert not r0.applied and r0.requested and r0.kernel == "baseline"
        assert r0.reason == "excluded by 'transformer.h.0.*'"
        assert r0.weights == "float32" and r0.sqnr_db is None
        assert model.get_submodule(r0.name) is before[r0.name]
        torch.testing.assert_close(model.get_submodule(r0.name).weight,
                                   gpt2_float.get_submodule(r0.name).weight, rtol=0, atol=0)
        if name == "mlp.c_proj":
            assert not r1.applied and "'*.mlp.c_proj'" in r1.reason
            assert type(model.get_submodule(r1.name)).__name__ == "Conv1D"
        else:
            assert r1.applied and isinstance(model.get_submodule(r1.name), QuantLinear)
    # globs that match no quantizable module are reported (on the float model)
    assert unmatched_excludes(gpt2_float, patterns) == ["*.nomatch.*", "h.1.*"]
    assert unmatched_excludes(gpt2_float, ["lm_head", "transformer.w?e"]) == []


def test_unmatched_excludes_bert(bert):
    # BertModel's pooler is named "pooler.dense": "*.pooler.*" needs a prefix and matches nothing
    assert unmatched_excludes(bert, ["*.pooler.*", "pooler.*", "encoder.layer.1.*", "*.query"]) == ["*.pooler.*"]


def test_weight_only_8bit_reference_close_to_float(gpt2_float):
    ref = logits(gpt2_float)
    m_ref = copy.deepcopy(gpt2_float)
    recs = quantize_(m_ref, scheme(W8, kernel="reference"))
    assert {r.kernel for r in recs if r.applied} == {"reference"}
    out = logits(m_ref)
    assert (out - ref).abs().max() <= 0.05 * float(ref.std())
    assert not torch.equal(out, ref)                       # it really is quantized
    # the auto-selected integer kernel computes the same thing
    m_auto = copy.deepcopy(gpt2_float)
    assert {r.kernel for r in quantize_(m_auto, W8) if r.applied} == {auto_kernel(W8)}
    torch.testing.assert_close(logits(m_auto), out, rtol=0, atol=1e-5 * float(out.abs().max()))


def _capture_inputs(model, names, ids):
    seen, hooks = {}, []
    for n in names:
        hooks.append(model.get_submodule(n).register_forward_pre_hook(
            lambda _m, args, n=n: seen.__setitem__(n, args[0].detach().clone())))
    try:
        logits(model, ids) if hasattr(model, "lm_head") else hidden(model, ids)
    finally:
        for h in hooks:
            h.remove()
    return seen


@pytest.mark.parametrize("which", ["gpt2", "bert"])
def test_w8a8_integer_kernel_matches_reference_per_layer(which, gpt2_float, bert_float):
    base = gpt2_float if which == "gpt2" else bert_float
    ops = ["linear", "lm_head"] if which == "gpt2" else ["linear"]
    m_ref, m_int = copy.deepcopy(base), copy.deepcopy(base)
    rec_ref = quantize_(m_ref, scheme(W8A8, kernel="reference", ops=ops))
    rec_int = quantize_(m_int, scheme(W8A8, ops=ops))
    applied = [r.name for r in rec_int if r.applied]
    assert len(applied) == (9 if which == "gpt2" else 13)
    assert {r.kernel for r in rec_int if r.applied} == {auto_kernel(W8A8)}
    assert {r.kernel for r in rec_ref if r.applied} == {"reference"}
    assert all(r.activations == "uint8 asym per_tensor dynamic" for r in rec_int if r.applied)
    # identical computation for identical inputs, layer by layer
    inputs = _capture_inputs(m_ref, applied, IDS)
    for name in applied:
        with torch.no_grad():
            y_ref = m_ref.get_submodule(name)(inputs[name])
            y_int = m_int.get_submodule(name)(inputs[name])
        assert (y_int - y_ref).abs().max() <= 1e-5 * float(y_ref.abs().max()), name
    # End to end: identical to 1e-5 except where float32 summation-order noise (~1e-7) in one layer's
    # output moved a later activation across a rounding boundary of the dynamic int8 grid (one code
    # step; with these seeds: 1 code of 8192 in GPT-2 h.1.mlp.c_proj's input, one token affected).
    out_ref = logits(m_ref) if which == "gpt2" else hidden(m_ref)
    out_int = logits(m_int) if which == "gpt2" else hidden(m_int)
    row_diff = (out_int - out_ref).abs().amax(dim=-1)          # per token
    tol = 1e-5 * float(out_ref.abs().max())
    assert (row_diff > tol).float().mean() <= 0.1             # at most 10% of tokens touched by a flip
    assert row_diff.max() <= 0.05 * float(out_ref.std())      # and those by about one code step


def test_w8a8_single_quantized_layer_identical_end_to_end(gpt2_float):
    """Only the lm_head quantized (W8A8): nothing downstream re-quantizes, so the auto-selected
    integer kernel and the reference kernel give the same logits to 1e-5."""
    m_ref, m_int = copy.deepcopy(gpt2_float), copy.deepcopy(gpt2_float)
    quantize_(m_ref, scheme(W8A8, ops=["lm_head"], kernel="reference"))
    recs = by_name(quantize_(m_int, scheme(W8A8, ops=["lm_head"])))
    assert recs["lm_head"].kernel == auto_kernel(W8A8)
    out_ref, out_int = logits(m_ref), logits(m_int)
    assert (out_int - out_ref).abs().max() <= 1e-5 * float(out_ref.abs().max())
    assert not torch.equal(out_ref, logits(gpt2_float))


# ----------------------------------------------------------------------------- static activations


def test_static_activations_use_calibrated_ranges(gpt2_float):
    model = copy.deepcopy(gpt2_float)
    target = "transformer.h.1.mlp.c_proj"
    seen = {"min": math.inf, "max": -math.inf, "calls": 0}

    def calibrate(m):
        def hook(_mod, args):
            seen["min"] = min(seen["min"], float(args[0].min()))
            seen["max"] = max(seen["max"], float(args[0].max()))
        h = m.get_submodule(target).register_forward_pre_hook(hook)
        for batch in CALIB_IDS.split(2):
            m(batch)
            seen["calls"] += 1
        h.remove()

    sch = scheme(W8A8, activations={"bits": 8, "dynamic": False}, calibration={"method": "minmax"})
    recs = quantize_(model, sch, calibrate=calibrate)
    assert seen["calls"] == 2
    applied = [r for r in recs if r.applied]
    assert len(applied) == 8
    assert all(r.activations.endswith("static") for r in applied)
    assert all(r.activations == "uint8 asym per_tensor static" for r in applied)
    assert {r.kernel for r in applied} == {auto_kernel(sch)}

    # black-box check of the target layer against float64 with the calibrated range:
    # inputs well outside that range are clamped by static qparams (dynamic ones would not clamp)
    lo, hi = min(seen["min"], 0.0), max(seen["max"], 0.0)
    s = (hi - lo) / 255
    z = min(max(round(-lo / s), 0), 255)
    x = torch.randn(7, 256, generator=torch.Generator().manual_seed(5)).double() * 3 * max(hi, -lo)
    t = x / s
    xq = torch.clamp(torch.round(t) + z, 0, 255)
    x_deq = (xq - z) * s
    x_tie = (((t - torch.floor(t)) - 0.5).abs() < 1e-4).double() * s   # float32 may round these either way
    conv = gpt2_float.get_submodule(target)
    deq, tie = ref_dequant(conv.weight.detach().t(), 8, slack=True)
    y64 = x_deq @ deq.t() + conv.bias.detach().double()
    with torch.no_grad():
        y = model.get_submodule(target)(x.float())
    # tolerance: float32 arithmetic, plus one code step wherever an activation or weight sits on a
    # rounding tie (float32 may round it the other way); the calibrated range itself is float32 too
    tol = 1e-4 * float(y64.abs().max()) + x_tie @ deq.abs().t() + x_deq.abs() @ tie.t()
    assert ((y.double() - y64).abs() <= tol).all()
    # and differs clearly from what unclamped (dynamic) inputs would give
    y_dyn = x @ deq.t() + conv.bias.detach().double()
    assert (y.double() - y_dyn).abs().max() > 0.1 * float(y_dyn.abs().max())
    # the whole model still runs and stays close to float
    out, ref = logits(model), logits(gpt2_float)
    assert (out - ref).abs().max() <= 0.1 * float(ref.std())


@pytest.mark.parametrize("method", ["percentile", "mse"])
def test_static_activations_other_observers_run(gpt2, method):
    sch = scheme(W8A8, activations={"bits": 8, "dynamic": False}, calibration={"method": method})
    recs = quantize_(gpt2, sch, calibrate=lambda m: m(CALIB_IDS))
    assert all(r.activations.endswith("static") for r in recs if r.applied)
    assert torch.isfinite(logits(gpt2)).all()


def test_static_activations_without_calibrate_raise(gpt2):
    sch = scheme(W8A8, activations={"bits": 8, "dynamic": False}, calibration={"method": "minmax"})
    with pytest.raises(ValueError, match="calibrate"):
        quantize_(gpt2, sch)


# ----------------------------------------------------------------------------- bytes and SQNR


def test_bytes_and_sqnr(gpt2_float):
    m8, m4 = copy.deepcopy(gpt2_float), copy.deepcopy(gpt2_float)
    r8, r4 = by_name(quantize_(m8, W8)), by_name(quantize_(m4, W4G16))
    linear = [n for n, r in r8.items() if r.op == "linear"]
    assert {r4[n].kernel for n in linear} == {auto_kernel(W4G16)}
    for n in linear:
        out, inp = r8[n].shape
        fp32 = (out * inp + out) * 4                      # float32 weight + bias
        assert r8[n].bytes_before == r4[n].bytes_before == fp32
        # 8-bit: one byte per weight plus per-channel scale / zero-point vectors and the bias
        assert out * inp <= r8[n].bytes_after <= out * inp + 4 * out * 4
        assert r8[n].bytes_after < 0.3 * fp32
        # 4-bit per_group(16): half a byte per weight + a float32 scale and an int32 zero point
        # per group of 16 + the float32 bias ~ a quarter of fp32 (1/8 codes + 1/8 qparams)
        groups = out * inp // 16
        assert out * inp // 2 <= r4[n].bytes_after <= out * inp // 2 + groups * 8 + out * 4
        assert r4[n].bytes_after < r8[n].bytes_after
        assert r4[n].bytes_after < 0.3 * fp32
        # SQNR: independent float64 value, and 8-bit far above 4-bit (~6 dB per bit)
        w = gpt2_float.get_submodule(n).weight.t()
        assert r8[n].sqnr_db == pytest.approx(ref_sqnr_db(w, bits=8), abs=0.05)
        assert r4[n].sqnr_db == pytest.approx(
            ref_sqnr_db(w, bits=4, granularity="per_group", group_size=16), abs=0.05)
        assert r8[n].sqnr_db > r4[n].sqnr_db + 15
    for r in (*r8.values(), *r4.values()):
        if not r.applied:
            assert r.bytes_after == r.bytes_before and r.sqnr_db is None


def test_group_size_not_dividing_columns_is_left_alone(gpt2):
    recs = by_name(quantize_(gpt2, {"name": "g128", "weights": {"bits": 4, "granularity": "per_group",
                                                                    "group_size": 128}}))
    # in_features 64 for c_attn / attn.c_proj / c_fc, 256 for mlp.c_proj
    for i in range(2):
        for name in ("attn.c_attn", "attn.c_proj", "mlp.c_fc"):
            r = recs[f"transformer.h.{i}.{name}"]
            assert not r.applied and r.reason == "group_size 128 does not divide 64 columns"
        assert recs[f"transformer.h.{i}.mlp.c_proj"].applied
    assert torch.isfinite(logits(gpt2)).all()


def test_forced_impossible_kernel_raises(gpt2):
    sch = scheme(W8A8, weights={"bits": 8, "granularity": "per_group", "group_size": 16}, kernel="int8_int_mm")
    with pytest.raises(KernelUnavailable, match="per_group"):
        quantize_(gpt2, sch)


# ----------------------------------------------------------------------------- untouched modules


def test_uncovered_float_modules_unchanged(gpt2_float):
    model = copy.deepcopy(gpt2_float)
    objs = dict(model.named_modules())
    recs = by_name(quantize_(model, scheme(W8A8, exclude=["*.h.0.attn.*"])))
    swapped = {n for n, r in recs.items() if r.applied}
    assert swapped == {f"transformer.h.{i}.{s}" for i in range(2) for s in CONV1D_SHAPES} - {
        "transformer.h.0.attn.c_attn", "transformer.h.0.attn.c_proj"}
    float_params = dict(gpt2_float.named_parameters(remove_duplicate=False))
    for name, mod in model.named_modules():
        if any(name == s or name.startswith(s + ".") for s in swapped):
            continue
        assert mod is objs[name], name                     # same object, not rebuilt
        for pname, p in mod.named_parameters(recurse=False):
            full = f"{name}.{pname}" if name else pname
            assert p.dtype == torch.float32
            assert torch.equal(p, float_params[full]), full
    assert model.lm_head.weight is model.transformer.wte.weight     # tying intact


def test_scheme_object_and_dict_agree(gpt2_float):
    m1, m2 = copy.deepcopy(gpt2_float), copy.deepcopy(gpt2_float)
    r1 = quantize_(m1, Scheme.model_validate(W4G16))
    r2 = quantize_(m2, W4G16)
    assert [r.to_dict() for r in r1] == [r.to_dict() for r in r2]
    assert torch.equal(logits(m1), logits(m2))


def test_progress_called_per_module(gpt2):
    expected = list(classify(gpt2))
    names = []
    recs = quantize_(gpt2, W8, progress=names.append)
    assert names == [r.name for r in recs] == expected


# ----------------------------------------------------------------------------- embeddings


def test_embedding_op_gpt2(gpt2_float):
    model = copy.deepcopy(gpt2_float)
    recs = by_name(quantize_(model, scheme(W8, ops=["linear", "embedding"])))
    for name, shape in (("transformer.wte", (300, 64)), ("transformer.wpe", (64, 64))):
        r = recs[name]
        assert (r.op, r.applied, r.shape, r.kernel, r.activations) == (
            "embedding", True, shape, "embedding_gather_dequant", "n/a")
        assert r.bytes_after < 0.3 * r.bytes_before
        assert isinstance(model.get_submodule(name), QuantEmbedding)
    # rows come back as the float64 per-row dequantization
    ids = torch.tensor([[0, 7, 299], [5, 5, 42]])
    rows = model.transformer.wte(ids)
    assert rows.shape == (2, 3, 64) and rows.dtype == torch.float32
    deq, tie = ref_dequant(gpt2_float.transformer.wte.weight, 8, slack=True)
    assert ((rows.double() - deq[ids]).abs() <= 1e-6 * deq[ids].abs() + 1e-9 + tie[ids]).all()
    # lm_head keeps the float (tied) weight, and the model still runs close to float
    assert type(model.lm_head) is nn.Linear
    out, ref = logits(model), logits(gpt2_float)
    assert out.shape == ref.shape and torch.isfinite(out).all()
    assert (out - ref).abs().max() <= 0.05 * float(ref.std())


def test_embedding_op_bert(bert_float):
    model = copy.deepcopy(bert_float)
    recs = quantize_(model, scheme(W8A8, ops=["linear", "embedding"]))
    emb = [r for r in recs if r.op == "embedding"]
    assert len(emb) == 3 and all(r.applied for r in emb)
    assert isinstance(model.embeddings.word_embeddings, QuantEmbedding)
    assert {r.kernel for r in recs if r.op == "linear"} == {auto_kernel(W8A8)}
    out, ref = hidden(model), hidden(bert_float)
    assert out.shape == ref.shape and torch.isfinite(out).all()
    assert (out - ref).abs().max() <= 0.1 * float(ref.std())


def test_bert_linear_swapped_close_to_float(bert_float):
    model = copy.deepcopy(bert_float)
    recs = by_name(quantize_(model, scheme(W8, kernel="reference")))
    r = recs["encoder.layer.0.intermediate.dense"]
    assert r.applied and r.shape == (128, 64) and r.kernel == "reference"
    assert recs["pooler.dense"].applied
    assert not recs["embeddings.word_embeddings"].applied
    out, ref = hidden(model), hidden(bert_float)
    assert (out - ref).abs().max() <= 0.05 * float(ref.std())


def test_impossible_forced_kernel_leaves_model_untouched():
    import torch.nn as nn

    from qbench.engine import quantize_
    from qbench.errors import KernelUnavailable

    model = nn.Sequential(nn.Embedding(10, 16), nn.Linear(16, 8))
    scheme = {"name": "bad", "weights": {"bits": 4, "granularity": "per_group", "group_size": 8},
              "activations": {"bits": 8}, "ops": ["linear", "embedding"], "kernel": "int8_int_mm"}
    with pytest.raises(KernelUnavailable):
        quantize_(model, scheme)
    assert type(model[0]) is nn.Embedding and type(model[1]) is nn.Linear


def test_static_activations_need_data_through_every_module():
    import torch.nn as nn

    from qbench.engine import quantize_

    model = nn.Sequential(nn.Linear(16, 8), nn.Linear(8, 4))
    scheme = {"name": "static", "weights": {"bits": 8}, "activations": {"bits": 8, "dynamic": False},
              "calibration": {"size": 1}}
    with pytest.raises(ValueError, match="no data"):
        quantize_(model, scheme, calibrate=lambda m: m[0](torch.randn(2, 16)))  # skips the second layer


def test_auto_prefers_packed_int4_for_low_bit_weight_only():
    from qbench.engine.kernels import select_kernel
    from qbench.engine.primitives import QuantSpec

    w4, w8 = QuantSpec(4, True, True, "per_channel"), QuantSpec(8, True, True, "per_channel")
    require_kernel("int4_wo_native", w4, None)                 # needs a C compiler
    assert select_kernel(w4, None, "cpu").name == "int4_wo_native"
    assert select_kernel(w8, None, "cpu").name == "int8_wo_native"
