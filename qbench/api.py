"""The Python facade behind the CLI: validate, plan, dry_run, run, card, compare, gates, env, lists.

Everything the `qbench` command does goes through here, so a Python user has the same entry points.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Optional

from qbench.errors import ConfigError, GateFailed, RunError  # noqa: F401  (part of the facade)
from qbench.schema import Experiment, load_experiment


@dataclass
class RunOutcome:
    run_dir: Path
    status: str                  # ok | partial | failed
    statuses: dict[str, str]     # cell id -> ok | failed | skipped
    card: dict[str, Path]
    gates: list = field(default_factory=list)   # one verdict per gate (qbench.report.gates)

    @property
    def failed(self) -> list[str]:
        return [c for c, s in self.statuses.items() if s == "failed"]


def validate(paths: list[str | Path]) -> list[Experiment]:
    """Load and validate experiment files; raises ConfigError for the first bad one."""
    return [load_experiment(p) for p in paths]


def plan(path: str | Path, *, with_torch: bool = False):
    """The plan of an experiment on this machine (no torch unless asked)."""
    from qbench.hardware import detect
    from qbench.runner.plan import make_plan

    return make_plan(load_experiment(path), detect(include_torch=with_torch))


def preflight(exp: Experiment, source: str | Path = "experiment") -> None:
    """The checks of an experiment's inputs that need no torch (model ids, datasets, sizes)."""
    from qbench.runner.preflight import check_inputs

    check_inputs(exp, source)


def dry_run(path: str | Path, *, log: Callable[[str], None] = print):
    """Every check `run` makes before measuring (meta-device shapes included), then the plan; measures
    nothing. Raises ConfigError (exit 2) for what the real run would reject."""
    exp = load_experiment(path)
    the_plan, _ = _checked_plan(exp, path, log)
    return the_plan


def _checked_plan(exp: Experiment, source, log):
    """(plan, hardware) after every pre-measurement check, warnings logged."""
    from qbench.hardware import detect
    from qbench.runner.plan import make_plan
    from qbench.runner.preflight import check, check_inputs

    check_inputs(exp, source)              # cheap checks first: a bad path fails before torch loads
    for w in exp.warnings():
        log(f"warning: {source}: {w}")
    hw = detect(include_torch=True)
    the_plan = make_plan(exp, hw)
    check(the_plan, source, warn=lambda s: log(f"warning: {s}"))   # shapes on the meta device
    return the_plan, hw


def git_commit() -> Optional[str]:
    """The commit of qbench's source tree (with -dirty when it has changes), or None outside a checkout."""
    from qbench.hardware.provenance import git_commit as commit

    return commit()


def run(path: Optional[str | Path] = None, *, out: str | Path = "reports", resume: Optional[str | Path] = None,
        progress: bool = True, log: Callable[[str], None] = print, executor: str = "auto",
        ray_address: Optional[str] = None) -> RunOutcome:
    """Run an experiment end to end and render its card.

    With `resume`, finish the run in that folder: the experiment is the one the folder stores; a `path`
    given too must describe the same measurements (its gates may differ). A run can be resumed with another
    executor. `executor="ray"` runs the cells on the Ray cluster at `ray_address` (qbench.runner.executors.ray).
    """
    from qbench.runner.executors import executor_for
    from qbench.runner.execute import execute, finished_meta, write_meta

    if path is None and resume is None:
        raise ConfigError("give an experiment file, or --resume RUN_DIR to finish a run")
    exp, source = _experiment(path, resume)
    runner = executor_for(exp.measure, executor, ray_address=ray_address)   # a cluster is reached before any work
    try:
        the_plan, hw = _checked_plan(exp, source, log)
        session = runner.describe(the_plan)
        run_dir, meta = (_resume_dir(Path(resume), exp, source) if resume
                         else _new_dir(exp, the_plan, hw, out, source))
        meta["executors"] = [*meta.get("executors", []), session]
        write_meta(run_dir, meta)
        for line in the_plan.describe()[:2]:
            log(line)
        if session["name"] == "ray":
            log(f"ray: {session['nodes']} node(s), {session['slots']} cell(s) at a time")
        log(f"writing to {run_dir}")
        first, later = _split_conditional(the_plan)
        statuses = execute(first, run_dir, meta, log=log, progress=progress, executor=runner)
        if later:
            chosen, notes = _conditional_cells(the_plan, later, run_dir, log)
            statuses.update(execute(chosen, run_dir, meta, log=log, progress=progress, executor=runner,
                                    notes=notes))
    finally:
        runner.close()
    meta = finished_meta(run_dir, meta, statuses)
    card_paths = card(run_dir)
    verdicts = gate_verdicts(run_dir)
    for line in verdict_lines(verdicts):
        log(line)
    return RunOutcome(run_dir, meta["status"], statuses, card_paths, verdicts)


