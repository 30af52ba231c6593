"""The typed records and their JSON Schemas: the schemas accept what the models accept, and reject what
they reject (checked with the jsonschema package on the golden run and on broken copies of it)."""
from __future__ import annotations

import copy
import dataclasses
import json
from pathlib import Path

import pytest
from jsonschema import Draft202012Validator
from pydantic import ValidationError

from qbench.results.records import CellRecord, QuantEntry, RunMeta
from qbench.results.schemas import cell_schema, meta_schema

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "run_small"
CELLS = sorted((FIXTURE / "cells").glob("*.json"))


def load(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def schema_errors(schema: dict, data) -> list[str]:
    return [e.message for e in Draft202012Validator(schema).iter_errors(data)]


def model_accepts(model, data, strict: bool) -> bool:
    try:
        model.model_validate(data, context={"strict": strict})
    except ValidationError:
        return False
    return True


@pytest.mark.parametrize("strict", [True, False])
def test_schemas_are_valid_draft_2020_12(strict):
    Draft202012Validator.check_schema(cell_schema(strict))
    Draft202012Validator.check_schema(meta_schema(strict))


@pytest.mark.parametrize("path", CELLS, ids=[p.stem for p in CELLS])
def test_golden_cells_match_the_strict_schema(path):
    assert schema_errors(cell_schema(), load(path)) == []


def test_golden_meta_matches_the_strict_schema():
    assert schema_errors(meta_schema(), load(FIXTURE / "meta.json")) == []


def _skipped(cell: dict) -> dict:
    return {k: cell[k] for k in ("cell", "model", "scheme", "workload")} | {
        "task": None, "status": "skipped", "reason": "no CUDA", "rows": [], "quant_map": [],
        "unmatched_excludes": [], "kernels": [], "kernel_info": {}, "calibration": None, "evaluation": None}


# (change to a golden cell, accepted leniently, accepted strictly)
CELL_CASES = {
    "as written": (lambda c: None, True, True),
    "old run without provenance": (lambda c: [c.pop(k, None) for k in ("hardware", "fingerprint", "host")],
                                   True, True),
    "no finished time": (lambda c: c.pop("finished"), True, False),
    "skipped cell": (lambda c: (c.clear(), c.update(_skipped(CELL0))), True, True),
    "undeclared metric": (lambda c: c["rows"][0].update(metric="latency_msec"), True, False),
    "unknown key": (lambda c: c.update(executor="ray"), False, False),
    "wrong status": (lambda c: c.update(status="done"), False, False),
    "missing row column": (lambda c: c["rows"][0].pop("kernel"), False, False),
    "long shape": (lambda c: c["quant_map"][0].update(shape=[3, 4, 5]), False, False),
    "empty shape": (lambda c: c["quant_map"][0].update(shape=[]), False, False),
    "negative batch": (lambda c: c["rows"][0].update(batch_size=0), False, False),
}
CELL0 = load(CELLS[0])


@pytest.mark.parametrize("case", CELL_CASES)
def test_cell_schema_and_model_agree(case):
    change, lenient, strict = CELL_CASES[case]
    cell = copy.deepcopy(CELL0)
    change(cell)
    assert model_accepts(CellRecord, cell, strict=False) is lenient
    assert model_accepts(CellRecord, cell, strict=True) is strict
    assert (schema_errors(cell_schema(strict=False), cell) == []) is lenient
    assert (schema_errors(cell_schema(strict=True), cell) == []) is strict


@pytest.mark.parametrize("case, change, lenient, strict", [
    ("as written", lambda m: None, True, True),
    ("bare", lambda m: m.clear(), True, False),
    ("running", lambda m: m.update(status="running", finished=None), True, True),
    ("no models yet", lambda m: m.pop("models"), True, True),
    ("no command", lambda m: m.pop("command"), True, False),
    ("bad status", lambda m: m.update(status="walking"), False, False),
    ("bad cache", lambda m: m["models"]["reflm"]["lm_reference"]["builtin:text"].update(cache="maybe"), False,
     False),
    ("unknown key", lambda m: m.update(host="x"), False, False),
])
def test_meta_schema_and_model_agree(case, change, lenient, strict):
    meta = load(FIXTURE / "meta.json")
    change(meta)
    assert model_accepts(RunMeta, meta, strict=False) is lenient
    assert model_accepts(RunMeta, meta, strict=True) is strict
    assert (schema_errors(meta_schema(strict=False), meta) == []) is lenient
    assert (schema_errors(meta_schema(strict=True), meta) == []) is strict


def test_quant_entry_is_the_engines_module_record():
    from qbench.engine.api import ModuleRecord

    assert set(QuantEntry.model_fields) == {f.name for f in dataclasses.fields(ModuleRecord)}


def test_records_are_frozen():
    record = CellRecord.model_validate(CELL0)
    with pytest.raises(ValidationError):
        record.status = "failed"
