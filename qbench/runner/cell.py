"""One cell (model x scheme x workload) as its stages: quantize, quality, size, speed, record.

`run_cell` never mutates its config and never writes to disk: it returns the cell record, and the
executor that ran it hands the record to the driver, which writes it.
"""
from __future__ import annotations

import contextlib
import copy
import traceback
from typing import Callable, Optional

from qbench.runner.cellstate import ModelState
from qbench.runner.plan import Cell, Plan


def cell_header(cell: Cell, status: str, reason: str = "") -> dict:
    """The record of a cell before (or instead of) its measurements: ok, skipped or failed."""
    return blank_record({"cell": cell.id, "model": cell.model.display, "scheme": cell.scheme.name,
                         "workload": cell.workload.name}, status, reason)


def blank_record(names: dict, status: str, reason: str = "") -> dict:
    """A record with no measurements, for the cell that `names` (cell, model, scheme, workload) identifies."""
    return dict(names, task=None, status=status, reason=reason, rows=[], quant_map=[], unmatched_excludes=[],
                kernels=[], kernel_info={}, calibration=None, evaluation=None)


def failed_record(cell: Cell, e: BaseException) -> dict:
    """A failed cell with the exception as its reason and a short traceback."""
    record = cell_header(cell, "failed", f"{type(e).__name__}: {e}")
    record["traceback"] = traceback.format_exc(limit=8)
    return record


def run_cell(plan: Plan, cell: Cell, state: ModelState) -> dict:
    """Quantize a copy of the baseline, measure quality and paired speed, and return the cell record.

    On a CUDA device the cell also records GPU telemetry, peak GPU memory and energy (runner.gpu).
    """
    gpu = None
    if plan.device.startswith("cuda"):
        from qbench.runner.gpu import GpuCell

        gpu = GpuCell(plan.device)
        gpu.begin()  # peak-memory counters reset, NVML snapshot before the cell
    quant = None
    try:
        quant, records, cal_info, method_info = quantize_stage(plan, cell, state)
        mixed = (method_info or {}).get("mixed")       # its own record field (the kept method info stays whole:
        if mixed is not None:                           # the scheme's next workload shares it)
            method_info = {k: v for k, v in method_info.items() if k != "mixed"}
        rows, sequences = quality_stage(plan, cell, state, quant)
        rows += size_stage(state, quant, records)
        rows += speed_stage(plan, cell, state, quant, gpu)
        profile = profile_stage(plan, cell, state, quant) if plan.experiment.measure.profile else None
        gpu_record = None
        if gpu is not None:
            gpu_rows, gpu_record = gpu.end(state.loaded.model, quant)
            rows += gpu_rows
        record = record_stage(plan, cell, state, rows, records, cal_info, gpu_record, method_info,
                              peer_state(quant))
        record["sequences"] = sequences
        if mixed is not None:
            record["mixed"] = mixed
        if profile is not None:
            record["profile"] = profile
        return record
    finally:
        if gpu is not None:
            gpu.close()
        if peer_state(quant) is not None:
            quant.close()      # a peer runtime's model lives outside torch: free it with the cell


def peer_state(quant):
    """The PeerState of a model a peer runtime built (qbench.runtimes), None for qbench's own."""
    return getattr(quant, "peer", None)


def quantize_stage(plan: Plan, cell: Cell, state: ModelState):
    """(quantized copy of the baseline, realized per-module map, calibration provenance, what the method did).
    A scheme with a `runtime` gets the peer runtime's own model instead, built from the baseline's weights."""
    from qbench.engine.api import quantize_

    if cell.scheme.runtime is not None:
        import torch

        from qbench.runtimes import RUNTIMES

        m = plan.experiment.measure
        peer = RUNTIMES.get(cell.scheme.runtime.name).build(
            state.loaded, cell.scheme.runtime, threads=torch.get_num_threads(),
            reserve=max(m.decode_tokens, m.generate_tokens))
        return peer, peer.peer.records, None, None
    key = cell.scheme.model_dump_json()
    if key in state.last_quantized:             # the scheme's other workload: the same quantized model
        quant, records, method_info, first, scheme = state.last_quantized[key]
        _, cal_info, _ = calibration(plan, cell, state, scheme)
        return quant, records, cal_info, dict(method_info, shared_from=first)
    state.last_quantized.clear()                # at most one quantized model kept beside the baseline
    scheme, mixed = cell.scheme, None
    if scheme.mixed is not None:                # one override per module, from the model's sensitivity
        from qbench.runner.sensitivity import mixed_scheme

        scheme, mixed = mixed_scheme(plan.experiment, scheme, cell.model, state.loaded, state.sensitivity,
                                     plan.device)
    calibrate, cal_info, cal_batch = calibration(plan, cell, state, scheme)
    quant = copy.deepcopy(state.loaded.model)
    method_info: dict = {}
    training = training_data(plan, cell, state, cal_batch, cal_info) if scheme.method.name == "qat" else None
    records = quantize_(quant, scheme, device=plan.device, calibrate=calibrate, method_info=method_info,
                        training=training)
    if mixed is not None:
        method_info["mixed"] = dict(mixed, held_bits=_held_bits(records, mixed))
    state.last_quantized[key] = (quant, records, method_info, cell.id, scheme)
    return quant, records, cal_info, method_info


