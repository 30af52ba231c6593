"""The bundled reference LM: loads offline, its card's numbers are reproducible, its training data is disjoint.

The training script itself is tested in tests/tools/test_train_reflm.py.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from qbench.models import load_model
from qbench.models.loaders import resolve_source
from qbench.datasets import heldout_sources
from qbench.tools.train_reflm import Config, heldout_ppl
from qbench.schema.experiment import ModelRef


@pytest.fixture(scope="module")
def reflm():
    return load_model(ModelRef(id="reflm"), "fp32", "cpu")


def record() -> dict:
    source, _ = resolve_source(ModelRef(id="reflm"))
    return json.loads((Path(source) / "training.json").read_text(encoding="utf-8"))


def test_bundled_reflm_is_a_gpt2_loaded_through_the_hf_path(reflm):
    source, origin = resolve_source(ModelRef(id="reflm"))
    assert (Path(source) / "model.safetensors").is_file() and "train_reflm" in origin
    assert reflm.task == "causal_lm" and type(reflm.model).__name__ == "GPT2LMHeadModel"
    assert reflm.max_positions == record()["config"]["n_positions"]
    assert len(reflm.tokenizer) == record()["config"]["vocab_size"]
    assert sum(p.numel() for p in reflm.model.parameters()) == record()["parameters"]
    again = load_model(ModelRef(id=f"hf:{source}"), "fp32", "cpu")  # the same files through hf:<dir>
    assert all(torch.equal(a, b) for a, b in zip(reflm.model.state_dict().values(),
                                                  again.model.state_dict().values()))


def test_recorded_heldout_perplexities_reproduce(reflm):
    r = record()
    cfg = Config(heldout_samples=r["config"]["heldout_samples"], heldout_seq_len=r["config"]["heldout_seq_len"])
    got = heldout_ppl(reflm.model, reflm.tokenizer, cfg)
    for spec in ("builtin:text", "builtin:code"):
        assert got[spec]["evaluation_hash"] == r["heldout"][spec]["evaluation_hash"]
        assert got[spec]["tokens"] == r["heldout"][spec]["tokens"]
        assert got[spec]["ppl"] == pytest.approx(r["heldout"][spec]["ppl"], rel=1e-6)
        assert 1 < got[spec]["ppl"] < 200  # trained: far below the 8192 of a uniform guess
    card = (Path(resolve_source(ModelRef(id="reflm"))[0]) / "README.md").read_text(encoding="utf-8")
    assert f"{r['heldout']['builtin:text']['ppl']:.2f}" in card and f"{r['heldout']['builtin:code']['ppl']:.2f}" in card


def test_training_corpus_is_disjoint_from_the_builtin_suites():
    held = heldout_sources()
    assert len(held) > 100
    sources = [s["source"].split("#")[0] for s in record()["corpus"]["sources"]]
    assert sources and not set(sources) & held
    assert not any(s.startswith("pydoc_data") for s in sources)
