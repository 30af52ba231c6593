"""The layers of ARCHITECTURE.md hold (import-linter, configured in pyproject.toml), and the contract is
not one that cannot fail: a copy of the package with a report module importing torch, or the schema, or a
schema module importing the runner, breaks it."""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
LINT = Path(sys.executable).with_name("lint-imports")

pytestmark = pytest.mark.skipif(not LINT.is_file(), reason="import-linter is not installed (pip install -e '.[test]')")


def lint(root: Path) -> subprocess.CompletedProcess:
    """lint-imports on the package at root/qbench, with the project's contracts."""
    import os

    env = dict(os.environ, PYTHONPATH=str(root))
    return subprocess.run([str(LINT), "--no-cache", str(REPO / "pyproject.toml")], cwd=root, env=env,
                          capture_output=True, text=True, timeout=300)


def test_the_package_keeps_its_layers():
    out = lint(REPO)
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-2000:]
    assert "0 broken" in out.stdout


@pytest.fixture(scope="module")
def copy_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("pkg")
    shutil.copytree(REPO / "qbench", root / "qbench", ignore=shutil.ignore_patterns("__pycache__", "*.so"))
    return root


@pytest.mark.parametrize("module, line, contract", [
    ("report/render.py", "import torch", "schema, results and report never import torch"),
    ("report/render.py", "from qbench.schema import Experiment", "the report reads results only"),
    ("schema/loader.py", "from qbench.runner import plan", "cli -> api"),
    ("hardware/detect.py", "from qbench.engine import primitives", "cli -> api"),
], ids=["report-torch", "report-schema", "schema-runner", "hardware-engine"])
def test_a_violation_breaks_the_contract(copy_root, module, line, contract):
    path = copy_root / "qbench" / module
    original = path.read_text()
    path.write_text(f"{original}\n{line}  # injected by the test\n")
    try:
        out = lint(copy_root)
    finally:
        path.write_text(original)
    assert out.returncode != 0, out.stdout[-3000:]
    assert f"{contract}" in out.stdout and "BROKEN" in out.stdout
