"""Quality of a quantized model against its baseline on the same inputs.

Encoders: cosine similarity of sentence embeddings and nearest-neighbour agreement.
Causal LMs: per-sequence negative log-likelihood (perplexity), KL(baseline || quantized) of the
next-token distributions, and top-1 agreement.
"""
from __future__ import annotations

import torch


def mean_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(B, T, D) hidden states, (B, T) mask -> (B, D) L2-normalized mean of the unmasked tokens."""
    m = mask.unsqueeze(-1).to(hidden.dtype)
    pooled = (hidden * m).sum(dim=1) / m.sum(dim=1).clamp(min=1)
    return torch.nn.functional.normalize(pooled.float(), dim=-1)


def cosine_per_sample(base: torch.Tensor, quant: torch.Tensor) -> torch.Tensor:
    """(N, D), (N, D) -> (N,) cosine similarity in float64."""
    b = torch.nn.functional.normalize(base.double(), dim=-1)
    q = torch.nn.functional.normalize(quant.double(), dim=-1)
    return (b * q).sum(dim=-1)


def nearest_neighbours(emb: torch.Tensor) -> torch.Tensor:
    """(N, D) -> (N,) index of each sample's most similar other sample (cosine)."""
    e = torch.nn.functional.normalize(emb.double(), dim=-1)
    sim = e @ e.T
    sim.fill_diagonal_(-float("inf"))
    return sim.argmax(dim=1)


def nn_agreement(base: torch.Tensor, quant: torch.Tensor) -> tuple[int, int]:
    """(agreeing samples, samples): same nearest neighbour in both embedding spaces."""
    agree = (nearest_neighbours(base) == nearest_neighbours(quant)).sum().item()
    return int(agree), base.shape[0]


def lm_token_stats(base_logits: torch.Tensor, quant_logits: torch.Tensor, input_ids: torch.Tensor,
                   mask: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per-sequence statistics of next-token prediction, in float64.

    base_logits, quant_logits: (B, T, V) for positions predicting input_ids[:, 1:].
    Returns nll_base (B,), nll_quant (B,) mean negative log-likelihood per sequence; kl (B,) mean
    KL(p_base || p_quant) per sequence; top1 (B,) share of positions with the same argmax;
    kl_tokens (n,) KL per scored token; n_tokens (B,).
    """
    lb = torch.log_softmax(base_logits[:, :-1].double(), dim=-1)      # (B, T-1, V)
    lq = torch.log_softmax(quant_logits[:, :-1].double(), dim=-1)
    target = input_ids[:, 1:]
    valid = (mask[:, 1:] * mask[:, :-1]).bool()                          # (B, T-1)
    n = valid.sum(dim=1).clamp(min=1).double()
    nll_b = -lb.gather(-1, target.unsqueeze(-1)).squeeze(-1)
    nll_q = -lq.gather(-1, target.unsqueeze(-1)).squeeze(-1)
    kl = (lb.exp() * (lb - lq)).sum(dim=-1).clamp(min=0)               # (B, T-1)
    top1 = (lb.argmax(-1) == lq.argmax(-1)).double()
    v = valid.double()
    return {
        "nll_base": (nll_b * v).sum(1) / n,
        "nll_quant": (nll_q * v).sum(1) / n,
        "kl": (kl * v).sum(1) / n,
        "top1": (top1 * v).sum(1) / n,
        "kl_tokens": kl[valid],
        "n_tokens": valid.sum(dim=1),
    }