def _split_conditional(plan):
    """(the plan without the cells of conditional schemes, those cells): they run once the others have."""
    from dataclasses import replace

    later = tuple(c for c in plan.cells if c.scheme.if_fails)
    return replace(plan, cells=tuple(c for c in plan.cells if not c.scheme.if_fails)), later


def _conditional_cells(plan, cells, run_dir: Path, log) -> tuple[object, dict]:
    """A plan of the conditional cells whose scheme's `if_fails` scheme failed a gate on the cell's model (the
    others skipped, saying why), and each cell's `triggered_by` note. A gate that has no row of that scheme and
    model (it is written for other schemes) does not decide; one that has and fails triggers."""
    from dataclasses import replace

    from qbench.report.gates import evaluate_gates
    from qbench.results.table import load_results

    rows = load_results(run_dir).rows
    run, skipped, notes = [], [], {}
    for cell in cells:
        twin = cell.scheme.if_fails
        mine = [r for r in rows if r.get("scheme") == twin and r.get("model") == cell.model.display]
        verdicts = evaluate_gates(plan.experiment, mine)
        judged = [v for v in verdicts if v.get("status") in ("pass", "fail")]
        failed = [v for v in judged if v.get("status") == "fail"]
        labels = [v.get("label") or v.get("check") or f"gate {v.get('index')}" for v in failed]
        notes[cell.id] = {"triggered_by": {"scheme": twin, "gates": labels}}
        if failed:
            run.append(cell)
        else:
            why = (f"'{twin}' passed its gates on {cell.model.display}" if judged else
                   f"no gate judges '{twin}' on {cell.model.display}" if mine else
                   f"'{twin}' has no results on {cell.model.display} to judge")
            skipped.append((cell, f"{why}: this if_fails scheme did not need to run"))
    for c in run:
        log(f"{c.id}: runs because '{c.scheme.if_fails}' failed {', '.join(notes[c.id]['triggered_by']['gates'])}")
    return replace(plan, cells=tuple(run), skipped=tuple(skipped)), notes


def _experiment(path, resume) -> tuple[Experiment, str]:
    """The experiment to run and how to name it in messages: the file, else the one a run folder stores."""
    if path is not None:
        return load_experiment(path), str(path)
    stored = _read_meta(Path(resume)).get("experiment")
    if not stored:
        raise ConfigError("this run folder stores no experiment; give the experiment file too", where=str(resume))
    try:
        return Experiment.model_validate(stored), f"{resume}/meta.json"
    except Exception as e:
        raise ConfigError(f"the stored experiment no longer validates ({e}); give the experiment file too",
                          where=str(resume)) from None


def _resume_dir(run_dir: Path, exp: Experiment, source: str) -> tuple[Path, dict]:
    old = _read_meta(run_dir)
    resolved = exp.model_dump(mode="json")
    if _measured(old.get("experiment") or {}) != _measured(resolved):
        raise ConfigError("the experiment changed since this run started; start a new run instead of "
                          "--resume", where=source)
    return run_dir, dict(old, experiment=resolved)  # gates and pairs may change: they judge, not measure


def _new_dir(exp: Experiment, the_plan, hw, out, source: str) -> tuple[Path, dict]:
    import qbench
    from qbench.hardware import fingerprint
    from qbench.runner.execute import now, write_meta

    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    run_dir = Path(out) / exp.name / f"{stamp}-{fingerprint(hw)}"
    run_dir.mkdir(parents=True, exist_ok=False)
    meta = {
        "qbench_version": qbench.__version__, "created": now(), "finished": None,
        "experiment_name": exp.name, "experiment_file": source, "experiment": exp.model_dump(mode="json"),
        "hardware": hw.to_dict(), "hardware_summary": hw.summary(), "fingerprint": fingerprint(hw),
        "git_commit": git_commit(), "device": the_plan.device, "command": f"qbench run {source}",
        "baseline": {"requested": exp.baseline.dtype, "resolved": the_plan.baseline_dtype,
                     "note": the_plan.baseline_note},
        "plan": {"cells": [c.id for c in the_plan.cells] + [c.id for c, _ in the_plan.skipped],
                 "skipped": [{"cell": c.id, "reason": r} for c, r in the_plan.skipped]},
        "status": "running",
    }
    write_meta(run_dir, meta)
    return run_dir, meta


