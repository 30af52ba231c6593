"""One error hierarchy. Every error a user can cause carries its exit code.

Exit codes of the `qbench` command:
  0    ok
  1    a run failure: a cell failed (RunError), or an unexpected error
  2    invalid input: experiment file, dataset, model path, options, a kernel that cannot run (ConfigError, ...)
  3    the run finished but a gate failed or had no data to judge (GateFailed)
  130  interrupted (Ctrl-C or SIGTERM); finished cells are on disk and `qbench run --resume RUN_DIR` finishes
"""
from __future__ import annotations


class QbenchError(Exception):
    """Base of every error qbench raises on purpose; the CLI prints it as one line."""

    exit_code = 1


class ConfigError(QbenchError):
    """An experiment file or option is invalid. `where` names the file and the field."""

    exit_code = 2

    def __init__(self, message: str, where: str | None = None):
        self.where = where
        super().__init__(f"{where}: {message}" if where else message)


class DatasetError(QbenchError):
    """A dataset cannot be read or holds too few samples for what was asked."""

    exit_code = 2


class ModelError(QbenchError):
    """A model cannot be found or loaded."""

    exit_code = 2


class KernelUnavailable(QbenchError):
    """No kernel serves this configuration on this device (never silently replaced)."""

    exit_code = 2


class RunError(QbenchError):
    """A run finished with failed cells or could not finish."""

    exit_code = 1


class GateFailed(QbenchError):
    """A run finished and its card was written, but a gate failed or had no data to judge."""

    exit_code = 3
