"""The mixed-precision planners against brute force."""
from __future__ import annotations

import itertools
import random

import pytest

from qbench.engine.mixed import NoPlan, plan_optimal, plan_random


def brute(costs, scores, budget):
    best = None
    for pick in itertools.product(*[range(len(c)) for c in costs]):
        if any(costs[i][j] is None for i, j in enumerate(pick)):
            continue
        c = sum(costs[i][j] for i, j in enumerate(pick))
        s = sum(scores[i][j] for i, j in enumerate(pick))
        if c <= budget and (best is None or s < best[0]):
            best = (s, pick)
    return best


@pytest.mark.parametrize("seed", range(25))
def test_optimal_plan_equals_brute_force_on_grid_costs(seed):
    rng = random.Random(seed)
    n, k = rng.randint(2, 6), rng.randint(2, 3)
    costs = [[rng.randint(1, 20) * 10 for _ in range(k)] for _ in range(n)]
    scores = [[rng.random() for _ in range(k)] for _ in range(n)]
    if seed % 5 == 0:
        costs[0][1] = scores[0][1] = None                    # a choice the unit cannot take
    budget = sum(min(c for c in row if c is not None) for row in costs) + rng.randint(0, 100) * 10
    want = brute(costs, scores, budget)
    pick = plan_optimal(costs, scores, budget, resolution=budget // 10)   # grid of 10: costs sit on it
    assert sum(costs[i][j] for i, j in enumerate(pick)) <= budget
    assert sum(scores[i][j] for i, j in enumerate(pick)) == pytest.approx(want[0], abs=1e-12)


def test_plans_stay_within_the_budget_or_say_none_fits():
    costs = [[4.5, 8.25, 32.0]] * 10
    scores = [[1.0, 0.1, 0.0]] * 10
    for budget in (45.0, 60.0, 82.5, 100.0):
        for pick in (plan_optimal(costs, scores, budget), plan_random(costs, budget, seed=3)):
            assert sum(costs[i][j] for i, j in enumerate(pick)) <= budget + 1e-9
    with pytest.raises(NoPlan):
        plan_optimal(costs, scores, 44.0)
    with pytest.raises(NoPlan):
        plan_random(costs, 44.0)
    assert plan_random(costs, 60.0, seed=1) != plan_random(costs, 60.0, seed=2)
