"""Compare two run folders: compare.md, compare.html and compare.json, written atomically.

Rows of run A and run B are matched by (model, scheme, workload, variant, batch_size, metric). The
comparison context is plain JSON-serializable data (written verbatim as compare.json); tables use the
card's {"columns", "align", "rows": [{"cells", "flag"}]} shape with numbers formatted by fmt.py.
A row is "changed" when the 95% confidence intervals of A and B do not overlap. Never imports torch.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

from qbench.atomic import write_atomic
from qbench.report.fmt import DASH, fmt, num, table, when, with_ci
from qbench.report.index import ordered
from qbench.report.render import make_env
from qbench.report.timing import CONTENDED, contention, doubts
from qbench.results import ResultsTable, load_results
from qbench.results.metrics import in_quality_table

COMPARE_SCHEMA_VERSION = 1
KEY = ("model", "scheme", "workload", "variant", "batch_size", "metric")
OUTPUTS = ("compare.md", "compare.html", "compare.json")
VARIANTS = {"baseline": 0, "quantized": 1, "paired": 2}


def default_out_dir(run_a: str | Path, run_b: str | Path) -> Path:
    """Where compare_runs writes by default: <run_b>/compare-<run_a folder name>/."""
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", Path(run_a).resolve().name).strip("._") or "run"
    return Path(run_b) / f"compare-{name}"


def compare_runs(run_a: str | Path, run_b: str | Path, out_dir: str | Path | None = None) -> dict[str, Path]:
    """Compare run A (reference) with run B; write compare.md/.html/.json; return {name: path written}.

    out_dir defaults to default_out_dir(run_a, run_b). Raises FileNotFoundError when a folder is
    not a run directory. Only results files are read; nothing is measured again.
    """
    ctx = build_comparison(run_a, run_b)
    out = Path(out_dir) if out_dir is not None else default_out_dir(run_a, run_b)
    texts = dict(render_comparison(ctx))
    texts["compare.json"] = json.dumps(ctx, indent=1, sort_keys=True, allow_nan=False) + "\n"
    written = {}
    for name in OUTPUTS:
        write_atomic(out / name, texts[name])
        written[name] = out / name
    return written


def render_comparison(ctx: dict) -> dict[str, str]:
    """{"compare.md": ..., "compare.html": ...} for a comparison context (templates/compare.*.j2)."""
    env = make_env()
    return {name: env.get_template(f"{name}.j2").render(cmp=ctx) for name in ("compare.md", "compare.html")}


def build_comparison(run_a: ResultsTable | str | Path, run_b: ResultsTable | str | Path) -> dict:
    """The comparison context of run A (reference) and run B: plain data, see the module docstring."""
    ta, tb = (r if isinstance(r, ResultsTable) else load_results(r) for r in (run_a, run_b))
    folders = [DASH if isinstance(r, ResultsTable) else Path(r).resolve().name for r in (run_a, run_b)]
    info = [_run_info(t, f) for t, f in zip((ta, tb), folders)]
    ra, rb = _by_key(ta.rows), _by_key(tb.rows)
    sort = _sorter(ta, tb)
    both = sorted((k for k in ra if k in rb), key=sort)
    speed, latency, quality = [], [], []
    cores = contention(ta.rows), contention(tb.rows)
    doubtful = {"speed": 0, "latency": 0}
    for k in both:
        a, b = ra[k], rb[k]
        m, s, w, variant, bs, metric = k
        verdict = ci_verdict(a, b)
        flag = verdict == "changed"
        if metric in ("speedup", "latency_ms"):
            why = _timing_doubts(k, a, b, ra, rb, cores)
            if flag and why:      # a change the machine can explain is not called a regression
                verdict, flag = "changed, not attributable", False
                doubtful["speed" if metric == "speedup" else "latency"] += 1
            timing = "; ".join(why) or "quiet"
        if metric == "speedup":
            speed.append({"cells": [m, s, w, bs, with_ci(a), with_ci(b), _ratio(a, b), verdict, timing],
                          "flag": flag})
        elif metric == "latency_ms":
            latency.append({"cells": [m, s, w, bs, variant, with_ci(a), with_ci(b), _ratio(a, b), verdict, timing],
                            "flag": flag})
        elif bs is None and in_quality_table(metric):
            label = metric if variant in ("quantized", "paired", None) else f"{metric} ({variant})"
            quality.append({"cells": [m, s, w, label, with_ci(a), with_ci(b), _delta(a, b, metric), verdict],
                            "flag": flag})
    only = _only_in(ta, tb, ra, rb, sort)
    kernels = _kernel_changes(ta, tb, sort)
    tables = {
        "speed": table(["Model", "Scheme", "Workload", "Batch", "Speedup A [95% CI]", "Speedup B [95% CI]",
                        "B/A", "CIs", "Timing"], speed, "lllrrrrll"),
        "latency": table(["Model", "Scheme", "Workload", "Batch", "Variant", "A ms [95% CI]", "B ms [95% CI]",
                          "B/A", "CIs", "Timing"], latency, "lllrlrrrll"),
        "quality": table(["Model", "Scheme", "Workload", "Metric", "A [95% CI]", "B [95% CI]", "Δ (B − A)",
                          "CIs"], quality, "llllrrrl"),
        "only_in_one": table(["Model", "Scheme", "Workload", "Only in", "What"], only),
        "kernels": table(["Model", "Scheme", "Kernels A", "Kernels B"], kernels),
    }
    items = [("Folder", "folder"), ("Experiment", "experiment_name"), ("Date", "date"),
             ("Status", "status"), ("Hardware", "hardware_summary"), ("Hardware fingerprint", "fingerprint"),
             ("Cells' fingerprints", "cell_fingerprints"),
             ("torch", "torch"), ("Device", "device"), ("Baseline ran in", "baseline"),
             ("git commit", "git_commit"), ("qbench version", "qbench_version")]
    header = table(["", "A (reference)", "B"], [
        {"cells": [label, info[0][k], info[1][k]],
         "flag": info[0][k] != info[1][k] and k not in ("folder", "date")} for label, k in items])
    n_changed = {name: sum(r["flag"] for r in tables[name]["rows"]) for name in ("speed", "latency", "quality")}
    for name, n in doubtful.items():        # "changed" counts every change; the doubtful ones apart
        n_changed[name] += n
    contended_cells = {side: sum(1 for c in cs.values() if c > CONTENDED) for side, cs in zip("ab", cores)}
    return {
        "compare_schema_version": COMPARE_SCHEMA_VERSION,
        "runs": {"a": info[0], "b": info[1]},
        "header": header,
        "warnings": _warnings(*info),
        "counts": {"matched_rows": len(both), "only_in_a_rows": sum(k not in rb for k in ra),
                   "only_in_b_rows": sum(k not in ra for k in rb), "kernel_changes": len(kernels),
                   **{f"{name}_rows": len(tables[name]["rows"]) for name in n_changed},
                   **{f"{name}_changed": n for name, n in n_changed.items()},
                   **{f"{name}_changed_not_attributable": n for name, n in doubtful.items()},
                   "contended_cells_a": contended_cells["a"], "contended_cells_b": contended_cells["b"]},
        "summary": _summary(n_changed, doubtful, contended_cells, len(speed), len(latency)),
        **tables,
    }


def _timing_doubts(k: tuple, a: dict, b: dict, ra: dict, rb: dict, cores: tuple) -> list[str]:
    """Why a timing change between A and B may come from the machines rather than the code: either run's
    cell contended, or the latencies behind the number noisy (a speed-up is judged by both its latencies)."""
    m, s, w, variant, bs, metric = k
    out = []
    for side, row, rows, c in (("A", a, ra, cores[0]), ("B", b, rb, cores[1])):
        behind = [rows.get((m, s, w, v, bs, "latency_ms")) for v in ("baseline", "quantized")] \
            if metric == "speedup" else [row]
        out += [f"{side} {d}" for d in doubts(c, row, *behind)]
    return list(dict.fromkeys(out))


def _summary(changed: dict, doubtful: dict, contended_cells: dict, n_speed: int, n_latency: int) -> list[str]:
    """The comparison's verdict in sentences, with the changes the machines can explain counted apart."""
    out = []
    for name, one, what, n in (("speed", "speed-up", "speed-ups", n_speed), ("latency", "latency", "latencies",
                                                                                n_latency)):
        c, d = changed[name], doubtful[name]
        if not c:
            out.append(f"No {one} changed ({n} compared).")
            continue
        line = f"{c} of {n} {what} changed"
        if d:
            line += (f"; {d} of them in cells timed on a contended machine or with noisy repeats, which the "
                     f"code cannot be blamed for, so {c - d} attributable to what changed between the runs")
        out.append(line + ".")
    busy = [f"{'AB'[i]}: {n} cell(s)" for i, n in enumerate(contended_cells.values()) if n]
    if busy:
        out.append(f"Contended while timed (above {CONTENDED} foreign cores): {', '.join(busy)}.")
    return out