def _measured(experiment: dict) -> dict:
    """The part of a resolved experiment that determines measurements (gates only judge them, pairs only say
    what the card compares)."""
    return {k: v for k, v in experiment.items() if k not in ("gates", "pairs")}


def _read_meta(run_dir: Path) -> dict:
    p = Path(run_dir) / "meta.json"
    if not p.is_file():
        raise ConfigError("not a qbench run directory (no meta.json)", where=str(run_dir))
    return json.loads(p.read_text(encoding="utf-8"))


# ---------------------------------------------------------------- cards, gates, compare, export

def card(run_dir: str | Path) -> dict[str, Path]:
    """Re-render card.md / card.html / card.json from a results directory (no measurement)."""
    from qbench.report import render_card

    _read_meta(Path(run_dir))
    return render_card(Path(run_dir))


def publish(run_dirs: list, out: str | Path) -> dict[str, Path]:
    """A static site of the runs' cards in `out` (qbench.report.site): index.html, feed.jsonl, frontier plots,
    and each run folder with its card in the site's colours. ConfigError when a folder is not a run folder."""
    from qbench.report.site import publish as build

    if not run_dirs:
        raise ConfigError("give at least one run folder to publish")
    for r in run_dirs:
        _read_meta(Path(r))
    if Path(out).resolve() in {Path(r).resolve() for r in run_dirs}:
        raise ConfigError("the site folder must not be one of the run folders", where="--out")
    return build([Path(r) for r in run_dirs], out)


def sensitivity(path: str | Path, *, model: Optional[str] = None, out: Optional[str | Path] = None,
                samples: int = 8, seq_len: int = 64, log: Callable[[str], None] = print,
                progress: bool = True) -> dict[str, dict[str, Path]]:
    """Per-unit sensitivity of the experiment's models (or of `model`, an id or display name) to each of its
    engine schemes as candidate formats, on calibration samples only (qbench.runner.sensitivity); writes
    sensitivity.json, .md, .html and .png per model under `out` (default reports/<experiment>/sensitivity/<model>)
    and returns {model: {file name: path}}."""
    from qbench.report.sensitivity import write
    from qbench.runner.sensitivity import sensitivity as measure

    exp = load_experiment(path)
    refs = _models_named(exp, path, model)
    if samples < 1 or seq_len < 8:
        raise ConfigError("--samples must be at least 1 and --seq-len at least 8", where="--samples/--seq-len")
    base = Path(out) if out else Path("reports") / exp.name / "sensitivity"
    written = {}
    for ref in refs:
        report = measure(exp, ref, samples=samples, seq_len=seq_len, log=log, progress=progress)
        written[ref.display] = write(report, _model_folder(base, ref, refs, out))
    return written


def _models_named(exp, path, model: Optional[str]) -> list:
    """The experiment's models, or the one whose id or display name is `model` (ConfigError on --model else)."""
    refs = [m for m in exp.models if model in (None, m.id, m.display)]
    if not refs:
        from qbench.registry import did_you_mean

        names = [m.display for m in exp.models]
        raise ConfigError(f"no model '{model}' in {path}{did_you_mean(str(model), names)}; it has: "
                          f"{', '.join(names)}", where="--model")
    return refs


def _model_folder(base: Path, ref, refs: list, out) -> Path:
    """Where a per-model report goes: `out` itself for one model named there, else a folder per model below."""
    return base / ref.display if len(refs) > 1 or not out else base


def bench_model(path: str | Path, *, model: Optional[str] = None, schemes: Optional[list[str]] = None,
                batch_size: int = 1, seq_len: Optional[int] = None, repeats: int = 10, warmup: int = 2,
                out: Optional[str | Path] = None, log: Callable[[str], None] = print,
                progress: bool = True) -> dict[str, dict]:
    """Where a forward's time goes (qbench.runner.profile): per model of the experiment (or `model`), the baseline
    and its engine schemes (or `schemes`), prefill and (causal LMs) one decode step, timed round-robin and
    profiled per module kind, with the linears-free ceiling. Writes profile.json and profile.md per model under
    `out` (default reports/<experiment>/profile/<model>); returns {model: {"report": dict, "files": {name: path}}}."""
    from qbench.hardware import detect
    from qbench.report.profile import write
    from qbench.runner.plan import make_plan
    from qbench.runner.profile import bench_model as measure

    exp = load_experiment(path)
    refs = _models_named(exp, path, model)
    known = [s.name for s in exp.schemes]
    for s in schemes or []:
        if s not in known:
            from qbench.registry import did_you_mean

            raise ConfigError(f"no scheme '{s}' in {path}{did_you_mean(s, known)}; it has: {', '.join(known)}",
                              where="--scheme")
    if batch_size < 1 or repeats < 2 or warmup < 0 or (seq_len is not None and seq_len < 8):
        raise ConfigError("--batch must be at least 1, --repeats at least 2, --warmup at least 0 and --seq-len at "
                          "least 8", where="--batch/--repeats/--warmup/--seq-len")
    plan = make_plan(exp, detect())
    base = Path(out) if out else Path("reports") / exp.name / "profile"
    done = {}
    for ref in refs:
        report = measure(exp, ref, schemes=schemes, batch_size=batch_size, seq_len=seq_len, repeats=repeats,
                         warmup=warmup, device=plan.device, dtype=plan.baseline_dtype, log=log, progress=progress)
        done[ref.display] = {"report": report,
                             "files": write(report, _model_folder(base, ref, refs, out))}
    return done


