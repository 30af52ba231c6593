"""write_float_gguf on tiny GGUF files (tests/models/gguf_files.py): every key and tensor survives, the data is
gguf's own dequantization, the checker catches what it promises to catch, and transformers reads the float copy
as the very model it read from the quantized file. Fast: files of ~100 KB, no real model."""
from __future__ import annotations

import importlib.util
import struct

import pytest

from qbench.errors import ModelError
from qbench.models.gguf_export import (cached_float_gguf, float_gguf_problems, gguf_metadata,
                                       write_float_gguf)
from tests.models.gguf_files import write_llama

pytestmark = pytest.mark.skipif(importlib.util.find_spec("gguf") is None,
                                reason="gguf not installed (pip install gguf)")


@pytest.mark.parametrize("qtype", ["Q4_1", "Q4_0", "Q8_0", "F16"])
@pytest.mark.parametrize("float_type", ["F32", "F16"])
def test_the_float_copy_keeps_every_key_and_dequantizes_every_tensor(tmp_path, qtype, float_type):
    import numpy as np
    from gguf import GGMLQuantizationType as Q
    from gguf import GGUFReader
    from gguf.quants import dequantize

    src = write_llama(tmp_path / f"{qtype}.gguf", qtype)
    dst = write_float_gguf(src, tmp_path / "out" / "float.gguf", float_type)
    assert float_gguf_problems(src, dst, float_type) == []
    a, b = GGUFReader(str(src)), GGUFReader(str(dst))
    ma, mb = gguf_metadata(a), gguf_metadata(b)
    ft = 0 if float_type == "F32" else 1                      # LlamaFileType ALL_F32 / MOSTLY_F16
    assert mb.pop("general.file_type") == (("UINT32",), ft)
    ma.pop("general.file_type")
    assert ma == mb                                           # the tokenizer arrays too, types and bytes
    assert mb["tokenizer.ggml.tokens"][0] == ("ARRAY", "STRING") and len(mb["tokenizer.ggml.tokens"][1]) == 258
    assert mb["tokenizer.ggml.token_type"][0] == ("ARRAY", "INT32")
    assert [t.name for t in a.tensors] == [t.name for t in b.tensors]
    for t, u in zip(a.tensors, b.tensors):
        assert u.shape.tolist() == t.shape.tolist()           # GGUF dims, innermost first
        assert u.data.shape == tuple(reversed(t.shape.tolist()))
        want = dequantize(t.data, t.tensor_type)
        if float_type == "F16" and len(t.shape) == 2:
            assert u.tensor_type == Q.F16 and np.array_equal(u.data, want.astype(np.float16))
        else:
            assert u.tensor_type == Q.F32 and np.array_equal(u.data, want)
    assert dst.stat().st_mode & 0o777 == 0o644 and not list(dst.parent.glob(".*.tmp"))   # atomic_path's rename


def test_the_checker_finds_a_changed_key_a_changed_value_and_a_wrong_file_type(tmp_path):
    src = write_llama(tmp_path / "q.gguf", "Q8_0")
    dst = write_float_gguf(src, tmp_path / "f.gguf")
    data = bytearray(dst.read_bytes())
    at = data.find(b"llama.embedding_length") + len(b"llama.embedding_length")
    struct.pack_into("<I", data, at + 4, 65)                  # (u32 type, u32 value): 64 -> 65
    data[-4:] = struct.pack("<f", 1234.5)                      # the last value of the last tensor
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(bytes(data))
    problems = float_gguf_problems(src, bad)
    assert any(p.startswith("key llama.embedding_length: ((") and "64" in p and "65" in p for p in problems)
    assert any(p.startswith("tensor blk.1.ffn_down.weight: values differ") for p in problems), problems
    assert float_gguf_problems(src, dst, "F16")[0].startswith("general.file_type is (('UINT32',), 0)")
    assert any("expected F16" in p for p in float_gguf_problems(src, dst, "F16"))


def test_bad_input_is_one_line_and_leaves_no_file(tmp_path):
    junk = tmp_path / "junk.gguf"
    junk.write_bytes(b"not a gguf file at all" * 10)
    with pytest.raises(ModelError, match=r"^junk.gguf: not a readable GGUF file \(") as e:
        write_float_gguf(junk, tmp_path / "out.gguf")
    assert "\n" not in str(e.value)
    truncated = tmp_path / "cut.gguf"
    truncated.write_bytes(write_llama(tmp_path / "q.gguf", "Q4_1").read_bytes()[:5000])
    with pytest.raises(ModelError, match="not a readable GGUF file"):
        write_float_gguf(truncated, tmp_path / "out.gguf")
    with pytest.raises(ModelError, match="not one of F32, F16"):
        write_float_gguf(tmp_path / "q.gguf", tmp_path / "out.gguf", "BF16")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cut.gguf", "junk.gguf", "q.gguf"]


def test_the_cached_copy_is_written_once_per_source_content(tmp_path, monkeypatch):
    monkeypatch.setenv("QBENCH_CACHE_DIR", str(tmp_path / "cache"))
    src = write_llama(tmp_path / "q.gguf", "Q4_1")
    first = cached_float_gguf(src)
    stamp = first.stat().st_mtime_ns
    assert cached_float_gguf(src) == first and first.stat().st_mtime_ns == stamp
    assert first.is_relative_to(tmp_path / "cache") and float_gguf_problems(src, first) == []
    write_llama(src, "Q4_1", seed=1)                           # new content, new file
    assert cached_float_gguf(src) != first


def test_transformers_reads_the_float_copy_as_the_same_model(tmp_path):
    import torch

    from qbench.models import load_model
    from qbench.schema import ModelRef

    src = write_llama(tmp_path / "q.gguf", "Q4_1")
    dst = write_float_gguf(src, tmp_path / "f32.gguf")
    quantized = load_model(ModelRef(id=f"gguf:{src}"), "fp32", "cpu")
    floated = load_model(ModelRef(id=f"gguf:{dst}"), "fp32", "cpu")
    assert floated.source_format["file_type"] == "ALL_F32" and quantized.source_format["file_type"] == "Q4_1"
    qa, fa = dict(quantized.model.named_parameters()), dict(floated.model.named_parameters())
    assert qa.keys() == fa.keys() and all(torch.equal(qa[k], fa[k]) for k in qa)   # q/k un-permuted alike
    ids = torch.arange(3, 60).unsqueeze(0)
    with torch.no_grad():
        assert torch.equal(quantized.model(ids).logits, floated.model(ids).logits)
    text = "def add(a, b):\n    return a + b"
    assert quantized.tokenizer(text).input_ids == floated.tokenizer(text).input_ids