def _run_info(t: ResultsTable, folder: str) -> dict:
    meta = t.meta
    exp = meta.get("experiment") or {}
    pkgs = (meta.get("hardware") or {}).get("packages") or {}
    return {
        "folder": folder,
        "experiment_name": str(meta.get("experiment_name") or exp.get("name") or DASH),
        "date": when(meta.get("created")),
        "status": str(meta.get("status") or DASH),
        "hardware_summary": str(meta.get("hardware_summary") or DASH),
        "fingerprint": str(meta.get("fingerprint") or DASH),
        "cell_fingerprints": ", ".join(sorted({str(c["fingerprint"]) for c in t.cells if c.get("fingerprint")}))
                             or DASH,
        "torch": str(pkgs.get("torch") or DASH),
        "device": str(meta.get("device") or DASH),
        "baseline": str((meta.get("baseline") or {}).get("resolved") or DASH),
        "git_commit": str(meta.get("git_commit") or "unknown"),
        "qbench_version": str(meta.get("qbench_version") or DASH),
    }


def _warnings(a: dict, b: dict) -> list[str]:
    out = []
    if DASH in (a["fingerprint"], b["fingerprint"]):
        out.append("A hardware fingerprint is missing: it cannot be confirmed that both runs used the same "
                   "hardware, so speed differences may come from the machines.")
    elif a["fingerprint"] != b["fingerprint"]:
        out.append(f"Hardware fingerprints differ (A {a['fingerprint']}, B {b['fingerprint']}): the runs used "
                   "different hardware, so speed differences may come from the machines, not from what changed.")
    for run, info in (("A", a), ("B", b)):
        if "," in info["cell_fingerprints"]:
            out.append(f"Run {run}'s cells ran on different hardware (fingerprints {info['cell_fingerprints']}): "
                       "its own speed numbers are not comparable cell to cell.")
    if DASH not in (a["cell_fingerprints"], b["cell_fingerprints"]) and a["cell_fingerprints"] != b[
            "cell_fingerprints"] and a["fingerprint"] == b["fingerprint"]:
        out.append(f"The cells of the two runs ran on different hardware (A {a['cell_fingerprints']}, B "
                   f"{b['cell_fingerprints']}) although the runs started on the same machine: speed differences "
                   "may come from the machines.")
    for key, what in (("torch", "torch versions"), ("device", "devices"), ("baseline", "baseline precisions"),
                      ("experiment_name", "experiments")):
        if a[key] != b[key]:
            out.append(f"The {what} differ (A {a[key]}, B {b[key]}): results may not be comparable.")
    return out


