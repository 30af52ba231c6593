"""The reference LM's training script (qbench.tools.train_reflm): it runs end to end on a tiny configuration,
--threads holds only while it trains, --checkpoint-every writes checkpoints that --resume continues from to
the same model, and the old command name qbench.models.train_reflm still works."""
from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from qbench.tools.train_reflm import CHECKPOINT_EVERY, main, small_config, train

REPO_ROOT = Path(__file__).resolve().parents[2]


def _weights(out: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(out / "model.safetensors")


@pytest.fixture(scope="module")
def fresh(tmp_path_factory):
    """Three steps of the tiny configuration, straight through, on one thread (as the CLI runs it)."""
    out = tmp_path_factory.mktemp("fresh")
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        assert main(["--out", str(out), "--small", "--steps", "3", "--threads", "1"]) == 0
        threads_after = torch.get_num_threads()
    finally:
        torch.set_num_threads(before)
    return out, threads_after


@pytest.mark.slow
def test_training_script_runs_end_to_end_small(fresh):
    from qbench.models import load_model
    from qbench.schema.experiment import ModelRef

    out, threads_after = fresh
    assert threads_after == 2                         # --threads held only while training
    r = json.loads((out / "training.json").read_text(encoding="utf-8"))
    assert r["steps"] == 3 and r["tokens_seen"] == 3 * 4 * 32 and r["threads"] == 1
    assert all(math.isfinite(h["ppl"]) for h in r["heldout"].values())
    assert not (out / "checkpoint.pt").exists()
    loaded = load_model(ModelRef(id=f"hf:{out}"), "fp32", "cpu")
    assert loaded.task == "causal_lm" and len(loaded.tokenizer) <= 512


@pytest.mark.slow
def test_checkpoint_every_then_resume_gives_the_same_model(tmp_path):
    class Interrupted(Exception):
        pass

    lines: list[str] = []

    def log_then_die_at_step_4(msg: str) -> None:
        lines.append(msg)
        if msg == "checkpoint at step 4":           # killed right after the second checkpoint
            raise Interrupted

    out = tmp_path / "resumed"
    with pytest.raises(Interrupted):
        train(small_config(5), out, threads=1, checkpoint_every=2, log=log_then_die_at_step_4)
    assert [m for m in lines if m.startswith("checkpoint")] == ["checkpoint at step 2", "checkpoint at step 4"]
    assert (out / "checkpoint.pt").is_file()

    lines.clear()
    train(small_config(5), out, resume=True, threads=1, checkpoint_every=2, log=lines.append)
    assert "resumed at step 4" in lines and not (out / "checkpoint.pt").exists()
    again = tmp_path / "straight"                    # the default cadence writes no checkpoint in 5 steps
    train(small_config(5), again, threads=1, checkpoint_every=CHECKPOINT_EVERY, log=lambda m: None)
    a, b = _weights(out), _weights(again)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    ra, rb = (json.loads((d / "training.json").read_text(encoding="utf-8")) for d in (out, again))
    assert ra["history"] == rb["history"] and ra["heldout"] == rb["heldout"]


def test_checkpoint_every_must_be_positive(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main(["--out", str(tmp_path), "--checkpoint-every", "0"])
    assert e.value.code == 2 and "--checkpoint-every: must be at least 1" in capsys.readouterr().err
    with pytest.raises(ValueError, match="at least 1"):
        train(small_config(1), tmp_path, checkpoint_every=0)
    assert not any(tmp_path.iterdir())               # refused before writing anything


def test_old_module_name_still_runs_and_exports_the_same_names():
    import qbench.models.train_reflm as old
    import qbench.tools.train_reflm as new

    assert old.main is new.main and old.Config is new.Config and old.heldout_ppl is new.heldout_ppl
    r = subprocess.run([sys.executable, "-m", "qbench.models.train_reflm", "--help"], capture_output=True,
                       text=True, cwd=str(REPO_ROOT), timeout=120)
    assert r.returncode == 0 and "--checkpoint-every" in r.stdout and "--threads" in r.stdout
