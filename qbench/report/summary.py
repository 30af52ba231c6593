"""The card's verdicts in prose: one summary line per model x scheme, and which workload degrades more.

Which quality number heads a task's summary and which metrics are compared across workloads, with their
"no change" value and direction, come from the metric registry (headline, contrast, ideal, direction).
"""
from __future__ import annotations

from qbench.report.fmt import fmt, num, sig, table
from qbench.report.index import Index, model_task
from qbench.report.timing import contention, doubts
from qbench.results.metrics import Metric, contrasted, headline

Z95 = 1.959963984540054


def summary(ix: Index, order: dict, cells: list) -> list:
    """[{"model", "scheme", "text"}]: speed, weight size and headline quality of each model x scheme."""
    out = []
    for m in order["models"]:
        for s in order["schemes"]:
            mine = [c for c in cells if (c.get("model"), c.get("scheme")) == (m, s)]
            if not mine:
                continue
            task = next((c.get("task") for c in mine if c.get("task")), None)
            parts = _speed_parts(ix, order, m, s) + _weight_parts(ix, order, m, s)
            quality, tail = _quality_parts(ix, order, m, s, headline(task))
            parts += quality
            if not parts:
                why = "; ".join(f"{c.get('workload')}: {c.get('status')} ({c.get('reason') or 'no reason'})"
                                for c in mine if c.get("status") != "ok")
                parts.append("no results" + (f" ({why})" if why else ""))
            out.append({"model": m, "scheme": s, "text": f"{s} on {m}: {', '.join(parts)}{tail}."})
    return out


def _speed_parts(ix: Index, order: dict, m: str, s: str) -> list[str]:
    sw = ix.speed_workload(m, s, order["workloads"])
    bs = ix.batch_sizes(m, s, sw)[-1] if sw else None
    sp = ix.get(m, s, sw, "speedup", "paired", bs) if sw else None
    if not (sp and num(sp["value"])):
        return []
    v, lo, hi = num(sp["value"]), num(sp["ci_low"]), num(sp["ci_high"])
    ci = f" (95% CI {lo:.2f}-{hi:.2f})" if lo is not None and hi is not None else ""
    why = doubts(contention(ix.rows), sp, *(ix.get(m, s, sw, "latency_ms", v_, bs) for v_ in ("baseline", "quantized")))
    if why:
        ci += f" ⚠ {', '.join(why)}"
    where = f" at batch {bs}" + (f" on {sw}" if len(order["workloads"]) > 1 else "")
    if lo is not None and hi is not None and lo <= 1 <= hi:
        return [f"no clear speed change ({v:.2f}x{where}{ci})"]
    return [f"{v:.2f}x faster{where}{ci}" if v >= 1 else f"{v:.2f}x the baseline speed (slower){where}{ci}"]


def _weight_parts(ix: Index, order: dict, m: str, s: str) -> list[str]:
    r = ix.weights_ratio(m, s, order["workloads"])
    if r is None:
        return []
    return [f"weights {r:.1f}x smaller" if r >= 1 else f"weights {1 / r:.1f}x larger"]


def _quality_parts(ix: Index, order: dict, m: str, s: str, spec: Metric | None) -> tuple[list[str], str]:
    """The headline quality per workload, and (with two workloads) the same verdict as the contrast section."""
    if spec is None:
        return [], ""
    qual = [(w, ix.get(m, s, w, spec.name)) for w in order["workloads"]]
    qual = [(w, r) for w, r in qual if r and num(r["value"]) is not None]
    parts = [f"{w} {spec.short} {fmt(r['value'], spec.name)}" for w, r in qual]
    if len(qual) < 2:
        return parts, ""
    (wa, ra), (wb, rb) = qual[0], qual[1]
    verdict = workload_verdict(wa, wb, ra, rb, spec)[1]
    tail = (f" — {verdict}" if "degrades more" in verdict
            else f" — {wa} vs {wb}: not distinguishable at this sample size")
    return parts, tail


def contrast(ix: Index, order: dict, cells: list) -> dict | None:
    """Text vs code: which workload degrades more, by how much, with intervals; None with one workload."""
    W = order["workloads"]
    if len(W) < 2:
        return None
    a, b = ("text", "code") if {"text", "code"} <= set(W) else (W[0], W[1])
    rows = []
    for m in order["models"]:
        task = model_task(cells, m)
        for s in order["schemes"]:
            for spec in contrasted(task):
                ra, rb = ix.get(m, s, a, spec.name), ix.get(m, s, b, spec.name)
                if not (ra and rb) or None in (num(ra["value"]), num(rb["value"])):
                    continue
                shown = [degradation_text(spec, r) for r in (ra, rb)]
                diff_s, verdict = workload_verdict(a, b, ra, rb, spec)
                rows.append({"cells": [m, s, spec.degradation_label, shown[0], shown[1], diff_s, verdict],
                             "flag": "degrades more" in verdict})
    if not rows:
        return None
    return {"workloads": [a, b],
            "note": f"Degradation per workload, value [95% CI]: 1 − cosine for encoders, log(PPL ratio) and mean "
                    f"KL for causal LMs (0 = no change, higher = worse). Difference = {b} − {a}; its interval "
                    "treats the two workloads as independent samples (normal approximation from each 95% CI). "
                    "A workload degrades more only when that interval excludes 0.",
            "table": table(["Model", "Scheme", "Degradation", a, b, f"{b} − {a} [95% CI]", "Verdict"], rows,
                           "lllrrrl")}


def workload_verdict(a: str, b: str, ra: dict, rb: dict, spec: Metric) -> tuple[str, str]:
    """(b − a degradation difference [95% CI] as text, verdict): which workload degrades more, if any."""
    da, db = spec.degradation(num(ra["value"])), spec.degradation(num(rb["value"]))
    diff, half = db - da, None
    cis = [(num(r.get("ci_low")), num(r.get("ci_high"))) for r in (ra, rb)]
    if all(None not in ci for ci in cis):
        se = [(hi - lo) / (2 * Z95) for lo, hi in cis]
        half = Z95 * (se[0] ** 2 + se[1] ** 2) ** 0.5
    diff_s = sig(diff) + (f" [{sig(diff - half)}, {sig(diff + half)}]" if half is not None else "")
    if half is None:
        return diff_s, "no interval"
    if abs(diff) <= half:
        return diff_s, "not distinguishable"
    more, less, dm, dl = (b, a, db, da) if diff > 0 else (a, b, da, db)
    return diff_s, f"{more} degrades more" + (f" ({dm / dl:.1f}x {less})" if dl > 0 else "")


def degradation_text(spec: Metric, r: dict) -> str:
    """A row's degradation with its interval, e.g. '0.0019 [0.0015, 0.0024]' for 1 − cosine."""
    v, lo, hi = (num(r.get(k)) for k in ("value", "ci_low", "ci_high"))
    out = sig(spec.degradation(v))
    if lo is not None and hi is not None:
        lo, hi = sorted((spec.degradation(lo), spec.degradation(hi)))
        out += f" [{sig(lo)}, {sig(hi)}]"
    return out
