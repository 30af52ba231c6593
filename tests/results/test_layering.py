"""results is a lower layer (no torch, nothing of qbench above errors / registry / atomic) and the report reads
results only: every import statement of both packages, function-level ones included, and what a fresh
interpreter loads when it renders a card."""
from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
ALLOWED = {  # package -> the qbench modules its imports may name (itself aside)
    "results": ("qbench.errors", "qbench.registry", "qbench.atomic"),
    "report": ("qbench.errors", "qbench.registry", "qbench.atomic", "qbench.results"),
}
FORBIDDEN_THIRD_PARTY = ("torch", "triton", "transformers")


def imports(path: Path) -> list[str]:
    out = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            out += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            out.append(node.module)
    return out


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_imports_point_down_only(package):
    own = f"qbench.{package}"
    bad = []
    for path in sorted((ROOT / "qbench" / package).glob("*.py")):
        for name in imports(path):
            if name.split(".")[0] in FORBIDDEN_THIRD_PARTY:
                bad.append(f"{path.name}: {name}")
            elif name == "qbench" or (name.startswith("qbench.") and not name.startswith(own)
                                      and not name.startswith(ALLOWED[package])):
                bad.append(f"{path.name}: {name}")
    assert bad == []


def test_rendering_a_card_loads_neither_schema_nor_torch(tmp_path):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(ROOT / "tests" / "fixtures" / "run_small", run)
    code = ("import sys, qbench.report; qbench.report.render_card(sys.argv[1]); "
            "bad = [m for m in sys.modules if m.split('.')[0] in ('torch', 'transformers') or "
            "m.startswith(('qbench.schema', 'qbench.engine', 'qbench.runner', 'qbench.models'))]; "
            "assert not bad, bad; print('clean')")
    out = subprocess.run([sys.executable, "-c", code, str(run)], capture_output=True, text=True,
                         env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert out.returncode == 0, out.stderr
    assert "clean" in out.stdout
