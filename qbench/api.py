"""The Python facade behind the CLI: validate, plan, run, card, env."""
from __future__ import annotations

import subprocess
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Optional

from qbench.errors import ConfigError, RunError
from qbench.schema import Experiment, load_experiment


@dataclass
class RunOutcome:
    run_dir: Path
    status: str                  # ok | partial | failed
    statuses: dict[str, str]     # cell id -> ok | failed | skipped
    card: dict[str, Path]
    gates: list = field(default_factory=list)   # one verdict per gate (qbench.report.gates)


def validate(paths: list[str | Path]) -> list[Experiment]:
    """Load and validate experiment files; raises ConfigError for the first bad one."""
    return [load_experiment(p) for p in paths]


def plan(path: str | Path, *, with_torch: bool = False):
    """The plan of an experiment on this machine (no torch unless asked)."""
    from qbench.hardware import detect
    from qbench.runner.plan import make_plan

    return make_plan(load_experiment(path), detect(include_torch=with_torch))


def preflight(exp: Experiment, source: str | Path = "experiment") -> None:
    """Everything that can fail on bad input fails here, before any measurement."""
    from qbench.datasets import pools
    from qbench.errors import DatasetError
    from qbench.models import check_model_ref

    for i, m in enumerate(exp.models):
        try:
            check_model_ref(m)
        except ConfigError:
            raise
        except Exception as e:
            raise ConfigError(str(e), where=f"{source}: models[{i}].id") from None
    need = {w.dataset: exp.measure.eval_samples for w in exp.workloads}
    for i, w in enumerate(exp.workloads):
        try:
            _, evaluation = pools(w.dataset, seed=exp.measure.seed)
        except DatasetError as e:
            raise ConfigError(str(e), where=f"{source}: workloads[{i}].dataset") from None
        if len(evaluation) < need[w.dataset]:
            raise ConfigError(f"{w.dataset} holds {len(evaluation)} evaluation samples, measure.eval_samples "
                              f"asks for {need[w.dataset]}", where=f"{source}: workloads[{i}].dataset")
        if max(exp.measure.batch_sizes) > exp.measure.eval_samples:
            raise ConfigError(f"largest batch size {max(exp.measure.batch_sizes)} exceeds eval_samples "
                              f"{exp.measure.eval_samples}", where=f"{source}: measure.batch_sizes")
    for i, s in enumerate(exp.schemes):
        spec = exp.calibration_dataset(s)
        if spec is None:
            continue
        try:
            calibration, _ = pools(spec, seed=exp.measure.seed)
        except DatasetError as e:
            raise ConfigError(str(e), where=f"{source}: schemes[{i}].calibration.dataset") from None
        if len(calibration) < s.calibration.size:
            raise ConfigError(f"{spec} holds {len(calibration)} calibration samples, {s.calibration.size} "
                              "requested", where=f"{source}: schemes[{i}].calibration.size")


def git_commit() -> Optional[str]:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).resolve().parent)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                               text=True, timeout=5, cwd=Path(__file__).resolve().parent)
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode != 0:
        return None
    return out.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")


def run(path: str | Path, *, out: str | Path = "reports", resume: Optional[str | Path] = None,
        progress: bool = True, log: Callable[[str], None] = print) -> RunOutcome:
    """Run an experiment end to end and render its card."""
    import qbench
    from qbench.hardware import detect, fingerprint
    from qbench.results.table import write_json_atomic
    from qbench.runner.execute import execute, finished_meta, now
    from qbench.runner.plan import make_plan

    exp = load_experiment(path)
    preflight(exp, path)
    for w in exp.warnings():
        log(f"warning: {path}: {w}")
    hw = detect(include_torch=True)
    the_plan = make_plan(exp, hw)
    from qbench.runner.preflight import check

    check(the_plan, path, warn=lambda s: log(f"warning: {s}"))
    resolved = exp.model_dump(mode="json")
    if resume:
        run_dir = Path(resume)
        old = _read_meta(run_dir)
        if _measured(old.get("experiment") or {}) != _measured(resolved):
            raise ConfigError("the experiment changed since this run started; start a new run instead of "
                              "--resume", where=str(path))
        meta = dict(old, experiment=resolved)  # gates may change between runs; they judge, not measure
    else:
        stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
        run_dir = Path(out) / exp.name / f"{stamp}-{fingerprint(hw)}"
        run_dir.mkdir(parents=True, exist_ok=False)
        meta = {
            "qbench_version": qbench.__version__, "created": now(), "finished": None,
            "experiment_name": exp.name, "experiment_file": str(path), "experiment": resolved,
            "hardware": hw.to_dict(), "hardware_summary": hw.summary(), "fingerprint": fingerprint(hw),
            "git_commit": git_commit(), "device": the_plan.device, "command": f"qbench run {path}",
            "baseline": {"requested": exp.baseline.dtype, "resolved": the_plan.baseline_dtype,
                         "note": the_plan.baseline_note},
            "plan": {"cells": [c.id for c in the_plan.cells] + [c.id for c, _ in the_plan.skipped],
                     "skipped": [{"cell": c.id, "reason": r} for c, r in the_plan.skipped]},
            "status": "running",
        }
        write_json_atomic(run_dir / "meta.json", meta)
    for line in the_plan.describe()[:2]:
        log(line)
    log(f"writing to {run_dir}")
    statuses = execute(the_plan, run_dir, meta, log=log, progress=progress)
    meta = finished_meta(run_dir, meta, statuses)
    from qbench.report import render_card

    card = render_card(run_dir)
    verdicts = gate_verdicts(run_dir)
    from qbench.report.gates import verdict_lines

    for line in verdict_lines(verdicts):
        log(line)
    return RunOutcome(run_dir, meta["status"], statuses, card, verdicts)


def _measured(experiment: dict) -> dict:
    """The part of a resolved experiment that determines measurements (gates only judge them)."""
    return {k: v for k, v in experiment.items() if k != "gates"}


def gate_verdicts(run_dir: str | Path) -> list:
    """Gate verdicts of a rendered card (evaluated once, while the card context was built)."""
    import json

    card = json.loads((Path(run_dir) / "card.json").read_text(encoding="utf-8"))
    return card.get("gates") or []


def _read_meta(run_dir: Path) -> dict:
    import json

    p = Path(run_dir) / "meta.json"
    if not p.is_file():
        raise ConfigError("not a qbench run directory (no meta.json)", where=str(run_dir))
    return json.loads(p.read_text(encoding="utf-8"))


def card(run_dir: str | Path) -> dict[str, Path]:
    """Re-render card.md / card.html / card.json from a results directory (no measurement)."""
    from qbench.report import render_card

    _read_meta(Path(run_dir))
    return render_card(Path(run_dir))


def env():
    from qbench.hardware import detect

    return detect(include_torch=True)


__all__ = ["RunOutcome", "RunError", "validate", "plan", "run", "card", "env", "preflight"]
