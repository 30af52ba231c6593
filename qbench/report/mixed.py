"""Mixed precision in the card: each mixed scheme's plan, its budget against the bits it realized, the proxy's
prediction against the measured damage, and the data of the frontier plot (bits per weight vs measured damage).

The damage is KL mean (causal LMs) or 1 − cosine mean (encoders) against the baseline, as measured on the
evaluation samples; the proxy is the plan's summed per-unit sensitivity from calibration samples. Their rank
correlation (Spearman) is given over a model's optimal plans when there are at least three. Reads results only;
never imports torch.
"""
from __future__ import annotations

from collections import Counter

from qbench.report.fmt import DASH, sig, table
from qbench.report.index import model_task
from qbench.report.plots import degradation_ci
from qbench.results.metrics import metric


def damage(ix, m: str, s: str, w: str, task: str | None) -> list | None:
    """[value, low, high] of KL mean (causal LMs) or 1 − cosine mean (encoders) for one cell, or None."""
    return degradation_ci(ix, m, s, w, metric("kl_mean" if task == "causal_lm" else "cosine_mean"))


def strip(units: list) -> str:
    """The plan in model order, one character per unit: a digit of its choice's name where one is free, else a
    letter (a legend follows), blocks separated by a space."""
    names = sorted({u["choice"] for u in units})
    marks, used = {}, set()
    for n in names:
        ch = next((c for c in [*(c for c in n if c.isdigit()), *(c for c in n if c.isalpha())] if c not in used),
                  n[0])
        marks[n] = ch
        used.add(ch)
    out, depth = [], None
    for u in units:
        if depth is not None and u.get("depth") != depth:
            out.append(" ")
        depth = u.get("depth")
        out.append(marks[u["choice"]])
    legend = ", ".join(f"{marks[n]} = {n}" for n in names)
    return f"{''.join(out)} ({legend})"


def spearman(xs: list, ys: list) -> float | None:
    """Spearman's rank correlation (average ranks for ties), None below 3 points or with no spread."""
    if len(xs) < 3:
        return None

    def ranks(v):
        order = sorted(range(len(v)), key=lambda i: v[i])
        r = [0.0] * len(v)
        i = 0
        while i < len(v):
            j = i
            while j + 1 < len(v) and v[order[j + 1]] == v[order[i]]:
                j += 1
            for k in range(i, j + 1):
                r[order[k]] = (i + j) / 2
            i = j + 1
        return r
    a, b = ranks(xs), ranks(ys)
    ma, mb = sum(a) / len(a), sum(b) / len(b)
    cov = sum((x - ma) * (y - mb) for x, y in zip(a, b))
    va, vb = sum((x - ma) ** 2 for x in a), sum((y - mb) ** 2 for y in b)
    return cov / (va * vb) ** 0.5 if va and vb else None


def mixed(ix, cells: list, order: dict) -> dict | None:
    """The card's mixed-precision section; None when no cell has a mixed plan."""
    plans = {}
    for c in cells:
        if c.get("mixed") and (c["model"], c["scheme"]) not in plans:
            plans[(c["model"], c["scheme"])] = c["mixed"]
    if not plans:
        return None
    W = order["workloads"]
    rows, proxy = [], []
    for m in order["models"]:
        task = model_task(cells, m)
        label = "KL mean" if task == "causal_lm" else "1 − cosine"
        pts = {w: [] for w in W}
        for s in order["schemes"]:
            p = plans.get((m, s))
            if not p:
                continue
            counts = Counter(u["choice"] for u in p["units"])
            shown = []
            for w in W:
                d = damage(ix, m, s, w, task)
                shown.append(DASH if d is None else f"{sig(d[0])} [{sig(d[1])}, {sig(d[2])}]")
                if d is not None and p.get("strategy") == "optimal":
                    pts[w].append((p["predicted"], d[0]))
            rows.append({"cells": [m, s, p.get("strategy", DASH), sig(p["budget_bits"]), sig(p["planned_bits"]),
                                   sig(p.get("held_bits")), ", ".join(f"{k} ×{v}" for k, v in sorted(counts.items())),
                                   sig(p["predicted"]), *shown, strip(p["units"])], "flag": False})
        cors = [spearman([a for a, _ in pts[w]], [b for _, b in pts[w]]) for w in W]
        if any(pts[w] for w in W):
            proxy.append({"cells": [m, label, *[DASH if r is None else f"{sig(r)} over {len(pts[w])} plans"
                                                for r, w in zip(cors, W)]], "flag": False})
    return {
        "note": "Each mixed scheme assigns every unit (a linear, or the linears that read one input) one of its "
                "choices to minimize the summed sensitivity (each unit quantized alone, on calibration samples) "
                "under the budget; optimal plans solve it exactly, random plans upgrade units in a seeded random "
                "order (a control with about the same bits). Planned bits count codes, scales and zero points of "
                "the units' weights; held bits are what the quantized modules hold. Measured: on the evaluation "
                "samples, 95% CI. The plan strip reads in model order, one mark per unit, blocks separated.",
        "plans": table(["Model", "Scheme", "Strategy", "Budget bits", "Planned bits", "Held bits", "Units",
                        "Predicted (summed proxy)", *[f"{w}: measured [95% CI]" for w in W], "Plan"], rows,
                       "lllrrrlr" + "l" * len(W) + "l"),
        "proxy": table(["Model", "Measured", *[f"{w}: Spearman (proxy vs measured)" for w in W]], proxy,
                       "ll" + "l" * len(W)),
    }
