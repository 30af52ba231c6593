"""Where qbench keeps what it can rebuild: baseline references of causal LMs, the native kernel library."""
from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """$QBENCH_CACHE_DIR, else $XDG_CACHE_HOME/qbench, else ~/.cache/qbench (never created here)."""
    env = os.environ.get("QBENCH_CACHE_DIR")
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "qbench"
