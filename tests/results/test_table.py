"""load_results: cells in the plan's order, and a malformed file is an error naming the file and the field."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from qbench.errors import ConfigError
from qbench.results import COLUMNS, MalformedRun, load_results

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "run_small"
CELL = "minilm__w8a8-dyn__text"


@pytest.fixture
def run(tmp_path) -> Path:
    dst = tmp_path / "run"
    shutil.copytree(FIXTURE, dst)
    return dst


def edit(path: Path, fn) -> None:
    data = json.loads(path.read_text(encoding="utf-8"))
    fn(data)
    path.write_text(json.dumps(data), encoding="utf-8")


def test_cells_follow_the_plan_then_file_names(run):
    plan = json.loads((run / "meta.json").read_text(encoding="utf-8"))["plan"]["cells"]
    shuffled = plan[::-1]
    edit(run / "meta.json", lambda m: m["plan"].update(cells=shuffled))
    # two cells the plan does not name: after the planned ones, by file name
    for name in ("zz__extra__text", "aa__extra__text"):
        def rename(c, name=name):
            c.update(cell=name, model=name.split("__")[0], scheme="extra")
            for r in c["rows"]:
                r.update(cell=name, model=c["model"], scheme="extra")
        shutil.copy(run / "cells" / f"{CELL}.json", run / "cells" / f"{name}.json")
        edit(run / "cells" / f"{name}.json", rename)
    t = load_results(run)
    assert [c["cell"] for c in t.cells] == shuffled + ["aa__extra__text", "zz__extra__text"]
    assert [r["cell"] for r in t.rows] == [c["cell"] for c in t.cells for _ in c["rows"]]
    assert all(list(r) == list(COLUMNS) or set(r) == set(COLUMNS) for r in t.rows)


def test_plain_data_as_on_disk(run):
    t = load_results(run)
    on_disk = json.loads((run / "cells" / f"{CELL}.json").read_text(encoding="utf-8"))
    assert next(c for c in t.cells if c["cell"] == CELL) == on_disk
    assert t.meta == json.loads((run / "meta.json").read_text(encoding="utf-8"))


def test_writer_temporaries_are_not_cells(run):
    shutil.copy(run / "cells" / f"{CELL}.json", run / "cells" / f".{CELL}.worker.json")
    (run / "cells" / ".half.json").write_text("{", encoding="utf-8")
    assert len(load_results(run).cells) == len(list((run / "cells").glob("[!.]*.json")))


def test_not_a_run_directory(tmp_path):
    with pytest.raises(FileNotFoundError, match="no meta.json"):
        load_results(tmp_path)


def test_a_bare_meta_is_a_run_without_cells(tmp_path):
    (tmp_path / "meta.json").write_text("{}", encoding="utf-8")
    t = load_results(tmp_path)
    assert (t.rows, t.cells, t.meta) == ([], [], {})


def test_unreadable_cell_names_the_file(run):
    (run / "cells" / f"{CELL}.json").write_text('{"cell": ', encoding="utf-8")
    with pytest.raises(MalformedRun) as e:
        load_results(run)
    assert str(e.value).startswith(f"{run / 'cells' / CELL}.json: unreadable: ")
    assert isinstance(e.value, ConfigError) and e.value.exit_code == 2


@pytest.mark.parametrize("change, where", [
    (lambda c: c["rows"][0].pop("p90"), "rows.0.p90: Field required"),          # no column is filled in
    (lambda c: c["rows"][3].update(variant="both"), "rows.3.variant: Input should be"),
    (lambda c: c["rows"][0].update(batch_size="eight"), "rows.0.batch_size: Input should be a valid integer"),
    (lambda c: c["rows"][0].update(extra=1), "rows.0.extra: Extra inputs are not permitted"),
    (lambda c: c.update(status="done"), "status: Input should be 'ok', 'skipped' or 'failed'"),
    (lambda c: c["quant_map"][0].update(shape=[384, 384, 2]), "quant_map.0.shape"),
    (lambda c: c["rows"][0].update(scheme="w4-g32"), "rows[0] names scheme 'w4-g32', the cell 'w8a8-dyn'"),
])
def test_malformed_cell_names_the_file_and_field(run, change, where):
    edit(run / "cells" / f"{CELL}.json", change)
    with pytest.raises(MalformedRun) as e:
        load_results(run)
    msg = str(e.value)
    assert msg.startswith(f"{run / 'cells' / CELL}.json: not a valid CellRecord: ") and where in msg, msg


def test_malformed_meta_names_the_file(run):
    edit(run / "meta.json", lambda m: m.update(status="walking"))
    with pytest.raises(MalformedRun, match=r"meta.json: not a valid RunMeta: status: Input should be"):
        load_results(run)


def test_strict_loading_wants_what_the_current_runner_writes(run):
    load_results(run, strict=True)
    edit(run / "cells" / f"{CELL}.json", lambda c: c.pop("finished"))
    load_results(run)  # an old run's cell: accepted
    with pytest.raises(MalformedRun, match="missing finished"):
        load_results(run, strict=True)


def test_strict_loading_wants_declared_metrics(run):
    def rename(c):
        c["rows"][0]["metric"] = "latency_msec"
    edit(run / "cells" / f"{CELL}.json", rename)
    assert load_results(run).rows  # an undeclared metric still renders
    with pytest.raises(MalformedRun, match=r"undeclared metric 'latency_msec' \(did you mean 'latency_ms'\?\)"):
        load_results(run, strict=True)
