"""Run a plan: one cell at a time, each written to disk atomically as soon as it ends."""
from __future__ import annotations

import contextlib
import copy
import json
import sys
import time
import traceback
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Optional

from qbench.results.table import load_results, write_json_atomic
from qbench.runner.plan import Cell, Plan


@dataclass
class ModelState:
    loaded: object            # qbench.models.LoadedModel
    params: int
    baseline_bytes: int
    inputs: dict              # workload name -> tokenized evaluation batch
    reference: dict           # workload name -> baseline outputs on that batch
    suites: dict              # workload name -> Suite


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def execute(plan: Plan, run_dir: Path, meta: dict, *, log: Callable[[str], None] = print,
            progress: bool = True) -> dict:
    """Run every cell not already finished in run_dir; returns {cell id: status}."""
    import torch

    measure = plan.experiment.measure
    threads = torch.get_num_threads()
    setup_torch(measure)
    try:
        return _execute(plan, run_dir, meta, measure, log, progress)
    finally:
        torch.set_num_threads(threads)


def setup_torch(measure) -> None:
    """Threads and seed from the experiment, in this process (the runner's or a cell worker's)."""
    import torch

    if measure.threads:
        torch.set_num_threads(measure.threads)
    torch.manual_seed(measure.seed)


def failed_record(cell: Cell, e: Exception) -> dict:
    """A failed cell with the exception as its reason and a short traceback."""
    record = _cell_header(cell, "failed", f"{type(e).__name__}: {e}")
    record["traceback"] = traceback.format_exc(limit=8)
    return record


def _execute(plan: Plan, run_dir: Path, meta: dict, measure, log, progress) -> dict:
    done = _finished_cells(run_dir)
    todo = [c for c in plan.cells if c.id not in done]
    statuses = {cid: "ok" for cid in done}
    if done:
        log(f"resuming: {len(done)} cell(s) already finished, {len(todo)} to run")
    bar = _progress(len(todo), progress)
    models: dict[str, ModelState] = {}
    isolate = measure.isolate or measure.cell_timeout_s is not None
    for cell in todo:
        bar.set_description(cell.id)
        t0 = time.perf_counter()
        if isolate:
            from qbench.runner.isolate import run_isolated

            record, loaded = run_isolated(plan, cell, run_dir, measure.cell_timeout_s)
            if loaded:
                meta.setdefault("models", {}).update(loaded)
                write_json_atomic(run_dir / "meta.json", meta)
        else:
            record = _run_in_process(plan, cell, models, meta, run_dir)
        if record["status"] == "failed":
            log(f"cell {cell.id} failed: {record['reason']}")
        record["seconds"] = round(time.perf_counter() - t0, 3)
        record["finished"] = now()
        write_json_atomic(run_dir / "cells" / f"{cell.id}.json", record)
        statuses[cell.id] = record["status"]
        bar.update(1)
    bar.close()
    for cell, reason in plan.skipped:
        write_json_atomic(run_dir / "cells" / f"{cell.id}.json", _cell_header(cell, "skipped", reason))
        statuses[cell.id] = "skipped"
    return statuses


def _run_in_process(plan: Plan, cell: Cell, models: dict, meta: dict, run_dir: Path) -> dict:
    try:
        state = models.get(cell.model.display)
        if state is None:
            models.clear()  # one model in memory at a time
            state = models[cell.model.display] = _load(plan, cell, meta)
            write_json_atomic(run_dir / "meta.json", meta)  # model provenance survives a crash
        return run_cell(plan, cell, state)
    except KeyboardInterrupt:
        raise
    except Exception as e:  # a failing cell is recorded and the run goes on
        return failed_record(cell, e)


def _progress(total: int, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, unit="cell", disable=not enabled, dynamic_ncols=True)


def _finished_cells(run_dir: Path) -> set[str]:
    done = set()
    for p in (run_dir / "cells").glob("*.json"):
        try:
            if json.loads(p.read_text(encoding="utf-8")).get("status") == "ok":
                done.add(p.stem)
        except (OSError, json.JSONDecodeError):
            continue  # unreadable: the cell runs again
    return done


def _cell_header(cell: Cell, status: str, reason: str = "") -> dict:
    return {"cell": cell.id, "model": cell.model.display, "scheme": cell.scheme.name,
            "workload": cell.workload.name, "task": None, "status": status, "reason": reason,
            "rows": [], "quant_map": [], "unmatched_excludes": [], "kernels": [], "kernel_info": {},
            "calibration": None, "evaluation": None}


