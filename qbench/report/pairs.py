"""Scheme vs scheme, paired: "did GPTQ beat RTN?" answered on the same evaluation sequences.

Two schemes of a model are compared when the experiment names them in `pairs`, or when they differ only in
their method or weight format, or only in their ops (everything else equal). Each cell records per-sequence values
(`sequences`: KL, both models' NLL, top-1 agreement; cosine for encoders), all on the same evaluation samples in
the same order, so B − A is taken per sequence and its 95% interval is a paired Student-t interval over the
sequences: much narrower than comparing two intervals against the baseline. A verdict is given only when the
interval excludes 0. Reads results only; never imports torch.
"""
from __future__ import annotations

import numpy as np

from qbench.report.fmt import DASH, sig, table
from qbench.report.index import model_task
from qbench.results import stats

# (label, per-sequence value from a cell's `sequences`, lower is better), by task
_LM = (
    ("KL mean", lambda q: np.asarray(q["kl"]), True),
    ("log-PPL ratio", lambda q: np.asarray(q["nll_quant"]) - np.asarray(q["nll_base"]), True),
    ("top-1 agreement", lambda q: np.asarray(q["top1"]), False),
)
_ENCODER = (("1 − cosine", lambda q: 1 - np.asarray(q["cosine"]), True),)


def pairs(exp: dict, cells: list, order: dict) -> dict | None:
    """The card's scheme-vs-scheme section; None when no two schemes are compared."""
    schemes = {s.get("name"): s for s in exp.get("schemes") or []}
    wanted = [tuple(p) for p in exp.get("pairs") or []]
    names = [n for n in order["schemes"] if n in schemes]
    auto = [(a, b) for i, a in enumerate(names) for b in names[i + 1:]
            if only_method_or_format(schemes[a], schemes[b]) or only_ops(schemes[a], schemes[b])]
    chosen = list(dict.fromkeys(wanted + [p for p in auto if p not in wanted and p[::-1] not in wanted]))
    if not chosen:
        return None
    by = {(c.get("model"), c.get("scheme"), c.get("workload")): c for c in cells}
    W = order["workloads"]
    rows = []
    for m in order["models"]:
        for a, b in chosen:
            task = model_task(cells, m)
            for label, value, lower_better in (_LM if task == "causal_lm" else _ENCODER if task else ()):
                shown, flag = [], False
                for w in W:
                    ca, cb = by.get((m, a, w)), by.get((m, b, w))
                    diff = _paired(ca, cb, value)
                    if diff is None:
                        shown.append(DASH)
                        continue
                    d, lo, hi, n = diff
                    verdict = _verdict(d, lo, hi, a, b, lower_better)
                    flag |= verdict.endswith("better")
                    shown.append(f"{sig(d)} [{sig(lo)}, {sig(hi)}] (n={n}): {verdict}")
                if any(x != DASH for x in shown):
                    rows.append({"cells": [m, a, b, label, *shown], "flag": flag})
    if not rows:
        return None
    return {"note": "B − A per evaluation sequence, the mean with a paired 95% Student-t interval over the same "
                    "sequences; a scheme is called better only when the interval excludes 0. Compared: the pairs "
                    "the experiment names, and schemes that differ only in method, weight format or ops.",
            "table": table(["Model", "A", "B", "Metric", *[f"{w}: B − A [95% CI]" for w in W]], rows,
                           "llll" + "l" * len(W))}


def only_method_or_format(a: dict, b: dict) -> bool:
    """Whether two scheme dicts (as stored) differ in their method or weights.format and nothing else (a value
    table and an integer format compare by granularity and group size: they have no common bit width)."""
    if a.get("runtime") or b.get("runtime"):
        return False
    fa, fb = ((s.get("weights") or {}).get("format") or "int" for s in (a, b))
    ma, mb = ((s.get("method") or {"name": "rtn"}) for s in (a, b))

    def rest(s: dict) -> dict:
        w = {k: v for k, v in (s.get("weights") or {}).items() if k != "format"}
        if fa != fb:
            w = {k: w.get(k) for k in ("granularity", "group_size")}
        return {k: v for k, v in dict(s, weights=w).items() if k not in ("name", "method", "calibration", "if_fails")}
    return rest(a) == rest(b) and (ma != mb or fa != fb)


def only_ops(a: dict, b: dict) -> bool:
    """Whether two scheme dicts (as stored) differ in their ops and nothing else (e.g. W8A8 with and without
    quantized attention matmuls)."""
    if a.get("runtime") or b.get("runtime"):
        return False
    rest = [{k: v for k, v in s.items() if k not in ("name", "ops", "if_fails")} for s in (a, b)]
    return rest[0] == rest[1] and sorted(a.get("ops") or ["linear"]) != sorted(b.get("ops") or ["linear"])


def degradation(task: str | None):
    """The per-sequence degradation a cell's `sequences` give for a task: KL (causal LMs), 1 − cosine (encoders)."""
    return (_LM if task == "causal_lm" else _ENCODER)[0][1]


def aligned(ca: dict | None, cb: dict | None, value) -> tuple[np.ndarray, np.ndarray] | None:
    """(A's, B's) per-sequence values when both cells recorded them on the same evaluation sequences (same
    hash, same count, at least 2); None otherwise."""
    qa, qb = ((c or {}).get("sequences") for c in (ca, cb))
    if not qa or not qb:
        return None
    try:
        xa, xb = value(qa), value(qb)
    except KeyError:
        return None
    if len(xa) != len(xb) or len(xa) < 2:
        return None
    if (ca.get("evaluation") or {}).get("hash") != (cb.get("evaluation") or {}).get("hash"):
        return None                       # not the same sequences: no pairing
    return xa, xb


def _paired(ca: dict | None, cb: dict | None, value) -> tuple[float, float, float, int] | None:
    """(mean of B − A, CI low, CI high, sequences) when both cells recorded the same sequences."""
    pair = aligned(ca, cb, value)
    if pair is None:
        return None
    xa, xb = pair
    d, lo, hi = stats.mean_ci(xb - xa)
    return d, lo, hi, len(xa)


def _verdict(d: float, lo: float, hi: float, a: str, b: str, lower_better: bool) -> str:
    if lo <= 0 <= hi:
        return "not distinguishable"
    b_lower = hi < 0
    return f"{b} better" if b_lower == lower_better else f"{a} better"
