"""The ResultsTable: long-form rows (one measured number each) plus run metadata.

On disk, a run directory holds:
  cells/<cell_id>.json   one file per finished cell (rows, realized quantization map, status)
  results.csv            all rows, assembled from the cell files
  meta.json              hardware, software, git commit, resolved experiment, plan, provenance
"""
from __future__ import annotations

import json
import math
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# column -> description; every row has every column (None where it does not apply)
COLUMNS: dict[str, str] = {
    "cell": "Cell id: model__scheme__workload.",
    "model": "Model display name.",
    "task": "encoder or causal_lm.",
    "scheme": "Scheme name.",
    "workload": "Workload name.",
    "variant": "baseline, quantized, or paired (a comparison of the two measured interleaved).",
    "batch_size": "Batch size for speed rows; empty for quality and size rows.",
    "metric": "What was measured (see the card's glossary).",
    "value": "Point estimate (median for timings, mean or proportion for quality).",
    "ci_low": "Lower end of the 95% confidence interval.",
    "ci_high": "Upper end of the 95% confidence interval.",
    "p10": "10th percentile of the raw samples (timings).",
    "p90": "90th percentile of the raw samples (timings).",
    "n": "Number of samples behind the value.",
    "unit": "Unit of value.",
    "method": "How the value and its interval were computed.",
    "kernel": "Kernel(s) that ran the quantized ops of this cell.",
    "status": "ok, skipped or failed.",
    "reason": "Why a cell was skipped or failed.",
}


def write_atomic(path: Path, data: bytes | str) -> None:
    """Write through a temporary file in the same folder, fsync, then rename: readers never see half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    raw = data.encode("utf-8") if isinstance(data, str) else data
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; results and cards are meant to be shared
        with os.fdopen(fd, "wb") as f:
            f.write(raw)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json_atomic(path: Path, data: Any) -> None:
    """Strict JSON (non-finite floats become null) written with write_atomic."""
    write_atomic(path, json.dumps(_finite(data), indent=1, sort_keys=True, default=_json_default, allow_nan=False))


def _finite(o):
    """Strict JSON: non-finite floats (an exact layer's infinite SQNR, say) become null."""
    if isinstance(o, float):
        return o if math.isfinite(o) else None
    if isinstance(o, dict):
        return {k: _finite(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_finite(v) for v in o]
    return o


def _json_default(o):
    if hasattr(o, "item"):
        return o.item()
    if isinstance(o, (set, tuple)):
        return list(o)
    raise TypeError(f"not JSON serializable: {type(o).__name__}")


@dataclass
class ResultsTable:
    """All rows of a run and its metadata; cells keeps per-cell extras (quantization map, status)."""

    rows: list[dict]
    meta: dict
    cells: list[dict] = field(default_factory=list)

    def frame(self):
        import pandas as pd

        return pd.DataFrame(self.rows, columns=list(COLUMNS))

    def save(self, run_dir: Path) -> None:
        run_dir = Path(run_dir)
        frame = self.frame()
        tmp = run_dir / ".results.csv.tmp"
        frame.to_csv(tmp, index=False)
        os.replace(tmp, run_dir / "results.csv")
        write_json_atomic(run_dir / "meta.json", self.meta)


def load_results(run_dir: str | Path) -> ResultsTable:
    """Read a run directory (meta.json + cells/*.json); raises FileNotFoundError when absent."""
    run_dir = Path(run_dir)
    meta_path = run_dir / "meta.json"
    if not meta_path.is_file():
        raise FileNotFoundError(f"{run_dir} is not a qbench run directory (no meta.json)")
    meta = json.loads(meta_path.read_text(encoding="utf-8"))
    cells = [json.loads(p.read_text(encoding="utf-8")) for p in sorted((run_dir / "cells").glob("*.json"))]
    order = {c: i for i, c in enumerate(meta.get("plan", {}).get("cells", []))}
    cells.sort(key=lambda c: order.get(c["cell"], len(order)))
    rows = [dict({k: None for k in COLUMNS}, **r) for c in cells for r in c.get("rows", [])]
    return ResultsTable(rows=rows, meta=meta, cells=cells)
