"""What a peer runtime gives a cell: a model the measurement code can call like a transformers causal LM.

The quality and speed stages call a causal LM three ways: `model(input_ids=..., attention_mask=...)` for the
logits of whole (padded) sequences, `model(input_ids=..., use_cache=True, logits_to_keep=1)` for a prefill,
and `model(input_ids=next[:, None], use_cache=True, past_key_values=cache)` for each decode step. `PeerModel`
turns these calls into `start` (new sequences) and `extend` (one more token each) on the runtime's own
sequences and KV cache, and returns logits as a float32 tensor in a transformers output. Padding positions
(attention_mask 0) are not sent to the runtime; their logits are zero, and every statistic qbench computes
masks them out.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Protocol

import numpy as np
import torch


@dataclass
class PeerState:
    """What the cell records of a peer model: its quantization map, bytes held and provenance."""

    records: list                       # qbench.engine.api.ModuleRecord per weight tensor
    held_bytes: int                     # every tensor the runtime holds (weights, norms)
    kernel: str                         # the name the card shows as the scheme's kernel
    backend: str                        # runtime, version and device, for kernel_info
    info: dict = field(default_factory=dict)    # the cell record's `runtime` section
    source_grid: Optional[str] = None   # why the peer's grid reproduces the source file's, or None


class _Cache:
    """The handle a prefill returns as past_key_values: which call of the model it continues."""

    def __init__(self, generation: int, n: int):
        self.generation, self.n = generation, n


class PeerModel(torch.nn.Module):
    """A causal LM run by another runtime. Subclasses implement `start` and `extend`."""

    peer: PeerState

    def __init__(self):
        super().__init__()
        self._generation = 0

    # ---- what a runtime implements
    def start(self, seqs: list[np.ndarray], keep: int) -> np.ndarray:
        """Forget every sequence, evaluate `seqs` (token ids from position 0) as new sequences 0..B-1, and
        return the logits of the last `keep` positions of each, (B, keep, V) float32 (keep 0: all
        positions, which needs equal lengths or is asked per sequence)."""
        raise NotImplementedError

    def extend(self, tokens: np.ndarray) -> np.ndarray:
        """Append one token to each live sequence and return the next-token logits, (B, 1, V) float32."""
        raise NotImplementedError

    def close(self) -> None:
        """Free the runtime's model and buffers."""

    # ---- the transformers surface
    @torch.no_grad()
    def forward(self, input_ids: torch.Tensor, attention_mask: Optional[torch.Tensor] = None,
                past_key_values: Optional[_Cache] = None, use_cache: Optional[bool] = None,
                logits_to_keep: int = 0, **_ignored):
        from transformers.modeling_outputs import CausalLMOutputWithPast

        ids = input_ids.cpu().numpy().astype(np.int32)
        if past_key_values is not None:
            if not isinstance(past_key_values, _Cache) or past_key_values.generation != self._generation:
                raise ValueError("past_key_values is not the live cache of this peer model")
            if ids.shape != (past_key_values.n, 1):
                raise ValueError(f"a decode step takes one token per sequence, got shape {tuple(ids.shape)}")
            logits = self.extend(ids[:, 0])
            return CausalLMOutputWithPast(logits=torch.from_numpy(logits), past_key_values=past_key_values)
        self._generation += 1
        b, t = ids.shape
        if attention_mask is None:
            seqs, spans = list(ids), [(0, t)] * b
        else:
            spans = [_span(m) for m in attention_mask.cpu().numpy()]
            seqs = [ids[i, lo:hi] for i, (lo, hi) in enumerate(spans)]
        if logits_to_keep and attention_mask is None:
            logits = self.start(seqs, keep=logits_to_keep)
        else:
            per_seq = self.start_each(seqs)
            logits = np.zeros((b, t, per_seq[0].shape[-1]), np.float32)
            for i, ((lo, hi), x) in enumerate(zip(spans, per_seq)):
                logits[i, lo:hi] = x
            if logits_to_keep:
                logits = logits[:, -logits_to_keep:]
        cache = _Cache(self._generation, b) if use_cache else None
        return CausalLMOutputWithPast(logits=torch.from_numpy(np.ascontiguousarray(logits)), past_key_values=cache)

    def start_each(self, seqs: list[np.ndarray]) -> list[np.ndarray]:
        """Logits at every position of each sequence: (len, V) per sequence (lengths may differ)."""
        if len({len(s) for s in seqs}) == 1:
            return list(self.start(seqs, keep=0))
        return [self.start([s], keep=0)[0] for s in seqs]


def _span(mask: np.ndarray) -> tuple[int, int]:
    """(first, end) of the one contiguous run of 1s in an attention-mask row (left or right padding)."""
    on = np.flatnonzero(mask)
    if len(on) == 0:
        raise ValueError("a sequence with no tokens (attention mask all 0)")
    lo, hi = int(on[0]), int(on[-1]) + 1
    if hi - lo != len(on):
        raise ValueError("attention mask with a hole in it: a peer runtime takes contiguous sequences")
    return lo, hi


class Runtime(Protocol):
    """A peer runtime: `problem()` says why it cannot run here (None when it can, cheap, no build),
    `build` makes the scheme's quantized model from a loaded baseline."""

    name: str
    extra: str

    def problem(self) -> Optional[str]:
        ...

    def build(self, loaded, config, threads: int, reserve: int = 64) -> PeerModel:
        """`reserve`: decode steps after a prompt the model must have room for."""
        ...
