"""`qbench bench model`: where one forward's time goes, per model x scheme, and what that allows.

For each engine scheme of an experiment (and the baseline), on one model: a prefill forward (batch x seq_len
tokens) and, for causal LMs, one decode step against a KV cache of seq_len tokens. Two measurements per phase:

- plain: the forward alone, timed round-robin with the other variants (every round times every variant, so each
  speed-up is a ratio taken side by side, round by round: the machine's load moves both sides);
- profiled: the same forward with forward hooks on every module, each module's exclusive time (its own time minus
  its children's) added to its category: linear (nn.Linear, Conv1D and qbench's QuantLinear, the LM head
  included), attention (the attention modules' own work: rotary embeddings, Q K^T, softmax, P V, reshapes; not
  their projections, which are linears), norm, activation, embedding, and other (what no module of those
  kinds covers: residual adds, the MLP's gating multiply, masks, Python glue). The hooks cost time themselves:
  the report gives the profiled total beside the plain one.

The Amdahl ceiling follows from the profile: with linears free, the forward takes at least the rest, so the
model is at most total / (total - linear) times faster than now, whatever the linear kernels do.
"""
from __future__ import annotations

import copy
import statistics
import time
from typing import Callable, Optional

import torch
from torch import nn

from qbench.engine.modules import QuantEmbedding, QuantLinear, is_linear
from qbench.engine.ops import attention_modules

CATEGORIES = ("linear", "attention", "norm", "activation", "embedding", "other")


def categorize(model: nn.Module) -> dict[nn.Module, str]:
    """Module -> category for the modules whose exclusive time is attributed (others fall to 'other')."""
    attn = {model.get_submodule(n) for n in attention_modules(model)}
    out = {}
    for _name, mod in model.named_modules():
        if isinstance(mod, QuantLinear) or is_linear(mod):
            out[mod] = "linear"
        elif mod in attn:
            out[mod] = "attention"
        elif isinstance(mod, (nn.Embedding, QuantEmbedding)):
            out[mod] = "embedding"
        elif "norm" in type(mod).__name__.lower():
            out[mod] = "norm"
        elif type(mod).__module__ in ("torch.nn.modules.activation", "transformers.activations"):
            out[mod] = "activation"
    return out


class _Profiler:
    """Forward hooks adding each module's exclusive time to its category, while installed."""

    def __init__(self, model: nn.Module, sync: Callable[[], None]):
        self.model, self.sync, self.cats = model, sync, categorize(model)
        self.stack: list[list[float]] = []
        self.seconds = dict.fromkeys(CATEGORIES, 0.0)
        self.handles = []

    def __enter__(self):
        for mod in self.model.modules():
            self.handles.append(mod.register_forward_pre_hook(self._pre))
            self.handles.append(mod.register_forward_hook(self._post))
        return self

    def __exit__(self, *exc):
        for h in self.handles:
            h.remove()

    def _pre(self, _mod, _args):
        self.sync()
        self.stack.append([time.perf_counter(), 0.0])

    def _post(self, mod, _args, _out):
        self.sync()
        start, children = self.stack.pop()
        inclusive = time.perf_counter() - start
        if self.stack:
            self.stack[-1][1] += inclusive
        cat = self.cats.get(mod)
        if cat is not None:
            self.seconds[cat] += inclusive - children


def _sync_for(device: str) -> Callable[[], None]:
    return torch.cuda.synchronize if torch.device(device).type == "cuda" else (lambda: None)


def _timed(fn: Callable[[], None], sync: Callable[[], None]) -> float:
    sync()
    t0 = time.perf_counter()
    fn()
    sync()
    return time.perf_counter() - t0


def minor_faults() -> int:
    """The process's minor page faults so far (pages the kernel mapped in on first touch); 0 where unknown."""
    try:
        import resource
    except ImportError:                       # not on POSIX
        return 0
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def _is_graph(model) -> bool:
    from qbench.engine.graph import DecoderGraph

    return isinstance(model, DecoderGraph)


