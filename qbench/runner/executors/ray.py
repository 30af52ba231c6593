"""Run cells on a Ray cluster: each cell is a Ray task, at most one timed cell per node on CPU, per GPU on CUDA.

Placement rule (clean timings): a cell of a CUDA plan asks for one whole GPU (`num_gpus=1`); a cell of a CPU
plan asks for one unit of the custom resource `qbench_node`, which every CPU node offers exactly once
(`ray start ... --resources '{"qbench_node": 1}'`; the local cluster this executor starts itself has it), so
two timed cells never share a node's cores or a GPU. A CPU cell then uses all the node's physical cores
(or `measure.threads`), as an in-process run would.

Reuse policy: a Ray worker process keeps the state of the last model it loaded (weights, tokenized batches,
baseline references), like the in-process executor, so consecutive cells of one model on one worker load it
once; a causal LM's baseline reference is otherwise read from the on-disk cache, computed once per node.

Faults: a worker or node that dies mid-cell gets the cell retried by Ray (`max_retries`); past that, the cell
is a failed record naming why. An exception inside a cell is never retried: measure_cell records it as a
failed cell, as every executor does. Ctrl-C (or the driver closing the generator) cancels every cell still
outstanding; finished cells are already on disk.

Ray is imported here only, when this executor is asked for: `pip install "qbench-cards[ray]"`.
"""
from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Iterator, Optional

from qbench.errors import ConfigError
from qbench.runner.cell import cell_header
from qbench.runner.cellstate import load_model_state, setup_torch
from qbench.runner.executors.base import CellResult, measure_cell
from qbench.runner.plan import Cell, Plan

NODE_RESOURCE = "qbench_node"   # offered once by every CPU node that may run timed cells
EXTRA = 'pip install "qbench-cards[ray]"'
MAX_RETRIES = 3                 # re-runs of a cell whose worker or node died (application errors: none)
CONNECT_TIMEOUT_S = 5.0

_worker_state: dict = {}        # in a Ray worker process: {"model": display name, "state": ModelState}


def _import_ray():
    try:
        import ray
    except ImportError:
        raise ConfigError(f"--executor ray needs Ray, an optional extra: {EXTRA}", where="--executor") from None
    return ray


def run_cell_task(plan: Plan, cell: Cell) -> CellResult:
    """The Ray task of one cell, in a worker: measure it and say which node ran it."""
    import ray

    _setup_threads(plan)
    result = measure_cell(plan, cell, lambda: _load(plan, cell))
    result.record["node"] = ray.get_runtime_context().get_node_id()
    return result


def _setup_threads(plan: Plan) -> None:
    """Ray caps a task's threads at its CPU request; a timed cell owns its node, so it gets the node's physical
    cores unless the experiment sets measure.threads (a GPU cell keeps the same rule)."""
    import psutil
    import torch

    measure = plan.experiment.measure
    setup_torch(measure)
    if not measure.threads:
        torch.set_num_threads(psutil.cpu_count(logical=False) or os.cpu_count() or 1)


def _load(plan: Plan, cell: Cell):
    """(state, provenance) with the worker's last model reused; provenance only when this call loaded it."""
    if _worker_state.get("model") != cell.model.display:
        _worker_state.clear()                       # free the previous model before loading the next
        state, info = load_model_state(plan, cell)
        _worker_state.update(model=cell.model.display, state=state)
        return state, info
    return _worker_state["state"], {}


