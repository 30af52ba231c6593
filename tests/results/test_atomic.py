"""The atomic writer (qbench.atomic), as results, report and runner use it through qbench.results.table."""
from __future__ import annotations

import json
import math
import os
import stat

import numpy as np
import pytest

from qbench import atomic
from qbench.results import table


def test_table_re_exports_the_one_writer():
    assert table.write_atomic is atomic.write_atomic
    assert table.write_json_atomic is atomic.write_json_atomic


def test_finite_turns_every_non_finite_float_into_none_recursively():
    data = {"a": math.inf, "b": [1.5, -math.inf, {"c": math.nan}], "d": (2.0, math.nan), "e": "nan", "f": 3}
    assert atomic.finite(data) == {"a": None, "b": [1.5, None, {"c": None}], "d": [2.0, None], "e": "nan", "f": 3}


def test_write_json_atomic_is_strict_sorted_json(tmp_path):
    path = tmp_path / "deep" / "x.json"  # parent folders are created
    atomic.write_json_atomic(path, {"b": math.inf, "a": np.float32(0.5), "c": np.int64(7), "t": (1, 2)})
    text = path.read_text(encoding="utf-8")
    assert json.loads(text, parse_constant=lambda c: pytest.fail(f"non-standard constant {c}")) == \
        {"a": 0.5, "b": None, "c": 7, "t": [1, 2]}
    assert text.index('"a"') < text.index('"b"') < text.index('"c"')
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o644
    assert [p.name for p in path.parent.iterdir()] == ["x.json"]  # no temporary left behind


def test_unserializable_data_leaves_the_old_file_and_no_temporary(tmp_path):
    path = tmp_path / "x.json"
    atomic.write_json_atomic(path, {"v": 1})
    with pytest.raises(TypeError, match="not JSON serializable: object"):
        atomic.write_json_atomic(path, {"v": object()})
    assert json.loads(path.read_text(encoding="utf-8")) == {"v": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["x.json"]


def test_a_failing_writer_leaves_the_old_file(tmp_path):
    path = tmp_path / "results.csv"
    atomic.write_atomic(path, "old\n")
    with pytest.raises(RuntimeError):
        with atomic.atomic_path(path) as tmp:
            tmp.write_text("half", encoding="utf-8")
            raise RuntimeError("crash while writing")
    assert path.read_text(encoding="utf-8") == "old\n"
    assert [p.name for p in tmp_path.iterdir()] == ["results.csv"]