def phases(model, task: str, batch: dict) -> dict[str, Callable[[], None]]:
    """Phase name -> a no-argument function running it once: prefill; decode (causal LMs: one token against a
    KV cache of the batch's length, the cache copied before each step, outside the timing). `model` may be a
    DecoderGraph (measure.lm_forward: qbench): then its own prefill, and a step at the batch's length (each one
    writes the same cache position again)."""
    if _is_graph(model):
        ids, at = batch["input_ids"], batch["input_ids"].shape[1]
        nxt = model.prefill(ids).argmax(-1)

        def step():
            model.pos = at
            model.step(nxt)
        return {"prefill": lambda: model.prefill(ids), "decode": step}

    @torch.no_grad()
    def prefill():
        model(**batch)
    out = {"prefill": prefill}
    if task == "causal_lm":
        from qbench.metrics.lm import _kv_cache, cache_keyword

        with torch.no_grad():
            first = model(**batch, use_cache=True)
        cache, nxt = _kv_cache(first), first.logits[:, -1:].argmax(-1)
        mask = torch.cat([batch["attention_mask"], torch.ones_like(nxt)], 1)
        key = cache_keyword(model)
        fresh = [copy.deepcopy(cache)]

        @torch.no_grad()
        def decode():
            model(input_ids=nxt, attention_mask=mask, use_cache=True, **{key: fresh.pop()})
            fresh.append(copy.deepcopy(cache))
        out["decode"] = decode
    return out


def forwards(variants: dict[str, nn.Module], task: str, batch: dict, lm_forward: str) -> tuple[dict, str]:
    """The variants as `measure` runs them, and how: causal LMs as measure.lm_forward says (runner.measure.
    lm_forwards: qbench's decoder forward for all of them where it runs them all), anything else through the
    model's own forward."""
    from qbench.runner.measure import lm_forwards

    if task != "causal_lm":
        return dict(variants), "every variant: the model's own forward"
    b, t = batch["input_ids"].shape
    return lm_forwards(variants, lm_forward, b, t + 1)


def profiled_by(runs: dict) -> str:
    """How `measure` splits a profiled round into kinds: "calls" (DecoderGraph variants: each call of the forward
    timed) or "hooks" (a hook on every module)."""
    return "calls" if any(_is_graph(r) for r in runs.values()) else "hooks"


