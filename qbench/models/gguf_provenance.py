"""What a GGUF model's card must know about its file: `LoadedModel.source_format`, JSON-ready.

  {"format": "gguf", "file", "bytes", "sha256", "gguf_version", "architecture", "name", "file_type",
   "tensor_types": {GGML type: count}, "dequantized_to": "fp32", "derived_from": hub id or None,
   "tensors": [per 2-D weight: its parameter name (and tied aliases), GGUF name, GGML type, shape, and the
               grid measured on the loaded weights (qbench.models.gguf_grid)],
   "grid_error": why the per-tensor measurement is missing, only when it is}

Read with the gguf package's own reader (the one transformers uses), independent of the cheap header walk
that validated the file. qbench.models.source_grid decides from "tensors" whether a scheme reproduces the
file's grid. The grid measurement (~10 s for SmolLM2-135M on 2 cores) is cached under the qbench cache,
keyed by the file's sha256, the dtype and the versions of everything that shapes the loaded weights.
"""
from __future__ import annotations

import hashlib
import json
import time
from collections import Counter
from pathlib import Path

GRID_VERSION = 1    # bump when gguf_grid's measurement or record changes


def source_format(path: Path, model, dtype: str, derived_from: str | None = None) -> dict:
    from gguf import GGUFReader, LlamaFileType

    reader = GGUFReader(str(path))
    field = reader.fields.get
    arch = field("general.architecture").contents() if field("general.architecture") else ""
    ft = field("general.file_type")
    try:
        file_type = LlamaFileType(int(ft.contents())).name.removeprefix("MOSTLY_") if ft else None
    except ValueError:
        file_type = f"file_type {ft.contents()}"
    name = field("general.name")
    tensors = [(t.name, t.tensor_type.name) for t in reader.tensors]
    out = {
        "format": "gguf", "file": path.name, "bytes": path.stat().st_size, "sha256": sha256_file(path),
        "gguf_version": int(field("GGUF.version").contents()), "architecture": arch,
        "name": name.contents() if name else None, "file_type": file_type,
        "tensor_types": dict(sorted(Counter(t for _, t in tensors).items())),
        "dequantized_to": dtype, "derived_from": derived_from,
    }
    cache = _grid_cache(out["sha256"], dtype)
    if cache.is_file():
        out["tensors"], out["grid_seconds"] = json.loads(cache.read_text(encoding="utf-8")), "cached"
        return out
    started = time.perf_counter()
    try:
        out["tensors"] = _measure(model, tensors, arch)
    except Exception as e:   # the mapping is transformers-internal: keep the provenance, say why the grid is absent
        out["tensors"], out["grid_error"] = [], f"{type(e).__name__}: {e}"
    out["grid_seconds"] = round(time.perf_counter() - started, 2)
    if "grid_error" not in out:
        _store(cache, out["tensors"])
    return out


def _grid_cache(sha256: str, dtype: str) -> Path:
    from importlib.metadata import version

    from qbench.cache import cache_dir

    versions = "-".join([str(GRID_VERSION), *(version(p) for p in ("transformers", "torch", "gguf"))])
    tag = hashlib.sha256(versions.encode()).hexdigest()[:12]
    return cache_dir() / "gguf-grid" / f"{sha256[:24]}-{dtype}-{tag}.json"


def _store(path: Path, tensors: list[dict]) -> None:
    from qbench.atomic import write_atomic

    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, json.dumps(tensors))
    except OSError:     # a read-only cache only costs the next load the measurement
        pass


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _measure(model, tensors: list[tuple[str, str]], arch: str) -> list[dict]:
    """GGUF tensor names -> the model's parameter names with transformers' own mapping, then the grid."""
    from transformers.modeling_gguf_pytorch_utils import TENSOR_PROCESSORS, TensorProcessor, get_gguf_hf_weights_map

    from qbench.models.gguf_grid import measure_model

    processor = TENSOR_PROCESSORS.get(arch, TensorProcessor)(config=model.config.to_dict())
    return measure_model(model, tensors, get_gguf_hf_weights_map(model, processor))
