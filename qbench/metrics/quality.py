"""Quality of a quantized model against its baseline on the same inputs.

Encoders: cosine similarity of sentence embeddings and nearest-neighbour agreement.
Causal LMs: see qbench.metrics.lm (statistics against the baseline's cached top-k reference).
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
