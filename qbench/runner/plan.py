"""Expand an experiment into cells and resolve `auto` against the hardware. Pure: no torch."""
from __future__ import annotations

import re
from dataclasses import dataclass, field

from qbench.errors import ConfigError
from qbench.hardware.detect import HardwareInfo, has_fast_bf16, has_fast_fp16
from qbench.schema.experiment import Experiment, ModelRef, Scheme, Workload


@dataclass(frozen=True)
class Cell:
    """One model x one scheme x one workload on one device (all batch sizes, paired with baseline)."""

    model: ModelRef
    scheme: Scheme
    workload: Workload

    @property
    def id(self) -> str:
        return "__".join(_slug(p) for p in (self.model.display, self.scheme.name, self.workload.name))


@dataclass(frozen=True)
class Plan:
    experiment: Experiment
    device: str
    baseline_dtype: str
    baseline_note: str
    cells: tuple[Cell, ...]
    skipped: tuple[tuple[Cell, str], ...] = field(default=())

    def describe(self) -> list[str]:
        m = self.experiment.measure
        lines = [f"experiment {self.experiment.name}: {len(self.cells)} cells on {self.device}, "
                 f"baseline {self.baseline_dtype}" + (f" ({self.baseline_note})" if self.baseline_note else ""),
                 f"batch sizes {list(m.batch_sizes)}, seq_len {m.seq_len}, warmup {m.warmup}, "
                 f"repeats {m.repeats}, eval samples {m.eval_samples}"]
        lines += [f"  run  {c.id}" + (f" (only if {c.scheme.if_fails} fails a gate)" if c.scheme.if_fails else "")
                  for c in self.cells]
        lines += [f"  skip {c.id}: {why}" for c, why in self.skipped]
        return lines


def _slug(s: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.+-]+", "-", s).strip("-") or "x"


def resolve_device(requested: str, hw: HardwareInfo) -> str:
    if requested == "auto":
        return "cuda:0" if hw.gpus else "cpu"
    if requested.startswith("cuda"):
        index = int(requested.split(":")[1]) if ":" in requested else 0
        if index >= len(hw.gpus):
            raise ConfigError(f"device {requested} requested but {len(hw.gpus)} CUDA GPU(s) detected",
                              where="device")
        return f"cuda:{index}"
    return "cpu"


def resolve_baseline(requested: str, device: str, hw: HardwareInfo) -> tuple[str, str]:
    """(dtype that runs, note saying why it differs from the request, or '')."""
    if requested == "auto":
        return ("fp16", "auto: fp16 on GPU") if device.startswith("cuda") else ("fp32", "auto: fp32 on CPU")
    if requested == "fp32":
        return "fp32", ""
    fast, reason = (has_fast_fp16 if requested == "fp16" else has_fast_bf16)(hw, device)
    if fast:
        return requested, ""
    return "fp32", f"requested {requested}, ran fp32: {reason}"


def make_plan(exp: Experiment, hw: HardwareInfo) -> Plan:
    """All cells of the experiment, in order models x schemes x workloads."""
    device = resolve_device(exp.device, hw)
    dtype, note = resolve_baseline(exp.baseline.dtype, device, hw)
    cells, skipped = [], []
    for model in exp.models:
        for scheme in exp.schemes:
            for wl in exp.workloads:
                cell = Cell(model, scheme, wl)
                reason = _skip_reason(scheme, device, model)
                (skipped.append((cell, reason)) if reason else cells.append(cell))
    ids = [c.id for c in cells]
    if len(set(ids)) != len(ids):
        raise ConfigError("model, scheme or workload names collide after slugging; rename them")
    return Plan(exp, device, dtype, note, tuple(cells), tuple(skipped))


def is_gguf_model(model: ModelRef) -> bool:
    """A model read from a GGUF file (gguf: ids and the bundled GGUF models)."""
    from qbench.models.bundled import BUNDLED

    return model.id.startswith("gguf:") or (model.id in BUNDLED and BUNDLED[model.id].gguf is not None)


# Kernels bound to one device type (kept in step with the kernels' `devices` by a test; no torch here)
CPU_ONLY_KERNELS = ("int8_native", "w4a8_native", "int8_onednn", "int8_int_mm", "int8_wo_native",
                    "int4_wo_native", "int8_weight_only", "torch_ao_dynamic")
CUDA_ONLY_KERNELS = ("int8_int_mm_cuda", "triton_int8_wo", "triton_int4_wo", "fp8_e4m3_scaled_mm")


def _skip_reason(scheme: Scheme, device: str, model: ModelRef | None = None) -> str:
    """Decide up front what cannot run on this device or model (kernels are checked without torch here)."""
    if scheme.runtime is not None:
        if not device.startswith("cpu"):
            return f"{scheme.runtime.name} runs on CPU here, beside a {device} baseline it would not be comparable"
        if model is not None and not is_gguf_model(model):
            return f"{scheme.runtime.name} runs causal LMs loaded from GGUF files; {model.display} is not one"
        return ""
    if scheme.kernel in CPU_ONLY_KERNELS and not device.startswith("cpu"):
        return f"kernel {scheme.kernel} runs on CPU only"
    if scheme.kernel in CUDA_ONLY_KERNELS and not device.startswith("cuda"):
        return f"kernel {scheme.kernel} runs on CUDA only"
    return ""
