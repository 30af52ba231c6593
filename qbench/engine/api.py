"""quantize_(model, scheme): swap covered modules for quantized ones and report what happened.

Per module: the plan (ops, exclusions, group sizes) -> the scheme's method chooses the QuantizedWeight (rtn, or a
calibrated method run by engine.calibrated.MethodRun) -> the kernel packs it. The realized map's SQNR and bytes are measured from what the kernel then holds.
The ops around the linears (attention, residual) are planned and installed by engine.ops, one map entry per
instance.
"""
from __future__ import annotations

import fnmatch
import math
from dataclasses import asdict, dataclass
from typing import Callable, Optional

import torch
from torch import nn

from qbench.engine.calibrated import MethodRun
from qbench.engine.kernels import select_kernel
from qbench.engine.methods import METHODS, Method, TrainingData, rtn
from qbench.engine.methods.stats import feed_inputs
from qbench.engine.modules import QuantEmbedding, QuantLinear, is_linear, linear_weight, set_submodule
from qbench.engine.observers import make_observer
from qbench.engine.ops import attention_modules, blocks, install as install_ops, plan_ops
from qbench.engine.primitives import QuantSpec
from qbench.engine.tensors import QuantizedWeight
from qbench.errors import KernelUnavailable
from qbench.schema.experiment import Scheme


@dataclass
class ModuleRecord:
    """What was requested for one module and what was actually applied."""

    name: str
    op: str                      # linear | lm_head | embedding | attention | residual
    shape: tuple[int, ...]       # (out, in) for linear ops, (rows, dim) for embeddings, (heads, head_dim) for
                                 # attention, (hidden,) for residual
    requested: bool              # the scheme's ops cover this module kind
    applied: bool
    reason: str                  # why it was left alone, or "" when applied
    kernel: str                  # kernel that runs it ("baseline" when left alone)
    weights: str                 # realized weight format, e.g. "int8 sym per_channel"
    activations: str             # realized activation format, or "float"
    sqnr_db: Optional[float]     # 10 log10(|W|^2 / |W - W_held|^2), W_held: the weight the kernel holds;
                                 # None when not applied
    bytes_before: int
    bytes_after: int
    override: str = ""           # the glob of the scheme override whose recipe this module got ("" when none)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["shape"] = list(self.shape)
        if not d["override"]:
            del d["override"]
        return d


def weight_spec(scheme: Scheme) -> QuantSpec:
    w = scheme.weights
    if w.format != "int":
        return QuantSpec(w.resolved_bits, False, True, w.granularity, w.group_size, w.format)
    return QuantSpec(w.bits, w.signed, w.symmetric, w.granularity, w.group_size)


def activation_spec(scheme: Scheme) -> Optional[QuantSpec]:
    a = scheme.activations
    return None if a is None else QuantSpec(a.bits, a.signed, a.symmetric, a.granularity)


def scheme_method(scheme: Scheme) -> Method:
    """The method that chooses the scheme's codes (scheme.method.name)."""
    return METHODS.get(scheme.method.name)


