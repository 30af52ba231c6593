"""Load models by id: bundled short names (minilm, reflm, smollm2-135m, gemma3-270m), `hf:<id or path>` or
`gguf:<path>`. The facade over the source registry (qbench.models.sources) that the rest of qbench calls."""
from __future__ import annotations

import importlib.util  # noqa: F401  (tests patch importlib.util.find_spec through this module)

from qbench.models.base import DTYPES, LoadedModel, ModelSource, context_length
from qbench.models.bundled import BUNDLED, Bundled
from qbench.models.sources import SOURCES, detect_task, source_for
from qbench.schema.experiment import ModelRef

__all__ = ["BUNDLED", "Bundled", "DTYPES", "LoadedModel", "ModelSource", "SOURCES", "check_model_ref",
           "context_length", "detect_task", "load_model", "load_skeleton", "resolve_source", "source_for"]


def resolve_source(ref: ModelRef) -> tuple[str, str]:
    """(where to load from, provenance) without importing torch; raises ModelError when absent or invalid."""
    return source_for(ref.id).resolve(ref)


def check_model_ref(ref: ModelRef) -> None:
    """Fail early (before any work) on model ids that cannot load."""
    resolve_source(ref)


def load_model(ref: ModelRef, dtype: str = "fp32", device: str = "cpu") -> LoadedModel:
    """Weights and tokenizer, on `device` in `dtype`, eval mode; weights in memory torch owns."""
    return source_for(ref.id).load(ref, dtype, device)


def load_skeleton(ref: ModelRef):
    """(model built from its config on the meta device, task, context length): shapes, no weights read."""
    return source_for(ref.id).skeleton(ref)
