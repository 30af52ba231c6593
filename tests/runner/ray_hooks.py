"""Test-only Ray worker setup hook (runtime_env worker_process_setup_hook="tests.runner.ray_hooks.kill_once").

With QBENCH_TEST_KILL_CELL=<cell id> and QBENCH_TEST_KILL_MARKER=<path> in the job's environment, the first worker
that gets that cell loads its model and then dies with os._exit (a crash, not an exception), leaving the marker
file behind so that the retried attempt runs normally. Ray must retry the cell.
"""
from __future__ import annotations

import os
from pathlib import Path


def kill_once() -> None:
    from qbench.runner.executors import ray as ray_executor

    target, marker = os.environ.get("QBENCH_TEST_KILL_CELL"), os.environ.get("QBENCH_TEST_KILL_MARKER")
    if not target or not marker:
        return
    measure = ray_executor.measure_cell

    def measure_or_die(plan, cell, load):
        def load_then_die():
            loaded = load()                       # the cell is under way: its model is in memory
            if cell.id == target and not Path(marker).exists():
                Path(marker).write_text(str(os.getpid()))
                os._exit(1)
            return loaded
        return measure(plan, cell, load_then_die)

    ray_executor.measure_cell = measure_or_die
