"""Timers: interleaved paired timing (perf_counter on CPU, CUDA events on GPU) and a RSS sampler."""
from __future__ import annotations

import time
from typing import Callable, Optional

# PeriodicSampler lived here; it moved to the bottom module qbench.sampling so hardware can use it too, and
# stays importable from here.
from qbench.sampling import PeriodicSampler

__all__ = ["ForeignCpu", "PeriodicSampler", "RssSampler", "time_interleaved"]


MIN_ADAPTIVE = 6    # pairs before an adaptive stop may end a timing (checked after each A,B + B,A cycle)


def time_interleaved(fa: Callable[[], object], fb: Callable[[], object], *, warmup: int, repeats: int,
                     device: str = "cpu", on_repeat: Optional[Callable[[], None]] = None,
                     timer: Optional[Callable[[Callable[[], object]], object]] = None,
                     stop: Optional[Callable[[list, list], bool]] = None) -> tuple[list, list]:
    """Measurements of `repeats` calls of fa and fb, alternating A,B then B,A so neither always goes first.

    Each call is measured by `timer` (default: its milliseconds, by perf_counter on CPU and CUDA events on
    GPU; a function that times itself can pass ``timer=lambda fn: fn()``). Pair i of the two lists was
    measured back to back, so machine noise is shared within a pair. `stop(a, b)`, when given, may end the
    timing early: it is asked after every second pair from MIN_ADAPTIVE pairs on (so both orders stay equally
    often), and `repeats` is the cap.
    """
    for _ in range(warmup):
        fa()
        fb()
    if timer is None:
        timer = _cuda_timer(device) if device.startswith("cuda") else _cpu_timer
    a_ms, b_ms = [], []
    for i in range(repeats):
        if i % 2 == 0:
            a_ms.append(timer(fa))
            b_ms.append(timer(fb))
        else:
            b_ms.append(timer(fb))
            a_ms.append(timer(fa))
        if on_repeat:
            on_repeat()
        if stop is not None and i + 1 >= MIN_ADAPTIVE and (i + 1) % 2 == 0 and stop(a_ms, b_ms):
            break
    return a_ms, b_ms


def _cpu_timer(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    return (time.perf_counter() - t0) * 1e3


def _cuda_timer(device: str) -> Callable[[Callable[[], object]], float]:
    import torch

    def timer(fn):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        torch.cuda.synchronize(device)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize(device)
        return start.elapsed_time(end)

    return timer


class RssSampler(PeriodicSampler):
    """Peak resident set size of this process, sampled every `interval` seconds in a thread."""

    def __init__(self, interval: float = 0.002):
        import psutil

        self._proc = psutil.Process()
        self.peak = self._proc.memory_info().rss
        super().__init__(interval)

    def sample(self) -> None:
        self.peak = max(self.peak, self._proc.memory_info().rss)


class ForeignCpu:
    """Average number of CPU cores used by *other* processes while the block ran.

    System-wide busy CPU time minus this process's CPU time, over wall time. On a shared machine a
    value well above zero means the timings were contended; the card flags it.
    """

    def __init__(self):
        import psutil

        self._psutil = psutil
        self._proc = psutil.Process()
        self.cores = 0.0

    def _busy(self) -> tuple[float, float, float]:
        t = self._psutil.cpu_times()
        system = sum(getattr(t, f, 0.0) for f in ("user", "nice", "system", "irq", "softirq", "steal"))
        mine = self._proc.cpu_times()
        return system, mine.user + mine.system, time.perf_counter()

    def __enter__(self) -> "ForeignCpu":
        self._start = self._busy()
        return self

    def __exit__(self, *exc) -> None:
        end = self._busy()
        wall = end[2] - self._start[2]
        foreign = (end[0] - self._start[0]) - (end[1] - self._start[1])
        self.cores = max(0.0, foreign / wall) if wall > 0 else 0.0
