"""The one never-raising probe that hardware detection and GPU telemetry share."""
from __future__ import annotations

from typing import Any, Callable


def probe(fn: Callable[[], Any], default: Any = None) -> Any:
    """fn(), or `default` when it raises: a counter, file or library this machine lacks must not stop a run."""
    try:
        return fn()
    except Exception:  # noqa: BLE001 - every probe is non-fatal by design
        return default
