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
from qbench.engine.calibrated import shared_input_groups
from qbench.engine.methods import rtn
from qbench.engine.modules import linear_weight
from qbench.engine.primitives import QuantSpec, fake_quantize

def decision_units(model: nn.Module, names: list[str], run: Callable[[nn.Module], None]) -> list[list[str]]:
    """The linears `names` grouped by the input tensor they read (one forward through `run`), in model order:
    engine.calibrated.shared_input_groups, the grouping SmoothQuant and AWQ smooth by."""
    return shared_input_groups(model, names, run)


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
    from qbench.models import load_model

    m = exp.measure
    if m.threads:
        torch.set_num_threads(m.threads)
    torch.manual_seed(m.seed)
    candidates = [(s.name, s) for s in exp.schemes
                  if s.runtime is None and s.weights is not None and s.mixed is None and not s.overrides]
    if not candidates:
        raise ValueError("the experiment has no plain engine scheme to use as a candidate format")
    t0 = time.perf_counter()
    loaded = load_model(model_ref, "fp32", device)
    log(f"{model_ref.display}: measuring {len(candidates)} candidate(s) on {samples} calibration samples x "
        f"{seq_len} tokens")
    report = unit_report(exp, model_ref, loaded, candidates, samples, seq_len, device, progress=progress)
    report["seconds"] = round(time.perf_counter() - t0, 2)       # model loading included
    return report


def unit_report(exp, model_ref, loaded, candidates: list, samples: int, seq_len: int, device: str = "cpu",
                progress: bool = False) -> dict:
    """The sensitivity of `loaded` (already loaded) to `candidates` [(name, Scheme)], as `sensitivity` returns."""
    from tqdm.auto import tqdm

    from qbench.datasets import load_suite
    from qbench.runner.measure import tokenize

    t0 = time.perf_counter()
    cal = next((s for s in exp.schemes if s.calibration is not None), None)
    dataset = exp.calibration_dataset(cal) if cal else "builtin:text"
    suite = load_suite(dataset, calibration_size=samples, evaluation_size=0, seed=exp.measure.seed)
    batch = tokenize(loaded.tokenizer, [s.text for s in suite.calibration], seq_len, device)
    model = loaded.model
    names = [n for n, op in classify(model).items() if op == "linear"]
    units = decision_units(model, names, lambda mm: mm(**{k: v[:1] for k, v in batch.items()}))
    bar = tqdm(total=len(units) * len(candidates), unit="unit", disable=None if progress else True,
               dynamic_ncols=True, leave=False, desc=f"sensitivity {model_ref.display}")
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


def mixed_scheme(exp, scheme, model_ref, loaded, cache: dict, device: str = "cpu"):
    """(the scheme with one override per planned module, what the plan is) for a scheme with `mixed`: the
    sensitivity of the model to the choices (measured once per worker and kept in `cache`), then the optimal or
    random assignment under the budget (qbench.engine.mixed)."""
    from qbench.engine.mixed import plan_optimal, plan_random
    from qbench.schema.experiment import Scheme

    mx = scheme.mixed
    by_name = {s.name: s for s in exp.schemes}
    chosen = [c for c in mx.choices if c != "skip"]
    key = (tuple(chosen), mx.samples, mx.seq_len)
    if key not in cache:
        cache[key] = unit_report(exp, model_ref, loaded, [(c, by_name[c]) for c in chosen], mx.samples, mx.seq_len,
                                 device, progress=True)
    report = cache[key]
    units = report["units"]
    costs, scores = [], []
    for u in units:
        cr, sr = [], []
        for c in mx.choices:
            if c == "skip":
                cr.append(32.0 * u["params"])
                sr.append(0.0)
                continue
            r = u["results"].get(c)
            cr.append(None if r is None else r["bits"] * u["params"])
            sr.append(None if r is None else r["score"] if mx.score == "kl" else
                      (0.0 if r["sqnr_db"] is None or math.isinf(r["sqnr_db"]) else 10 ** (-r["sqnr_db"] / 10)))
        costs.append(cr)
        scores.append(sr)
    total_params = sum(u["params"] for u in units)
    budget = mx.budget_bits * total_params
    pick = plan_optimal(costs, scores, budget) if mx.strategy == "optimal" else plan_random(costs, budget, mx.seed)
    overrides = []
    for u, j in zip(units, pick):
        c = mx.choices[j]
        for name in u["names"]:
            if c == "skip":
                overrides.append({"match": name, "skip": True})
            else:
                other = by_name[c]
                overrides.append({"match": name, "weights": other.weights.model_dump(mode="json"),
                                  "activations": other.activations.model_dump(mode="json") if other.activations
                                  else None, "method": other.method.model_dump(mode="json")})
    data = scheme.model_dump(mode="json", exclude={"mixed", "if_fails"})
    data["overrides"] = overrides
    if any(by_name[c].uses_calibration for c in chosen) and not data.get("calibration"):
        data["calibration"] = next(by_name[c].calibration for c in chosen if by_name[c].uses_calibration
                                   ).model_dump(mode="json")
    planned = Scheme.model_validate(data)
    info = {
        "budget_bits": mx.budget_bits, "strategy": mx.strategy, "score": mx.score, "seed": mx.seed,
        "planned_bits": round(sum(costs[i][j] for i, j in enumerate(pick)) / total_params, 4),
        "predicted": sum(scores[i][j] for i, j in enumerate(pick)),
        "units": [{"names": u["names"], "depth": u["depth"], "params": u["params"], "choice": mx.choices[j]}
                  for u, j in zip(units, pick)],
        "sensitivity": {"seconds": report["seconds"], "samples": report["calibration"]["size"],
                        "seq_len": report["calibration"]["seq_len"], "hash": report["calibration"]["hash"],
                        "dataset": report["calibration"]["dataset"]},
    }
    return planned, info
