"""Executors: how the cells of a plan get run (inprocess, subprocess, ray: a Ray cluster). Each hands back one
CellResult per cell; the driver (runner.execute) writes it. See base.py for the protocol and the rules every
executor keeps."""
from qbench.runner.executors.base import CellResult, Executor, executor_for, provenance

__all__ = ["CellResult", "Executor", "executor_for", "provenance"]
