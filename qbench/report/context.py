"""ResultsTable -> card context: one plain JSON-serializable dict, written verbatim as card.json.

Tables are {"columns", "align", "rows": [{"cells": [str], "flag": bool}]} with numbers already
formatted, so the Markdown and HTML templates show exactly the same text. Never imports torch.
"""
from __future__ import annotations

from pathlib import Path

from qbench.report import plots
from qbench.report.fmt import CARD_SCHEMA_VERSION, DASH, Index, _ordered, _when
from qbench.report.gates import evaluate_gates
from qbench.report.sections import (caveats, contrast, gates, glossary, gpu, hardware, quant_maps, reproduce, results,
                                    setup, summary)
from qbench.results.table import ResultsTable, load_results


def build_context(source: ResultsTable | str | Path) -> dict:
    t = source if isinstance(source, ResultsTable) else load_results(source)
    meta, cells = t.meta, t.cells
    exp = meta.get("experiment") or {}
    order = {
        "models": _ordered([m.get("name") or m.get("id") for m in exp.get("models", [])],
                           [c.get("model") for c in cells]),
        "schemes": _ordered([s.get("name") for s in exp.get("schemes", [])], [c.get("scheme") for c in cells]),
        "workloads": _ordered([w.get("name") for w in exp.get("workloads", [])],
                              [c.get("workload") for c in cells]),
    }
    ix = Index(t.rows)
    qcells = {}  # (model, scheme) -> the cell whose quantization map is shown
    for c in cells:
        if c.get("quant_map"):
            qcells.setdefault((c["model"], c["scheme"]), c)
    verdicts = evaluate_gates(exp, t.rows)
    res = results(ix, order)
    gpu_table = gpu(ix, cells)
    if gpu_table:  # only runs on CUDA devices have one
        res["gpu"] = gpu_table
    ctx = {
        "card_schema_version": CARD_SCHEMA_VERSION,
        "title": {
            "experiment_name": meta.get("experiment_name") or exp.get("name") or DASH,
            "description": exp.get("description") or "",
            "date": _when(meta.get("created"))[:10],
            "created": _when(meta.get("created")),
            "finished": _when(meta.get("finished")),
            "hardware_summary": meta.get("hardware_summary") or DASH,
            "fingerprint": meta.get("fingerprint") or DASH,
            "status": meta.get("status") or DASH,
            "qbench_version": meta.get("qbench_version") or DASH,
            "device": meta.get("device") or DASH,
        },
        "summary": summary(ix, order, cells),
        "contrast": contrast(ix, order, cells),  # text vs code degradation; None with a single workload
        "gates": verdicts,  # one verdict per gate of the experiment (qbench.report.gates.evaluate_gates)
        "gates_section": gates(verdicts),  # None when the experiment declares no gates
        "setup": setup(meta, cells, order),
        "hardware": hardware(meta),
        "results": res,
        "quant_maps": quant_maps(qcells, order),
        "caveats": caveats(ix, meta, cells),
        "reproduce": reproduce(meta),
        "glossary": glossary(t.rows),
        "plots": plots.collect(ix, order, qcells),
    }
    return ctx
