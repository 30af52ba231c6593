"""Running a calibrated method over a model: which statistics, in what order, and where smoothing scales go.

MethodRun(model, plan, method, params, spec, calibrate).context(model, name) gives the MethodContext of each
planned linear, in plan order:
- non-sequential methods (smoothquant, awq, gptq with sequential: false): one calibration pass over the float model
  collects every planned linear's input statistics;
- sequential methods (gptq): linears are grouped in blocks (the module path up to its first numeric part, e.g.
  `model.layers.3`); when a block's first linear comes up, a calibration pass over the model as quantized so far
  collects that block's statistics, so each block sees the outputs of the already-quantized blocks before it;
- training methods (qat): the model is fine-tuned first, with every planned linear fake-quantized, on the
  TrainingData handed in (engine.methods.qat); each linear's context then carries the qparams it learned;
- smoothing methods (smoothquant, awq) choose one input scale s per group of linears sharing one input tensor
  (found by tagging the tensors the calibration pass hands them). Where that input is the output of a
  Llama-style RMSNorm (weight times normalized x, pre-norm: its output feeds only linears) and every linear
  reading it is in the group (and no weight of the group is tied to another module), 1/s is folded into the
  norm's weight and s into the weights' columns, in place, so the model keeps computing the same function while
  the method runs (the context then says `folded`: the weight it gets already carries s); otherwise each layer divides its input by s
  (QuantizedWeight.input_scale). LayerNorm is not folded: in post-norm models its output also feeds a residual.
"""
from __future__ import annotations

import time
from collections import defaultdict
from typing import Callable, Mapping, Optional

import torch
from torch import nn

from qbench.engine.methods import Method, MethodContext, TrainingData
from qbench.engine.methods.stats import collect_input_stats
from qbench.engine.modules import is_linear, linear_weight
from qbench.engine.primitives import QuantSpec

_TAG = "_qbench_input_tag"
_NORM = "_qbench_norm"


def block_of(name: str) -> str:
    """The block a module belongs to: its path up to the first all-digit part ('' when there is none)."""
    parts = name.split(".")
    for i, p in enumerate(parts):
        if p.isdigit():
            return ".".join(parts[:i + 1])
    return ""


def foldable_norm(mod: nn.Module) -> bool:
    """An RMSNorm that multiplies by its weight (Llama style; Gemma's (1 + weight) is not)."""
    cls = type(mod).__name__
    w = getattr(mod, "weight", None)
    return cls.endswith("RMSNorm") and "Gemma" not in cls and isinstance(w, torch.Tensor) and w.dim() == 1


class MethodRun:
    """The statistics, smoothing scales and folds of one method over one model (see the module docstring)."""

    def __init__(self, model: nn.Module, names: list[str], method: Method, params: Mapping[str, object],
                 spec: QuantSpec, calibrate: Optional[Callable[[nn.Module], None]],
                 training: Optional[TrainingData] = None, act: Optional[QuantSpec] = None):
        self.method, self.params, self.spec, self.calibrate = method, dict(params), spec, calibrate
        self.names = names
        self.seconds = 0.0
        self.stats: dict[str, dict] = {}
        self.smoothing: dict[str, torch.Tensor] = {}
        self.folded: set[str] = set()
        self.groups: list[list[str]] = []
        self.fold_targets: list[str] = []
        self.sequential = method.needs_calibration and method.sequential and bool(params.get("sequential", True))
        self.passes = 0
        self.trained = None
        if method.trains:
            if training is None:
                raise ValueError(f"method {method.name} trains: pass training= (calibration data and teacher)")
            self.trained = self._timed(method.train, model, names, spec, act, self.params, training)
            return
        if not method.needs_calibration:
            return
        if calibrate is None:
            raise ValueError(f"method {method.name} needs calibration data: pass calibrate=")
        if not self.sequential:
            self._timed(self._prepare_all, model)

    def _timed(self, fn, *args):
        t0 = time.perf_counter()
        try:
            return fn(*args)
        finally:
            self.seconds += time.perf_counter() - t0

    def context(self, model: nn.Module, name: str) -> MethodContext:
        """The MethodContext for planned linear `name` (collecting its block's statistics first when sequential)."""
        if not self.method.needs_calibration:
            return MethodContext(name, params=self.params)
        if self.trained is not None:
            return MethodContext(name, params=self.params, learned=self.trained.qparams[name])
        if name not in self.stats:
            if not self.sequential:
                raise ValueError(f"no calibration statistics for '{name}'")
            block = block_of(name)
            self._timed(self._collect, model, [n for n in self.names if block_of(n) == block and n not in self.stats])
        return MethodContext(name, self.stats[name], self.params, self.smoothing.get(name), name in self.folded)

    def quantize(self, weight: torch.Tensor, context: MethodContext):
        return self._timed(self.method.quantize, weight, self.spec, context)

    def _collect(self, model: nn.Module, names: list[str], gram: bool = True, tag: bool = False) -> None:
        hooks = _tag_hooks(model) if tag else []
        try:
            self.stats.update(collect_input_stats(model, names, self.calibrate, gram=gram))
        finally:
            for h in hooks:
                h.remove()
        self.passes += 1

    def _prepare_all(self, model: nn.Module) -> None:
        smooth = self.method.smooths
        needs_gram = self.method.name != "smoothquant"
        first_inputs = _FirstInputs(model, self.names) if smooth else None
        try:
            self._collect(model, self.names, gram=needs_gram, tag=smooth)
        finally:
            if first_inputs:
                first_inputs.remove()
        if smooth:
            self._smooth(model, first_inputs)

    def _smooth(self, model: nn.Module, seen: "_FirstInputs") -> None:
        readers = defaultdict(set)
        for name, tag in seen.all_tags.items():
            readers[tag].add(name)
        for group in seen.groups(self.names):
            tag = seen.tag[group[0]]
            weights = [linear_weight(model.get_submodule(n))[0].detach().float() for n in group]
            s = self.method.group_scales(weights, self.stats[group[0]], self.params, self.spec)
            norm = seen.norm.get(group[0])
            fold = norm is not None and readers[tag] == set(group) and not _shared(model, group)
            if fold:    # the norm's output divided by s, each weight's columns times s: the same function
                mod = model.get_submodule(norm)
                with torch.no_grad():
                    mod.weight.div_(s.to(mod.weight.dtype))
                    for n in group:
                        linear_weight(model.get_submodule(n))[0].mul_(s.to(mod.weight.dtype).reshape(1, -1))
                self.folded.update(group)
                self.fold_targets.append(norm)
            for n in group:
                self.smoothing[n] = s
            self.groups.append(group)

    def summary(self) -> dict:
        """What the method did, for the cell record."""
        out = {"name": self.method.name, "params": self.params, "seconds": round(self.seconds, 3)}
        if self.trained is not None:
            t = self.trained
            out["training"] = {"steps": len(t.losses), "tokens": t.tokens, "seconds": round(t.seconds, 3),
                               "loss": [round(x, 6) for x in t.losses], "resumed_from": t.resumed_from,
                               "reused": t.loaded, "threads": torch.get_num_threads()}
            return out
        if self.method.needs_calibration:
            out["calibration_passes"] = self.passes
            tokens = {int(st["n"]) for st in self.stats.values()}
            out["calibration_tokens"] = max(tokens) if tokens else 0
        if self.method.smooths:
            out["groups"] = len(self.groups)
            out["folded_into"] = sorted(self.fold_targets)
            out["input_scale_layers"] = sorted(set(self.smoothing) - self.folded)
        return out


