"""Interleaved timing with an adaptive stop: when the rule is asked, and what it decides from the paired
speed-up's interval."""
from __future__ import annotations

import pytest

from qbench.metrics.timing import MIN_ADAPTIVE, time_interleaved
from qbench.runner.measure import narrow_enough


def _clock(values):
    it = iter(values)
    return lambda fn: next(it)


def test_no_rule_takes_every_repeat():
    a, b = time_interleaved(lambda: None, lambda: None, warmup=0, repeats=9, timer=_clock(range(100)))
    assert len(a) == len(b) == 9
    assert a[:3] == [0, 3, 4] and b[:3] == [1, 2, 5]          # A,B then B,A


def test_the_rule_is_asked_after_every_second_pair_from_the_minimum():
    asked = []

    def stop(a, b):
        asked.append(len(a))
        return len(a) >= 10
    a, b = time_interleaved(lambda: None, lambda: None, warmup=0, repeats=40, timer=_clock(range(1000)),
                            stop=stop)
    assert asked == list(range(MIN_ADAPTIVE, 11, 2)) and len(a) == len(b) == 10
    capped = time_interleaved(lambda: None, lambda: None, warmup=0, repeats=7, timer=_clock(range(1000)),
                              stop=lambda a, b: False)
    assert len(capped[0]) == 7                                  # the cap holds


def test_narrow_enough_reads_the_paired_interval():
    base = [10.0, 11.0, 9.5, 10.5, 10.2, 9.8]
    assert narrow_enough(0.01)(base, [x / 2 for x in base])    # every pair 2.0x: a zero-width interval
    noisy = [5.0, 7.0, 4.0, 6.5, 3.9, 6.8]
    assert not narrow_enough(0.05)(base, noisy)
    assert narrow_enough(1.5)(base, noisy)
    both = narrow_enough(0.01, lambda a, b: [(a, b), (a, [x / 3 for x in a])])
    assert both(base, [x / 2 for x in base]) and not narrow_enough(0.05, lambda a, b: [(a, b), (a, noisy)])(
        base, [x / 2 for x in base])


@pytest.mark.parametrize("width", [0, 2, -0.1])
def test_width_out_of_range_is_refused(width):
    from pydantic import ValidationError

    from qbench.schema.experiment import Measure

    with pytest.raises(ValidationError):
        Measure(speedup_ci_width=width)
