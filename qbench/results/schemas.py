"""JSON Schemas (draft 2020-12) of a run's files, generated from the records (qbench.results.records).

    cell_schema()               cells/<id>.json as the current runner writes it (strict)
    cell_schema(strict=False)   what any qbench version wrote (what load_results accepts)
    meta_schema(), meta_schema(strict=False)   the same for meta.json

Generated from the pydantic models, never written twice; the strict form adds what the models check in
code under context={"strict": True}: the fields every current run writes, and rows naming declared metrics.
(A row's unit and variant per metric are checked by the model, not by the schema.) No torch.
"""
from __future__ import annotations

import copy
from functools import lru_cache

from qbench.results.metrics import METRICS
from qbench.results.records import CellRecord, RunMeta

DIALECT = "https://json-schema.org/draft/2020-12/schema"


def cell_schema(strict: bool = True) -> dict:
    """JSON Schema of a cell file (a fresh dict)."""
    return copy.deepcopy(_cell(strict))


def meta_schema(strict: bool = True) -> dict:
    """JSON Schema of meta.json (a fresh dict)."""
    return copy.deepcopy(_meta(strict))


@lru_cache(maxsize=2)
def _cell(strict: bool) -> dict:
    s = _base(CellRecord, "qbench cell record")
    if strict:
        s["$defs"]["Row"]["properties"]["metric"]["enum"] = list(METRICS)
        s["allOf"] = [{"if": {"properties": {"status": {"enum": ["ok", "failed"]}}},
                       "then": {"required": list(CellRecord.strict_required({"status": "ok"}))}}]
    return s


@lru_cache(maxsize=2)
def _meta(strict: bool) -> dict:
    s = _base(RunMeta, "qbench run meta")
    if strict:
        s["required"] = list(RunMeta.STRICT_REQUIRED)
    return s


def _base(model, title: str) -> dict:
    s = model.model_json_schema(mode="validation")
    return {"$schema": DIALECT, **s, "title": title}
