"""Quantization-aware training in the card: what each QAT scheme trained on, and how much of its PTQ twin's gap it
closed.

A QAT scheme's PTQ twin is the scheme named by its `if_fails`, else the first round-to-nearest scheme that
differs from it only in method (and calibration). Recovery of the PTQ gap, per workload:
    (degradation_PTQ - degradation_QAT) / degradation_PTQ
with degradation the per-sequence KL (causal LMs) or 1 - cosine (encoders) against the baseline, on the same
evaluation sequences, and a paired percentile bootstrap interval (sequences resampled jointly). 1 is the whole
gap closed, 0 none, below 0 worse than PTQ. Reads results only; never imports torch.
"""
from __future__ import annotations

import numpy as np

from qbench.report.fmt import DASH, sig, table
from qbench.report.index import model_task
from qbench.report.pairs import aligned, degradation, only_method_or_format
from qbench.results import stats


def twins(exp: dict, order: dict) -> dict[str, str]:
    """{QAT scheme: its PTQ twin} for every QAT scheme that has one."""
    schemes = {s.get("name"): s for s in exp.get("schemes") or []}
    out = {}
    for name in order["schemes"]:
        s = schemes.get(name) or {}
        if (s.get("method") or {}).get("name") != "qat":
            continue
        twin = s.get("if_fails") or next(
            (n for n in order["schemes"] if n != name and n in schemes
             and (schemes[n].get("method") or {"name": "rtn"})["name"] == "rtn"
             and _format(schemes[n]) == _format(s) and only_method_or_format(schemes[n], s)), None)
        if twin:
            out[name] = twin
    return out


def _format(s: dict) -> str:
    return (s.get("weights") or {}).get("format") or "int"


def training(exp: dict, cells: list, order: dict) -> dict | None:
    """The card's QAT section; None when the experiment has no QAT scheme."""
    schemes = {s.get("name"): s for s in exp.get("schemes") or []}
    qat = [n for n in order["schemes"] if ((schemes.get(n) or {}).get("method") or {}).get("name") == "qat"]
    if not qat:
        return None
    pair = twins(exp, order)
    by = {(c.get("model"), c.get("scheme"), c.get("workload")): c for c in cells}
    W = order["workloads"]
    runs, recovery = [], []
    for m in order["models"]:
        task = model_task(cells, m)
        for s in qat:
            mine = [by[(m, s, w)] for w in W if (m, s, w) in by]
            if not mine:
                continue
            runs.append({"cells": [m, s, pair.get(s, DASH), *_run_cells(schemes[s], mine)], "flag": False})
            twin = pair.get(s)
            if not twin or not task:
                continue
            shown = []
            for w in W:
                pair_ab = aligned(by.get((m, twin, w)), by.get((m, s, w)), degradation(task))
                if pair_ab is None or pair_ab[0].mean() == 0:
                    shown.append(DASH)
                    continue
                a, b = pair_ab
                r, lo, hi = stats.gap_recovery(a, b)
                shown.append(f"{sig(100 * r)}% [{sig(100 * lo)}, {sig(100 * hi)}] ({sig(a.mean())} → "
                             f"{sig(b.mean())}, n={len(a)})")
            if any(x != DASH for x in shown):
                recovery.append({"cells": [m, s, twin, "KL mean" if task == "causal_lm" else "1 − cosine", *shown],
                                 "flag": False})
    return {
        "note": "Quantization-aware training starts from round to nearest, fake-quantizes every quantized weight "
                "(and activation) with a straight-through estimator, learns the scales (LSQ) when asked, and is "
                "distilled from the unquantized model on the calibration samples only; the trained codes then run "
                "on the same kernels as every other scheme. Recovery of the PTQ gap = (PTQ − QAT) / PTQ "
                "degradation on the same evaluation sequences, with a paired bootstrap 95% interval (100% closes "
                "the gap, 0% changes nothing, below 0 is worse than PTQ).",
        "runs": table(["Model", "QAT scheme", "PTQ twin", "Steps", "Tokens", "Peak lr", "Batch", "Training time",
                       "Training data", "Run"], runs, "lllrrrrrll"),
        "recovery": table(["Model", "QAT", "PTQ", "Degradation", *[f"{w}: recovery [95% CI] (PTQ → QAT)" for w in W]],
                          recovery, "llll" + "l" * len(W)),
    }


def _run_cells(scheme: dict, cells: list) -> list[str]:
    """Steps, tokens, lr, batch, time, data and how the run went, from the scheme's cells."""
    params = (scheme.get("method") or {})
    trained = next((c for c in cells if ((c.get("method") or {}).get("training") or {}).get("reused") is False),
                   None)
    info = next((c.get("method") for c in cells if (c.get("method") or {}).get("training")), None)
    skipped = [c for c in cells if c.get("status") == "skipped"]
    trig = next((c.get("triggered_by") for c in cells if c.get("triggered_by")), None)
    if info is None:
        why = skipped[0].get("reason") if skipped else "no cell finished"
        return [DASH] * 6 + [why]
    t, p = info["training"], info.get("params") or params
    cal = next((c.get("calibration") for c in cells if c.get("calibration")), None) or {}
    data = (f"{cal.get('dataset', DASH)}, {cal.get('size', DASH)} samples x {cal.get('seq_len', DASH)} tokens, "
            f"hash {str(cal.get('hash', DASH))[:12]}; evaluation hashes "
            + ", ".join(f"{c.get('workload')} {str((c.get('evaluation') or {}).get('hash', DASH))[:12]}" for c in cells)
            + f"; overlap {cal.get('overlap_with_eval', DASH)}")
    how = []
    if trained is None:
        how.append("trained state reused from an earlier run")
    elif t.get("resumed_from"):
        how.append(f"resumed from the checkpoint at step {t['resumed_from']}")
    else:
        how.append("trained in this run")
    if trig:
        gates = trig.get("gates") or []
        how.append(f"ran because {trig.get('scheme')} failed: {', '.join(gates)}" if gates else
                   f"{trig.get('scheme')} passed its gates")
    loss = t.get("loss") or []
    if loss:
        how.append(f"loss {sig(loss[0])} → {sig(np.mean(loss[-max(1, len(loss) // 10):]))} (first step → mean of "
                   "the last 10%)")
    return [str(t.get("steps", DASH)), f"{t.get('tokens', 0):,}", sig(p.get("lr")) if p.get("lr") else DASH,
            str(p.get("batch_size", DASH)), f"{sig(t.get('seconds'))} s on {t.get('threads', DASH)} threads",
            data, "; ".join(how)]
