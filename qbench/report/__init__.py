"""Benchmark cards: a run directory (meta.json + cells/*.json) -> card.md, card.html, card.json, plots/.

Reads results only (qbench.results: the run's records and the metric registry); never imports torch, the
engine, the runner or the schema. Gates are read as plain data from the run's stored experiment.
"""
from qbench.report.context import CARD_SCHEMA_VERSION, build_context
from qbench.report.render import render_card

__all__ = ["CARD_SCHEMA_VERSION", "build_context", "render_card"]
