"""Checks that need the models' shapes, run before any measurement (exit 2 on failure).

Models are built from their config on the `meta` device: every module and shape, no weights read.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

from qbench.errors import ConfigError, KernelUnavailable, ModelError
from qbench.runner.plan import Plan


def check(plan: Plan, source: str | Path, warn: Callable[[str], None]) -> None:
    """Kernels, context length, group sizes against real layer widths; warnings for unused globs."""
    from qbench.engine.api import activation_spec, classify, weight_spec
    from qbench.engine.kernels import select_kernel
    from qbench.models.loaders import load_skeleton

    exp = plan.experiment
    kernels = []
    for i, s in enumerate(exp.schemes):
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
            _check_scheme(model, kinds, ref.display, s, f"{source}: schemes[{i}]", warn, kernels[i])


def _check_scheme(model, kinds, model_name, scheme, where, warn, kernel=None) -> None:
    from qbench.engine.api import plan_modules, shape_misfits, unmatched_excludes

    planned = plan_modules(model, scheme, kinds)
    misfit = shape_misfits(planned, kernel)
    if misfit:
        raise ConfigError(f"{model_name}: {misfit}", where=f"{where}.kernel")
    for pattern in unmatched_excludes(model, scheme.exclude):
        warn(f"{where}.exclude: '{pattern}' matches no quantizable module of {model_name}")
    if not any(p.skip in ("", "group_size") for p in planned):
        warn(f"{where}: quantizes no module of {model_name} (ops {list(scheme.ops)}, exclude "
             f"{list(scheme.exclude)}): its cells measure the baseline against itself")
    for p in planned:
        if p.skip == "group_size":
            raise ConfigError(f"group_size {scheme.weights.group_size} does not divide the {p.shape[1]} input "
                              f"columns of {model_name}'s {p.name}; pick a divisor or exclude the module",
                              where=f"{where}.weights.group_size")
