"""Model loaders: bundled offline models (MiniLM, reflm, GGUF LLMs), any transformers model (hub id or local
path), and local GGUF files."""
from qbench.models.loaders import LoadedModel, check_model_ref, load_model, resolve_source

__all__ = ["LoadedModel", "check_model_ref", "load_model", "resolve_source"]
