"""measure.memory_reuse: freed memory stays in the process, so a forward's activations stop costing page faults.

Each check runs in a fresh interpreter: glibc cannot undo the setting, and this test process must keep its own.
Page faults are counted by the kernel (getrusage's minor faults), not timed.
"""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from qbench.hardware.allocator import _glibc
from qbench.schema.experiment import Measure

pytestmark = pytest.mark.skipif(_glibc()[0] is None, reason="the setting is glibc's mallopt")

FORWARDS = r"""
import json, resource, sys, torch
from qbench.hardware.allocator import describe
from qbench.runner.cellstate import setup_torch
from qbench.schema.experiment import Measure

setup_torch(Measure(memory_reuse=sys.argv[1] == "on"))

def forward(x):     # activations of 6 MiB each, alive together and freed at the end, as a model's forward has them
    hs = [torch.nn.functional.gelu(x * float(i)) for i in range(8)]
    return sum(h.sum() for h in hs)

x = torch.ones(1024, 1536)
for _ in range(3):
    forward(x)
blocks = []                      # faults per forward, in blocks of 4 forwards
for _ in range(6):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(4):
        forward(x)
    blocks.append((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 4)
print(json.dumps({"faults": blocks, "allocator": describe()}))
"""


def _forwards(setting: str) -> dict:
    out = subprocess.run([sys.executable, "-c", FORWARDS, setting], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_reused_memory_takes_no_page_faults_per_forward_where_the_defaults_take_many():
    on, off = _forwards("on"), _forwards("off")
    # the kernel may reclaim a process's idle pages at any time (then a block faults once more, either way), so
    # the best block is compared: with the setting, a whole block of forwards that touched no new page
    if min(off["faults"]) < 50:
        pytest.skip(f"this C library's defaults took {min(off['faults'])} faults per forward here: nothing to remove")
    assert min(on["faults"]) <= 1, (on, off)
    assert "kept in the process" in on["allocator"] and "mallopt" in on["allocator"]
    assert "its defaults" in off["allocator"] and "kept" not in off["allocator"]


def test_memory_reuse_is_on_by_default_and_only_a_change_from_it_is_stored():
    assert Measure().memory_reuse is True
    assert "memory_reuse" not in Measure().model_dump()
    assert Measure(memory_reuse=False).model_dump()["memory_reuse"] is False


def test_the_environment_s_allocator_settings_are_named(monkeypatch):
    from qbench.hardware import allocator

    monkeypatch.setenv("MALLOC_ARENA_MAX", "2")
    monkeypatch.setenv("LD_PRELOAD", "/opt/lib/libjemalloc.so.2 /opt/lib/libother.so")
    said = allocator.describe()
    assert said.endswith("set by the environment: MALLOC_ARENA_MAX=2, LD_PRELOAD=libjemalloc.so.2"), said


def test_the_card_gives_the_setting_the_cells_were_measured_under():
    from qbench.report.setup import allocator_text

    kept, default = "glibc malloc, freed memory kept", "glibc malloc, its defaults"
    driver = {"allocator": default}               # the driver detects the machine before the cells set anything
    cell = lambda a, status="ok": {"status": status, "hardware": {"allocator": a}}  # noqa: E731
    assert allocator_text(driver, [cell(kept), cell(kept), cell(default, "skipped")]) == kept
    assert allocator_text(driver, [cell(kept), cell(default), cell(kept)]) == f"{kept} (2 cells); {default} (1 cells)"
    assert allocator_text(driver, [{"status": "ok", "hardware": {}}]) == default     # runs before cells said
    assert allocator_text({}, []) == "—"