def classify(model: nn.Module) -> dict[str, str]:
    """Module name -> op kind for every quantizable module."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    kinds = {}
    for name, mod in model.named_modules():
        if head is not None and mod is head and is_linear(mod):
            kinds[name] = "lm_head"
        elif is_linear(mod):
            kinds[name] = "linear"
        elif isinstance(mod, nn.Embedding):
            kinds[name] = "embedding"
    return kinds


def unmatched_excludes(model: nn.Module, patterns) -> list[str]:
    """Exclusion globs that match no quantizable module or op instance (likely typos)."""
    names = [*classify(model), *attention_modules(model), *blocks(model)]
    return [p for p in patterns if not any(fnmatch.fnmatchcase(n, p) for n in names)]


def quantize_(model: nn.Module, scheme: Scheme | dict, *, device: str = "cpu",
              calibrate: Optional[Callable[[nn.Module], None]] = None,
              progress: Optional[Callable[[str], None]] = None,
              method_info: Optional[dict] = None,
              training: Optional[TrainingData] = None) -> list[ModuleRecord]:
    """Quantize `model` in place according to `scheme`; returns one record per quantizable module.

    `calibrate(model)` runs forward passes over calibration data; it is required when the scheme
    has static activations (dynamic: false) or a calibrated method (smoothquant, gptq, awq), itself or in an
    override. `method_info`, when given, is filled with what the method did (name, parameters, seconds, ...;
    the methods of overrides under "overrides"). `training` (engine.methods.qat.TrainingData: the calibration
    pool and the unquantized teacher) is required by a training method (qat).

    A scheme with `overrides` quantizes each module with the recipe of the first override whose glob matches
    it (or leaves it alone: skip), else with the scheme's own: each recipe gets its kernel, its method run and
    its static activation ranges, over its modules only.
    """
    if isinstance(scheme, dict):
        scheme = Scheme.model_validate(scheme)
    kinds = classify(model)
    plan = plan_modules(model, scheme, kinds)
    recipes = [scheme, *(scheme.recipe(o) for o in scheme.overrides)]
    op_plan = plan_ops(model, scheme, recipes)   # attention, residual: raises before the model changes
    # choose every kernel before touching the model, so an impossible request leaves it unchanged
    steps = {}
    for r, recipe in enumerate(recipes):
        mine = [p for p in plan if p.recipe == r]
        if recipe is None or not mine:
            continue
        w, a = weight_spec(recipe), activation_spec(recipe)
        shapes = tuple({p.shape for p in mine if not p.skip and p.op != "embedding"})
        kernel = select_kernel(w, a, device, scheme.kernel, shapes) if shapes else None
        misfits = shape_misfits(mine, kernel)
        if misfits:
            raise KernelUnavailable(misfits)
        method = scheme_method(recipe)
        if method.needs_calibration and kernel is not None and kernel.rederives_weight:
            raise KernelUnavailable(f"kernel '{kernel.name}' quantizes float weights its own way and cannot run the "
                                    f"codes {method.name} chooses; force another kernel")
        steps[r] = (recipe, mine, w, a, method, kernel)
    runs, act_qparams = {}, {}
    for r, (recipe, mine, w, a, method, kernel) in steps.items():
        linears = [p.name for p in mine if not p.skip and p.op != "embedding"]
        runs[r] = MethodRun(model, linears, method, recipe.method.params, w, calibrate, training, a)  # folds, training
        act_qparams.update(_calibrate(model, recipe, mine, a, calibrate, runs[r].smoothing, runs[r].folded))
    records = []
    for planned in plan:
        recipe, _mine, w, a, _method, kernel = steps.get(planned.recipe) or (scheme, None, weight_spec(scheme),
                                                                             activation_spec(scheme), None, None)
        records.append(_swap_one(model, planned, recipe, runs.get(planned.recipe), w, a,
                                 act_qparams.get(planned.name), kernel))
        if progress:
            progress(planned.name)
    records += [ModuleRecord(**r) for r in install_ops(model, recipes, op_plan, device, activation_spec)]
    if method_info is not None:
        if 0 in runs:
            method_info.update(runs[0].summary())
        else:
            method_info.update(name=scheme.method.name, params=scheme.method.params, seconds=0.0)
        others = [dict(runs[r].summary(), match=scheme.overrides[r - 1].match) for r in runs if r
                  and (runs[r].method.name != "rtn" or scheme.method.name != "rtn")]
        if others:
            method_info["overrides"] = others
    return records


@dataclass(frozen=True)
class PlannedModule:
    """What quantize_ will do with one quantizable module, decided from names and shapes alone."""

    name: str
    op: str
    shape: tuple[int, int]       # (out, in) for linear ops, (rows, dim) for embeddings
    skip: str                    # "" (quantize), "op", "excluded" or "group_size"
    reason: str                  # why it is left alone, "" when it is quantized
    recipe: int = 0              # 0: the scheme's own recipe; i + 1: that of scheme.overrides[i]
    override: str = ""           # the glob of the override that decided, "" when none matched


def plan_modules(model: nn.Module, scheme: Scheme, kinds: Optional[dict[str, str]] = None) -> list[PlannedModule]:
    """The per-module decisions of quantize_ without changing the model (works on the meta device)."""
    recipes = [scheme, *(scheme.recipe(o) for o in scheme.overrides)]
    out = []
    for name, op in (kinds or classify(model)).items():
        mod = model.get_submodule(name)
        shape = tuple((mod.weight if op == "embedding" else linear_weight(mod)[0]).shape)
        r = next((i + 1 for i, o in enumerate(scheme.overrides) if fnmatch.fnmatchcase(name, o.match)), 0)
        glob = scheme.overrides[r - 1].match if r else ""
        if r and recipes[r] is None:
            skip, reason = ("op", f"op '{op}' not in scheme ops") if op not in scheme.ops else \
                ("excluded", f"skipped by override '{glob}'")
        else:
            skip, reason = _plan_reason(name, op, recipes[r], weight_spec(recipes[r]), shape)
        out.append(PlannedModule(name, op, shape, skip, reason, r, glob))
    return out


def unmatched_overrides(model: nn.Module, scheme: Scheme) -> list[str]:
    """Override globs that match no quantizable module (likely typos)."""
    return unmatched_excludes(model, [o.match for o in scheme.overrides])


def shape_misfits(plan: list[PlannedModule], kernel) -> str:
    """Why `kernel` cannot hold some planned linear weights (e.g. cuBLASLt alignment), or "" when it can hold all."""
    if kernel is None:
        return ""
    bad = [(p, r) for p in plan if not p.skip and p.op != "embedding" for r in [kernel.shape_reason(*p.shape)] if r]
    if not bad:
        return ""
    p, reason = bad[0]
    return (f"kernel '{kernel.name}' cannot hold {len(bad)} module weight(s) (first: {p.name}, "
            f"{p.shape[0]}x{p.shape[1]}: {reason}); exclude them or force another kernel")


def _plan_reason(name: str, op: str, scheme: Scheme, w: QuantSpec, shape) -> tuple[str, str]:
    if op not in scheme.ops:
        return "op", f"op '{op}' not in scheme ops"
    for pat in scheme.exclude:
        if fnmatch.fnmatchcase(name, pat):
            return "excluded", f"excluded by '{pat}'"
    if w.group_size and shape[1] % w.group_size:
        return "group_size", f"group_size {w.group_size} does not divide {shape[1]} columns"
    return "", ""


def _swap_one(model, planned: PlannedModule, scheme, run: MethodRun, w, a, act_qp, kernel) -> ModuleRecord:
    name, op, shape, reason = planned.name, planned.op, planned.shape, planned.reason
    mod = model.get_submodule(name)
    weight = mod.weight if op == "embedding" else linear_weight(mod)[0]
    before = sum(p.numel() * p.element_size() for p in mod.parameters(recurse=False))
    rec = dict(name=name, op=op, shape=shape, requested=op in scheme.ops, bytes_before=before,
               override=planned.override)
    if reason:
        return ModuleRecord(**rec, applied=False, reason=reason, kernel="baseline",
                            weights=str(weight.dtype).replace("torch.", ""), activations="float",
                            sqnr_db=None, bytes_after=before)
    if op == "embedding":
        new = QuantEmbedding(mod, w, rtn(weight, w))
        kernel_name, act = "embedding_gather_dequant", "n/a"
    else:
        new = _quant_linear(model, mod, name, kernel, run, w, a, act_qp)
        kernel_name, act = kernel.name, (a.describe() + (" static" if act_qp else " dynamic")) if a else "float"
    set_submodule(model, name, new)
    return ModuleRecord(**rec, applied=True, reason="", kernel=kernel_name, weights=w.describe(),
                        activations=act, sqnr_db=sqnr_db(weight, new.held_weight()), bytes_after=new.weight_nbytes)


def _quant_linear(model, mod, name: str, kernel, run: MethodRun, w: QuantSpec, a, act_qp) -> QuantLinear:
    """The method's QuantizedWeight packed by the kernel; a kernel that re-derives its weight gets the float one."""
    if kernel.rederives_weight:
        return QuantLinear.from_float(mod, kernel, w, a, act_qp)
    weight, bias = linear_weight(mod)
    qweight = run.quantize(weight, run.context(model, name))
    return QuantLinear.from_quantized(qweight, bias, kernel, a, act_qp)


