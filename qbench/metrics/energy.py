"""Energy per call of two variants from a cumulative energy counter (NVML's, in mJ), in A, B, B, A blocks.

A counter that ticks every few to tens of milliseconds cannot be split between interleaved calls of a
few milliseconds: each tick would be charged to whichever call happened to run, which measures time,
not power. So each variant runs back to back for at least `block_s` seconds per block, the counter is
read (after a device synchronization) around every block, and the A, B, B, A order cancels a linear
drift (warming up, clocks settling). The energy includes the GPU's idle/static power over the block.
"""
from __future__ import annotations

import time
from typing import Callable, Optional

BLOCK_S = 0.5        # seconds per block; four blocks per measurement
SYNC_EVERY = 4       # calls between synchronizations while a block runs (bounds the queued work)


def _block(fn: Callable[[], object], read_mj: Callable[[], Optional[int]], sync: Callable[[], None],
           block_s: float, clock: Callable[[], float]) -> Optional[tuple[float, int, float]]:
    """(mJ, calls, seconds) of one block; None when the counter could not be read."""
    sync()
    e0, t0 = read_mj(), clock()
    calls = 0
    while True:
        fn()
        calls += 1
        if calls % SYNC_EVERY == 0 or clock() - t0 >= block_s:
            sync()
            if clock() - t0 >= block_s:
                break
    e1, t1 = read_mj(), clock()
    if e0 is None or e1 is None or e1 < e0:
        return None
    return float(e1 - e0), calls, t1 - t0


def energy_per_call(fa: Callable[[], object], fb: Callable[[], object], read_mj: Callable[[], Optional[int]],
                    sync: Callable[[], None], block_s: float = BLOCK_S,
                    clock: Callable[[], float] = time.perf_counter) -> Optional[dict]:
    """{"a_mj", "b_mj"} per call, with the calls and seconds behind each; None when the counter failed or
    did not move during a variant's blocks (too coarse for this length)."""
    tot = {"a": [0.0, 0, 0.0], "b": [0.0, 0, 0.0]}
    for name, fn in (("a", fa), ("b", fb), ("b", fb), ("a", fa)):
        got = _block(fn, read_mj, sync, block_s, clock)
        if got is None:
            return None
        for i, v in enumerate(got):
            tot[name][i] += v
    if tot["a"][0] <= 0 or tot["b"][0] <= 0:
        return None
    return {"a_mj": tot["a"][0] / tot["a"][1], "b_mj": tot["b"][0] / tot["b"][1],
            "a_calls": tot["a"][1], "b_calls": tot["b"][1], "a_s": tot["a"][2], "b_s": tot["b"][2]}
