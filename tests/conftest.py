"""Shared fixtures: tiny transformers models saved locally (no downloads), loaded through `hf:<dir>`."""
from __future__ import annotations

import pytest

WORDS = ("the of and to in is that for it as with was on be by this are from or an which code def return "
         "class import self if else for while print value list dict none true false").split()


def _tokenizer(max_len: int):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"[PAD]": 0, "[UNK]": 1, "[EOS]": 2}
    for ch in "abcdefghijklmnopqrstuvwxyz0123456789":
        vocab.setdefault(ch, len(vocab))
    for w in WORDS:
        vocab.setdefault(w, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]",
                                   eos_token="[EOS]", model_max_length=max_len), len(vocab)


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory):
    """{'gpt2': dir, 'bert': dir, 'llama': dir}: random-weight models with a word-level tokenizer, safetensors."""
    import torch
    from transformers import BertConfig, BertModel, GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    root = tmp_path_factory.mktemp("tiny_models")
    tok, vocab = _tokenizer(64)
    out = {}
    gpt2 = GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=64, n_head=4, vocab_size=vocab, n_positions=64,
                                      bos_token_id=2, eos_token_id=2, pad_token_id=0))
    bert = BertModel(BertConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                                intermediate_size=128, vocab_size=vocab, max_position_embeddings=64))
    llama = LlamaForCausalLM(LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                         num_attention_heads=4, num_key_value_heads=2, vocab_size=vocab,
                                         max_position_embeddings=64, bos_token_id=2, eos_token_id=2, pad_token_id=0))
    for name, model in (("gpt2", gpt2), ("bert", bert), ("llama", llama)):
        d = root / name
        model.save_pretrained(d, safe_serialization=True)
        tok.save_pretrained(d)
        out[name] = d
    return out


def pytest_configure(config):
    """Baseline references are cached under a per-session temporary directory, never the user's cache."""
    import os
    import tempfile

    os.environ.setdefault("QBENCH_CACHE_DIR", tempfile.mkdtemp(prefix="qbench-test-cache-"))
