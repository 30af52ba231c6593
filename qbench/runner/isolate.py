"""Run one cell in its own process: a crash in native code or a hung cell takes down that cell only.

The worker is started with `spawn` (a clean interpreter, no forked torch thread pools), loads the
model itself, and hands its record back through a file in the run folder. The parent enforces the
timeout by killing the worker.
"""
from __future__ import annotations

import json
import multiprocessing
import signal
from pathlib import Path
from typing import Optional

from qbench.results.table import write_json_atomic
from qbench.runner.plan import Cell, Plan


def _worker(plan: Plan, cell: Cell, out: str) -> None:
    from qbench.runner.execute import _load, failed_record, run_cell, setup_torch

    setup_torch(plan.experiment.measure)
    meta: dict = {}
    try:
        record = run_cell(plan, cell, _load(plan, cell, meta))
    except Exception as e:  # reported like an in-process failure; only hard crashes lose the reason
        record = failed_record(cell, e)
    write_json_atomic(Path(out), {"record": record, "models": meta.get("models", {})})


def run_isolated(plan: Plan, cell: Cell, run_dir: Path, timeout: Optional[float]) -> tuple[dict, dict]:
    """(cell record, models meta) from a worker process; failures become a failed record."""
    from qbench.runner.execute import _cell_header

    out = run_dir / "cells" / f".{cell.id}.worker.json"
    out.unlink(missing_ok=True)
    proc = multiprocessing.get_context("spawn").Process(target=_worker, args=(plan, cell, str(out)),
                                                        name=f"qbench-{cell.id}")
    proc.start()
    try:
        proc.join(timeout)
        if proc.is_alive():
            proc.kill()
            proc.join()
            return _cell_header(cell, "failed", f"timed out after {timeout:g} s (measure.cell_timeout_s)"), {}
    except BaseException:
        proc.kill()
        proc.join()
        raise
    if out.is_file():
        data = json.loads(out.read_text(encoding="utf-8"))
        out.unlink()
        return data["record"], data["models"]
    code = proc.exitcode
    why = (f"worker process killed by signal {signal.Signals(-code).name}" if code and code < 0
           else f"worker process failed (exit code {code})")
    return _cell_header(cell, "failed", why), {}