def _held_bits(records, mixed: dict) -> float:
    """Bits per weight the planned units' modules hold after quantization (a module left in float at its own
    width), over their weights."""
    names = {n for u in mixed["units"] for n in u["names"]}
    mine = [r for r in records if r.name in names]
    weights = sum(r.shape[0] * r.shape[1] for r in mine)
    return round(8 * sum(r.bytes_after for r in mine) / weights, 4) if weights else 0.0


def training_data(plan: Plan, cell: Cell, state: ModelState, batch: dict, cal_info: dict):
    """The TrainingData of a training method: the calibration pool, the baseline as teacher, the seed, a
    progress bar with the loss, and a checkpoint folder in the cache keyed by everything the result depends on
    (baseline weights, scheme, calibration samples, seed, threads, versions), so an interrupted cell resumes
    and the scheme's other workloads reuse the trained state."""
    import hashlib
    import json

    import torch
    from tqdm.auto import tqdm

    import qbench
    from qbench.cache import cache_dir
    from qbench.engine.methods import TrainingData

    model, m = state.loaded.model, plan.experiment.measure
    h = hashlib.sha256()
    for name, p in model.state_dict().items():
        h.update(name.encode())
        h.update(p.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    h.update(json.dumps({"scheme": cell.scheme.model_dump(mode="json", exclude={"name"}),
                         "calibration": cal_info["hash"], "seq_len": cal_info["seq_len"], "seed": m.seed,
                         "threads": torch.get_num_threads(), "torch": torch.__version__,
                         "qbench": qbench.__version__}, sort_keys=True).encode())
    bar = tqdm(total=int(cell.scheme.method.params["steps"]), desc=f"qat {cell.scheme.name}", unit="step",
               leave=False, disable=None, dynamic_ncols=True)

    def progress(step: int, steps: int, loss: float) -> None:
        bar.n = step
        bar.set_postfix(loss=f"{loss:.4g}", refresh=False)
        bar.refresh()
        if step == steps:
            bar.close()
    return TrainingData(batch, state.loaded.task, model, seed=m.seed,
                        checkpoint_dir=cache_dir() / "qat" / h.hexdigest()[:32], progress=progress)


def quality_stage(plan: Plan, cell: Cell, state: ModelState, quant) -> tuple[list[dict], dict]:
    """(rows, per-sequence values). Encoders: embedding agreement; causal LMs: token statistics against the
    cached top-k reference and, when generation is measured, greedy continuations against the baseline's."""
    from qbench.runner.measure import (encoder_quality, encoder_sequences, generation_rows, lm_rows,
                                       lm_sequences, lm_stats, outputs)

    task, m = state.loaded.task, plan.experiment.measure
    batch, ref = state.inputs[cell.workload.name], state.reference[cell.workload.name]
    if task == "encoder":
        out = outputs(quant, task, batch)
        return encoder_quality(ref, out), encoder_sequences(ref, out)
    topk = ref["topk"]
    stats = lm_stats(quant, batch, topk)
    rows = lm_rows(stats, topk["k"], topk["vocab"])
    if ref.get("gen") is not None:
        import torch

        from qbench.metrics.lm import greedy

        q_gen = torch.cat([greedy(quant, p, m.generate_tokens).cpu() for p in ref["prompts"].split(16)])
        rows += generation_rows(ref["gen"], q_gen, ref["prompts"].cpu(), state.loaded.tokenizer,
                                python=is_python(cell.workload.dataset))
    return rows, lm_sequences(stats)


def size_stage(state: ModelState, quant, records) -> list[dict]:
    """Weight bytes as held, baseline and quantized."""
    from qbench.runner.measure import row

    peer = peer_state(quant)
    if peer is not None:
        q_bytes = peer.held_bytes
        method = f"bytes of every tensor {peer.kernel} holds (quantized blocks with their scales, norms)"
    else:
        q_bytes = sum(t.numel() * t.element_size() for t in [*quant.parameters(), *quant.buffers()])
        q_bytes += sum(r.bytes_after for r in records if r.applied)
        method = "bytes of parameters, buffers and quantized weight state (codes, scales, zero points, sums)"
    rows = [row("weight_bytes", state.baseline_bytes, "bytes", method, "baseline"),
            row("weight_bytes", q_bytes, "bytes", method, "quantized")]
    per = (f"8 x bytes of the parameters (quantized ones as codes, scales and zero points) / {state.params:,} "
           "parameters; buffers not counted")
    base_bits = 8 * sum(p.numel() * p.element_size() for p in state.loaded.model.parameters()) / state.params
    if peer is None:
        q_bits = 8 * (sum(p.numel() * p.element_size() for p in quant.parameters())
                      + sum(r.bytes_after for r in records if r.applied)) / state.params
    else:
        q_bits = 8 * peer.held_bytes / state.params
        per += f"; {peer.kernel}: every tensor it holds"
    return rows + [row("bits_per_weight", base_bits, "bits", per, "baseline"),
                   row("bits_per_weight", q_bits, "bits", per, "quantized")]


def speed_stage(plan: Plan, cell: Cell, state: ModelState, quant, gpu) -> list[dict]:
    """Paired, interleaved timing per batch size, with the process's peak RSS and the CPU contention seen."""
    from qbench.metrics.timing import ForeignCpu, RssSampler
    from qbench.runner.measure import lm_speed_rows, row, speed_rows

    m, task, base = plan.experiment.measure, state.loaded.task, state.loaded.model
    batch = state.inputs[cell.workload.name]
    rows: list[dict] = []
    with RssSampler() as rss, ForeignCpu() as foreign, (gpu.timing() if gpu else contextlib.nullcontext()):
        for bs in m.batch_sizes:
            if bs > batch["input_ids"].shape[0]:
                raise ValueError(f"batch size {bs} exceeds the {batch['input_ids'].shape[0]} evaluation samples")
            if task == "causal_lm":
                rows += lm_speed_rows(base, quant, batch, bs, m.seq_len, m.decode_tokens, m.warmup, m.repeats,
                                      plan.device, m.speedup_ci_width, m.lm_forward)
            else:
                rows += speed_rows(base, quant, task, batch, bs, m.seq_len, m.warmup, m.repeats, plan.device,
                                   m.speedup_ci_width)
            if gpu is not None:
                from qbench.runner.gpu import cell_energy_rows

                rows += cell_energy_rows(gpu, base, quant, task, batch, bs, m.seq_len, m.decode_tokens)
    rows.append(row("peak_rss_bytes", rss.peak, "bytes", "peak resident set size of the process while "
                    "timing (baseline and quantized models both resident), sampled every 2 ms", "paired"))
    rows.append(row("foreign_cpu_cores", foreign.cores, "cores", "average CPU cores busy with other processes "
                    "while timing (system busy time minus this process's, over wall time); above 0.25 the "
                    "timings are contended", "paired"))
    return rows


def profile_stage(plan: Plan, cell: Cell, state: ModelState, quant) -> Optional[dict]:
    """Where the time goes at the first batch size (runner.profile): the baseline and the quantized model timed
    round-robin and profiled per module kind, prefill and (causal LMs) one decode step. None for a peer
    runtime's model (not a torch module tree)."""
    if peer_state(quant) is not None:
        return None
    from qbench.runner.measure import slice_batch
    from qbench.runner.profile import forwards, measure, profiled_by, summarize

    m = plan.experiment.measure
    bs = m.batch_sizes[0]
    batch = slice_batch(state.inputs[cell.workload.name], 0, bs)
    runs, how = forwards({"baseline": state.loaded.model, "quantized": quant}, state.loaded.task, batch,
                         m.lm_forward)
    raw = measure(runs, state.loaded.task, batch, m.repeats, m.warmup, plan.device)
    return {"batch_size": bs, "seq_len": int(batch["input_ids"].shape[1]), "repeats": m.repeats,
            "forward": how, "profiled_by": profiled_by(runs), "phases": summarize(raw)}


def record_stage(plan: Plan, cell: Cell, state: ModelState, rows: list[dict], records, cal_info,
                 gpu_record: Optional[dict], method_info: Optional[dict] = None, peer=None) -> dict:
    """Stamp every row with its cell and kernel, and assemble the cell record."""
    from qbench.engine.api import unmatched_excludes
    from qbench.engine.kernels import KERNELS
    from qbench.engine.ops import KERNELS as OP_KERNELS

    task, m = state.loaded.task, plan.experiment.measure
    kernels = sorted({r.kernel for r in records if r.applied})
    for r in rows:
        r.update(cell=cell.id, model=cell.model.display, task=task, scheme=cell.scheme.name,
                 workload=cell.workload.name, kernel=",".join(kernels), status="ok", reason="")
    record = cell_header(cell, "ok")
    suite = state.suites[cell.workload.name]
    record.update(method=method_info)
    record.update(
        task=task, rows=rows, quant_map=[r.to_dict() for r in records], kernels=kernels,
        unmatched_excludes=unmatched_excludes(state.loaded.model, cell.scheme.exclude),
        kernel_info={**{k: {"backend": KERNELS.get(k).backend, "emulated": KERNELS.get(k).emulated}
                        for k in kernels if k in KERNELS},
                     **{k: {"backend": OP_KERNELS[k][0], "emulated": OP_KERNELS[k][1]} for k in kernels
                        if k in OP_KERNELS}},
        calibration=cal_info,
        evaluation={"dataset": cell.workload.dataset, "n": len(suite.evaluation),
                    "hash": suite.evaluation_hash, "seq_len": m.seq_len})
    if peer is not None:
        record["kernel_info"] = {peer.kernel: {"backend": peer.backend, "emulated": False}}
        record["runtime"] = peer.info
    grid = peer.source_grid if peer is not None else source_grid(state, cell, records)
    if grid:
        record["source_grid"] = grid
    if gpu_record is not None:
        record["gpu"] = gpu_record
    return record


def source_grid(state: ModelState, cell: Cell, records) -> Optional[str]:
    """Why the scheme's weight grid contains the grid the model's source file stored (a GGUF model's weights
    were quantized before qbench saw them), on the modules this cell quantized; None when it does not."""
    fmt = state.loaded.source_format
    names = [f"{r.name}.weight" for r in records if r.applied]     # parameter names, as the grid records name them
    if not fmt or not names:
        return None
    from qbench.models.source_grid import reproduces_source_grid

    w = cell.scheme.weights
    if w.format != "int":
        return None         # a value table (nf4, fp8, fp4) is no integer grid
    return reproduces_source_grid(fmt, w.bits, w.symmetric, w.granularity, w.group_size, tensors=names)


def is_python(dataset: str) -> bool:
    """Workloads whose text is Python source: generation is also checked for syntax."""
    return dataset == "builtin:code" or dataset.endswith(".py.txt") or dataset.endswith(".py.jsonl")


def calibration(plan: Plan, cell: Cell, state: ModelState, scheme=None
                ) -> tuple[Optional[Callable], Optional[dict], Optional[dict]]:
    """(a function running calibration samples through a model, their provenance, the tokenized samples) for
    `scheme` (default: the cell's)."""
    scheme = scheme or cell.scheme
    if scheme.calibration is None:
        return None, None, None
    from qbench.datasets import load_suite
    from qbench.runner.measure import outputs, tokenize

    exp, m = plan.experiment, plan.experiment.measure
    seq_len = scheme.calibration.seq_len or m.seq_len
    spec = exp.calibration_dataset(scheme)
    suite = load_suite(spec, calibration_size=scheme.calibration.size, evaluation_size=0, seed=m.seed)
    evaluation = state.suites[cell.workload.name].evaluation
    eval_keys = {s.sha256 for s in evaluation} | {s.source for s in evaluation}
    overlap = sum(1 for s in suite.calibration if s.sha256 in eval_keys or s.source in eval_keys)
    batch = tokenize(state.loaded.tokenizer, [s.text for s in suite.calibration], seq_len, plan.device)
    info = {"dataset": spec, "size": len(suite.calibration), "method": scheme.calibration.method,
            "hash": suite.calibration_hash, "overlap_with_eval": overlap, "seq_len": seq_len,
            "used": scheme.uses_calibration}
    if not info["used"]:
        return None, info, batch
    return (lambda model: outputs(model, state.loaded.task, batch)), info, batch
