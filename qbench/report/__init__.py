"""Benchmark cards: a run directory (meta.json + cells/*.json) -> card.md, card.html, card.json, plots/.

Reads results only; never imports torch or the engine.
"""
from qbench.report.context import CARD_SCHEMA_VERSION, build_context
from qbench.report.render import render_card

__all__ = ["CARD_SCHEMA_VERSION", "build_context", "render_card"]