def _shared(model: nn.Module, group: list[str]) -> bool:
    """Whether a weight of the group is also a parameter elsewhere (tied embeddings): it cannot be scaled in place."""
    ours = {linear_weight(model.get_submodule(n))[0].data_ptr() for n in group}
    mine = {id(model.get_submodule(n)) for n in group}
    return any(p.data_ptr() in ours for mod in model.modules() if id(mod) not in mine
               for p in mod.parameters(recurse=False))


class _FirstInputs:
    """Tags the tensor every linear of the model reads on its first call (and what norm made it, if any)."""

    def __init__(self, model: nn.Module, planned: list[str]):
        self.planned = set(planned)
        self.tag: dict[str, int] = {}
        self.all_tags: dict[str, int] = {}
        self.norm: dict[str, str] = {}
        self.count = 0
        self.hooks = [mod.register_forward_pre_hook(self._hook(name))
                      for name, mod in model.named_modules() if is_linear(mod)]

    def _hook(self, name: str):
        def fn(_m, args):
            if name in self.all_tags:
                return
            x = args[0]
            if not hasattr(x, _TAG):
                self.count += 1
                setattr(x, _TAG, self.count)
            self.all_tags[name] = getattr(x, _TAG)
            if name in self.planned:
                self.tag[name] = self.all_tags[name]
                if hasattr(x, _NORM):
                    self.norm[name] = getattr(x, _NORM)
        return fn

    def groups(self, names: list[str]) -> list[list[str]]:
        """`names` grouped by the tensor each read first, in the order of `names` (a name that no forward reached
        stands alone)."""
        by_tag: dict = {}
        for i, name in enumerate(names):
            by_tag.setdefault(self.tag.get(name, ("unreached", i)), []).append(name)
        return list(by_tag.values())

    def remove(self) -> None:
        for h in self.hooks:
            h.remove()


def shared_input_groups(model: nn.Module, names: list[str], run: Callable[[nn.Module], None]) -> list[list[str]]:
    """The linears `names` grouped by the input tensor they read (q/k/v, gate/up), from one pass of `run(model)`
    without gradients, in the order of `names`."""
    seen = _FirstInputs(model, names)
    try:
        with torch.no_grad():
            run(model)
    finally:
        seen.remove()
    return seen.groups(names)


def _tag_hooks(model: nn.Module) -> list:
    """Forward hooks marking the outputs of foldable norms with the norm's name."""
    def hook(name):
        def fn(_m, _args, out):
            if isinstance(out, torch.Tensor):
                setattr(out, _NORM, name)
        return fn
    return [mod.register_forward_hook(hook(name)) for name, mod in model.named_modules() if foldable_norm(mod)]

