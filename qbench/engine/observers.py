"""Calibration observers: watch activations, then turn what they saw into qparams.

All observers keep the exact running min/max plus a bounded random subsample of values, so
percentile and MSE searches cost the same whatever the calibration size.
"""
from __future__ import annotations

import torch

from qbench.engine.primitives import QuantSpec, choose_qparams, fake_quantize

RESERVOIR = 1 << 18  # values kept per observer for percentile / MSE searches


class Observer:
    """Min-max observer; subclasses change how the range is chosen."""

    method = "minmax"

    def __init__(self, spec: QuantSpec, seed: int = 0):
        if spec.granularity != "per_tensor":
            raise ValueError("static activation ranges are per_tensor; use dynamic: true for per_token")
        self.spec = spec
        self.min = torch.tensor(float("inf"))
        self.max = torch.tensor(float("-inf"))
        self.samples: list[torch.Tensor] = []
        self.kept = 0
        self.seen = 0
        self._gen = torch.Generator().manual_seed(seed)

    def update(self, x: torch.Tensor) -> None:
        x = x.detach().float().reshape(-1)
        if x.numel() == 0:
            return
        self.min = torch.minimum(self.min, x.min())
        self.max = torch.maximum(self.max, x.max())
        self.seen += x.numel()
        take = min(x.numel(), max(RESERVOIR // 16, RESERVOIR - self.kept))
        if take >= x.numel():  # everything fits: keep every value (a with-replacement draw would drop ~37%)
            self.samples.append(x.clone())
        else:                  # a subsample without replacement
            self.samples.append(x[torch.randperm(x.numel(), generator=self._gen)[:take]])
        self.kept += take
        if self.kept > 2 * RESERVOIR:  # keep memory bounded: thin the pool back to RESERVOIR values
            pool = torch.cat(self.samples)
            self.samples = [pool[torch.randperm(pool.numel(), generator=self._gen)[:RESERVOIR]]]
            self.kept = RESERVOIR

    def _values(self) -> torch.Tensor:
        if not self.samples:
            raise RuntimeError("observer saw no data: calibration ran no forward pass through this module")
        return torch.cat(self.samples)

    def range(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self.seen == 0:
            raise RuntimeError("observer saw no data: calibration ran no forward pass through this module")
        return self.min, self.max

    def qparams(self) -> tuple[torch.Tensor, torch.Tensor]:
        return choose_qparams(*self.range(), self.spec)


class PercentileObserver(Observer):
    """Clip the range at a percentile of the observed values (robust to rare outliers)."""

    method = "percentile"

    def __init__(self, spec: QuantSpec, percentile: float = 99.99, seed: int = 0):
        super().__init__(spec, seed)
        self.percentile = percentile

    def range(self):
        super().range()
        v = self._values()
        q = self.percentile / 100.0
        lo = torch.quantile(v, 1.0 - q) if not self.spec.symmetric else -torch.quantile(v.abs(), q)
        hi = torch.quantile(v, q) if not self.spec.symmetric else torch.quantile(v.abs(), q)
        return torch.minimum(lo, self.max), torch.maximum(torch.minimum(hi, self.max), lo)


class MSEObserver(Observer):
    """Search the clipping range (fractions of min/max) minimizing quantization MSE on the samples."""

    method = "mse"
    GRID = torch.linspace(0.3, 1.0, 36)

    def range(self):
        lo0, hi0 = super().range()
        v = self._values()
        best, best_err = (lo0, hi0), float("inf")
        for frac in self.GRID:
            lo, hi = lo0 * frac, hi0 * frac
            s, z = choose_qparams(lo, hi, self.spec)
            err = torch.mean((fake_quantize(v, self.spec, s, z) - v) ** 2).item()
            if err < best_err:
                best, best_err = (lo, hi), err
        return best


def make_observer(method: str, spec: QuantSpec, percentile: float = 99.99, seed: int = 0) -> Observer:
    if method == "minmax":
        return Observer(spec, seed)
    if method == "percentile":
        return PercentileObserver(spec, percentile, seed)
    if method == "mse":
        return MSEObserver(spec, seed)
    raise ValueError(f"unknown calibration method '{method}' (minmax, percentile, mse)")
