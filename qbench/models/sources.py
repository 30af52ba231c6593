"""The model-source registry: each id form (bundled short names, `hf:`, `gguf:`) maps to one ModelSource with
resolve, load, skeleton and provenance. `qbench.models.loaders` is the facade the rest of qbench calls."""
from __future__ import annotations

import json
from pathlib import Path

from qbench.errors import ModelError
from qbench.models.base import DTYPES, LoadedModel, ModelSource, context_length, finish, first_line, model_class
from qbench.models.bundled import BUNDLED, package_dir
from qbench.registry import Registry, did_you_mean
from qbench.schema.experiment import ModelRef


class HubSource(ModelSource):
    """`hf:<hub id or local directory>`: any transformers model, safetensors weights unless pickle is allowed."""

    name, ids = "hf", "hf:<hub id or local directory>"

    def matches(self, model_id: str) -> bool:
        return model_id.startswith("hf:")

    def resolve(self, ref: ModelRef) -> tuple[str, str]:
        target = ref.id[3:]
        if not target:
            raise ModelError("model id 'hf:' names no model; use hf:<hub id> or hf:<local directory>")
        p = Path(target).expanduser()
        if p.exists():
            if not (p / "config.json").is_file():
                hint = " (a GGUF file loads as gguf:<path>)" if p.suffix == ".gguf" else ""
                raise ModelError(f"model '{ref.id}': {p} holds no config.json{hint}")
            return str(p.resolve()), f"local directory {target}"
        if target.startswith((".", "/", "~")) or target.count("/") > 1:
            raise ModelError(f"model '{ref.id}': no such directory {target}")
        return target, f"Hugging Face hub {target}" + (f"@{ref.revision}" if ref.revision else "")

    def load(self, ref: ModelRef, dtype: str, device: str) -> LoadedModel:
        source, origin = self.resolve(ref)
        return load_transformers(ref, source, origin, dtype, device)

    def skeleton(self, ref: ModelRef):
        source, _ = self.resolve(ref)
        return transformers_skeleton(ref, source)


class BundledDirSource(HubSource):
    """Short ids of BUNDLED models shipped as a transformers directory (minilm, reflm)."""

    name, ids = "bundled", "bundled short names"

    def matches(self, model_id: str) -> bool:
        return model_id in BUNDLED and BUNDLED[model_id].gguf is None

    def resolve(self, ref: ModelRef) -> tuple[str, str]:
        b = BUNDLED[ref.id]
        path = package_dir(ref.id, b)
        if not (path / "config.json").is_file():
            raise ModelError(f"model '{ref.id}': {path} holds no config.json (to make it: {b.install})")
        return str(path), b.origin


def detect_task(source: str, ref: ModelRef) -> str:
    if ref.task != "auto":
        return ref.task
    cfg_path = Path(source) / "config.json"
    if cfg_path.is_file():
        cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
    else:
        from transformers import AutoConfig

        cfg = AutoConfig.from_pretrained(source, revision=ref.revision,
                                         trust_remote_code=ref.trust_remote_code).to_dict()
    archs = " ".join(cfg.get("architectures") or [])
    if "CausalLM" in archs or "LMHeadModel" in archs or cfg.get("is_decoder"):
        return "causal_lm"
    return "encoder"


def load_transformers(ref: ModelRef, source: str, origin: str, dtype: str, device: str) -> LoadedModel:
    """Load weights (safetensors only) and tokenizer, move to device and dtype, eval mode."""
    import torch
    import transformers

    transformers.utils.logging.disable_progress_bar()  # qbench shows its own progress
    task = detect_task(source, ref)
    local = Path(source)
    if local.is_dir() and not ref.allow_pickle and not any(local.glob("*.safetensors")):
        pickled = sorted(p.name for p in local.glob("*.bin"))
        raise ModelError(f"model '{ref.id}' has no safetensors weights" + (
            f" (only {', '.join(pickled)}: pickle files can run code; set allow_pickle: true on this model "
            "if you trust them)" if pickled else ""))
    kwargs = dict(revision=ref.revision, trust_remote_code=ref.trust_remote_code,
                  use_safetensors=None if ref.allow_pickle else True)
    try:
        tok = transformers.AutoTokenizer.from_pretrained(source, **kwargs)
        model = model_class(task).from_pretrained(source, dtype=getattr(torch, DTYPES[dtype]), **kwargs)
    except Exception as e:  # transformers and safetensors raise many types for missing or corrupt files
        raise ModelError(f"model '{ref.id}' could not be loaded from {source}: {type(e).__name__}: "
                         f"{first_line(e)}") from None
    finish(model, tok, device)
    return LoadedModel(model, tok, task, source, origin, context_length(model.config))


def transformers_skeleton(ref: ModelRef, source: str):
    import torch
    import transformers

    try:
        config = transformers.AutoConfig.from_pretrained(source, revision=ref.revision,
                                                         trust_remote_code=ref.trust_remote_code)
    except (OSError, ValueError) as e:
        raise ModelError(f"model '{ref.id}': cannot read its config from {source}: "
                         f"{first_line(e) or type(e).__name__}") from None
    task = detect_task(source, ref)
    with torch.device("meta"):
        model = model_class(task).from_config(config, trust_remote_code=ref.trust_remote_code)
    return model, task, context_length(config)


def _registry() -> Registry[ModelSource]:
    from qbench.models.gguf import BundledGGUFSource, GGUFFileSource

    reg: Registry[ModelSource] = Registry("model source")
    for s in (BundledDirSource(), BundledGGUFSource(), HubSource(), GGUFFileSource()):
        reg.add(s.name, s)
    return reg


SOURCES = _registry()


def source_for(model_id: str) -> ModelSource:
    """The source whose ids include `model_id`; ModelError with a hint and the known forms otherwise."""
    for _, s in SOURCES.items():
        if s.matches(model_id):
            return s
    known = ", ".join([*BUNDLED, "hf:<hub id or path>", "gguf:<path to a .gguf file>"])
    raise ModelError(f"unknown model id '{model_id}'{did_you_mean(model_id, list(BUNDLED))}; known: {known}")
