"""Run each cell in its own process: a crash in native code or a hung cell takes down that cell only.

Reuse policy: none. Each worker is started with `spawn` (a clean interpreter, no forked torch thread pools),
loads its model itself (the LM reference comes from the on-disk cache after the first cell), and hands its
result back through a hidden file in the run folder. The parent enforces `measure.cell_timeout_s` by
killing the worker.
"""
from __future__ import annotations

import json
import multiprocessing
import signal
import time
from pathlib import Path
from typing import Iterator, Optional

from qbench.atomic import write_json_atomic
from qbench.runner.cell import cell_header
from qbench.runner.cellstate import load_model_state, setup_torch
from qbench.runner.executors.base import CellResult, LocalExecutor, measure_cell, provenance
from qbench.runner.plan import Cell, Plan


def _worker(plan: Plan, cell: Cell, out: str) -> None:
    setup_torch(plan.experiment.measure)
    result = measure_cell(plan, cell, lambda: load_model_state(plan, cell))
    write_json_atomic(Path(out), {"record": result.record, "models": result.models})


class SubprocessExecutor(LocalExecutor):
    name = "subprocess"

    def __init__(self, timeout: Optional[float] = None):
        self.timeout = timeout

    def run(self, plan: Plan, cells: list[Cell], run_dir: Path) -> Iterator[CellResult]:
        for cell in cells:
            yield self._one(plan, cell, run_dir)

    def _one(self, plan: Plan, cell: Cell, run_dir: Path) -> CellResult:
        t0 = time.perf_counter()
        result = self._spawn(plan, cell, run_dir)
        result.record.setdefault("seconds", round(time.perf_counter() - t0, 3))   # a killed worker's time
        return result

    def _spawn(self, plan: Plan, cell: Cell, run_dir: Path) -> CellResult:
        out = run_dir / "cells" / f".{cell.id}.worker.json"
        out.unlink(missing_ok=True)
        proc = multiprocessing.get_context("spawn").Process(target=_worker, args=(plan, cell, str(out)),
                                                            name=f"qbench-{cell.id}")
        proc.start()
        try:
            proc.join(self.timeout)
            if proc.is_alive():
                proc.kill()
                proc.join()
                return _lost(cell, f"timed out after {self.timeout:g} s (measure.cell_timeout_s)")
        except BaseException:
            proc.kill()
            proc.join()
            raise
        if out.is_file():
            data = json.loads(out.read_text(encoding="utf-8"))
            out.unlink()
            return CellResult(cell, data["record"], data["models"])
        code = proc.exitcode
        return _lost(cell, f"worker process killed by signal {signal.Signals(-code).name}" if code and code < 0
                     else f"worker process failed (exit code {code})")


def _lost(cell: Cell, why: str) -> CellResult:
    """A cell whose worker died or was killed: failed, with the driver's own provenance (the worker ran
    on this machine)."""
    return CellResult(cell, dict(cell_header(cell, "failed", why), started=None, **provenance()))
