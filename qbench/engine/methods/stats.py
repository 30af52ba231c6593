"""Calibration statistics of a linear layer's input, gathered with forward pre-hooks.

For each hooked module, over every real calibration token x (K,) that reaches it (padding excluded: when the
model is called with a 2-D `attention_mask`, a module input shaped (B, T, K) like that mask keeps only the rows the
mask marks real):
    n        number of tokens
    xtx      (K, K) float64  X^T X / n          (GPTQ's Hessian is 2 * xtx; AWQ's output error is a quadratic form in it)
    absmax   (K,)  float64   max_t |x_t|         (SmoothQuant)
    absmean  (K,)  float64   mean_t |x_t|        (AWQ)
"""
from __future__ import annotations

from typing import Callable, Iterable

import torch
from torch import nn


class InputStats:
    """Running sums of one module's input; stats() gives the dict a MethodContext carries."""

    def __init__(self, gram: bool = True):
        self.n, self.gram = 0, gram
        self.xtx = self.abssum = self.absmax = None

    def update(self, x: torch.Tensor) -> None:
        x = x.detach().reshape(-1, x.shape[-1]).to(torch.float64)          # (T, K)
        a = x.abs()
        if self.n == 0:
            k = x.shape[1]
            self.xtx = torch.zeros(k, k, dtype=torch.float64, device=x.device) if self.gram else None
            self.abssum = torch.zeros(k, dtype=torch.float64, device=x.device)
            self.absmax = torch.zeros(k, dtype=torch.float64, device=x.device)
        if self.gram:
            self.xtx += x.T @ x
        self.abssum += a.sum(dim=0)
        self.absmax = torch.maximum(self.absmax, a.amax(dim=0))
        self.n += x.shape[0]

    def stats(self) -> dict[str, torch.Tensor]:
        if self.n == 0:
            raise ValueError("no calibration token reached this module")
        out = {"n": torch.tensor(self.n), "absmax": self.absmax, "absmean": self.abssum / self.n}
        if self.gram:
            out["xtx"] = self.xtx / self.n
        return out


def feed_inputs(model: nn.Module, calibrate: Callable[[nn.Module], None],
                feeds: dict[str, Callable[[torch.Tensor], None]]) -> None:
    """Run `calibrate(model)` without gradients, handing each named module's input to its callable (a forward
    pre-hook per module, removed afterwards whatever happens). Padding positions are left out: the model's own
    pre-hook notes the `attention_mask` it is called with, and an input shaped (B, T, K) like that mask is handed
    on as its real rows only (M, K)."""
    seen: dict = {}

    def note_mask(_m, args, kwargs):
        mask = kwargs.get("attention_mask")
        seen["mask"] = mask.bool() if isinstance(mask, torch.Tensor) and mask.dim() == 2 else None

    def real(x: torch.Tensor) -> torch.Tensor:
        mask = seen.get("mask")
        if mask is not None and x.dim() == 3 and tuple(x.shape[:2]) == tuple(mask.shape) and not bool(mask.all()):
            return x[mask.to(x.device)]
        return x

    hooks = [model.register_forward_pre_hook(note_mask, with_kwargs=True)]
    hooks += [model.get_submodule(name).register_forward_pre_hook(lambda _m, args, fn=fn: fn(real(args[0])))
              for name, fn in feeds.items()]
    try:
        with torch.no_grad():
            calibrate(model)
    finally:
        for h in hooks:
            h.remove()


def collect_input_stats(model: nn.Module, names: Iterable[str], calibrate: Callable[[nn.Module], None],
                        gram: bool = True, transform: Callable[[str, torch.Tensor], torch.Tensor] | None = None
                        ) -> dict[str, dict[str, torch.Tensor]]:
    """Run `calibrate(model)` with a pre-hook on each named module; per module, its input statistics.
    `transform(name, x)` (optional) maps the input before it is counted. Raises when a module saw no token."""
    collectors = {name: InputStats(gram) for name in names}
    feed_inputs(model, calibrate, {name: (lambda x, c=c, name=name: c.update(transform(name, x) if transform else x))
                                   for name, c in collectors.items()})
    silent = [name for name, c in collectors.items() if c.n == 0]
    if silent:
        raise ValueError(f"calibration ran no data through {len(silent)} module(s) (first: {silent[0]})")
    return {name: c.stats() for name, c in collectors.items()}