def _by_key(rows: list) -> dict:
    out: dict = {}
    for r in rows:
        out.setdefault(tuple(r.get(k) for k in KEY), r)
    return out


def _sorter(ta: ResultsTable, tb: ResultsTable):
    """Sort key for row keys: experiment order of models, schemes, workloads (A's first), then batch."""
    lists = []
    for field, col in (("models", "model"), ("schemes", "scheme"), ("workloads", "workload")):
        first = [x.get("name") or x.get("id") for t in (ta, tb)
                 for x in (t.meta.get("experiment") or {}).get(field, [])]
        lists.append(ordered(list(dict.fromkeys(first)), [c.get(col) for t in (ta, tb) for c in t.cells]))

    def key(k):
        pos = [lst.index(x) if x in lst else len(lst) for lst, x in zip(lists, k[:3])]
        bs = k[4] if len(k) > 4 else None
        tail = (-1 if bs is None else bs, VARIANTS.get(k[3], 3), str(k[5]), str(k[3])) if len(k) > 3 else ()
        return (*pos, *(str(x) for x in k[:3]), *tail)
    return key


def ci_verdict(a: dict, b: dict) -> str:
    """How row B compares with row A: changed (95% CIs apart), overlap, equal or no CI (values differ)."""
    ov = overlap(a, b)
    if ov is None:
        return "equal" if num(a.get("value")) == num(b.get("value")) else "no CI"
    return "overlap" if ov else "changed"


