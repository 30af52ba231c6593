"""The ResultsTable: long-form rows (one measured number each) plus run metadata.

On disk, a run directory holds:
  cells/<cell_id>.json   one file per finished cell (rows, realized quantization map, status): CellRecord
  results.csv            all rows, assembled from the cell files: Row
  meta.json              hardware, software, git commit, resolved experiment, plan, provenance: RunMeta

load_results reads and validates them (qbench.results.records); a malformed file is a MalformedRun error
naming the file and the field. Never imports torch.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Type, TypeVar

from pydantic import BaseModel, ValidationError

from qbench.atomic import atomic_path, write_atomic, write_json_atomic  # noqa: F401  (re-exported)
from qbench.errors import ConfigError
from qbench.results.records import CellRecord, Row, RunMeta

# column -> description; every row has every column (None where it does not apply). Declared once, on Row.
COLUMNS: dict[str, str] = {name: f.description or "" for name, f in Row.model_fields.items()}

M = TypeVar("M", bound=BaseModel)


class MalformedRun(ConfigError):
    """A file of a run directory is not what qbench writes; `where` names the file and the field."""


@dataclass
class ResultsTable:
    """All rows of a run and its metadata; cells keeps per-cell extras (quantization map, status).

    rows, meta and cells are the validated files' plain data, exactly as on disk."""

    rows: list[dict]
    meta: dict
    cells: list[dict] = field(default_factory=list)

    def frame(self):
        import pandas as pd

        return pd.DataFrame(self.rows, columns=list(COLUMNS))

    def save(self, run_dir: Path) -> None:
        run_dir = Path(run_dir)
        frame = self.frame()
        with atomic_path(run_dir / "results.csv") as tmp:
            frame.to_csv(tmp, index=False)
        write_json_atomic(run_dir / "meta.json", self.meta)


def read_record(path: str | Path, model: Type[M], *, strict: bool = False) -> tuple[dict, M]:
    """(the file's JSON, the record validated from it); MalformedRun naming the file and the field."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise MalformedRun(f"unreadable: {e}", where=str(path)) from None
    try:
        return data, model.model_validate(data, context={"strict": strict})
    except ValidationError as e:
        raise MalformedRun(_first_problem(e, model), where=str(path)) from None


def _first_problem(e: ValidationError, model: type) -> str:
    errors = e.errors(include_url=False)
    first = errors[0]
    loc = ".".join(str(p) for p in first.get("loc", ()))
    msg = str(first.get("msg", "")).removeprefix("Value error, ")
    more = f" (and {len(errors) - 1} more problem{'s' if len(errors) > 2 else ''})" if len(errors) > 1 else ""
    return f"not a valid {model.__name__}: {loc + ': ' if loc else ''}{msg}{more}"


def cell_files(run_dir: str | Path) -> list[Path]:
    """cells/*.json of a run directory, by name; names starting with '.' are a writer's temporaries."""
    return sorted(p for p in (Path(run_dir) / "cells").glob("*.json") if not p.name.startswith("."))


def load_results(run_dir: str | Path, *, strict: bool = False) -> ResultsTable:
    """Read and validate a run directory (meta.json + cells/*.json), cells in the plan's order (cells the
    plan does not name last, by file name). FileNotFoundError when it is not a run directory; MalformedRun
    when a file is not a record qbench writes (strict: not what the current runner writes)."""
    run_dir = Path(run_dir)
    meta_path = run_dir / "meta.json"
    if not meta_path.is_file():
        raise FileNotFoundError(f"{run_dir} is not a qbench run directory (no meta.json)")
    meta, run = read_record(meta_path, RunMeta, strict=strict)
    cells = [read_record(p, CellRecord, strict=strict)[0] for p in cell_files(run_dir)]
    order = {c: i for i, c in enumerate(run.plan.cells if run.plan else ())}
    cells.sort(key=lambda c: order.get(c["cell"], len(order)))
    rows = [dict(r) for c in cells for r in c["rows"]]
    return ResultsTable(rows=rows, meta=meta, cells=cells)
