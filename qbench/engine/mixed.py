"""Mixed-precision planning: one choice per unit under a bits budget.

    assignment = plan_optimal(costs, scores, budget)      # costs[i][j] bits, scores[i][j] >= 0 (None: impossible)

plan_optimal is exact over costs rounded up to a grid of `resolution` steps of the budget (a knapsack-style
dynamic program: every unit takes exactly one choice, the summed cost stays within the budget, the summed score is
the least such a plan can have). Rounding up keeps every plan it returns within the real budget; a plan exactly
at the budget may be missed by at most one grid step per unit. plan_random upgrades units in a seeded random
order, each to the most expensive choice that still fits: a control with about the same bits.
"""
from __future__ import annotations

import math
import random
from typing import Optional, Sequence


class NoPlan(ValueError):
    """No assignment fits the budget."""


def plan_optimal(costs: Sequence[Sequence[Optional[float]]], scores: Sequence[Sequence[Optional[float]]],
                 budget: float, resolution: int = 4000) -> list[int]:
    """The choice index per unit minimizing sum(scores) with sum(costs) <= budget (see the module docstring)."""
    n = len(costs)
    if n == 0:
        return []
    step = budget / resolution
    cap = resolution
    q = [[None if c is None or s is None else math.ceil(c / step - 1e-9) for c, s in zip(cr, sr)]
         for cr, sr in zip(costs, scores)]
    inf = math.inf
    best = [0.0] + [inf] * cap              # best[b]: least score of units so far using exactly b grid steps
    back: list[list[int]] = []
    for i in range(n):
        nxt = [inf] * (cap + 1)
        arg = [-1] * (cap + 1)
        for j, qc in enumerate(q[i]):
            if qc is None or qc > cap:
                continue
            sc = float(scores[i][j])
            for b in range(cap - qc + 1):
                v = best[b]
                if v == inf:
                    continue
                v += sc
                if v < nxt[b + qc]:
                    nxt[b + qc], arg[b + qc] = v, j
        best = nxt
        back.append(arg)
        if all(v == inf for v in best):
            raise NoPlan(f"no plan fits a budget of {budget:g}: unit {i} cannot be added")
    end = min(range(cap + 1), key=lambda b: (best[b], b))
    if best[end] == inf:
        raise NoPlan(f"no plan fits a budget of {budget:g}")
    out = [0] * n
    b = end
    for i in range(n - 1, -1, -1):
        j = back[i][b]
        out[i] = j
        b -= q[i][j]
    return out


def plan_random(costs: Sequence[Sequence[Optional[float]]], budget: float, seed: int = 0) -> list[int]:
    """Every unit at its cheapest choice, then units in a seeded random order each raised to the most expensive
    choice that keeps the total within the budget."""
    cheapest = [min((c, j) for j, c in enumerate(cr) if c is not None)[1] for cr in costs]
    total = sum(costs[i][j] for i, j in enumerate(cheapest))
    if total > budget:
        raise NoPlan(f"no plan fits a budget of {budget:g}: the cheapest choices need {total:g}")
    out = list(cheapest)
    order = list(range(len(costs)))
    random.Random(seed).shuffle(order)
    for i in order:
        options = sorted(((c, j) for j, c in enumerate(costs[i]) if c is not None), reverse=True)
        for c, j in options:
            if total - costs[i][out[i]] + c <= budget:
                total += c - costs[i][out[i]]
                out[i] = j
                break
    return out
