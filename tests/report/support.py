"""Helpers shared by the report tests."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def edit_json(path: Path, fn) -> None:
    data = json.loads(path.read_text(encoding="utf-8"))
    data = fn(data) or data
    path.write_text(json.dumps(data), encoding="utf-8")


def replace_strings(obj, old, new):
    if isinstance(obj, str):
        return obj.replace(old, new)
    if isinstance(obj, list):
        return [replace_strings(x, old, new) for x in obj]
    if isinstance(obj, dict):
        return {replace_strings(k, old, new): replace_strings(v, old, new) for k, v in obj.items()}
    return obj


def assert_no_heavy_imports(call: str, run: Path) -> None:
    """Run `call` (Python using sys.argv[1] as the run folder) in a fresh interpreter; no torch, no engine."""
    code = (f"import sys; {call}; "
            "bad = [m for m in sys.modules if m.split('.')[0] == 'torch' or m.startswith(('qbench.engine', "
            "'qbench.runner', 'qbench.models'))]; assert not bad, bad; print('clean')")
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    out = subprocess.run([sys.executable, "-c", code, str(run)], capture_output=True, text=True, env=env)
    assert out.returncode == 0, out.stderr
    assert "clean" in out.stdout


ANY = object()


def _matches(r: dict, metric: str, variant, batch_size) -> bool:
    return (r["metric"] == metric and (variant is ANY or r["variant"] == variant)
            and (batch_size is ANY or r["batch_size"] == batch_size))


def get_row(run: Path, cell: str, metric: str, variant=ANY, batch_size=ANY) -> dict:
    """The first row of cells/<cell>.json with this metric (and variant, batch size when given)."""
    rows = json.loads((run / "cells" / f"{cell}.json").read_text(encoding="utf-8"))["rows"]
    return next(r for r in rows if _matches(r, metric, variant, batch_size))


def set_rows(run: Path, cell: str, metric: str, variant=ANY, batch_size=ANY, **values) -> None:
    """Set fields (value, ci_low, ...) of the matching rows of cells/<cell>.json; at least one must match."""
    def edit(c):
        hits = [r for r in c["rows"] if _matches(r, metric, variant, batch_size)]
        assert hits, f"no {metric} row in {cell}"
        for r in hits:
            r.update(values)
    edit_json(run / "cells" / f"{cell}.json", edit)


def plot_style_problems(card: dict) -> list[str]:
    """What breaks the card's plot styling rules, from the plot data (not pixels): a series label with two
    looks, two series of one plot with the same colour and marker, a scheme with two colours across the card,
    a plot whose alt text does not say what it shows. Empty when the card keeps them."""
    out, colours = [], {}
    for p in card["plots"]:
        looks, labels_of_look = {}, {}
        for f in p["data"]["facets"]:
            for s in f["series"]:
                look = (s["color"], s["marker"])
                looks.setdefault(s["label"], set()).add(look)
                labels_of_look.setdefault(look, set()).add(s["label"])
                if s.get("scheme"):
                    colours.setdefault(s["scheme"], set()).add(s["color"])
        out += [f"{p['name']}: {label} drawn {len(v)} ways" for label, v in sorted(looks.items()) if len(v) > 1]
        out += [f"{p['name']}: two series share colour and marker {look}: {sorted(labels)}"
                for look, labels in sorted(labels_of_look.items()) if len(labels) > 1]
        if not (p["alt"].startswith(p["title"]) and len(p["alt"]) > len(p["title"]) + 10):
            out.append(f"{p['name']}: alt text says nothing beyond the title")
    out += [f"scheme {s} has {len(c)} colours" for s, c in colours.items() if len(c) > 1]
    return out
