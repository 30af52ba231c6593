"""Every check a run makes before it measures anything (exit 2 on failure); `qbench run --dry-run` makes
the same ones.

`check_inputs` needs no torch: model ids, datasets and their sizes. `check` needs the models' shapes:
they are built from their config on the `meta` device (every module and shape, no weights read) to check
kernels, context length and group sizes against the real layers.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

from qbench.errors import ConfigError, DatasetError, KernelUnavailable, ModelError
from qbench.runner.plan import Plan
from qbench.schema import Experiment


def check_inputs(exp: Experiment, source: str | Path = "experiment") -> None:
    """Model ids, datasets and their sizes (calibration pools included); no torch."""
    from qbench.models import check_model_ref

    for i, m in enumerate(exp.models):
        try:
            check_model_ref(m)
        except ConfigError:
            raise
        except Exception as e:
            raise ConfigError(str(e), where=f"{source}: models[{i}].id") from None
    if max(exp.measure.batch_sizes) > exp.measure.eval_samples:
        raise ConfigError(f"largest batch size {max(exp.measure.batch_sizes)} exceeds eval_samples "
                          f"{exp.measure.eval_samples}", where=f"{source}: measure.batch_sizes")
    for i, w in enumerate(exp.workloads):
        _check_pool(w.dataset, exp.measure.seed, exp.measure.eval_samples, "evaluation", "measure.eval_samples asks "
                    f"for {exp.measure.eval_samples}", f"{source}: workloads[{i}].dataset", evaluation=True)
    for i, s in enumerate(exp.schemes):
        spec = exp.calibration_dataset(s)
        if spec is not None:
            _check_pool(spec, exp.measure.seed, s.calibration.size, "calibration",
                        f"{s.calibration.size} requested", f"{source}: schemes[{i}].calibration", evaluation=False)


def _check_pool(spec: str, seed: int, need: int, kind: str, asked: str, where: str, evaluation: bool) -> None:
    from qbench.datasets import pools

    try:
        calibration, evaluation_pool = pools(spec, seed=seed)
    except DatasetError as e:
        raise ConfigError(str(e), where=f"{where}.dataset" if not evaluation else where) from None
    held = len(evaluation_pool if evaluation else calibration)
    if held < need:
        raise ConfigError(f"{spec} holds {held} {kind} samples, {asked}",
                          where=where if evaluation else f"{where}.size")


def check(plan: Plan, source: str | Path, warn: Callable[[str], None]) -> None:
    """Kernels, context length, group sizes against real layer widths; warnings for unused globs."""
    from qbench.engine.api import activation_spec, classify, weight_spec
    from qbench.engine.kernels import select_kernel
    from qbench.engine.ops import plan_ops
    from qbench.models.loaders import load_skeleton

    exp = plan.experiment
    kernels = []
    for i, s in enumerate(exp.schemes):
        if s.runtime is not None:       # a peer runtime: installed? (it quantizes and runs the model itself)
            kernels.append(None)
            if any(c.scheme is s for c in plan.cells):
                _check_runtime(s, f"{source}: schemes[{i}].runtime")
            continue
        try:
            kernels.append(select_kernel(weight_spec(s), activation_spec(s), plan.device, s.kernel))
        except KernelUnavailable as e:
            raise ConfigError(str(e), where=f"{source}: schemes[{i}].kernel") from None
    for mi, ref in enumerate(exp.models):
        try:
            model, task, ctx = load_skeleton(ref)
        except ModelError as e:
            raise ConfigError(str(e), where=f"{source}: models[{mi}].id") from None
        if ctx and exp.measure.seq_len > ctx:
            raise ConfigError(f"{exp.measure.seq_len} tokens exceed the context of {ref.display} ({ctx})",
                              where=f"{source}: measure.seq_len")
        m = exp.measure
        if task == "causal_lm" and ctx:
            if m.seq_len + m.decode_tokens > ctx:
                raise ConfigError(f"seq_len {m.seq_len} + decode_tokens {m.decode_tokens} exceed the context of "
                                  f"{ref.display} ({ctx}); the decode timing continues the seq_len-token prompt",
                                  where=f"{source}: measure.decode_tokens")
            if m.prompt_tokens + m.generate_tokens > ctx:
                raise ConfigError(f"prompt_tokens {m.prompt_tokens} + generate_tokens {m.generate_tokens} exceed "
                                  f"the context of {ref.display} ({ctx})", where=f"{source}: measure.generate_tokens")
        if task == "causal_lm" and m.prompt_tokens >= m.seq_len:
            raise ConfigError(f"prompt_tokens {m.prompt_tokens} must be below seq_len {m.seq_len}: prompts are "
                              "the first tokens of the evaluation samples", where=f"{source}: measure.prompt_tokens")
        kinds = classify(model)
        for i, s in enumerate(exp.schemes):
            if s.runtime is not None:
                continue
            try:
                plan_ops(model, s)
            except KernelUnavailable as e:
                raise ConfigError(str(e), where=f"{source}: schemes[{i}].ops") from None
            if s.mixed is not None:
                _check_mixed(model, kinds, ref.display, s, exp.schemes, f"{source}: schemes[{i}]")
                continue
            _check_scheme(model, kinds, ref.display, s, f"{source}: schemes[{i}]", warn, kernels[i], plan.device)


def _check_runtime(scheme, where: str) -> None:
    from qbench.runtimes import RUNTIMES

    problem = RUNTIMES.get(scheme.runtime.name).problem()
    if problem:
        raise ConfigError(f"scheme '{scheme.name}' runs in {scheme.runtime.name}: {problem}", where=where)


def _check_scheme(model, kinds, model_name, scheme, where, warn, kernel=None, device="cpu") -> None:
    from qbench.engine.api import (activation_spec, plan_modules, shape_misfits, unmatched_excludes,
                                   unmatched_overrides, weight_spec)
    from qbench.engine.kernels import select_kernel
    from qbench.engine.ops import plan_ops

    planned = plan_modules(model, scheme, kinds)
    for r, recipe in enumerate([scheme, *(scheme.recipe(o) for o in scheme.overrides)]):
        mine = [p for p in planned if p.recipe == r]
        if recipe is None or not mine:
            continue
        at = f"{where}.kernel" if r == 0 else f"{where}.overrides[{r - 1}]"
        k = kernel
        if r:
            try:
                k = select_kernel(weight_spec(recipe), activation_spec(recipe), device, scheme.kernel)
            except KernelUnavailable as e:
                raise ConfigError(f"{model_name}: {e}", where=at) from None
        misfit = shape_misfits(mine, k)
        if misfit:
            raise ConfigError(f"{model_name}: {misfit}", where=at)
    for pattern in unmatched_excludes(model, scheme.exclude):
        warn(f"{where}.exclude: '{pattern}' matches no quantizable module of {model_name}")
    for pattern in unmatched_overrides(model, scheme):
        warn(f"{where}.overrides: '{pattern}' matches no quantizable module of {model_name}")
    if not any(p.skip in ("", "group_size") for p in planned) and all(p.reason for p in plan_ops(model, scheme)):
        warn(f"{where}: quantizes no module of {model_name} (ops {list(scheme.ops)}, exclude "
             f"{list(scheme.exclude)}): its cells measure the baseline against itself")
    for p in planned:
        if p.skip == "group_size":
            recipe = scheme if p.recipe == 0 else scheme.recipe(scheme.overrides[p.recipe - 1])
            field = "weights.group_size" if p.recipe == 0 else f"overrides[{p.recipe - 1}].weights.group_size"
            raise ConfigError(f"group_size {recipe.weights.group_size} does not divide the {p.shape[1]} input "
                              f"columns of {model_name}'s {p.name}; pick a divisor or exclude the module",
                              where=f"{where}.{field}")


def _check_mixed(model, kinds, model_name, scheme, schemes, where) -> None:
    """The budget against the bits the model's linears can have under the choices (every linear at its cheapest
    choice, or at its dearest)."""
    from qbench.engine.api import weight_spec
    from qbench.engine.modules import linear_weight
    from qbench.runner.sensitivity import unit_bits
    mx = scheme.mixed
    by_name = {s.name: s for s in schemes}
    shapes = [tuple(linear_weight(model.get_submodule(n))[0].shape) for n, op in kinds.items() if op == "linear"]
    if not shapes:
        raise ConfigError(f"{model_name} has no linear layer to plan", where=f"{where}.mixed")
    specs = {}
    lo = hi = 0.0
    for n, k in shapes:
        opts = []
        for c in mx.choices:
            if c == "skip":
                opts.append(32.0)
                continue
            w = specs.setdefault(c, weight_spec(by_name[c]))
            if not (w.group_size and k % w.group_size):
                opts.append(unit_bits([(n, k)], w))
        if not opts:
            raise ConfigError(f"no choice can hold {model_name}'s {n}x{k} linears (group sizes); add a choice "
                              "that can, or skip", where=f"{where}.mixed.choices")
        lo += min(opts) * n * k
        hi += max(opts) * n * k
    total = sum(n * k for n, k in shapes)
    if mx.budget_bits < lo / total - 1e-9:
        raise ConfigError(f"{mx.budget_bits:g} bits per weight is below the cheapest plan for {model_name} "
                          f"({lo / total:.3g} bits with scales and zero points)", where=f"{where}.mixed.budget_bits")
    if mx.budget_bits > hi / total + 1e-9:
        raise ConfigError(f"{mx.budget_bits:g} bits per weight is above the dearest plan for {model_name} "
                          f"({hi / total:.3g} bits): every unit would get its largest choice",
                          where=f"{where}.mixed.budget_bits")
