"""The load stage of a cell: a model, its tokenized evaluation batches and its baseline references.

`load_model_state` is pure with respect to the run: it returns the state and the model's provenance
(what meta.json records under `models`) instead of writing either anywhere, so any executor (in process,
a subprocess, a remote worker) can call it and hand the provenance back to the driver.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass, field

from qbench.runner.plan import Cell, Plan


@dataclass
class ModelState:
    """What every cell of one model shares: loaded once per executor worker, read-only to cells."""

    loaded: object            # qbench.models.LoadedModel
    params: int
    baseline_bytes: int
    inputs: dict              # workload name -> tokenized evaluation batch
    reference: dict           # workload name -> baseline outputs on that batch
    suites: dict              # workload name -> Suite
    # the latest quantized model of this worker, {scheme as JSON: (model, module records, method info, cell id)}:
    # a scheme quantizes the same way for every workload, so its next cell measures this one instead of
    # quantizing (and calibrating, or training) again; replaced by the next scheme's
    last_quantized: dict = field(default_factory=dict)
    # sensitivity reports of this model measured for mixed schemes, by (choices, samples, seq_len)
    sensitivity: dict = field(default_factory=dict)


def setup_torch(measure) -> None:
    """Threads, seed and the allocator setting (measure.memory_reuse) from the experiment, in this process (the
    driver's or a cell worker's)."""
    import torch

    if measure.memory_reuse:
        from qbench.hardware.allocator import reuse_freed_memory

        reuse_freed_memory()
    if measure.threads:
        torch.set_num_threads(measure.threads)
    torch.manual_seed(measure.seed)


def load_model_state(plan: Plan, cell: Cell) -> tuple[ModelState, dict]:
    """(state shared by the model's cells, {model display name: provenance}) for the model of `cell`."""
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
    info = {"id": cell.model.id, "task": loaded.task, "source_origin": loaded.origin, "params": params,
            "baseline_bytes": nbytes, "max_positions": loaded.max_positions}
    if loaded.source_format is not None:     # per-tensor grid records stay in the loader's cache, not in meta
        info["source_format"] = {k: v for k, v in loaded.source_format.items() if k != "tensors"}
    inputs, reference, suites = {}, {}, {}
    for wl in exp.workloads:
        suite = load_suite(wl.dataset, calibration_size=0, evaluation_size=m.eval_samples, seed=m.seed)
        suites[wl.name] = suite
        inputs[wl.name] = tokenize(loaded.tokenizer, [s.text for s in suite.evaluation], m.seq_len, plan.device)
        _check_vocab(inputs[wl.name], model, cell.model.display)
        if loaded.task == "causal_lm":
            reference[wl.name], cache = _lm_reference(plan, cell, loaded, suite, inputs[wl.name])
            info.setdefault("lm_reference", {})[suite.name] = cache
        else:
            reference[wl.name] = outputs(model, loaded.task, inputs[wl.name])
    return ModelState(loaded, params, nbytes, inputs, reference, suites), {cell.model.display: info}


def _lm_reference(plan: Plan, cell: Cell, loaded, suite, batch: dict) -> tuple[dict, dict]:
    """The baseline's top-k next-token reference and greedy continuations, from the cache or computed once;
    and how it was found ({key, cache: hit | miss, k, vocab}).

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
    cache = {"key": key, "cache": status, "k": ref["topk"]["k"], "vocab": ref["topk"]["vocab"]}
    return dict(ref, prompts=prompts), cache


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
