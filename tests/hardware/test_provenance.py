"""qbench.hardware.provenance.git_commit: the checkout's HEAD, '-dirty' with changes, None without git."""
from __future__ import annotations

import subprocess
import types
from pathlib import Path

from qbench.hardware import provenance

PACKAGE_DIR = Path(provenance.__file__).resolve().parents[1]


def _git(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["git", *args], capture_output=True, text=True, cwd=PACKAGE_DIR)


def test_names_head_of_the_package_checkout():
    head = _git("rev-parse", "HEAD")
    got = provenance.git_commit()
    if head.returncode != 0:               # an installed copy outside a checkout
        assert got is None
        return
    dirty = bool(_git("status", "--porcelain", "--untracked-files=no").stdout.strip())
    assert got == head.stdout.strip() + ("-dirty" if dirty else "")


def test_dirty_and_clean_from_git_answers(monkeypatch):
    answers = {"rev-parse": "abc123\n", "status": ""}

    def fake_run(cmd, **kw):
        assert kw["cwd"] == PACKAGE_DIR    # asks about qbench's checkout, not the caller's folder
        return types.SimpleNamespace(returncode=0, stdout=answers[cmd[1]])

    monkeypatch.setattr(provenance.subprocess, "run", fake_run)
    assert provenance.git_commit() == "abc123"
    answers["status"] = " M qbench/api.py\n"
    assert provenance.git_commit() == "abc123-dirty"


def test_none_without_git_or_outside_a_checkout(monkeypatch):
    def no_git(cmd, **kw):
        raise FileNotFoundError("git")

    monkeypatch.setattr(provenance.subprocess, "run", no_git)
    assert provenance.git_commit() is None
    monkeypatch.setattr(provenance.subprocess, "run",
                        lambda cmd, **kw: types.SimpleNamespace(returncode=128, stdout=""))
    assert provenance.git_commit() is None
