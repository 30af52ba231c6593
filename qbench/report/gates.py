"""Gates: pass/fail checks an experiment declares on its results (`gates:` in the experiment file).

    verdicts = evaluate_gates(meta["experiment"], rows)   # one verdict per gate, plain JSON-able dicts
    gates_failed(verdicts)                                # True when any gate failed or had no data

A gate judges every row matching its metric, variant and filters. It fails when one row is outside
its bound, and it is "no_data" (counted as failed) when nothing matches or when a row it should judge
is missing or lacks the number it judges: a gate that cannot be checked never passes silently.
Gates are read as plain data from the run's stored experiment and checked against the metric registry
(qbench.report.gate_spec). Pure functions of their inputs; never imports torch or the schema.
"""
from __future__ import annotations

from itertools import product

from qbench.report.fmt import DASH, num, table
from qbench.report.gate_spec import GateSpec, InvalidGate, parse_gate
from qbench.report.index import ordered
from qbench.report.timing import contended, contention

_MAX_LISTED = 3


def evaluate_gates(experiment, rows: list[dict]) -> list[dict]:
    """One verdict per gate of `experiment` (meta.json's "experiment" dict, or an Experiment).

    Each verdict: index, name, label, check, metric, use, variant, filters (dict of the filters set),
    applies_to (text), bound (text), min, max, matched (rows judged), worst (number or None),
    worst_text, worst_where, status (pass | fail | no_data), failed (bool) and detail (one sentence, naming
    any model / scheme / workload the gate covers that has no row).
    """
    if hasattr(experiment, "model_dump"):
        experiment = experiment.model_dump(mode="json")
    exp = experiment if isinstance(experiment, dict) else {}
    scope = _Scope(exp, rows or [])
    gates = exp.get("gates") or []
    return [_evaluate(i, g, scope) for i, g in enumerate(gates if isinstance(gates, (list, tuple)) else [])]


def gates_failed(verdicts: list[dict]) -> bool:
    """True when any gate did not pass (a "no_data" gate counts as failed)."""
    return any(v.get("status") != "pass" for v in verdicts)


def gates_verdict(verdicts: list[dict]) -> str:
    """The overall verdict in one line ('' when there are no gates)."""
    if not verdicts:
        return ""
    n = len(verdicts)
    failed = [v for v in verdicts if v.get("status") != "pass"]
    if not failed:
        return f"PASS: all {n} gate{'s' if n > 1 else ''} passed." if n > 1 else "PASS: the gate passed."
    no_data = sum(v.get("status") == "no_data" for v in failed)
    out = len(failed) - no_data
    parts = ([f"{out} out of bounds"] if out else []) + ([f"{no_data} with no data to judge"] if no_data else [])
    return f"FAIL: {len(failed)} of {n} gate{'s' if n > 1 else ''} failed: {', '.join(parts)}."


def verdict_lines(verdicts: list[dict]) -> list[str]:
    """Plain text for a terminal: one line per gate, then the overall verdict."""
    lines = [f"gate {v['label']}: {status_text(v['status'])} — {v['detail']}" for v in verdicts]
    return lines + ([gates_verdict(verdicts)] if verdicts else [])


def status_text(status: str) -> str:
    """How a verdict's status reads in the card and on a terminal."""
    return STATUS_TEXT.get(status, status)


STATUS_TEXT = {"pass": "pass", "fail": "FAIL", "no_data": "NO DATA (fails)"}


def gates_section(verdicts: list) -> dict | None:
    """The card's Gates section: overall verdict and one table row per gate; None when there are no gates."""
    if not verdicts:
        return None
    rows = [{"cells": [v["index"] + 1, v["name"] or DASH, v["check"], v["applies_to"], v["matched"],
                       v["worst_text"], status_text(v["status"]), v["detail"]],
             "flag": v["status"] != "pass"} for v in verdicts]
    return {"failed": gates_failed(verdicts), "verdict": gates_verdict(verdicts),
            "table": table(["#", "Gate", "Check", "Applies to", "Rows", "Worst", "Status", "Detail"],
                           rows, "rlllrrll")}


