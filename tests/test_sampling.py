"""qbench.sampling.PeriodicSampler: samples when the block starts, while it runs and once more at its end."""
from __future__ import annotations

import threading

from qbench.sampling import PeriodicSampler


class Counter(PeriodicSampler):
    def __init__(self, interval: float):
        self.n = 0
        self.started = threading.Event()
        super().__init__(interval)

    def sample(self) -> None:
        self.n += 1
        self.started.set()


def test_one_sample_at_start_and_one_at_end():
    with Counter(interval=1e9) as c:      # the thread samples once, then waits far longer than the block
        assert c.started.wait(5)
    assert c.n == 2


def test_samples_while_the_block_runs():
    with Counter(interval=0.001) as c:
        done = threading.Event()
        while c.n < 5:                     # the thread keeps sampling without the block's help
            done.wait(0.001)
    assert c.n >= 6                        # at least five while running, plus the final one


def test_old_import_path_still_works():
    from qbench.metrics.timing import PeriodicSampler as Old, RssSampler

    assert Old is PeriodicSampler and issubclass(RssSampler, PeriodicSampler)