def overlap(a: dict, b: dict) -> bool | None:
    """Whether two rows' 95% confidence intervals overlap; None when either has none."""
    lo_a, hi_a, lo_b, hi_b = (num(r.get(k)) for r in (a, b) for k in ("ci_low", "ci_high"))
    if None in (lo_a, hi_a, lo_b, hi_b):
        return None
    return lo_a <= hi_b and lo_b <= hi_a


def _ratio(a: dict, b: dict) -> str:
    va, vb = num(a.get("value")), num(b.get("value"))
    return fmt(vb / va, "speedup") if va and vb is not None else DASH


def _delta(a: dict, b: dict, metric: str) -> str:
    va, vb = num(a.get("value")), num(b.get("value"))
    if va is None or vb is None:
        return DASH
    d = vb - va
    return fmt(0.0, metric) if d == 0 else ("+" if d > 0 else "-") + fmt(abs(d), metric)


def _what(k: tuple) -> str:
    extra = [x for x in (k[3], None if k[4] is None else f"batch {k[4]}") if x]
    return f"{k[5]} ({', '.join(extra)})" if extra else str(k[5])


def _only_in(ta, tb, ra, rb, sort) -> list:
    cells = [{(c.get("model"), c.get("scheme"), c.get("workload")): c for c in t.cells} for t in (ta, tb)]
    out = []
    for ck in sorted(set(cells[0]) | set(cells[1]), key=sort):
        for side, mine, other, rows_m, rows_o in (("A", 0, 1, ra, rb), ("B", 1, 0, rb, ra)):
            c = cells[mine].get(ck)
            if c is None:
                continue
            status = c.get("status") or "ok"
            note = "" if status == "ok" else f" ({status}: {c.get('reason') or 'no reason given'})"
            if ck not in cells[other]:
                out.append([*ck, side, "whole cell" + note])
                continue
            missing = sorted((k for k in rows_m if k[:3] == ck and k not in rows_o), key=sort)
            oc = cells[other][ck]
            why = "" if (oc.get("status") or "ok") == "ok" else \
                f"{'AB'[other]} cell {oc.get('status')}: {oc.get('reason') or 'no reason given'}"
            if missing and not any(k[:3] == ck for k in rows_o):
                out.append([*ck, side, f"all {len(missing)} rows" + (f" ({why})" if why else "")])
            elif missing:
                out.append([*ck, side, (f"{why}; " if why else "") + ", ".join(_what(k) for k in missing)])
    return out


def _kernels(t: ResultsTable) -> dict:
    out: dict = {}
    for c in t.cells:
        out.setdefault((c.get("model"), c.get("scheme")), {}).update(dict.fromkeys(c.get("kernels") or []))
    return out


def _kernel_changes(ta, tb, sort) -> list:
    ka, kb = _kernels(ta), _kernels(tb)
    pairs = sorted((p for p in ka if p in kb), key=lambda p: sort((*p, None)))
    return [[*p, ", ".join(ka[p]) or DASH, ", ".join(kb[p]) or DASH] for p in pairs if set(ka[p]) != set(kb[p])]