class _Scope:
    """What the experiment says should exist: model, scheme and workload names, batch sizes, tasks."""

    def __init__(self, exp: dict, rows: list[dict]):
        self.rows = [r for r in rows if isinstance(r, dict)]
        self.cores = contention(self.rows)     # cell -> foreign CPU cores while it was timed
        models = [m for m in exp.get("models") or [] if isinstance(m, dict)]
        self.alias = {m.get("id"): m.get("name") or m.get("id") for m in models}
        self.models = ordered([m.get("name") or m.get("id") for m in models], [r.get("model") for r in self.rows])
        self.schemes = ordered([s.get("name") for s in exp.get("schemes") or [] if isinstance(s, dict)],
                               [r.get("scheme") for r in self.rows])
        self.workloads = ordered([w.get("name") for w in exp.get("workloads") or [] if isinstance(w, dict)],
                                 [r.get("workload") for r in self.rows])
        self.batch_sizes = ordered(list((exp.get("measure") or {}).get("batch_sizes") or []),
                                   sorted({r["batch_size"] for r in self.rows if r.get("batch_size") is not None}))
        self.tasks = {}  # model display name -> task, from the rows (what ran) or the experiment (if set)
        for m in models:
            if m.get("task") in ("encoder", "causal_lm"):
                self.tasks[m.get("name") or m.get("id")] = m["task"]
        for r in self.rows:
            if r.get("task"):
                self.tasks[r.get("model")] = r["task"]


def _evaluate(i: int, raw, scope: _Scope) -> dict:
    try:
        gate = parse_gate(raw)
    except InvalidGate as e:
        metric = raw.get("metric") if isinstance(raw, dict) else None
        return _verdict_dict(i, None, str(metric or DASH), "value", DASH, {}, DASH, None, None, [], None,
                             "no_data", f"invalid gate ({e}); it cannot be checked")
    variant = gate.resolved_variant
    model = scope.alias.get(gate.model, gate.model) if gate.model not in scope.models else gate.model
    filters = {k: v for k, v in (("model", model), ("scheme", gate.scheme), ("workload", gate.workload),
                                 ("batch_size", gate.batch_size), ("variant", gate.variant)) if v is not None}
    matched = [r for r in scope.rows if r.get("metric") == gate.metric and r.get("variant") == variant
               and all(r.get(k) == v for k, v in filters.items() if k != "variant")]
    models, not_measured, missing = _coverage(gate, model, matched, scope)
    judged = [(num(r.get(gate.use)), r) for r in matched]
    unjudged = [(x, r) for x, r in judged if x is None]
    judged = [(x, r) for x, r in judged if x is not None]
    worst = min(judged, key=lambda xr: _margin(gate, xr[0]), default=None)
    bad = [(x, r) for x, r in judged if _margin(gate, x) < 0]
    problems = []
    if unjudged:
        problems.append(f"{_rows(len(unjudged))} without a {gate.use} ({_where(unjudged[0][1])}"
                        f"{', ...' if len(unjudged) > 1 else ''})")
    if missing:
        problems.append(f"no {gate.metric} ({variant}) result for {_listed([_key_text(k) for k in missing])} "
                        "(cell failed, skipped or not run)")
    status, detail = _judgement(gate, scope, judged, matched, bad, worst, problems, models, not_measured)
    if gate.spec.per_batch:       # a timing: say when the machine, not the code, may explain it
        busy = [r for _, r in (bad or judged) if contended(scope.cores, r.get("cell")) is not None]
        if busy:
            worst_busy = max(contended(scope.cores, r.get("cell")) for r in busy)
            detail = (detail.rstrip(".") + f"; {len(busy)} of {'the failing' if bad else 'these'} rows were timed on "
                      f"a contended machine (up to {worst_busy:.2f} other cores busy), so the machine, not the "
                      "code, may explain them.")
    return _verdict_dict(i, gate, gate.metric, gate.use, variant, filters, _bound_text(gate), gate.min, gate.max,
                         matched, worst, status, detail)


def _coverage(gate: GateSpec, model, matched: list, scope: _Scope) -> tuple[list, list, list]:
    """(models the gate covers, models it skips as another task, (model, scheme, workload, batch) it covers
    that have no row)."""
    spec = gate.spec
    models = [model] if model is not None else scope.models
    not_measured = [m for m in models if spec.task and scope.tasks.get(m) not in (None, spec.task)]
    models = [m for m in models if m not in not_measured]
    schemes = [gate.scheme] if gate.scheme is not None else scope.schemes
    workloads = [gate.workload] if gate.workload is not None else scope.workloads
    sizes = ([gate.batch_size] if gate.batch_size is not None else scope.batch_sizes) if spec.per_batch else [None]
    have = {(r.get("model"), r.get("scheme"), r.get("workload"), r.get("batch_size")) for r in matched}
    return models, not_measured, [k for k in product(models, schemes, workloads, sizes) if k not in have]


def _margin(gate: GateSpec, x: float) -> float:
    """Distance to the nearest bound, negative outside."""
    return min(x - gate.min if gate.min is not None else float("inf"),
               gate.max - x if gate.max is not None else float("inf"))


