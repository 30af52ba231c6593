"""`qbench publish RUN_DIR... --out SITE_DIR`: a static site of cards, for a shelf or GitHub Pages.

    SITE_DIR/index.html          every run x model x scheme in one table that sorts (click a header) and filters
                                 (type) in the browser, with no request beyond the site's own files
    SITE_DIR/feed.jsonl          one JSON line per run x model x scheme x workload: the numbers with intervals
    SITE_DIR/plots/frontier-*.png  per model: quality lost vs speed-up of every scheme of every run, one panel per
                                 hardware fingerprint and workload
    SITE_DIR/runs/<slug>/        a copy of each run folder with its card re-rendered in the site's colours

One colour and marker per scheme name across the whole site (plots.styles over every run's schemes). Cards from
different hardware are never ranked together silently: the table shows each row's hardware, the frontier plots
get one panel per fingerprint, and the page says how many machines the site holds. Every name a run carries
(model, scheme, experiment) is escaped as text; folder names are slugs. Never imports torch.
"""
from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

from qbench.atomic import write_atomic
from qbench.report.fmt import DASH, num, sig
from qbench.report.index import Index, card_order, model_task
from qbench.report.plots import PALETTE, SPEEDUP, degradation_ci, draw, headline_batch, styles
from qbench.report.render import make_env, render_card
from qbench.results import load_results
from qbench.results.metrics import headline

SITE_SCHEMA_VERSION = 1


def publish(run_dirs: list, out: str | Path) -> dict[str, Path]:
    """Build the site from run folders into `out`; returns {relative name: path written}."""
    out = Path(out)
    tables = [(Path(r), load_results(r)) for r in run_dirs]
    if not tables:
        raise ValueError("publish needs at least one run folder")
    every_scheme = [s for _, t in tables for s in card_order(t.meta.get("experiment") or {}, t.cells)["schemes"]]
    style = styles(every_scheme)
    written: dict[str, Path] = {}
    entries, feed, slugs = [], [], set()
    for path, t in tables:
        slug = _unique(_slug(f"{(t.meta.get('experiment') or {}).get('name') or path.name}-{path.name}"), slugs)
        dst = out / "runs" / slug
        if dst.exists():
            shutil.rmtree(dst)
        shutil.copytree(path, dst, ignore=shutil.ignore_patterns("compare-*", ".*.tmp"))
        render_card(dst, style=style)
        rows, lines = _run_rows(t, slug, style)
        entries += rows
        feed += lines
        written[f"runs/{slug}/card.html"] = dst / "card.html"
    machines = sorted({e["fingerprint"] for e in entries})
    plots = _frontiers(entries, machines)
    for p in plots:
        png = draw(p)
        write_atomic(out / p["file"], png)
        written[p["file"]] = out / p["file"]
    write_atomic(out / "feed.jsonl", "".join(json.dumps(x, sort_keys=True, allow_nan=False) + "\n" for x in feed))
    written["feed.jsonl"] = out / "feed.jsonl"
    html = make_env().get_template("site.html.j2").render(site={
        "entries": entries, "machines": machines, "plots": plots, "runs": len(tables),
        "workloads": list(dict.fromkeys(w for e in entries for w in e["quality"])),
        "schema_version": SITE_SCHEMA_VERSION})
    write_atomic(out / "index.html", html)
    written["index.html"] = out / "index.html"
    return written


