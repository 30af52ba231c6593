"""What every model source shares: the loaded model, the source protocol, and transformers helpers."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from qbench.schema.experiment import ModelRef

DTYPES = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}


@dataclass
class LoadedModel:
    model: Any          # torch.nn.Module in eval mode
    tokenizer: Any
    task: str           # encoder | causal_lm
    source: str         # local directory, hub id or .gguf file it was read from
    origin: str         # human-readable provenance
    max_positions: int | None
    # Where the weights came from when they were not float to begin with (GGUF): JSON-ready, see
    # qbench.models.gguf.source_format; None for safetensors models.
    source_format: dict | None = None


class ModelSource:
    """One way of finding and loading models. `resolve` is cheap and imports no torch; it raises ModelError
    for anything that can be known to fail before work starts."""

    name = "?"
    ids = "?"           # how its ids look, for error messages and `qbench list models`

    def matches(self, model_id: str) -> bool:
        raise NotImplementedError

    def resolve(self, ref: ModelRef) -> tuple[str, str]:
        """(where it loads from, provenance as a card prints it)."""
        raise NotImplementedError

    def load(self, ref: ModelRef, dtype: str, device: str) -> LoadedModel:
        raise NotImplementedError

    def skeleton(self, ref: ModelRef):
        """(model built from its config on the meta device, task, context length): no weights read."""
        raise NotImplementedError


def model_class(task: str):
    import transformers

    return transformers.AutoModelForCausalLM if task == "causal_lm" else transformers.AutoModel


def context_length(config) -> int | None:
    """Longest sequence the model's position embeddings allow, when the config says."""
    return getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)


def own_memory(model) -> None:
    """Copy every parameter and buffer out of the weight file's mapping into memory torch allocates.

    Loaded tensors can be views of the file at unaligned offsets, while any copy of the model (the one a
    scheme quantizes) is 64-byte aligned; matmul kernels pick their SIMD paths by alignment, so the baseline
    and an unchanged copy would round differently in the last bit and time differently. After this the
    baseline and its copies run the same code. Tied weights stay tied (one Parameter object each).
    """
    import torch

    with torch.no_grad():
        for t in [*model.parameters(), *model.buffers()]:
            t.data = t.data.clone()


def finish(model, tok, device: str) -> None:
    """Pad token, device, eval mode, own memory: the same last steps for every source."""
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token or tok.unk_token
    model.to(device).eval()
    own_memory(model)


def first_line(e: Exception) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else ""
