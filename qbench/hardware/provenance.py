"""Which code ran: the git commit of the qbench checkout, marked "-dirty" when tracked files have changes.

It lives beside the hardware probes because a result's provenance is the machine plus the code; the facade
(`qbench.api`) and the benchmarks (`qbench.bench`) both record it, and neither may import the other.
"""
from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Optional

# Ask git from inside the package, so the answer is about qbench's checkout, not the caller's working folder.
_PACKAGE_DIR = Path(__file__).resolve().parents[1]


def git_commit() -> Optional[str]:
    """HEAD's hash, with "-dirty" when tracked files differ from it; None outside a git checkout or without git."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=_PACKAGE_DIR)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                               text=True, timeout=5, cwd=_PACKAGE_DIR)
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode != 0:
        return None
    return out.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