def _load(plan: Plan, cell: Cell, meta: dict) -> ModelState:
    from qbench.datasets import load_suite
    from qbench.models import load_model
    from qbench.runner.measure import outputs, tokenize

    exp, m = plan.experiment, plan.experiment.measure
    loaded = load_model(cell.model, plan.baseline_dtype, plan.device)
    if loaded.max_positions and m.seq_len > loaded.max_positions:
        raise ValueError(f"seq_len {m.seq_len} exceeds the model's context of {loaded.max_positions}")
    model = loaded.model
    params = sum(p.numel() for p in model.parameters())
    nbytes = sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()])
    inputs, reference, suites = {}, {}, {}
    for wl in exp.workloads:
        suite = load_suite(wl.dataset, calibration_size=0, evaluation_size=m.eval_samples, seed=m.seed)
        suites[wl.name] = suite
        inputs[wl.name] = tokenize(loaded.tokenizer, [s.text for s in suite.evaluation], m.seq_len, plan.device)
        _check_vocab(inputs[wl.name], model, cell.model.display)
        if loaded.task == "causal_lm":
            reference[wl.name] = _lm_reference(plan, cell, loaded, suite, inputs[wl.name], meta)
        else:
            reference[wl.name] = outputs(model, loaded.task, inputs[wl.name])
    meta.setdefault("models", {}).setdefault(cell.model.display, {}).update({
        "id": cell.model.id, "task": loaded.task, "source_origin": loaded.origin, "params": params,
        "baseline_bytes": nbytes, "max_positions": loaded.max_positions})
    return ModelState(loaded, params, nbytes, inputs, reference, suites)


def _lm_reference(plan: Plan, cell: Cell, loaded, suite, batch: dict, meta: dict) -> dict:
    """The baseline's top-k next-token reference and greedy continuations, from the cache or computed once.

    Keyed by the model's content (weights and vocabulary), the evaluation samples' hash, seq_len, k, the
    generation settings, the baseline dtype, the device type and the torch version.
    """
    import torch

    from qbench.metrics.lm import load_or_compute, model_fingerprint, reference_key
    from qbench.runner.measure import lm_reference

    m = plan.experiment.measure
    prompts = _prompts(batch, m.prompt_tokens)
    parts = {"kind": "lm_reference/v1", "model": model_fingerprint(loaded.model, loaded.tokenizer),
             "evaluation_hash": suite.evaluation_hash, "seq_len": m.seq_len, "k": m.lm_topk,
             "prompt_tokens": m.prompt_tokens, "generate_tokens": m.generate_tokens,
             "dtype": plan.baseline_dtype, "device": plan.device.split(":")[0], "torch": str(torch.__version__)}
    key = reference_key(**parts)
    ref, status = load_or_compute(key, {**parts, "model_id": cell.model.id},
                                  lambda: lm_reference(loaded.model, batch, prompts, m.lm_topk, m.generate_tokens),
                                  log=lambda msg: print(f"qbench: warning: {msg}", file=sys.stderr))
    info = meta.setdefault("models", {}).setdefault(cell.model.display, {}).setdefault("lm_reference", {})
    info[suite.name] = {"key": key, "cache": status, "k": ref["topk"]["k"], "vocab": ref["topk"]["vocab"]}
    return dict(ref, prompts=prompts)


def _prompts(batch: dict, n: int):
    """The first n tokens of every evaluation sample; each sample must have n real tokens."""
    short = int((batch["attention_mask"].sum(1) < n).sum())
    if short:
        raise ValueError(f"{short} evaluation sample(s) are shorter than prompt_tokens ({n} tokens)")
    return batch["input_ids"][:, :n]


def _check_vocab(batch: dict, model, name: str) -> None:
    rows = model.get_input_embeddings().num_embeddings
    top = int(batch["input_ids"].max())
    if top >= rows:
        raise ValueError(f"the tokenizer of {name} produces token id {top} but its embedding has {rows} rows: "
                         "tokenizer and model do not match")


def run_cell(plan: Plan, cell: Cell, state: ModelState) -> dict:
    """Quantize a copy of the baseline, measure quality and paired speed; never mutates the config.

    On a CUDA device the cell also records GPU telemetry, peak GPU memory and energy (runner.gpu).
    """
    m, task = plan.experiment.measure, state.loaded.task
    gpu = None
    if plan.device.startswith("cuda"):
        from qbench.runner.gpu import GpuCell

        gpu = GpuCell(plan.device)
        gpu.begin()  # peak-memory counters reset, NVML snapshot before the cell
    try:
        return _run_cell(plan, cell, state, m, task, gpu)
    finally:
        if gpu is not None:
            gpu.close()


