"""The driver: run a plan's unfinished cells through an executor, writing each record atomically the moment
it arrives, so a crash loses at most the cells in flight and `--resume` skips finished cells."""
from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Optional

from qbench.atomic import write_json_atomic
from qbench.results.records import CellRecord, RunMeta
from qbench.results.table import load_results
from qbench.runner.cell import blank_record, cell_header
from qbench.runner.cellstate import setup_torch
from qbench.runner.executors import Executor, executor_for
from qbench.runner.plan import Plan


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def execute(plan: Plan, run_dir: Path, meta: dict, *, log: Callable[[str], None] = print,
            progress: bool = True, executor: Optional[Executor] = None, notes: Optional[dict] = None) -> dict:
    """Run every cell not already finished in run_dir; returns {cell id: status}. `meta` gains the
    provenance of the models loaded and is rewritten whenever it does. `notes` ({cell id: {field: value}})
    are added to those cells' records (e.g. `triggered_by` of a conditional scheme's cells)."""
    import torch

    measure = plan.experiment.measure
    executor = executor or executor_for(measure)
    threads = torch.get_num_threads()
    setup_torch(measure)
    try:
        return _drive(plan, run_dir, meta, executor, log, progress, notes or {})
    finally:
        torch.set_num_threads(threads)


def _drive(plan: Plan, run_dir: Path, meta: dict, executor: Executor, log, progress: bool, notes: dict) -> dict:
    done = finished_cells(run_dir) & {c.id for c in plan.cells}     # of this plan's cells (a later phase's run
    todo = [c for c in plan.cells if c.id not in done]                # folder holds the earlier phase's cells)
    statuses = {cid: "ok" for cid in done}
    if done:
        log(f"resuming: {len(done)} cell(s) already finished, {len(todo)} to run")
    bar = _progress(len(todo), progress)
    failed = 0
    for result in executor.run(plan, todo, run_dir):
        record = result.record
        if result.models:
            for name, info in result.models.items():
                meta.setdefault("models", {}).setdefault(name, {}).update(info)
            write_meta(run_dir, meta)                           # model provenance survives a crash
        if record["status"] == "failed":
            failed += 1
            log(f"cell {result.cell.id} failed: {record['reason']}")
        record.setdefault("finished", now())   # a cell whose worker died: when the driver learned it
        record.update(notes.get(result.cell.id, {}))
        write_cell(run_dir, record)
        statuses[result.cell.id] = record["status"]
        bar.set_description(result.cell.id)
        bar.set_postfix_str(f"running {executor.running}, failed {failed}", refresh=False)
        bar.update(1)
    bar.close()
    for cell, reason in plan.skipped:
        write_cell(run_dir, dict(cell_header(cell, "skipped", reason), **notes.get(cell.id, {})))
        statuses[cell.id] = "skipped"
    return statuses


def write_cell(run_dir: Path, record: dict) -> None:
    """Validate a cell record against the typed record the current runner writes (results.records.CellRecord,
    strict), then write it atomically: a record the card cannot read never reaches the disk; the cell is
    recorded as failed with the validation error instead."""
    from pydantic import ValidationError

    try:
        CellRecord.model_validate(record, context={"strict": True})
    except ValidationError as e:
        kept = ("cell", "model", "scheme", "workload", "seconds", "started", "finished", "hardware", "fingerprint",
                "host", "node")
        record = blank_record({k: record[k] for k in kept if k in record}, "failed",
                              f"the cell's record is malformed: {e}")
    write_json_atomic(Path(run_dir) / "cells" / f"{record['cell']}.json", record)


def write_meta(run_dir: Path, meta: dict, *, final: bool = False) -> None:
    """Validate run meta (strict once the run has finished) and write it atomically."""
    RunMeta.model_validate(meta, context={"strict": final})
    write_json_atomic(Path(run_dir) / "meta.json", meta)


def _progress(total: int, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, unit="cell", disable=not enabled, dynamic_ncols=True)


def finished_cells(run_dir: Path) -> set[str]:
    """Ids of the cells already finished with status ok (unreadable files run again)."""
    done = set()
    for p in (Path(run_dir) / "cells").glob("*.json"):
        try:
            if json.loads(p.read_text(encoding="utf-8")).get("status") == "ok":
                done.add(p.stem)
        except (OSError, json.JSONDecodeError):
            continue
    return done


def finished_meta(run_dir: Path, meta: dict, statuses: dict) -> dict:
    """Stamp the run finished with its overall status and assemble results.csv from the cell files."""
    meta = dict(meta, finished=now())
    bad = [c for c, s in statuses.items() if s == "failed"]
    meta["status"] = "failed" if bad and len(bad) == len(statuses) else ("partial" if bad else "ok")
    write_meta(run_dir, meta, final=True)
    load_results(run_dir, strict=True).save(run_dir)
    return meta
