"""PeerModel: the transformers surface a peer runtime is measured through, checked without llama.cpp.

`Recompute` is a peer runtime in miniature: it keeps its sequences as token lists and evaluates a tiny GPT-2
from scratch on every call (no KV cache at all), so everything PeerModel adds (padding spans, logits_to_keep,
the decode handle) is checked against transformers' own forward and generation on the same model.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from qbench.metrics.lm import greedy, prefill_decode
from qbench.runtimes.base import PeerModel


class Recompute(PeerModel):
    def __init__(self, model):
        super().__init__()
        self.hf, self.seqs = model, []

    def _logits(self, seq):
        with torch.no_grad():
            return self.hf(input_ids=torch.tensor([seq])).logits[0].numpy()

    def start(self, seqs, keep):
        self.seqs = [list(map(int, s)) for s in seqs]
        out = [self._logits(s) for s in self.seqs]
        return np.stack([x if keep == 0 else x[-keep:] for x in out])

    def extend(self, tokens):
        for s, t in zip(self.seqs, tokens.tolist()):
            s.append(t)
        return np.stack([self._logits(s)[-1:] for s in self.seqs])


@pytest.fixture(scope="module")
def gpt2(tiny_models):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(0)
    return (AutoModelForCausalLM.from_pretrained(tiny_models["gpt2"]).eval(),
            AutoTokenizer.from_pretrained(tiny_models["gpt2"]))


def test_padded_batch_logits_equal_the_models_on_every_real_token(gpt2):
    model, tok = gpt2
    enc = tok(["the code of the value", "def return self if else for while print value list"],
              padding="max_length", max_length=16, return_tensors="pt")
    mask = enc["attention_mask"].bool()
    assert not mask.all()                         # the first sequence really is padded
    want = torch.zeros(2, 16, model.config.vocab_size)
    for i, m in enumerate(mask):
        n = int(m.sum())
        with torch.no_grad():
            want[i, :n] = model(input_ids=enc["input_ids"][i:i + 1, :n]).logits[0]
    got = Recompute(model)(**enc).logits
    assert got.dtype == torch.float32 and got.shape == want.shape
    assert torch.allclose(got[mask], want[mask], atol=1e-5)
    assert (got[~mask] == 0).all()                # padding positions carry no logits


def test_left_padding_is_placed_where_the_tokens_are(gpt2):
    model, _ = gpt2
    ids = torch.tensor([[0, 0, 5, 6, 7], [8, 9, 10, 11, 12]])
    mask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])
    got = Recompute(model)(input_ids=ids, attention_mask=mask).logits
    with torch.no_grad():
        want = model(input_ids=ids[:1, 2:]).logits[0]
    assert torch.allclose(got[0, 2:], want, atol=1e-5) and (got[0, :2] == 0).all()


def test_greedy_and_timed_decode_follow_the_models_own(gpt2):
    model, _ = gpt2
    prompts = torch.tensor([[5, 6, 7, 8], [9, 10, 11, 12], [13, 14, 15, 16]])
    peer = Recompute(model)
    assert torch.equal(greedy(peer, prompts, 6), greedy(model, prompts, 6))
    out = peer(input_ids=prompts, use_cache=True, logits_to_keep=1)
    assert out.logits.shape == (3, 1, model.config.vocab_size)
    with torch.no_grad():
        assert torch.allclose(out.logits[:, 0], model(input_ids=prompts).logits[:, -1], atol=1e-5)
    prefill_ms, decode_ms = prefill_decode(peer, prompts, 3, sync=lambda: None)
    assert prefill_ms > 0 and decode_ms > 0


def test_a_stale_or_foreign_cache_and_a_holed_mask_are_refused(gpt2):
    model, _ = gpt2
    peer = Recompute(model)
    first = peer(input_ids=torch.tensor([[5, 6]]), use_cache=True).past_key_values
    peer(input_ids=torch.tensor([[7, 8]]), use_cache=True)            # a new call: `first` is stale now
    with pytest.raises(ValueError, match="not the live cache"):
        peer(input_ids=torch.tensor([[9]]), use_cache=True, past_key_values=first)
    live = peer(input_ids=torch.tensor([[7, 8]]), use_cache=True).past_key_values
    with pytest.raises(ValueError, match="one token per sequence"):
        peer(input_ids=torch.tensor([[9, 10]]), use_cache=True, past_key_values=live)
    with pytest.raises(ValueError, match="hole"):
        peer(input_ids=torch.tensor([[5, 6, 7]]), attention_mask=torch.tensor([[1, 0, 1]]))