def _judgement(gate: GateSpec, scope: _Scope, judged, matched, bad, worst, problems, models,
               not_measured) -> tuple[str, str]:
    """(status, detail sentence)."""
    what = gate.metric if gate.use == "value" else f"{gate.metric} {gate.use}"
    if bad:
        detail = (f"{len(bad)} of {_rows(len(judged))} outside the bound; worst {what} "
                  f"{_num_text(worst[0], gate)} at {_where(worst[1])}")
        return "fail", detail + "".join(f"; also {p}" for p in problems) + "."
    if not matched:
        if models:
            return "no_data", (f"no rows match, so the gate cannot be checked: {problems[0]}." if problems else
                               "no rows match, so the gate cannot be checked.")
        tasks = ", ".join(f"{m}: {scope.tasks.get(m)}" for m in not_measured) or "no models"
        return "no_data", (f"{gate.metric} is only measured for {gate.spec.task} models ({tasks}), so the gate "
                           "cannot be checked.")
    if problems:
        return "no_data", (f"{_rows(len(judged))} within the bound, but the gate cannot be fully checked: "
                           f"{'; '.join(problems)}.")
    return "pass", (f"{'all ' if len(judged) > 1 else ''}{_rows(len(judged))} within the bound; worst {what} "
                    f"{_num_text(worst[0], gate)} at {_where(worst[1])}.")


def _verdict_dict(i, gate, metric, use, variant, filters, bound, lo, hi, matched, worst, status, detail) -> dict:
    """One gate's verdict as plain JSON-able data (the keys evaluate_gates documents)."""
    what = metric if use == "value" else f"{metric} ({use})"
    check = f"{what} {bound}"
    applies = [f"{k.replace('_', ' ')} {v}" for k, v in filters.items()]
    return {
        "index": i,
        "name": gate.name if gate is not None else None,
        "label": (gate.name if gate is not None and gate.name else
                  check + (f" ({', '.join(applies)})" if applies else "")),
        "check": check,
        "metric": metric,
        "use": use,
        "variant": variant,
        "filters": filters,
        "applies_to": ", ".join(applies) or "all rows",
        "bound": bound,
        "min": lo,
        "max": hi,
        "matched": len(matched),
        "worst": worst[0] if worst else None,
        "worst_text": _num_text(worst[0], gate) if worst else DASH,
        "worst_where": _where(worst[1]) if worst else None,
        "status": status,
        "failed": status != "pass",
        "detail": detail,
    }


def _bound_text(gate) -> str:
    if gate.min is not None and gate.max is not None:
        return f"in [{_plain(gate.min)}, {_plain(gate.max)}]"
    return f"≥ {_plain(gate.min)}" if gate.min is not None else f"≤ {_plain(gate.max)}"


def _plain(x: float) -> str:
    """A bound as written: 0.05, 1.2, 50,000,000."""
    if float(x).is_integer() and abs(x) < 1e15:
        return f"{int(x):,}"
    return repr(float(x))


def _num_text(x: float | None, gate) -> str:
    """Enough significant digits that a value never reads as equal to a bound it differs from."""
    if x is None:
        return DASH
    if float(x).is_integer() and abs(x) < 1e15:
        return f"{int(x):,}"
    bounds = [b for b in (gate.min, gate.max) if b is not None] if gate is not None else []
    for digits in range(4, 18):
        s = f"{x:,.{digits - 4}f}" if abs(x) >= 1e4 else f"{x:.{digits}g}"
        shown = float(s.replace(",", ""))
        if all(shown != b for b in bounds if b != x) and not any(_flips(shown, x, b) for b in bounds):
            return s
    return repr(x)


def _flips(shown: float, x: float, bound: float) -> bool:
    # rounding must not move a value across a bound (1.19996 shown as "1.2" next to "min 1.2")
    return (shown < bound) != (x < bound) or (shown > bound) != (x > bound)


def _rows(n: int) -> str:
    return f"{n} row{'s' if n != 1 else ''}"


def _where(r: dict) -> str:
    out = " / ".join(str(r.get(k)) for k in ("model", "scheme", "workload"))
    return out + (f", batch {r['batch_size']}" if r.get("batch_size") is not None else "")


def _key_text(k: tuple) -> str:
    out = " / ".join(str(x) for x in k[:3])
    return out + (f", batch {k[3]}" if k[3] is not None else "")


def _listed(items: list[str]) -> str:
    if len(items) <= _MAX_LISTED:
        return "; ".join(items)
    return "; ".join(items[:_MAX_LISTED]) + f" and {len(items) - _MAX_LISTED} more"