def measure(variants: dict, task: str, batch: dict, repeats: int, warmup: int, device: str,
            progress: Optional[Callable[[], None]] = None) -> dict:
    """{phase: {variant: {plain: [s...], faults: [minor page faults...], profiled: {category: s},
    profiled_total: s}}}: the plain rounds' times and page faults, and the profile of the profiled round with the
    median total (one round, so its kinds add up to its total). A variant is a model (profiled with a hook on
    every module) or a DecoderGraph (`forwards`; its calls timed by kind)."""
    sync = _sync_for(device)
    runs = {v: phases(m, task, batch) for v, m in variants.items()}
    out: dict = {}
    for phase in runs[next(iter(runs))]:
        plain = {v: [] for v in variants}
        faults = {v: [] for v in variants}
        for _ in range(warmup):
            for v in variants:
                runs[v][phase]()
        for _ in range(repeats):              # round-robin: every round times every variant
            for v in variants:
                f0 = minor_faults()
                plain[v].append(_timed(runs[v][phase], sync))
                faults[v].append(minor_faults() - f0)
            if progress:
                progress()
        out[phase] = {}
        for v, model in variants.items():
            per = {c: [] for c in CATEGORIES}
            totals = []
            for _ in range(repeats):
                if _is_graph(model):                 # its calls timed by kind (DecoderGraph.profiled)
                    model.profiling(True)
                    seconds = model.profiled(runs[v][phase])
                    model.profiling(False)
                    total = seconds["total"]
                else:
                    with _Profiler(model, sync) as p:
                        total = _timed(runs[v][phase], sync)
                    seconds = p.seconds
                totals.append(total)
                for c in CATEGORIES:
                    per[c].append(seconds[c] if c != "other" else total - sum(
                        seconds[k] for k in CATEGORIES if k != "other"))
            mid = sorted(range(repeats), key=totals.__getitem__)[(repeats - 1) // 2]   # the median round, whole
            out[phase][v] = {"plain": plain[v], "faults": faults[v], "profiled": {c: x[mid] for c, x in per.items()},
                             "profiled_total": totals[mid]}
            if progress:
                progress()
    return out


def ratio_spread(ref: list[float], times: list[float]) -> tuple[float, float, float]:
    """(median, 10th, 90th percentile) of the per-round ratios ref[i] / times[i] (the percentiles as order
    statistics of the sorted ratios)."""
    ratios = sorted(b / q for b, q in zip(ref, times))
    return (statistics.median(ratios), ratios[int(0.1 * (len(ratios) - 1))],
            ratios[int(round(0.9 * (len(ratios) - 1)))])


def summarize(raw: dict, baseline: str = "baseline") -> dict:
    """Per phase and variant: median plain ms, speed-up against the baseline (median of the per-round ratios, with
    the rounds' 10th-90th percentile), the profiled ms per category and its share, the linears-free ceiling."""
    out = {}
    for phase, per in raw.items():
        base = per[baseline]["plain"]
        rows = []
        for v, d in per.items():
            speedup, p10, p90 = ratio_spread(base, d["plain"])
            prof, total = d["profiled"], d["profiled_total"]
            lin = prof["linear"]
            rows.append({
                "variant": v, "ms": 1e3 * statistics.median(d["plain"]), "rounds": len(d["plain"]),
                "speedup": speedup, "speedup_p10": p10, "speedup_p90": p90,
                "profiled_ms": 1e3 * total,
                # minor page faults per plain forward (median): memory the forward got as fresh pages
                "page_faults": statistics.median(d["faults"]) if d.get("faults") else None,
                "ms_by_category": {c: 1e3 * prof[c] for c in CATEGORIES},
                "share": {c: prof[c] / total if total else 0.0 for c in CATEGORIES},
                "linears_free_ceiling": total / (total - lin) if total > lin else float("inf"),
                # the same bound against the baseline: its plain time over this variant's non-linear time
                "linears_free_vs_baseline": (statistics.median(base) / (statistics.median(d["plain"])
                                                                        * (1 - lin / total))
                                             if total > lin else float("inf")),
            })
        out[phase] = rows
    return out


def skip_reason(scheme) -> str:
    """Why `bench model` does not time a scheme ("" when it does)."""
    if scheme.runtime is not None:
        return f"runs in {scheme.runtime.name}, outside torch (its timing is in the run's card)"
    if scheme.mixed is not None:
        return "a mixed scheme is planned from a sensitivity measurement (time its planned twin in a run)"
    if scheme.method.name == "qat":
        return "qat trains first (time it in a run)"
    return ""


def bench_model(exp, model_ref, *, schemes: Optional[list[str]] = None, batch_size: int = 1,
                seq_len: Optional[int] = None, repeats: int = 10, warmup: int = 2, device: str = "cpu",
                dtype: str = "fp32", log: Callable[[str], None] = print, progress: bool = True) -> dict:
    """The profile of one model of `exp` under its engine schemes (or those named), as a JSON-able dict."""
    from tqdm.auto import tqdm

    from qbench.datasets import load_suite
    from qbench.engine.api import quantize_
    from qbench.hardware import detect
    from qbench.models import load_model
    from qbench.runner.cellstate import setup_torch
    from qbench.runner.measure import outputs, tokenize

    m = exp.measure
    setup_torch(m)
    seq_len = seq_len or m.seq_len
    loaded = load_model(model_ref, dtype, device)
    workload = exp.workloads[0]
    suite = load_suite(workload.dataset, calibration_size=0, evaluation_size=batch_size, seed=m.seed)
    batch = tokenize(loaded.tokenizer, [s.text for s in suite.evaluation], seq_len, device)
    variants, records, skipped = {"baseline": loaded.model}, {}, {}
    for s in exp.schemes:
        if schemes and s.name not in schemes:
            continue
        why = skip_reason(s)
        if why:
            skipped[s.name] = why
            continue
        calibrate = None
        if s.uses_calibration:
            cal = load_suite(exp.calibration_dataset(s), calibration_size=s.calibration.size, evaluation_size=0,
                             seed=m.seed)
            cal_batch = tokenize(loaded.tokenizer, [x.text for x in cal.calibration],
                                 s.calibration.seq_len or m.seq_len, device)
            calibrate = (lambda model, b=cal_batch: outputs(model, loaded.task, b))
        log(f"{model_ref.display}: quantizing {s.name}")
        quant = copy.deepcopy(loaded.model)
        recs = quantize_(quant, s, device=device, calibrate=calibrate)
        variants[s.name] = quant
        records[s.name] = sorted({r.kernel for r in recs if r.applied})
    runs, how = forwards(variants, loaded.task, batch, m.lm_forward)
    n_phases = 2 if loaded.task == "causal_lm" else 1
    bar = tqdm(total=n_phases * (repeats + len(variants)), unit="step", disable=None if progress else True,
               dynamic_ncols=True, leave=False, desc=f"bench model {model_ref.display}")
    try:
        raw = measure(runs, loaded.task, batch, repeats, warmup, device, progress=lambda: bar.update(1))
    finally:
        bar.close()
    hw = detect().to_dict()
    return {
        "model": model_ref.display, "task": loaded.task, "device": device, "dtype": dtype, "batch_size": batch_size,
        "seq_len": seq_len, "workload": workload.name, "repeats": repeats, "warmup": warmup,
        "threads": torch.get_num_threads(), "torch": torch.__version__, "allocator": hw.get("allocator"),
        "machine": {k: hw.get(k) for k in ("cpu_model", "cpu_flags", "physical_cores", "logical_cores", "gpus")},
        "kernels": records, "skipped": skipped, "forward": how, "profiled_by": profiled_by(runs),
        "phases": summarize(raw), "raw": raw,
    }
