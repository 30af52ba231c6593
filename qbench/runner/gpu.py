"""What a cell records on a CUDA device: NVML snapshots before and after, throttling while timed, peak
memory through torch, whether both models sat entirely on the GPU, and energy per token.

Used by run_cell only when the plan's device is CUDA; CPU runs never import it.
"""
from __future__ import annotations

import contextlib
from typing import Callable, Optional

import torch

from qbench.hardware.telemetry import Nvml, ThrottleSampler, energy_delta_j, slowdowns
from qbench.metrics.energy import BLOCK_S, energy_per_call


def device_index(device: str) -> int:
    return int(device.split(":")[1]) if ":" in device else 0


def torch_uuid(index: int) -> Optional[str]:
    """NVML's UUID string of a torch CUDA device ('GPU-...'), when torch exposes it."""
    try:
        u = torch.cuda.get_device_properties(index).uuid
    except Exception:  # noqa: BLE001 - older torch builds have no uuid
        return None
    return f"GPU-{u}" if u is not None else None


def off_gpu(*models) -> list[str]:
    """Names of parameters, buffers and quantized weight storage of the models that are not on a CUDA device.

    A quantized module's storage is named by field (held_tensors' first component: 'weight' for all of a packed
    weight's codes and qparams), once per field, with the device of its first tensor off the GPU."""
    from qbench.engine.modules import QuantModule

    out = []
    for tag, model in zip(("baseline", "quantized"), models):
        named = [*model.named_parameters(), *model.named_buffers()]
        for mod_name, mod in model.named_modules():
            if isinstance(mod, QuantModule):
                named += [(f"{mod_name}.{field.split('.')[0]}", t) for field, t in mod.held_tensors().items()]
        off: dict[str, torch.device] = {}
        for name, t in named:
            if t.device.type != "cuda":
                off.setdefault(name, t.device)
        out += [f"{tag}:{name} ({device})" for name, device in off.items()]
    return out


class GpuCell:
    """begin() before quantization, timing() around the timed region, energy() per batch size (through
    cell_energy_rows(), which turns it into rows), end() (close() if the cell fails first)."""

    def __init__(self, device: str):
        self.device = device
        self.index = device_index(device)
        self.nvml = Nvml()
        self.handle = None
        self.before: Optional[dict] = None
        self.sampler: Optional[ThrottleSampler] = None

    def begin(self) -> None:
        torch.cuda.synchronize(self.device)
        torch.cuda.reset_peak_memory_stats(self.device)
        self.nvml.__enter__()
        if self.nvml.ok:
            try:
                self.handle = self.nvml.handle(self.index, torch_uuid(self.index))
            except Exception as e:  # noqa: BLE001
                self.nvml.reason = f"NVML has no device for {self.device}: {e}"
        if self.handle is not None:
            self.before = self.nvml.snapshot(self.handle)

    def timing(self):
        """Context manager sampling throttle reasons while the cell is timed (a no-op without NVML)."""
        if self.handle is None:
            return contextlib.nullcontext()
        self.sampler = ThrottleSampler(self.nvml, self.handle)
        return self.sampler

    def energy(self, fa: Callable[[], object], fb: Callable[[], object]) -> Optional[dict]:
        """Energy per call of fa and fb (metrics.energy), or None without an NVML energy counter."""
        if self.handle is None or (self.before or {}).get("energy_mj") is None:
            return None
        return energy_per_call(fa, fb, lambda: self.nvml.energy_mj(self.handle),
                               lambda: torch.cuda.synchronize(self.device))

    def close(self) -> None:
        """Shut NVML down (idempotent; end() already does)."""
        self.nvml.__exit__(None, None, None)

    def end(self, base, quant) -> tuple[list[dict], dict]:
        """Rows (peak memory) and the cell record's "gpu" entry."""
        from qbench.runner.measure import row

        torch.cuda.synchronize(self.device)
        after = self.nvml.snapshot(self.handle) if self.handle is not None else None
        alloc = torch.cuda.max_memory_allocated(self.device)
        reserved = torch.cuda.max_memory_reserved(self.device)
        self.nvml.__exit__(None, None, None)
        missing = off_gpu(base, quant)
        timed = self.sampler.summary() if self.sampler is not None else None
        seen = slowdowns((timed or {}).get("throttle_reasons")) + slowdowns((after or {}).get("throttle_reasons"))
        how = ("peak of torch.cuda.{} on {} over the cell (quantization, quality and timing; baseline and "
               "quantized models both resident)")
        rows = [row("cuda_max_allocated_bytes", alloc, "bytes", how.format("max_memory_allocated", self.device),
                    "paired"),
                row("cuda_max_reserved_bytes", reserved, "bytes", how.format("max_memory_reserved", self.device),
                    "paired")]
        record = {
            "device": self.device,
            "nvml": "ok" if self.handle is not None else (self.nvml.reason or "unavailable"),
            "before": self.before, "after": after, "while_timed": timed,
            "throttled": list(dict.fromkeys(seen)),
            "cell_energy_j": energy_delta_j(self.before, after),
            "max_allocated_bytes": int(alloc), "max_reserved_bytes": int(reserved),
            "fit": {"on_gpu": not missing, "off_gpu": missing[:10], "off_gpu_count": len(missing)},
        }
        return rows, record


def energy_rows(e: Optional[dict], tokens_per_call: int, what: str, batch_size: int) -> list[dict]:
    """mJ per token of each variant and their ratio, from GpuCell.energy(); [] when not measured."""
    from qbench.runner.measure import row

    if e is None:
        return []
    how = (f"NVML total-energy counter around back-to-back blocks of {what} ({tokens_per_call} tokens per "
           f"call), A,B,B,A, {BLOCK_S} s each, synchronized; includes the GPU's idle power over the block; "
           "energy / calls / tokens per call")
    rows = [row("energy_mj_per_token", e[f"{k}_mj"] / tokens_per_call, "mJ/token", how + "; n = calls",
                variant, batch_size, n=e[f"{k}_calls"])
            for k, variant in (("a", "baseline"), ("b", "quantized"))]
    rows.append(row("energy_ratio", e["a_mj"] / e["b_mj"], "x", "baseline / quantized energy per token "
                    "(above 1: the quantized model uses less energy)", "paired", batch_size))
    return rows


def cell_energy_rows(gpu: GpuCell, base, quant, task: str, batch: dict, batch_size: int, seq_len: int,
                     decode_tokens: int) -> list[dict]:
    """Energy per token of one batch size: a forward pass (encoders) or prefill + decode (causal LMs)."""
    from qbench.runner.measure import forward, slice_batch

    if task == "causal_lm":
        from qbench.metrics.lm import prefill_decode

        ids = batch["input_ids"][:batch_size]
        sync = lambda: torch.cuda.synchronize(gpu.device)  # noqa: E731
        fa = lambda: prefill_decode(base, ids, decode_tokens, sync)  # noqa: E731
        fb = lambda: prefill_decode(quant, ids, decode_tokens, sync)  # noqa: E731
        tokens, what = batch_size * (seq_len + decode_tokens), (f"a {seq_len}-token prefill and {decode_tokens} "
                                                                "decode steps (prompt + generated tokens)")
    else:
        b = slice_batch(batch, 0, batch_size)
        fa = lambda: forward(base, task, b)  # noqa: E731
        fb = lambda: forward(quant, task, b)  # noqa: E731
        tokens, what = batch_size * seq_len, "one forward pass"
    return energy_rows(gpu.energy(fa, fb), tokens, what, batch_size)
