"""Cells on a Ray cluster: a local two-node cluster (ray.cluster_utils.Cluster, on 127.0.0.1) runs the tiny
8-cell experiment; the cells, their quality numbers and the card match the in-process run; the cells land on
both nodes and never overlap on one; a worker killed mid-cell gets its cell retried; a driver killed with
SIGKILL leaves a run that `--resume` finishes in process."""
from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

import pytest

from qbench import api
from qbench.errors import ConfigError
from tests.runner.support import SCHEMES, kill_after_cells, write_experiment

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]
QUALITY = {"cosine_mean", "cosine_min", "nn_agreement", "ppl", "log_ppl_ratio", "kl_mean", "kl_p99",
           "top1_agreement", "weight_bytes"}
KILLED = "gpt2__w8a8__code"      # the cell whose first worker dies mid-cell
# Ray 2.60 turns token authentication on by default; this test cluster is on the loopback address only
RAY_ENV = {"RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0",
           "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}   # 0: Ray's own address for this machine is 127.0.0.1


def _quality(run_dir: Path) -> dict:
    """Deterministic rows (quality, sizes), quantization maps and kernels of every cell; timings excluded."""
    out = {}
    for p in sorted((run_dir / "cells").glob("*.json")):
        c = json.loads(p.read_text())
        rows = sorted((r["metric"], r["variant"], r["workload"], r["value"]) for r in c["rows"]
                      if r["metric"] in QUALITY)
        out[c["cell"]] = (c["status"], rows, c["quant_map"], c["kernels"])
    return out


def _card_sections(run_dir: Path) -> dict:
    """The card's setup, quantization maps and quality tables; of the models table, all but whether the LM's
    baseline reference was computed or read from the cache (the first of the runs computes it)."""
    card = json.loads((run_dir / "card.json").read_text())
    setup = dict(card["setup"], models=[r["cells"][:-1] for r in card["setup"]["models"]["rows"]])
    return {"setup": setup, "quant_maps": card["quant_maps"], "quality": card["results"]["quality"]}


def _cells(run_dir: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted((run_dir / "cells").glob("*.json"))]


@pytest.fixture(scope="module")
def cluster():
    """Two nodes on 127.0.0.1, each offering one qbench_node (one timed cell at a time per node)."""
    tmp = tempfile.mkdtemp(prefix="qr", dir="/tmp")    # Ray's socket paths must stay short
    env = dict(RAY_ENV, RAY_TMPDIR=tmp,
               PYTHONPATH=os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]))
    with pytest.MonkeyPatch.context() as mp:
        for k, v in env.items():
            mp.setenv(k, v)
        ray = pytest.importorskip("ray")               # after the environment: Ray reads it on import
        from ray.cluster_utils import Cluster

        c = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "resources": {"qbench_node": 1},
                                                          "include_dashboard": False})
        try:
            c.add_node(num_cpus=1, resources={"qbench_node": 1})
            c.wait_for_nodes()
            yield c, env
        finally:
            if ray.is_initialized():
                ray.shutdown()
            c.shutdown()
            shutil.rmtree(tmp, ignore_errors=True)


