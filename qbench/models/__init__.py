"""Model loaders: the bundled offline encoder and any transformers model (hub id or local path)."""
from qbench.models.loaders import LoadedModel, check_model_ref, load_model, resolve_source

__all__ = ["LoadedModel", "check_model_ref", "load_model", "resolve_source"]
