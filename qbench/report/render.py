"""Render a run directory's card: card.md, card.html, card.json and plots/*.png, all written atomically.

Templates come from the repository's top-level templates/ directory (or the copy installed next to
the package). HTML is autoescaped; Markdown table cells escape pipes. Never imports torch.
"""
from __future__ import annotations

import base64
import json
from pathlib import Path

from qbench.atomic import write_atomic
from qbench.report.context import build_context
from qbench.report.plots import draw_all
from qbench.results import load_results

TEMPLATES = ("card.md.j2", "card.html.j2")


def template_dir() -> Path:
    repo = Path(__file__).resolve().parents[2] / "templates"
    return repo if repo.is_dir() else Path(__file__).resolve().parent.parent / "templates"


_MD = str.maketrans({"\\": "\\\\", "&": "&amp;", "<": "&lt;", "*": "\\*", "`": "\\`"})


def md_text(s) -> str:
    """Escape user text for Markdown prose: no raw HTML, emphasis or code spans."""
    return str(s).translate(_MD)


def md_cell(s) -> str:
    """Escape a Markdown table cell: as md_text, plus pipes and line breaks."""
    return md_text(s).replace("|", "\\|").replace("\r", " ").replace("\n", " ")


def md_align(a: str) -> str:
    return {"r": "---:", "c": ":---:"}.get(a, "---")


def make_env():
    import jinja2

    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(template_dir())),
        autoescape=lambda name: bool(name) and name.endswith((".html", ".html.j2", ".htm")),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    env.filters.update(md=md_text, mdcell=md_cell, mdalign=md_align)
    return env


def render_strings(ctx: dict, images: dict[str, bytes] | None = None) -> dict[str, str]:
    """{"card.md": ..., "card.html": ...} for a card context and its PNG plots."""
    env = make_env()
    b64 = {k: base64.b64encode(v).decode("ascii") for k, v in (images or {}).items()}
    return {
        "card.md": env.get_template("card.md.j2").render(card=ctx),
        "card.html": env.get_template("card.html.j2").render(card=ctx, images=b64),
    }


def render_card(run_dir: str | Path, style: dict | None = None) -> dict[str, Path]:
    """Render the card of a run directory; returns {relative name: path written}. `style`: the scheme colours
    and markers to plot with (qbench.report.plots.styles; a site passes one for all its cards)."""
    run_dir = Path(run_dir)
    ctx = build_context(load_results(run_dir), style=style)
    images = draw_all(ctx["plots"])
    written: dict[str, Path] = {}
    for p in ctx["plots"]:
        write_atomic(run_dir / p["file"], images[p["name"]])
        written[p["file"]] = run_dir / p["file"]
    for name, text in render_strings(ctx, images).items():
        write_atomic(run_dir / name, text)
        written[name] = run_dir / name
    write_atomic(run_dir / "card.json", json.dumps(ctx, indent=1, sort_keys=True, allow_nan=False) + "\n")
    written["card.json"] = run_dir / "card.json"
    return written
