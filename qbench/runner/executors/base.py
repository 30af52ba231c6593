"""The executor protocol.

An executor runs cells of a plan and yields a CellResult for each, in any order, as each ends. Its rules:
- it never writes the run folder's results: the driver writes each record atomically as it arrives, so
  `--resume`, the card and compare work the same whichever executor ran the cells;
- an exception inside a cell becomes a failed record with its reason (the run goes on); Ctrl-C
  (KeyboardInterrupt) propagates after cancelling what is in flight;
- each record carries the provenance of the machine that ran it (`provenance()`): hardware, fingerprint
  and a hash of the host name, so a run spread over machines says so;
- model reuse across cells is the executor's own policy, stated in its docstring;
- `describe(plan)` says what will run the cells ({name, nodes, slots}, recorded in meta.json `executors`)
  and raises ConfigError when the executor cannot run the plan, before any cell starts; `running` is the
  number of cells in flight, for the progress bar; `close()` releases what the executor holds.
"""
from __future__ import annotations

import hashlib
import socket
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from functools import lru_cache
from pathlib import Path
from typing import Callable, Iterator, Protocol

from qbench.runner.cell import failed_record, run_cell
from qbench.runner.cellstate import ModelState
from qbench.runner.plan import Cell, Plan


@dataclass
class CellResult:
    """A finished cell: its record (status ok or failed) and the provenance of the models it loaded."""

    cell: Cell
    record: dict
    models: dict = field(default_factory=dict)   # {model display name: provenance} for meta.json


class Executor(Protocol):
    name: str
    running: int

    def describe(self, plan: Plan) -> dict:
        """{name, nodes, slots} of what will run the plan's cells; ConfigError when it cannot run them."""
        ...

    def run(self, plan: Plan, cells: list[Cell], run_dir: Path) -> Iterator[CellResult]:
        """Run `cells` (unfinished cells of `plan`) and yield each result as it ends."""
        ...

    def close(self) -> None:
        ...


class LocalExecutor:
    """What the executors that run cells one at a time on this machine share."""

    name = "local"
    running = 0

    def describe(self, plan: Plan) -> dict:
        return {"name": self.name, "nodes": 1, "slots": 1}

    def close(self) -> None:
        pass


@lru_cache(maxsize=1)
def provenance() -> dict:
    """Where a cell ran: this process's hardware, its fingerprint and a hash of the host name (detected
    once per process; the host name itself is not recorded)."""
    from qbench.hardware import detect, fingerprint

    hw = detect(include_torch=True)
    host = hashlib.sha256(socket.gethostname().encode()).hexdigest()[:12]
    return {"hardware": hw.to_dict(), "fingerprint": fingerprint(hw), "host": host}


def measure_cell(plan: Plan, cell: Cell, load: Callable[[], tuple[ModelState, dict]]) -> CellResult:
    """Load (through `load`, which may reuse a state), run and time one cell in this process; a failure of
    either becomes a failed record. The one function every executor's worker calls."""
    t0, started = time.perf_counter(), utc_now()
    models: dict = {}
    try:
        state, models = load()
        record = run_cell(plan, cell, state)
    except KeyboardInterrupt:
        raise
    except Exception as e:  # a failing cell is recorded and the run goes on
        record = failed_record(cell, e)
    record["seconds"] = round(time.perf_counter() - t0, 3)
    record.update(provenance(), started=started, finished=utc_now())
    return CellResult(cell, record, models)


def utc_now() -> str:
    """This machine's clock as ISO 8601 UTC with microseconds (the start and end of a cell)."""
    return datetime.now(timezone.utc).isoformat(timespec="microseconds")


EXECUTORS = ("auto", "inprocess", "subprocess", "ray")


def executor_for(measure, name: str = "auto", *, ray_address: str | None = None) -> Executor:
    """The executor a run uses: `name`, or with "auto" a subprocess per cell when the experiment asks for
    isolation or a cell timeout, else in process. "ray" connects to the cluster at `ray_address` (or
    RAY_ADDRESS, else a local one it starts) now, so a missing extra or an unreachable address fails before
    any work."""
    from qbench.errors import ConfigError
    from qbench.registry import did_you_mean

    if name not in EXECUTORS:
        raise ConfigError(f"unknown executor '{name}'{did_you_mean(name, list(EXECUTORS))}", where="--executor")
    if ray_address is not None and name != "ray":
        raise ConfigError("--ray-address needs --executor ray", where="--ray-address")
    if name == "ray":
        from qbench.runner.executors.ray import RayExecutor

        return RayExecutor(ray_address)
    if name == "subprocess" or (name == "auto" and (measure.isolate or measure.cell_timeout_s is not None)):
        from qbench.runner.executors.subprocess import SubprocessExecutor

        return SubprocessExecutor(measure.cell_timeout_s)
    from qbench.runner.executors.inprocess import InProcessExecutor

    return InProcessExecutor()
