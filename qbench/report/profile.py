"""Where the time goes: the `qbench bench model` report (profile.json and profile.md from the dict
qbench.runner.profile returns) and the card's section for runs with measure.profile. Reads dicts only; never
imports torch."""
from __future__ import annotations

import json
import math
from pathlib import Path

from qbench.atomic import finite, write_atomic
from qbench.report.fmt import sig, table as card_table

CATEGORIES = ("linear", "attention", "norm", "activation", "embedding", "other")


def _x(v: float) -> str:
    return "∞" if not math.isfinite(v) else f"{sig(v)}x"


def table(rows: list[dict]) -> tuple[list[str], list[list[str]], str]:
    head = ["Variant", "ms (plain)", "Speed-up [p10, p90]", "Page faults", "ms (profiled)",
            *[f"{c} ms (%)" for c in CATEGORIES], "Linears free: ≤ x now", "≤ x baseline"]
    body = []
    for r in rows:
        body.append([r["variant"], sig(r["ms"]), f"{_x(r['speedup'])} [{sig(r['speedup_p10'])}, "
                     f"{sig(r['speedup_p90'])}]", faults_text(r), sig(r["profiled_ms"]),
                     *[f"{sig(r['ms_by_category'][c])} ({100 * r['share'][c]:.0f}%)" for c in CATEGORIES],
                     _x(r["linears_free_ceiling"]), _x(r["linears_free_vs_baseline"])])
    return head, body, "lrlrr" + "r" * len(CATEGORIES) + "rr"


def faults_text(row: dict) -> str:
    """Minor page faults per plain forward (median), or — for reports made before they were counted."""
    f = row.get("page_faults")
    return "—" if f is None else f"{f:,.0f}"


# how a profiled round was split into kinds, by runner.profile.profiled_by (the bench model report and the card)
PROFILED = {
    "hooks": "through the model's own forward, with a hook on every module, each module's own time (minus its "
             "children's) added to its kind: linear (the LM head included), attention (the attention modules' own "
             "work), norm, activation, embedding, other (residual adds, gating multiplies, masks, Python glue, the "
             "hooks)",
    "calls": "through qbench's decoder forward (causal LMs with measure.lm_forward: qbench, the forward their "
             "speed-ups were timed with), each of its calls timed and added to its kind: linear (joined siblings "
             "and the LM head included), attention (rotary, cache, softmax and products), norm (with the residual "
             "add), activation (with the gating), embedding, other (Python and PyTorch glue, the timers)",
}


def markdown(report: dict) -> str:
    from qbench.report.render import md_align, md_cell      # here: render imports the card context, which imports us

    m = report
    lines = [f"# Where the time goes: {m['model']}", "",
             f"{m['task']} on {m['device']} ({(m.get('machine') or {}).get('cpu_model') or 'unknown CPU'}, "
             f"{m['threads']} threads, torch {m['torch']}), baseline {m['dtype']}; batch {m['batch_size']} x "
             f"{m['seq_len']} tokens of workload {m['workload']}; {m['repeats']} rounds after {m['warmup']} warm-up "
             "rounds." + (f" Memory allocator: {m['allocator']}." if m.get("allocator") else ""), "",
             "Plain: each variant's forward alone, timed round-robin (every round times every variant), the median; "
             "the speed-up is the median of the per-round ratios to the baseline, with the rounds' 10th and 90th "
             "percentiles; page faults: the minor page faults of one plain forward (median), pages the process "
             "got fresh from the kernel (see measure.memory_reuse). Profiled: the same forward, profiled "
             + PROFILED[m.get("profiled_by", "hooks")] + "; from the profiled round with the median total. "
             "Linears free: the profiled share of everything but the linears bounds the speed-up any linear kernel "
             "can give, against this variant and against the baseline.", ""]
    if m.get("forward"):
        lines += [f"Forward: {m['forward']}.", ""]
    for phase, rows in m["phases"].items():
        head, body, align = table(rows)
        lines += [f"## {phase}", "", "| " + " | ".join(head) + " |", "|" + "|".join(md_align(a) for a in align) + "|"]
        lines += ["| " + " | ".join(md_cell(c) for c in row) + " |" for row in body]
        lines.append("")
    kernels = m.get("kernels") or {}
    if kernels:
        lines += ["Kernels: " + "; ".join(f"{s}: {', '.join(k) or 'none'}" for s, k in kernels.items()), ""]
    for s, why in (m.get("skipped") or {}).items():
        lines += [f"Not timed: {s}: {why}.", ""]
    return "\n".join(lines).rstrip() + "\n"


def write(report: dict, out: Path) -> dict[str, Path]:
    """profile.json and profile.md in `out` (created); returns {file name: path}."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name, text in {"profile.json": json.dumps(finite(report), indent=1) + "\n",
                       "profile.md": markdown(report)}.items():
        write_atomic(out / name, text.encode("utf-8"))
        paths[name] = out / name
    return paths


def card_section(cells: list, order: dict) -> dict | None:
    """The card's "Where the time goes" section from the cells' `profile` records (measure.profile): per model
    and phase, the baseline once and each scheme (its first workload's cell), None when no cell profiled."""
    rows = []
    shown_base = set()
    for m in order["models"]:
        for s in order["schemes"]:
            c = next((c for w in order["workloads"] for c in cells if c.get("model") == m and c.get("scheme") == s
                      and c.get("workload") == w and c.get("profile")), None)
            if c is None:
                continue
            prof = c["profile"]
            for phase in sorted(prof["phases"], key=lambda p: (p != "prefill", p)):   # records sort their keys
                prow = prof["phases"][phase]
                for r in prow:
                    base = r["variant"] == "baseline"
                    if base and (m, phase) in shown_base:
                        continue
                    shown_base.add((m, phase)) if base else None
                    rows.append([m, phase, "baseline" if base else s, f"{prof['batch_size']} x {prof['seq_len']}",
                                 sig(r["ms"]), "1" if base else f"{_x(r['speedup'])} [{sig(r['speedup_p10'])}, "
                                 f"{sig(r['speedup_p90'])}]", faults_text(r),
                                 *[f"{100 * r['share'][k]:.0f}%" for k in CATEGORIES],
                                 _x(r["linears_free_vs_baseline"])])
    if not rows:
        return None
    by = {c["profile"].get("profiled_by", "hooks") for c in cells if c.get("profile")}
    return {"note": "The first batch size of each cell, profiled (measure.profile): the forward alone timed "
                    "round-robin with the baseline (median ms; speed-up: the median of the per-round ratios, with "
                    "their 10th and 90th percentiles; page faults: the minor page faults of one such forward, "
                    "the median), then profiled " + "; or ".join(PROFILED[b] for b in sorted(by, reverse=True)) +
                    ". Linears free: the speed-up over the baseline this variant could reach if its linears cost "
                    "nothing (its plain time times its non-linear share).",
            "table": card_table(["Model", "Phase", "Variant", "Batch x tokens", "ms", "Speed-up [p10, p90]",
                                 "Page faults", *[f"{k} %" for k in CATEGORIES], "Linears free: ≤ x baseline"],
                                rows, "llllrlr" + "r" * len(CATEGORIES) + "r")}
