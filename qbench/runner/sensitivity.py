"""Per-unit sensitivity: what quantizing one part of a model, alone, does to it, on calibration data only.

A decision unit is a linear layer, or the group of linears that read the same input tensor (q/k/v, gate/up):
what a mixed-precision plan assigns one format to. For every unit and every candidate (an engine scheme of the
experiment: its weights, and its activations when it has them), with everything else left in float:
- the unit's output SQNR, 10 log10(sum |y|^2 / sum |y - y_q|^2) over the unit's linears and the calibration
  tokens, y from the float weight and y_q from the round-to-nearest quantized weight (and quantize-dequantized
  input, dynamic ranges) on the same input;
- the end-to-end damage: the mean per-token KL(baseline || quantized) of the next-token distributions over the
  real calibration tokens (causal LMs), or the mean 1 - cosine of the pooled embeddings (encoders);
- the unit's bits per weight under the candidate (codes at their bit width, plus scales and zero points).
Quantization is emulated (dequantized weights in a float matmul): it ranks units, it does not time them.
Calibration samples only: the evaluation samples of the experiment are never used.
"""
from __future__ import annotations

import math
import time
from typing import Callable, Optional

import torch
from torch import nn
from torch.nn import functional as F

from qbench.engine.api import activation_spec, classify, weight_spec
from qbench.engine.methods import rtn
from qbench.engine.modules import linear_weight
from qbench.engine.primitives import QuantSpec, fake_quantize

_TAG = "_qbench_sensitivity_tag"


def decision_units(model: nn.Module, names: list[str], run: Callable[[nn.Module], None]) -> list[list[str]]:
    """The linears `names` grouped by the input tensor they read (one forward through `run`), in model order."""
    tags: dict[str, int] = {}
    counter = [0]

    def hook(name):
        def fn(_m, args):
            if name in tags:
                return
            x = args[0]
            if not hasattr(x, _TAG):
                counter[0] += 1
                setattr(x, _TAG, counter[0])
            tags[name] = getattr(x, _TAG)
        return fn
    hooks = [model.get_submodule(n).register_forward_pre_hook(hook(n)) for n in names]
    try:
        with torch.no_grad():
            run(model)
    finally:
        for h in hooks:
            h.remove()
    groups: dict[int, list[str]] = {}
    for n in names:
        groups.setdefault(tags.get(n, -len(groups) - 1), []).append(n)
    return list(groups.values())