def _run_cell(plan: Plan, cell: Cell, state: ModelState, m, task: str, gpu) -> dict:
    import torch

    from qbench.engine.api import quantize_, unmatched_excludes
    from qbench.engine.kernels import KERNELS
    from qbench.runner.measure import (encoder_quality, generation_rows, lm_rows, lm_speed_rows, lm_stats,
                                       outputs, row, speed_rows)

    base = state.loaded.model
    quant = copy.deepcopy(base)
    calibrate, cal_info = _calibration(plan, cell, state)
    records = quantize_(quant, cell.scheme, device=plan.device, calibrate=calibrate)
    batch = state.inputs[cell.workload.name]
    ref = state.reference[cell.workload.name]
    if task == "encoder":
        rows = encoder_quality(ref, outputs(quant, task, batch))
    else:
        topk = ref["topk"]
        rows = lm_rows(lm_stats(quant, batch, topk), topk["k"], topk["vocab"])
        if ref.get("gen") is not None:
            from qbench.metrics.lm import greedy

            q_gen = torch.cat([greedy(quant, p, m.generate_tokens).cpu() for p in ref["prompts"].split(16)])
            rows += generation_rows(ref["gen"], q_gen, ref["prompts"].cpu(), state.loaded.tokenizer,
                                    python=_is_python(cell.workload.dataset))
    q_bytes = sum(t.numel() * t.element_size() for t in [*quant.parameters(), *quant.buffers()])
    q_bytes += sum(r.bytes_after for r in records if r.applied)
    method = "bytes of parameters, buffers and quantized weight state (codes, scales, zero points, sums)"
    rows += [row("weight_bytes", state.baseline_bytes, "bytes", method, "baseline"),
             row("weight_bytes", q_bytes, "bytes", method, "quantized")]
    from qbench.metrics.timing import ForeignCpu, RssSampler

    with RssSampler() as rss, ForeignCpu() as foreign, (gpu.timing() if gpu else contextlib.nullcontext()):
        for bs in m.batch_sizes:
            if bs > batch["input_ids"].shape[0]:
                raise ValueError(f"batch size {bs} exceeds the {batch['input_ids'].shape[0]} evaluation samples")
            if task == "causal_lm":
                rows += lm_speed_rows(base, quant, batch, bs, m.seq_len, m.decode_tokens, m.warmup, m.repeats,
                                      plan.device)
            else:
                rows += speed_rows(base, quant, task, batch, bs, m.seq_len, m.warmup, m.repeats, plan.device)
            if gpu is not None:
                from qbench.runner.gpu import cell_energy_rows

                rows += cell_energy_rows(gpu, base, quant, task, batch, bs, m.seq_len, m.decode_tokens)
    rows.append(row("peak_rss_bytes", rss.peak, "bytes", "peak resident set size of the process while "
                    "timing (baseline and quantized models both resident), sampled every 2 ms", "paired"))
    rows.append(row("foreign_cpu_cores", foreign.cores, "cores", "average CPU cores busy with other processes "
                    "while timing (system busy time minus this process's, over wall time); above 0.25 the "
                    "timings are contended", "paired"))
    gpu_record = None
    if gpu is not None:
        gpu_rows, gpu_record = gpu.end(base, quant)
        rows += gpu_rows
    kernels = sorted({r.kernel for r in records if r.applied})
    for r in rows:
        r.update(cell=cell.id, model=cell.model.display, task=task, scheme=cell.scheme.name,
                 workload=cell.workload.name, kernel=",".join(kernels), status="ok", reason="")
    record = _cell_header(cell, "ok")
    suite = state.suites[cell.workload.name]
    record.update(
        task=task, rows=rows, quant_map=[r.to_dict() for r in records], kernels=kernels,
        unmatched_excludes=unmatched_excludes(base, cell.scheme.exclude),
        kernel_info={k: {"backend": KERNELS.get(k).backend, "emulated": KERNELS.get(k).emulated}
                     for k in kernels if k in KERNELS},
        calibration=cal_info,
        evaluation={"dataset": cell.workload.dataset, "n": len(suite.evaluation),
                    "hash": suite.evaluation_hash, "seq_len": m.seq_len})
    if gpu_record is not None:
        record["gpu"] = gpu_record
    return record


def _is_python(dataset: str) -> bool:
    """Workloads whose text is Python source: generation is also checked for syntax."""
    return dataset == "builtin:code" or dataset.endswith(".py.txt") or dataset.endswith(".py.jsonl")


def _calibration(plan: Plan, cell: Cell, state: ModelState) -> tuple[Optional[Callable], Optional[dict]]:
    """A function running calibration samples through a model, and their provenance."""
    scheme = cell.scheme
    if scheme.calibration is None:
        return None, None
    from qbench.datasets import load_suite
    from qbench.runner.measure import outputs, tokenize

    exp, m = plan.experiment, plan.experiment.measure
    spec = exp.calibration_dataset(scheme)
    suite = load_suite(spec, calibration_size=scheme.calibration.size, evaluation_size=0, seed=m.seed)
    evaluation = state.suites[cell.workload.name].evaluation
    eval_keys = {s.sha256 for s in evaluation} | {s.source for s in evaluation}
    overlap = sum(1 for s in suite.calibration if s.sha256 in eval_keys or s.source in eval_keys)
    batch = tokenize(state.loaded.tokenizer, [s.text for s in suite.calibration], m.seq_len, plan.device)
    info = {"dataset": spec, "size": len(suite.calibration), "method": scheme.calibration.method,
            "hash": suite.calibration_hash, "overlap_with_eval": overlap, "seq_len": m.seq_len,
            "used": scheme.activations is not None and not scheme.activations.dynamic}
    if not info["used"]:
        return None, info
    return (lambda model: outputs(model, state.loaded.task, batch)), info


def finished_meta(run_dir: Path, meta: dict, statuses: dict) -> dict:
    meta = dict(meta, finished=now())
    bad = [c for c, s in statuses.items() if s == "failed"]
    meta["status"] = "failed" if bad and len(bad) == len(statuses) else ("partial" if bad else "ok")
    write_json_atomic(run_dir / "meta.json", meta)
    load_results(run_dir).save(run_dir)
    return meta