def sqnr_db(weight: torch.Tensor, held: QuantizedWeight | QuantSpec) -> float:
    """Signal-to-quantization-noise ratio in dB (inf when exact) of the float weight against `held`, the weight a
    quantized module holds (or, given a QuantSpec, the round-to-nearest quantization of the weight)."""
    wf = weight.detach().double()
    held = rtn(wf, held) if isinstance(held, QuantSpec) else held
    # in the weight's own memory order (a Conv1D weight is a transposed view): the sum does not depend on the
    # layout a kernel keeps
    deq = torch.empty_like(wf).copy_(held.dequantize(torch.float64))
    err = (deq - wf).pow(2).sum().item()
    sig = wf.pow(2).sum().item()
    return math.inf if err == 0 else 10 * math.log10(sig / err) if sig > 0 else -math.inf


def _calibrate(model, scheme: Scheme, plan: list[PlannedModule], a: Optional[QuantSpec], calibrate,
               smoothing: Optional[dict] = None, folded: frozenset = frozenset()) -> dict:
    """Static activation qparams per module name, from observers hooked on the inputs of the linear modules that
    will be quantized (not those left alone by op, exclusion or group size). A layer that will divide its input
    by a smoothing scale (not folded upstream) is observed on x / s, the input its kernel quantizes."""
    smoothing = smoothing or {}
    if a is None or scheme.activations.dynamic:
        return {}
    if calibrate is None:
        raise ValueError(f"scheme '{scheme.name}' has static activations: pass calibrate=")
    cal = scheme.calibration
    observers, feeds = {}, {}
    for name in (p.name for p in plan if not p.skip and p.op != "embedding"):
        obs = make_observer(cal.method, a, cal.percentile)
        observers[name] = obs
        s = smoothing.get(name) if name not in folded else None
        feeds[name] = lambda x, obs=obs, s=s: obs.update(x if s is None else x / s.to(x.dtype))
    feed_inputs(model, calibrate, feeds)
    silent = [name for name, obs in observers.items() if not obs.seen]
    if silent:
        raise ValueError(f"calibration ran no data through {len(silent)} module(s) with static activations "
                         f"(first: {silent[0]}); static ranges cannot be set")
    return {name: obs.qparams() for name, obs in observers.items()}