@pytest.fixture(scope="module")
def experiment(tiny_models, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ray_exp")
    exp = write_experiment(tmp, {"gpt2": tiny_models["gpt2"], "bert": tiny_models["bert"]}, SCHEMES, name="rayexp")
    # one thread in every process: float reductions then run in the same order, so numbers match exactly
    exp.write_text(exp.read_text().replace("eval_samples: 8}", "eval_samples: 8, threads: 1}"))
    return exp


@pytest.fixture(scope="module")
def inprocess_run(experiment, tmp_path_factory):
    return api.run(experiment, out=tmp_path_factory.mktemp("inproc"), progress=False, log=lambda s: None,
                   executor="inprocess")


@pytest.fixture(scope="module")
def ray_run(cluster, experiment, inprocess_run, tmp_path_factory):
    """The experiment through --executor ray, with the first worker of KILLED dying mid-cell."""
    import ray

    c, env = cluster
    tmp = tmp_path_factory.mktemp("rayrun")
    marker = tmp / "killed.pid"
    ray.init(address=c.address, runtime_env={
        "env_vars": {"PYTHONPATH": env["PYTHONPATH"], "QBENCH_TEST_KILL_CELL": KILLED,
                     "QBENCH_TEST_KILL_MARKER": str(marker)},
        "worker_process_setup_hook": "tests.runner.ray_hooks.kill_once"})
    try:
        lines: list[str] = []
        outcome = api.run(experiment, out=tmp / "reports", progress=False, log=lines.append, executor="ray")
    finally:
        ray.shutdown()
    return outcome, marker, lines


def test_ray_run_gives_the_in_process_cells_and_numbers(ray_run, inprocess_run):
    outcome, _, lines = ray_run
    assert outcome.status == "ok", outcome.statuses
    assert "ray: 2 node(s), 2 cell(s) at a time" in lines
    assert len(outcome.statuses) == 8
    assert _quality(outcome.run_dir) == _quality(inprocess_run.run_dir)
    assert _card_sections(outcome.run_dir) == _card_sections(inprocess_run.run_dir)
    meta = json.loads((outcome.run_dir / "meta.json").read_text())
    assert meta["executors"] == [{"name": "ray", "nodes": 2, "slots": 2}]
    assert set(meta["models"]) == {"gpt2", "bert"}                    # model provenance came back from workers
    card = (outcome.run_dir / "card.md").read_text()
    assert "ray (2 node(s), 2 cell(s) at a time)" in card and "2 node(s); hardware fingerprint(s)" in card
    assert "Mixed hardware" not in card                                # both nodes are this machine


def test_cells_land_on_both_nodes_and_never_overlap_on_one(ray_run, cluster):
    outcome, _, _ = ray_run
    cells = _cells(outcome.run_dir)
    by_node: dict = {}
    for c in cells:
        by_node.setdefault(c["node"], []).append((datetime.fromisoformat(c["started"]),
                                                  datetime.fromisoformat(c["finished"]), c["cell"]))
    nodes = {n.node_id for n in [cluster[0].head_node, *cluster[0].worker_nodes]}
    assert set(by_node) == nodes
    for spans in by_node.values():
        spans.sort()
        for (_, end, a), (start, _, b) in zip(spans, spans[1:]):
            assert end <= start, f"{a} and {b} were timed at the same time on one node"


def test_a_worker_killed_mid_cell_gets_its_cell_retried(ray_run):
    outcome, marker, _ = ray_run
    assert marker.is_file()                                    # the first attempt did die
    cells = _cells(outcome.run_dir)
    assert sorted(c["cell"] for c in cells) == sorted(outcome.statuses) and len(cells) == 8   # each once
    killed = next(c for c in cells if c["cell"] == KILLED)
    assert killed["status"] == "ok" and killed["rows"]
    assert not list((outcome.run_dir / "cells").glob(".*"))


def test_sigkill_of_the_driver_then_resume_in_process(cluster, experiment, inprocess_run, tmp_path):
    c, env = cluster
    out = tmp_path / "killed"
    run_dir = kill_after_cells([str(experiment), "--executor", "ray", "--ray-address", c.address], out, "rayexp",
                               dict(os.environ, **env))
    finished = list((run_dir / "cells").glob("*.json"))
    assert 2 <= len(finished) < 8
    assert all(json.loads(p.read_text())["status"] == "ok" for p in finished)   # atomic writes

    resumed = api.run(None, resume=run_dir, progress=False, log=lambda s: None, executor="inprocess")
    assert resumed.status == "ok"
    assert _quality(run_dir) == _quality(inprocess_run.run_dir)
    meta = json.loads((run_dir / "meta.json").read_text())
    assert [e["name"] for e in meta["executors"]] == ["ray", "inprocess"]
    assert "ray (2 node(s), 2 cell(s) at a time), then inprocess" in (run_dir / "card.md").read_text()


def test_without_ray_the_executor_names_the_extra(monkeypatch):
    from qbench.runner.executors import executor_for
    from qbench.schema.experiment import Measure

    monkeypatch.setitem(sys.modules, "ray", None)              # import ray fails as if it were not installed
    with pytest.raises(ConfigError, match=r'pip install "qbench-cards\[ray\]"'):
        executor_for(Measure(), "ray")
    with pytest.raises(ConfigError, match="--ray-address needs --executor ray"):
        executor_for(Measure(), "inprocess", ray_address="127.0.0.1:6379")


def test_an_unreachable_address_fails_before_any_work(experiment, tmp_path):
    pytest.importorskip("ray")
    with socket.socket() as s:                                 # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = tmp_path / "out"
    t0 = time.time()
    result = subprocess.run([sys.executable, "-m", "qbench.cli", "run", str(experiment), "--out", str(out),
                             "--executor", "ray", "--ray-address", f"127.0.0.1:{port}"],
                            env=dict(os.environ, **RAY_ENV, PYTHONPATH=str(ROOT)), capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 2, result.stderr
    assert f"cannot reach the Ray cluster at 127.0.0.1:{port}" in result.stderr
    assert "Traceback" not in result.stderr and not out.exists()
    assert time.time() - t0 < 60