class RayExecutor:
    name = "ray"

    def __init__(self, address: Optional[str] = None, max_retries: int = MAX_RETRIES):
        self._ray = _import_ray()
        self.max_retries = max_retries
        self.running = 0
        self._owns_connection = False
        if not self._ray.is_initialized():
            self._connect(address or os.environ.get("RAY_ADDRESS") or None)

    def _connect(self, address: Optional[str]) -> None:
        """Connect to the cluster at `address`, or start a local one (this machine, one node) without one."""
        ray = self._ray
        if address in (None, "local"):
            ray.init(resources={NODE_RESOURCE: 1}, include_dashboard=False, log_to_driver=True)
        else:
            if address != "auto":
                _check_reachable(address)
            try:
                ray.init(address=address, log_to_driver=True)
            except (ConnectionError, RuntimeError, ValueError) as e:
                raise ConfigError(f"cannot connect to the Ray cluster at {address}: {e}", where="--ray-address") \
                    from None
        self._owns_connection = True

    def describe(self, plan: Plan) -> dict:
        """{name, nodes, slots}: the alive nodes that offer what a cell asks for; ConfigError when none does."""
        key = "GPU" if _on_gpu(plan) else NODE_RESOURCE
        offers = [n["Resources"].get(key, 0) for n in self._ray.nodes() if n.get("Alive")]
        offers = [int(x) for x in offers if x >= 1]
        if not offers:
            how = ("no alive node has a GPU" if key == "GPU" else
                   f"no alive node offers the '{NODE_RESOURCE}' resource that reserves a whole node for a timed "
                   f"cell; start each CPU node with: ray start ... --resources '{{\"{NODE_RESOURCE}\": 1}}'")
            raise ConfigError(f"the Ray cluster cannot run this plan's cells: {how}", where="--executor ray")
        return {"name": self.name, "nodes": len(offers), "slots": sum(offers)}

    def run(self, plan: Plan, cells: list[Cell], run_dir: Path) -> Iterator[CellResult]:
        if not cells:
            return
        ray = self._ray
        slots = self.describe(plan)["slots"]
        task = ray.remote(run_cell_task).options(max_retries=self.max_retries, retry_exceptions=False,
                                                 **_placement(plan))
        plan_ref = ray.put(plan)                     # shipped once, shared by every cell's task
        pending = {task.remote(plan_ref, cell): cell for cell in cells}
        try:
            while pending:
                self.running = min(len(pending), slots)
                ready, _ = ray.wait(list(pending), num_returns=1)
                for ref in ready:
                    yield self._result(ref, pending.pop(ref))
        finally:
            self.running = 0
            for ref in pending:                      # Ctrl-C, or the driver stopped early: nothing left behind
                ray.cancel(ref, force=True)

    def _result(self, ref, cell: Cell) -> CellResult:
        ray = self._ray
        try:
            return ray.get(ref)
        except ray.exceptions.RayError as e:         # the worker or its node died more than max_retries times
            why = (f"its Ray worker or node died {self.max_retries + 1} time(s) ({type(e).__name__}: "
                   f"{str(e).splitlines()[0] if str(e) else ''})")
            return CellResult(cell, dict(cell_header(cell, "failed", why), seconds=None, started=None))

    def close(self) -> None:
        """Disconnect, and stop the local cluster this executor started; a connection made by the caller
        (ray.init before the run) is left as it was."""
        if self._owns_connection and self._ray.is_initialized():
            self._ray.shutdown()
        self._owns_connection = False


def _on_gpu(plan: Plan) -> bool:
    return plan.device.startswith("cuda")


def _placement(plan: Plan) -> dict:
    """What one timed cell asks Ray for: a whole GPU on CUDA, a whole node (its qbench_node unit) on CPU."""
    if _on_gpu(plan):
        return {"num_gpus": 1, "num_cpus": 1}
    return {"num_cpus": 1, "resources": {NODE_RESOURCE: 1}}


def _check_reachable(address: str) -> None:
    """A TCP connection to the address's host and port, so a wrong address fails in seconds with a clear
    message instead of after Ray's own reconnection attempts."""
    hostport = address.split("://", 1)[-1].rstrip("/")
    host, sep, port = hostport.rpartition(":")
    if not sep or not port.isdigit():
        raise ConfigError(f"'{address}' is not a Ray address (HOST:PORT, ray://HOST:PORT or auto)",
                          where="--ray-address")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=CONNECT_TIMEOUT_S).close()
    except OSError as e:
        raise ConfigError(f"cannot reach the Ray cluster at {address} ({e}); start it with `ray start --head` "
                          "or check the address", where="--ray-address") from None