def gate_verdicts(run_dir: str | Path) -> list:
    """Gate verdicts of a rendered card (evaluated once, while the card context was built)."""
    data = json.loads((Path(run_dir) / "card.json").read_text(encoding="utf-8"))
    return data.get("gates") or []


def verdict_lines(verdicts: list) -> list[str]:
    """One printable line per gate verdict."""
    from qbench.report.gates import verdict_lines as lines

    return lines(verdicts)


def gates_failed(verdicts: list) -> bool:
    """True when any gate failed or had no data to judge."""
    from qbench.report.gates import gates_failed as failed

    return failed(verdicts)


def compare(run_a: str | Path, run_b: str | Path, out: Optional[str | Path] = None) -> dict[str, Path]:
    """compare.md / .html / .json of run B against run A; ConfigError when either is not a run folder."""
    from qbench.report.compare import compare_runs

    try:
        return compare_runs(run_a, run_b, out)
    except FileNotFoundError as e:
        raise ConfigError(str(e)) from None


def hf_snippet(run_dir: str | Path, model: Optional[str] = None, scheme: Optional[str] = None) -> Path:
    """A Hugging Face model-card snippet for one model and scheme of a run."""
    from qbench.report.hf_export import write_hf_snippet

    try:
        return write_hf_snippet(run_dir, model=model, scheme=scheme)
    except ValueError as e:
        raise ConfigError(str(e), where=str(run_dir)) from None


def card_schema() -> dict:
    """JSON Schema of card.json."""
    from qbench.report.card_schema import card_schema as schema

    return schema()


def record_schema(kind: str) -> dict:
    """JSON Schema of what a run writes: "cell" (cells/<id>.json) or "meta" (meta.json), as the current
    runner writes them."""
    from qbench.results.schemas import cell_schema, meta_schema

    if kind not in ("cell", "meta"):
        raise ConfigError(f"no record schema '{kind}'; use cell or meta")
    return cell_schema() if kind == "cell" else meta_schema()


def experiment_schema() -> str:
    """JSON Schema of experiment files."""
    from qbench.schema import json_schema

    return json_schema()


# ---------------------------------------------------------------- the machine and what qbench offers

def env():
    """This machine's hardware and software, as every run records it."""
    from qbench.hardware import detect

    return detect(include_torch=True)


def fingerprint(info) -> str:
    """The short stable id of a machine's hardware and software (8 hex characters)."""
    from qbench.hardware import fingerprint as fp

    return fp(info)


def kernels() -> dict:
    """Registered kernels by name."""
    from qbench.engine.kernels import KERNELS

    return dict(KERNELS.items())


def op_kernels() -> dict[str, tuple[str, bool]]:
    """The kernels of the ops around the linears (attention, residual): name -> (backend, emulated)."""
    from qbench.engine.ops import KERNELS

    return dict(KERNELS)


def bundled_models() -> dict:
    """Models qbench loads by a short id, with their origin and how to install them."""
    from qbench.models.loaders import BUNDLED

    return dict(BUNDLED)


def builtin_datasets() -> dict[str, str]:
    """Built-in datasets by name, with a description."""
    from qbench.datasets import BUILTIN_SUITES

    return dict(BUILTIN_SUITES)


def bench_gemm(argv: list[str], prog: str = "qbench bench gemm") -> dict:
    """The GEMM benchmark (qbench.bench.gemm) with command-line arguments."""
    from qbench.bench.gemm import main

    return main(argv, prog=prog)


__all__ = ["RunOutcome", "RunError", "GateFailed", "validate", "plan", "dry_run", "run", "card", "compare",
           "gate_verdicts", "verdict_lines", "gates_failed", "hf_snippet", "card_schema", "record_schema", "experiment_schema",
           "env", "fingerprint", "kernels", "op_kernels", "bundled_models", "builtin_datasets", "bench_gemm", "bench_model",
           "preflight"]
