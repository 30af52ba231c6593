"""Shared settings for the engine tests."""
from __future__ import annotations

import pytest
import torch


@pytest.fixture(scope="module")
def bert_float():
    """A tiny random BERT (2 layers, width 64, vocabulary 300) in eval mode; deep-copy it before changing it."""
    import transformers

    torch.manual_seed(1)
    cfg = transformers.BertConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                                  intermediate_size=128, vocab_size=300)
    return transformers.BertModel(cfg).eval()


@pytest.fixture(autouse=True, scope="module")
def _single_thread():
    """The engine tests run thousands of tiny matmuls: one intra-op thread is as fast when the
    machine is idle and avoids OpenMP spin-wait slowdowns (10x seen) when other processes share
    the cores. Restored after each module."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
