"""The card's first page: one matrix per model and one line per setting that decides comparability.

The matrix has a row per scheme: the speed-up with its interval at the model's headline batch size, how much
smaller the weights are, the headline quality change on each workload with its interval, and a verdict mark.
The rules that pick these numbers are stated in the card (`rule`), never applied silently:
- headline batch size: the largest batch size every timed scheme of the model measured (for causal LMs, the
  prefill up to the first token);
- headline quality: the task's headline metric in the metric registry (1 − cosine for encoders, log-PPL
  ratio for causal LMs), shown as a change from the baseline (0 = no change, higher = worse);
- verdict: ▲ faster / ▼ slower when the speed-up's 95% interval excludes 1, ≈ otherwise; then, when the
  experiment declares gates, ✓ or ✗ for the gates that judge this model and scheme.
A number timed on a contended machine or with noisy repeats carries ⚠ (report.timing).
"""
from __future__ import annotations

from qbench.report.fmt import DASH, num, table
from qbench.report.index import Index, model_task
from qbench.report.plots import SPEEDUP, headline_batch
from qbench.report.summary import degradation_text
from qbench.report.timing import contention, doubts
from qbench.results.metrics import headline

RULE = ("Speed-up: baseline / quantized latency at the headline batch size, the largest batch size every timed "
        "scheme of the model measured (causal LMs: prefill up to the first token), with its paired 95% CI. "
        "Quality: the change of the task's headline metric from the baseline (0 = no change, higher = worse), "
        "95% CI. Verdict: ▲ faster or ▼ slower when the speed-up's interval excludes 1, ≈ when it does not; ✓ or "
        "✗ for the experiment's gates on that model and scheme. ⚠: timed on a contended machine or with noisy "
        "repeats (see Caveats).")


def overview(ix: Index, order: dict, cells: list, setup: dict, meta: dict, verdicts: list) -> dict:
    """{"rule", "models": [{"model", "task", "batch_size", "metric", "table"}], "setup_lines": [...]}."""
    cores = contention(ix.rows)
    models = []
    for m in order["models"]:
        task = model_task(cells, m)
        spec = headline(task)
        schemes = [s for s in order["schemes"] if any(c.get("model") == m and c.get("scheme") == s for c in cells)]
        bs = headline_batch(ix, m, schemes, order["workloads"])
        rows = [_row(ix, m, s, order["workloads"], spec, bs, cores, verdicts, cells) for s in schemes]
        label = spec.degradation_label if spec else "quality"
        cols = ["Scheme", f"Speed-up (batch {bs})" if bs is not None else "Speed-up", "Weights",
                *[f"{w}: {label}" for w in order["workloads"]], "Verdict"]
        models.append({"model": m, "task": task or DASH, "batch_size": bs, "metric": label,
                       "table": table(cols, rows, "lrr" + "r" * len(order["workloads"]) + "l")})
    return {"rule": RULE, "models": models, "setup_lines": setup_lines(setup, meta)}


def _row(ix, m, s, workloads, spec, bs, cores, verdicts, cells) -> dict:
    sw = ix.speed_workload(m, s, workloads)
    sp = ix.get(m, s, sw, SPEEDUP, "paired", bs) if sw and bs is not None else None
    mark = DASH
    speed = DASH
    if sp and num(sp["value"]) is not None:
        v, lo, hi = num(sp["value"]), num(sp["ci_low"]), num(sp["ci_high"])
        speed = f"{v:.2f}x" + (f" [{lo:.2f}, {hi:.2f}]" if None not in (lo, hi) else "")
        lat = [ix.get(m, s, sw, "latency_ms", v_, bs) for v_ in ("baseline", "quantized")]
        if doubts(cores, sp, *lat):
            speed += " ⚠"
        mark = ("▲ faster" if lo > 1 else "▼ slower" if hi < 1 else "≈ same speed") if None not in (lo, hi) else DASH
    r = ix.weights_ratio(m, s, workloads)
    weights = DASH if r is None else f"{r:.2f}x smaller" if r >= 1 else f"{1 / r:.2f}x larger"
    quality = []
    for w in workloads:
        r = ix.get(m, s, w, spec.name) if spec else None
        quality.append(degradation_text(spec, r) if r and num(r["value"]) is not None else DASH)
    gates = [v for v in verdicts if v.get("filters", {}).get("model") in (None, m)
             and v.get("filters", {}).get("scheme") in (None, s)]
    if gates:
        mark += " · " + ("✗ gates" if any(v.get("status") != "pass" for v in gates) else "✓ gates")
    failed = [c for c in cells if c.get("model") == m and c.get("scheme") == s and c.get("status") == "failed"]
    if failed:
        mark += f" · {len(failed)} cell(s) failed"
    return {"cells": [s, speed, weights, *quality, mark], "flag": "✗" in mark or bool(failed)}


def setup_lines(setup: dict, meta: dict) -> list[str]:
    """One line per setting that decides whether two cards are comparable, from the Setup tables."""
    t = setup["schemes"]
    col = {c: i for i, c in enumerate(t["columns"])}
    rows = [r["cells"] for r in t["rows"]]

    def per_scheme(fn) -> str:
        return "; ".join(f"{r[0]}: {fn(r)}" for r in rows) or DASH

    b = setup["baseline"]
    hw = meta.get("hardware_summary") or DASH
    return [
        "Weights: " + per_scheme(lambda r: " ".join(str(x) for x in (
            f"{r[col['Bits']]}-bit" if str(r[col["Bits"]]).isdigit() else r[col["Bits"]],
            r[col["Signed"]], r[col["Symmetry"]], r[col["Granularity"]]) if x not in (DASH, None))),
        "Activations: " + per_scheme(lambda r: r[col["Activations"]]),
        "Ops and exclusions: " + per_scheme(lambda r: f"{r[col['Ops']]}; excluded {r[col['Exclusions']]}"),
        "Calibration: " + per_scheme(lambda r: r[col["Calibration"]]),
        f"Baseline: requested {b['requested']}, ran in {b['resolved']}" + (f" ({b['note']})" if b.get("note") else ""),
        f"Hardware: {hw}, fingerprint {meta.get('fingerprint') or DASH}, device {meta.get('device') or DASH}; "
        "kernels: " + per_scheme(lambda r: f"{r[col['Kernel(s)']]}"
                                 + (" (emulated)" if str(r[col["Emulated"]]).startswith("yes") else "")),
    ]