def unit_bits(shapes: list[tuple[int, int]], spec: QuantSpec) -> float:
    """Bits per weight of linears of these (out, in) shapes under `spec`: codes at spec.bits, 32-bit scales and
    (asymmetric integer grids) 32-bit zero points, one per tensor / row / group."""
    total = weights = 0
    for n, k in shapes:
        blocks = 1 if spec.granularity == "per_tensor" else n if spec.granularity == "per_channel" else \
            n * (k // spec.group_size)
        per_block = 32 + (32 if not spec.symmetric and not spec.is_table else 0)
        total += n * k * spec.bits + blocks * per_block
        weights += n * k
    return total / weights


def measure(model: nn.Module, task: str, batch: dict, units: list[list[str]], candidates: list[tuple[str, object]],
            progress: Optional[Callable[[], None]] = None) -> list[dict]:
    """One entry per unit: {names, depth, params, results: {candidate: {sqnr_db, score, bits}}}."""
    with torch.no_grad():
        base = _out(model, task, batch)
    out = []
    for i, unit in enumerate(units):
        mods = [model.get_submodule(n) for n in unit]
        shapes = [tuple(linear_weight(m)[0].shape) for m in mods]
        entry = {"index": i, "names": unit, "depth": _depth(unit[0]), "params": sum(a * b for a, b in shapes),
                 "results": {}}
        for label, scheme in candidates:
            w, a = weight_spec(scheme), activation_spec(scheme)
            if w.group_size and any(k % w.group_size for _, k in shapes):
                entry["results"][label] = None        # the candidate cannot hold this unit
            else:
                sqnr, score = _one(model, task, batch, base, mods, w, a)
                entry["results"][label] = {"sqnr_db": sqnr, "score": score, "bits": unit_bits(shapes, w)}
            if progress:
                progress()
        out.append(entry)
    return out


def _one(model, task, batch, base, mods, w: QuantSpec, a: Optional[QuantSpec]) -> tuple[float, float]:
    """(output SQNR of the unit, end-to-end score) with only `mods` quantized."""
    saved = [linear_weight(m)[0].detach().clone() for m in mods]
    acc = [0.0, 0.0]
    hooks = []

    def pre(_m, args):
        x = args[0]
        _m._qbench_x = x
        return (fake_quantize(x, a),) if a is not None else None

    def post(m, _args, y):
        ref = F.linear(m._qbench_x, m._qbench_w, linear_weight(m)[1])
        acc[0] += float(ref.double().pow(2).sum())
        acc[1] += float((ref - y).double().pow(2).sum())
        del m._qbench_x

    try:
        with torch.no_grad():
            for m, wf in zip(mods, saved):
                m._qbench_w = wf
                linear_weight(m)[0].copy_(rtn(wf, w).dequantize(wf.dtype))
                hooks += [m.register_forward_pre_hook(pre), m.register_forward_hook(post)]
            out = _out(model, task, batch)
    finally:
        for h in hooks:
            h.remove()
        with torch.no_grad():
            for m, wf in zip(mods, saved):
                linear_weight(m)[0].copy_(wf)
                del m._qbench_w
    sqnr = math.inf if acc[1] == 0 else 10 * math.log10(acc[0] / acc[1]) if acc[0] > 0 else -math.inf
    return sqnr, _score(task, base, out, batch)


def _out(model, task: str, batch: dict) -> torch.Tensor:
    from qbench.runner.measure import outputs

    return outputs(model, task, batch)


def _score(task: str, base: torch.Tensor, out: torch.Tensor, batch: dict) -> float:
    if task == "causal_lm":
        mask = batch["attention_mask"].bool().cpu()
        lp, lq = F.log_softmax(base.double(), -1), F.log_softmax(out.double(), -1)
        kl = (lp.exp() * (lp - lq)).sum(-1)
        return float(kl[mask].mean())
    from qbench.metrics.quality import cosine_per_sample

    return float((1 - cosine_per_sample(base, out)).mean())


def _depth(name: str) -> int:
    """The block index in a module path (the first all-digit part), -1 when there is none."""
    return next((int(p) for p in name.split(".") if p.isdigit()), -1)


def sensitivity(exp, model_ref, *, samples: int = 8, seq_len: int = 64, device: str = "cpu",
                log: Callable[[str], None] = print, progress: bool = True) -> dict:
    """The sensitivity report of one model of experiment `exp` (a plain JSON-able dict)."""
    from tqdm.auto import tqdm

    from qbench.datasets import load_suite
    from qbench.models import load_model
    from qbench.runner.measure import tokenize

    t0 = time.perf_counter()
    m = exp.measure
    if m.threads:
        torch.set_num_threads(m.threads)
    torch.manual_seed(m.seed)
    candidates = [(s.name, s) for s in exp.schemes if s.runtime is None and s.weights is not None]
    if not candidates:
        raise ValueError("the experiment has no engine scheme to use as a candidate format")
    cal = next((s for s in exp.schemes if s.calibration is not None), None)
    dataset = exp.calibration_dataset(cal) if cal else "builtin:text"
    loaded = load_model(model_ref, "fp32", device)
    suite = load_suite(dataset, calibration_size=samples, evaluation_size=0, seed=m.seed)
    batch = tokenize(loaded.tokenizer, [s.text for s in suite.calibration], seq_len, device)
    model = loaded.model
    names = [n for n, op in classify(model).items() if op == "linear"]
    units = decision_units(model, names, lambda mm: mm(**{k: v[:1] for k, v in batch.items()}))
    log(f"{model_ref.display}: {len(units)} units ({len(names)} linears) x {len(candidates)} candidates on "
        f"{samples} calibration samples x {seq_len} tokens")
    bar = tqdm(total=len(units) * len(candidates), unit="unit", disable=not progress, dynamic_ncols=True,
               desc=f"sensitivity {model_ref.display}")
    try:
        entries = measure(model, loaded.task, batch, units, candidates, progress=lambda: bar.update(1))
    finally:
        bar.close()
    return {
        "model": model_ref.display, "task": loaded.task, "origin": loaded.origin,
        "score": "kl_mean" if loaded.task == "causal_lm" else "one_minus_cosine",
        "candidates": [{"name": n, "weights": weight_spec(s).describe(),
                        "activations": activation_spec(s).describe() + " dynamic" if s.activations else "float"}
                       for n, s in candidates],
        "calibration": {"dataset": dataset, "size": len(suite.calibration), "seq_len": seq_len,
                        "hash": suite.calibration_hash, "tokens": int(batch["attention_mask"].sum())},
        "units": entries, "threads": torch.get_num_threads(), "seconds": round(time.perf_counter() - t0, 2),
    }
