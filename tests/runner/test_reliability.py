"""Interruptions and faults: kill -9 mid-run then --resume; isolated cells; per-cell timeouts."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from qbench import api
from tests.runner.support import SCHEMES, kill_after_cells, write_experiment

pytestmark = pytest.mark.slow
QUALITY = {"cosine_mean", "cosine_min", "nn_agreement", "ppl", "log_ppl_ratio", "kl_mean", "kl_p99",
           "top1_agreement", "weight_bytes"}


def _quality(run_dir: Path) -> dict:
    """Deterministic rows (quality, sizes) and quantization maps of every cell; timings excluded."""
    out = {}
    for p in sorted((run_dir / "cells").glob("*.json")):
        c = json.loads(p.read_text())
        rows = sorted((r["metric"], r["variant"], round(r["value"], 9)) for r in c["rows"] if r["metric"] in QUALITY)
        out[c["cell"]] = (c["status"], rows, c["quant_map"], c["kernels"])
    return out


def _card_sections(run_dir: Path) -> dict:
    """The card sections a resumed run must reproduce. Where the causal LM's reference came from (computed, or
    reused from the cache) is provenance, not a result: a resumed run reuses what its killed process computed."""
    text = (run_dir / "card.json").read_text().replace(", reused from cache", ", computed")
    card = json.loads(text)
    return {k: card[k] for k in ("setup", "quant_maps")} | {"quality": card["results"]["quality"]}


def test_sigkill_mid_run_then_resume_matches_uninterrupted_run(tiny_models, tmp_path):
    exp = write_experiment(tmp_path, {"gpt2": tiny_models["gpt2"], "bert": tiny_models["bert"]}, SCHEMES,
                           name="killme")
    # one thread in every process: float reductions then run in the same order, so numbers match exactly
    exp.write_text(exp.read_text().replace("eval_samples: 8}", "eval_samples: 8, threads: 1}"))
    whole = api.run(exp, out=tmp_path / "whole", progress=False, log=lambda s: None)

    out = tmp_path / "killed"
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[2]))
    run_dir = kill_after_cells([str(exp)], out, "killme", env)
    finished = list((run_dir / "cells").glob("*.json"))
    assert 2 <= len(finished) < 8
    for p in finished:  # atomic writes: every file on disk is complete JSON
        assert json.loads(p.read_text())["status"] == "ok"
    assert not (run_dir / "card.md").exists()

    # the run folder holds its experiment: `qbench run --resume RUN_DIR` alone finishes it
    exp.unlink()
    resumed = subprocess.run([sys.executable, "-m", "qbench.cli", "run", "--resume", str(run_dir), "--no-progress"],
                             env=env, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr
    assert f"resuming: {len(finished)} cell(s) already finished" in resumed.stderr
    assert json.loads((run_dir / "meta.json").read_text())["status"] == "ok"
    assert _quality(run_dir) == _quality(whole.run_dir)
    assert _card_sections(run_dir) == _card_sections(whole.run_dir)


def test_resume_with_a_changed_experiment_is_refused(tiny_run_dir, tmp_path):
    """--resume RUN_DIR with an experiment file checks that it describes the stored measurements."""
    from qbench.errors import ConfigError

    exp, run_dir = tiny_run_dir
    changed = tmp_path / "changed.yaml"
    changed.write_text(exp.read_text().replace("repeats: 3", "repeats: 4"))
    with pytest.raises(ConfigError, match="the experiment changed since this run started"):
        api.run(changed, resume=run_dir, progress=False, log=lambda s: None)
    gated = tmp_path / "gated.yaml"               # gates judge, they do not measure: a new gate is allowed
    gated.write_text(exp.read_text() + "gates:\n  - {metric: cosine_mean, min: 0.5}\n")
    again = api.run(gated, resume=run_dir, progress=False, log=lambda s: None)
    assert again.status == "ok" and len(again.gates) == 1


@pytest.fixture(scope="module")
def tiny_run_dir(tiny_models, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("resumable")
    exp = write_experiment(tmp, {"bert": tiny_models["bert"]}, SCHEMES.split("  - name: w4g16")[0], name="res")
    return exp, api.run(exp, out=tmp / "reports", progress=False, log=lambda s: None).run_dir


def test_isolated_cells_and_timeouts(tiny_models, tmp_path):
    exp = write_experiment(tmp_path, {"bert": tiny_models["bert"]}, SCHEMES, name="iso")
    text = exp.read_text().replace("eval_samples: 8}", "eval_samples: 8, threads: 1}")  # same float order
    assert "threads: 1}" in text
    exp.write_text(text.replace("threads: 1}", "threads: 1, isolate: true}"))
    isolated = api.run(exp, out=tmp_path / "iso", progress=False, log=lambda s: None)
    assert isolated.status == "ok"
    inproc_exp = write_experiment(tmp_path, {"bert": tiny_models["bert"]}, SCHEMES, name="inproc")
    inproc_exp.write_text(inproc_exp.read_text().replace("eval_samples: 8}", "eval_samples: 8, threads: 1}"))
    inproc = api.run(inproc_exp, out=tmp_path / "inproc", progress=False, log=lambda s: None)
    strip = lambda d: {k.replace("iso", "X").replace("inproc", "X"): v for k, v in _quality(d).items()}  # noqa
    assert strip(isolated.run_dir) == strip(inproc.run_dir)  # same numbers whichever process ran them
    assert json.loads((isolated.run_dir / "meta.json").read_text())["models"]["bert"]["task"] == "encoder"
    assert not list((isolated.run_dir / "cells").glob(".*"))  # worker hand-off files cleaned up

    exp.write_text(text.replace("threads: 1}", "threads: 1, cell_timeout_s: 0.2}"))
    timed = api.run(exp, out=tmp_path / "timeout", progress=False, log=lambda s: None)
    assert timed.status == "failed"
    for p in (timed.run_dir / "cells").glob("*.json"):
        cell = json.loads(p.read_text())
        assert cell["status"] == "failed" and "timed out after 0.2 s" in cell["reason"]
    assert "timed out" in (timed.run_dir / "card.md").read_text()


def test_sigterm_stops_cleanly_with_finished_cells_on_disk(tiny_models, tmp_path):
    exp = write_experiment(tmp_path, {"gpt2": tiny_models["gpt2"], "bert": tiny_models["bert"]}, SCHEMES,
                           name="term")
    out = tmp_path / "out"
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[2]))
    proc = subprocess.Popen([sys.executable, "-m", "qbench.cli", "run", str(exp), "--out", str(out),
                             "--no-progress"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None and not list(out.glob("term/*/cells/*.json")):
        time.sleep(0.05)
    assert proc.poll() is None
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130
    assert "interrupted" in err and "--resume" in err and "Traceback" not in err
    cells = list(out.glob("term/*/cells/*.json"))
    assert cells and all(json.loads(p.read_text())["status"] == "ok" for p in cells)


def test_tokenizer_that_does_not_match_the_model_fails_its_cells(tiny_models, tmp_path):
    import shutil

    from transformers import AutoTokenizer

    mismatched = tmp_path / "mismatched"
    shutil.copytree(tiny_models["gpt2"], mismatched)
    tok = AutoTokenizer.from_pretrained(mismatched)
    tok.add_tokens([f"tok{i}" for i in range(200)] + ["the_"])  # ids beyond the embedding
    tok.save_pretrained(mismatched)
    data = tmp_path / "words.txt"
    data.write_text("\n\n".join(" ".join(f"tok{(i * 7 + j) % 200}" for j in range(120)) for i in range(40)))
    exp = write_experiment(tmp_path, {"mismatched": mismatched}, SCHEMES, name="tok")
    exp.write_text(exp.read_text().replace('"builtin:text"', f'"{data}"'))
    outcome = api.run(exp, out=tmp_path / "o", progress=False, log=lambda s: None)
    text = json.loads((outcome.run_dir / "cells" / "mismatched__w8a8__text.json").read_text())
    assert text["status"] == "failed" and "tokenizer and model do not match" in text["reason"]
