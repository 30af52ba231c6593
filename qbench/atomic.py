"""The one way qbench writes a file: into a temporary file in the same folder, fsync, then rename.

Readers never see half a file, and a crash leaves either the old file or the new one. Used by the runner
(cell files, meta), the report (cards, plots), the benchmarks (JSON), the LM reference cache and the native
kernel build. Imports nothing from qbench, so every layer may use it.
"""
from __future__ import annotations

import json
import math
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator


@contextmanager
def atomic_path(path: str | Path, mode: int = 0o644) -> Iterator[Path]:
    """Yield a temporary path beside `path`; when the block ends without error it is fsynced and renamed
    onto `path` (for writers that want a file name: a compiler, pandas, torch.save). On error it is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, mode)                  # mkstemp creates 0600; results and cards are meant to be shared
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)                # atomic: concurrent writers end with one complete file
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_atomic(path: str | Path, data: bytes | str) -> None:
    """Write bytes (or UTF-8 text) to `path` atomically."""
    raw = data.encode("utf-8") if isinstance(data, str) else data
    with atomic_path(path) as tmp:
        tmp.write_bytes(raw)


def write_json_atomic(path: str | Path, data: Any) -> None:
    """Strict JSON (non-finite floats become null, keys sorted) written atomically."""
    write_atomic(path, json.dumps(finite(data), indent=1, sort_keys=True, default=_json_default, allow_nan=False))


def finite(o: Any) -> Any:
    """Strict JSON: non-finite floats (an exact layer's infinite SQNR, say) become None, recursively."""
    if isinstance(o, float):
        return o if math.isfinite(o) else None
    if isinstance(o, dict):
        return {k: finite(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [finite(v) for v in o]
    return o


def _json_default(o: Any) -> Any:
    if hasattr(o, "item"):
        return o.item()
    if isinstance(o, (set, tuple)):
        return list(o)
    raise TypeError(f"not JSON serializable: {type(o).__name__}")