def _slug(s: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", s).strip("-.")[:80] or "run"


def _unique(slug: str, taken: set) -> str:
    out, i = slug, 2
    while out in taken:
        out, i = f"{slug}-{i}", i + 1
    taken.add(out)
    return out


def _run_rows(t, slug: str, style: dict) -> tuple[list, list]:
    """(index rows, feed lines) of one run: a row per model x scheme, a line per model x scheme x workload."""
    meta, cells = t.meta, t.cells
    exp = meta.get("experiment") or {}
    order = card_order(exp, cells)
    ix = Index(t.rows)
    run = {"run": slug, "experiment": str(exp.get("name") or meta.get("experiment_name") or DASH),
           "date": str(meta.get("created") or "")[:10], "fingerprint": str(meta.get("fingerprint") or DASH),
           "hardware": str(meta.get("hardware_summary") or DASH), "card": f"runs/{slug}/card.html"}
    rows, lines = [], []
    for m in order["models"]:
        task = model_task(cells, m)
        spec = headline(task)
        schemes = [s for s in order["schemes"] if any(c.get("model") == m and c.get("scheme") == s for c in cells)]
        bs = headline_batch(ix, m, schemes, order["workloads"])
        for s in schemes:
            sw = ix.speed_workload(m, s, order["workloads"])
            sp = ix.get(m, s, sw, SPEEDUP, "paired", bs) if sw and bs is not None else None
            speed = [num(sp.get(k)) for k in ("value", "ci_low", "ci_high")] if sp else [None] * 3
            ratio = ix.weights_ratio(m, s, order["workloads"])
            kernels = sorted({k for c in cells if (c.get("model"), c.get("scheme")) == (m, s)
                              for k in c.get("kernels") or []})
            quality = {}
            for w in order["workloads"]:
                d = degradation_ci(ix, m, s, w, spec)
                if d:
                    r = ix.get(m, s, w, spec.name)
                    v, lo, hi = (num(r.get(k)) for k in ("value", "ci_low", "ci_high"))
                    quality[w] = d
                    lines.append({**run, "model": m, "scheme": s, "workload": w, "task": task,
                                  "batch_size": bs, "speedup": speed[0], "speedup_ci": speed[1:],
                                  "weights_ratio": ratio, "metric": spec.name, "degradation": spec.degradation_label,
                                  "value": v, "ci": [lo, hi], "change": d[0], "change_ci": d[1:],
                                  "kernels": kernels, "site_schema_version": SITE_SCHEMA_VERSION})
            rows.append({**run, "model": m, "scheme": s, "task": task or DASH, "batch_size": bs,
                         "speedup": speed, "weights_ratio": ratio, "metric": spec.degradation_label if spec else DASH,
                         "quality": quality, "kernels": ", ".join(kernels) or DASH, "color": style[s]["color"],
                         "text": {"speedup": _ci_text(speed, "x"), "weights": DASH if ratio is None else f"{ratio:.2f}x",
                                  "quality": {w: _ci_text(q) for w, q in quality.items()}}})
    return rows, lines


def _ci_text(v: list, unit: str = "") -> str:
    if not v or v[0] is None:
        return DASH
    out = f"{v[0]:.2f}{unit}" if unit else sig(v[0])
    if None not in v[1:3]:
        out += f" [{v[1]:.2f}, {v[2]:.2f}]" if unit else f" [{sig(v[1])}, {sig(v[2])}]"
    return out


def _frontiers(entries: list, machines: list) -> list:
    """One plot per model: a panel per hardware fingerprint and workload, a point per run x scheme."""
    plots = []
    models = list(dict.fromkeys(e["model"] for e in entries))
    for i, m in enumerate(models):
        facets = []
        for fp in machines:
            mine = [e for e in entries if e["model"] == m and e["fingerprint"] == fp]
            for w in dict.fromkeys(w for e in mine for w in e["quality"]):
                series = []
                for e in mine:
                    q = e["quality"].get(w)
                    if q and e["speedup"][0] is not None:
                        label = f"{e['scheme']} ({e['run']})"
                        series.append({"label": label, "scheme": e["scheme"], "points": [[*e["speedup"], *q]]})
                if series:
                    facets.append({"title": f"{w} on {fp}", "series": series, "y": f"{mine[0]['metric']} change",
                                   "batch_size": mine[0]["batch_size"], "frontier": []})
        if facets:
            _style(facets)
            plots.append({"name": "pareto", "title": f"{m}: quality lost vs speed gained across runs",
                          "file": f"plots/frontier-{i + 1}.png", "model": m,
                          "alt": f"{m}: {sum(len(f['series']) for f in facets)} points on {len(machines)} hardware "
                                 "fingerprint(s)",
                          "data": {"x": "speed-up at each run's headline batch size (x)", "y": "quality lost",
                                   "facets": facets}})
    return plots


def _style(facets: list) -> None:
    """Colours by scheme (as everywhere on the site), markers by run, unique per (scheme, run) label."""
    labels = list(dict.fromkeys(s["label"] for f in facets for s in f["series"]))
    look = styles(labels)
    schemes = styles(list(dict.fromkeys(s["scheme"] for f in facets for s in f["series"])))
    for f in facets:
        for s in f["series"]:
            s.update(look[s["label"]])
            if len(schemes) <= len(PALETTE):     # few schemes: the scheme's own colour, the run's marker
                s["color"] = schemes[s["scheme"]]["color"]
    seen = {(s["color"], s["marker"]) for f in facets for s in f["series"]}
    if len(seen) < len(labels):                  # a clash: fall back to one style per label
        for f in facets:
            for s in f["series"]:
                s.update(look[s["label"]])
