"""A background sampler: poll something every `interval` seconds while a `with` block runs.

A bottom module (it imports nothing from qbench) because two independent layers poll: the metrics' RSS
sampler (`qbench.metrics.timing.RssSampler`) and the hardware's GPU throttle sampler
(`qbench.hardware.telemetry.ThrottleSampler`), and those siblings may not import each other.
"""
from __future__ import annotations

import threading


class PeriodicSampler:
    """Calls `sample()` every `interval` seconds in a thread while a `with` block runs, and once more at its end.

    Subclasses set their state before calling `__init__` and implement `sample()`.
    """

    def __init__(self, interval: float):
        self.interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def sample(self) -> None:
        raise NotImplementedError

    def _run(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self.interval)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.sample()
