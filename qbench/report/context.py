"""ResultsTable -> card context: one plain JSON-serializable dict, written verbatim as card.json.

Tables are {"columns", "align", "rows": [{"cells": [str], "flag": bool}]} with numbers already
formatted, so the Markdown and HTML templates show exactly the same text. Never imports torch.
"""
from __future__ import annotations

from pathlib import Path

from qbench.report import plots
from qbench.report.caveats import caveats, glossary
from qbench.report.fmt import DASH, when
from qbench.report.gates import evaluate_gates, gates_section
from qbench.report.index import Index, card_order
from qbench.report.mixed import mixed
from qbench.report.overview import overview
from qbench.report.pairs import pairs
from qbench.report.profile import card_section as profile_section
from qbench.report.setup import hardware, reproduce, setup
from qbench.report.summary import contrast, summary
from qbench.report.tables import gpu, quant_maps, results
from qbench.report.training import training
from qbench.results import ResultsTable, load_results

CARD_SCHEMA_VERSION = 2


def build_context(source: ResultsTable | str | Path, style: dict | None = None) -> dict:
    """The card context of a run. `style`: {scheme: {"color", "marker"}} to use in the plots (a site passes
    one for all its cards); by default each scheme gets one from its position in the card."""
    t = source if isinstance(source, ResultsTable) else load_results(source)
    meta, cells = t.meta, t.cells
    exp = meta.get("experiment") or {}
    order = card_order(exp, cells)
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
    the_setup = setup(meta, cells, order)
    tasks = {c.get("model"): c.get("task") for c in cells if c.get("task")}
    style = {**plots.styles(order["schemes"]), **(style or {})}
    return {
        "card_schema_version": CARD_SCHEMA_VERSION,
        "title": _title(meta, exp),
        "overview": overview(ix, order, cells, the_setup, meta, verdicts),
        "summary": summary(ix, order, cells),
        "contrast": contrast(ix, order, cells),  # text vs code degradation; None with a single workload
        "pairs": pairs(exp, cells, order),  # scheme vs scheme on the same sequences; None when nothing is paired
        "training": training(exp, cells, order),
        "mixed": mixed(ix, cells, order),  # mixed-precision plans, proxy vs measured; None without mixed schemes  # QAT runs and recovery of the PTQ gap; None without QAT
        "profile": profile_section(cells, order),  # where the time goes (measure.profile); None without it
        "gates": verdicts,  # one verdict per gate of the experiment (qbench.report.gates.evaluate_gates)
        "gates_section": gates_section(verdicts),  # None when the experiment declares no gates
        "setup": the_setup,
        "hardware": hardware(meta, cells),
        "results": res,
        "quant_maps": quant_maps(qcells, order, {sc.get("name"): sc.get("exclude") for sc in exp.get("schemes", [])}),
        "caveats": caveats(ix, meta, cells),
        "reproduce": reproduce(meta),
        "glossary": glossary(t.rows),
        "plots": plots.collect(ix, order, qcells, style, tasks),
    }


def _title(meta: dict, exp: dict) -> dict:
    return {
        "experiment_name": meta.get("experiment_name") or exp.get("name") or DASH,
        "description": exp.get("description") or "",
        "date": when(meta.get("created"))[:10],
        "created": when(meta.get("created")),
        "finished": when(meta.get("finished")),
        "hardware_summary": meta.get("hardware_summary") or DASH,
        "fingerprint": meta.get("fingerprint") or DASH,
        "status": meta.get("status") or DASH,
        "qbench_version": meta.get("qbench_version") or DASH,
        "device": meta.get("device") or DASH,
    }
