"""Tiny GGUF files written with the gguf package's own writer: a 2-layer Llama whose weights are quantized by
gguf's reference quantizers (Q4_1, Q8_0, ...), and broken variants of it. No download, ~100 KB each."""
from __future__ import annotations

import struct
from pathlib import Path

import numpy as np


def _byte_tokens() -> list[str]:
    """GPT-2's byte-to-unicode alphabet: 256 single-character tokens, enough for a byte-level BPE."""
    bs = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    cs, n = bs[:], 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return [chr(c) for c in cs]


def write_llama(path: Path, qtype: str = "Q4_1", arch: str = "llama", tokenizer: bool = True, seed: int = 0,
                layers: int = 2, dim: int = 64, ff: int = 128, heads: int = 4, kv_heads: int = 2,
                merges: bool = False) -> Path:
    """A random tiny Llama in GGUF: 2-D weights in `qtype`, norms in F32, a byte-level gpt2 tokenizer
    (`merges`: with one BPE merge, "t h", and its token, which llama.cpp's loader requires)."""
    import gguf
    from gguf.quants import quantize

    q = gguf.GGMLQuantizationType[qtype]
    rng = np.random.default_rng(seed)
    tokens = _byte_tokens() + (["th"] if merges else []) + ["<s>", "</s>"]
    w = gguf.GGUFWriter(str(path), arch)
    w.add_block_count(layers)
    w.add_context_length(128)
    w.add_embedding_length(dim)
    w.add_feed_forward_length(ff)
    w.add_head_count(heads)
    w.add_head_count_kv(kv_heads)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_dimension_count(dim // heads)
    w.add_vocab_size(len(tokens))
    w.add_file_type(getattr(gguf.LlamaFileType, f"MOSTLY_{qtype}", gguf.LlamaFileType.ALL_F32))
    if tokenizer:
        w.add_tokenizer_model("gpt2")
        w.add_tokenizer_pre("default")
        w.add_token_list(tokens)
        w.add_token_merges(["t h"] if merges else [])
        w.add_token_types([1] * (len(tokens) - 2) + [3, 3])
        w.add_token_scores([0.0] * len(tokens))
        w.add_bos_token_id(len(tokens) - 2)
        w.add_eos_token_id(len(tokens) - 1)

    def tensor(name: str, shape: tuple[int, ...], quantized: bool = True) -> None:
        x = (rng.standard_normal(shape) * 0.05).astype(np.float32)   # numpy shape (rows, K): K runs along blocks
        if quantized and q != gguf.GGMLQuantizationType.F32:
            w.add_tensor(name, quantize(x, q), raw_dtype=q)
        else:
            w.add_tensor(name, x)

    tensor("token_embd.weight", (len(tokens), dim))
    tensor("output_norm.weight", (dim,), quantized=False)
    kv = dim * kv_heads // heads
    for i in range(layers):
        tensor(f"blk.{i}.attn_norm.weight", (dim,), quantized=False)
        tensor(f"blk.{i}.ffn_norm.weight", (dim,), quantized=False)
        for name, shape in (("attn_q", (dim, dim)), ("attn_k", (kv, dim)), ("attn_v", (kv, dim)),
                            ("attn_output", (dim, dim)), ("ffn_gate", (ff, dim)), ("ffn_up", (ff, dim)),
                            ("ffn_down", (dim, ff))):
            tensor(f"blk.{i}.{name}.weight", shape)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def set_tensor_type(path: Path, tensor: str, type_id: int) -> None:
    """Overwrite the GGML type id in one tensor's header entry (name, u32 n_dims, u64 dims..., u32 type)."""
    data = bytearray(path.read_bytes())
    at = data.find(tensor.encode()) + len(tensor)
    n_dims = struct.unpack_from("<I", data, at)[0]
    struct.pack_into("<I", data, at + 4 + 8 * n_dims, type_id)
    path.write_bytes(bytes(data))
