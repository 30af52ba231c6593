"""Run cells in this process, one after another.

Reuse policy: one model in memory at a time. Consecutive cells of the same model share its loaded state
(weights, tokenized batches, baseline references); the first cell of another model frees it first.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterator

from qbench.runner.cellstate import load_model_state
from qbench.runner.executors.base import CellResult, LocalExecutor, measure_cell
from qbench.runner.plan import Cell, Plan


class InProcessExecutor(LocalExecutor):
    name = "inprocess"

    def __init__(self):
        self._model: str | None = None
        self._state = None

    def run(self, plan: Plan, cells: list[Cell], run_dir: Path) -> Iterator[CellResult]:
        for cell in cells:
            yield measure_cell(plan, cell, lambda: self._load(plan, cell))

    def _load(self, plan: Plan, cell: Cell):
        """(state, provenance): provenance only when this call loaded the model."""
        if self._model != cell.model.display:
            self._model, self._state = None, None      # free the previous model before loading the next
            self._state = load_model_state(plan, cell)
            self._model = cell.model.display
            return self._state
        return self._state[0], {}
